"""vSphere client layer, part 3: the capture storage policy (PBM / SPBM).

Design note
-----------
vCenter attaches an IO filter to a disk through a storage policy: a
capability-based profile whose rule names the filter's capability.
:func:`ensure_policy` looks the policy up by name first (PBM accepts
duplicate names, so creating blindly would make a new one on every run) and
creates it only when missing.  :func:`assign_policy` assigns it to chosen
disks with one ``ReconfigVM`` (a device ``edit`` with a profile per disk);
:func:`unassign_policy` puts the disks back on the datastore default.

Why a marker as well: the vCenter simulator we test against (govmomi 0.24)
accepts policy assignments but records none of them (the association query
answers empty), so "does this disk have capture attached?" cannot be read
back from PBM there.  The same ``ReconfigVM`` therefore also writes
``liftshift.capture.<disk key> = <policy id>`` into the VM's extraConfig,
which succeeds or fails together with the assignment, and inventory reads
that.  On a real vCenter the marker agrees with PBM; reading PBM's
association as well is left to the platform once it runs against one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from pyVmomi import pbm, vim

from .errors import InvalidArgument
from .vsphere_inventory import CAPTURE_MARKER, VsphereVm, capturable, vm_ref
from .vsphere_session import VsphereSession

log = logging.getLogger("liftshift.daemon.vsphere")

DEFAULT_POLICY = "liftshift-capture"
CAPABILITY_NAMESPACE = "com.liftshift.iofilter"
CAPABILITY_ID = "capture"

_STORAGE = pbm.profile.ResourceType(resourceType="STORAGE")


def find_policy(session: VsphereSession, name: str) -> str | None:
    """The id of the storage policy called ``name``, if any."""
    pm = session.pbm().profileManager
    ids = pm.PbmQueryProfile(resourceType=_STORAGE)
    for profile in pm.PbmRetrieveContent(profileIds=ids) if ids else []:
        if profile.name == name:
            return str(profile.profileId.uniqueId)
    return None


def ensure_policy(session: VsphereSession, name: str = DEFAULT_POLICY, *, namespace: str = CAPABILITY_NAMESPACE,
                  capability: str = CAPABILITY_ID) -> str:
    """The id of policy ``name``, created (capability-based) if it is missing."""
    existing = find_policy(session, name)
    if existing is not None:
        log.info("%s: storage policy %r exists (%s)", session.where, name, existing)
        return existing
    rule = pbm.capability.CapabilityInstance(
        id=pbm.capability.CapabilityMetadata.UniqueId(namespace=namespace, id=capability),
        constraint=[pbm.capability.ConstraintInstance(
            propertyInstance=[pbm.capability.PropertyInstance(id=capability, value=True)])])
    spec = pbm.profile.CapabilityBasedProfileCreateSpec(
        name=name, description="liftshift: attach the write-capture IO filter", category="REQUIREMENT",
        resourceType=_STORAGE,
        constraints=pbm.profile.SubProfileCapabilityConstraints(subProfiles=[
            pbm.profile.SubProfileCapabilityConstraints.SubProfile(name="liftshift IO filter", capability=[rule])]))
    created = str(session.pbm().profileManager.PbmCreate(createSpec=spec).uniqueId)
    log.info("%s: created storage policy %r (%s)", session.where, name, created)
    return created


def assign_policy(session: VsphereSession, vm: VsphereVm, disk_keys: Iterable[int], policy_id: str) -> None:
    """Assign ``policy_id`` to the VM's disks ``disk_keys`` and mark them
    (extraConfig) in the same reconfiguration.  Every disk is checked with
    :func:`capturable` first: a refusal changes nothing."""
    keys = list(dict.fromkeys(disk_keys))
    if not keys:
        raise InvalidArgument(f"assign_policy: no disks of VM {vm.name!r} given")
    disks = [vm.disk(k) for k in keys]
    for d in disks:
        capturable(vm.name, d)
    ref = vm_ref(session.si, vm.moid)
    devices = {d.key: d for d in ref.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)}
    profile = [vim.vm.DefinedProfileSpec(profileId=policy_id)]
    spec = vim.vm.ConfigSpec(
        deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="edit", device=devices[d.key], profile=profile)
                      for d in disks],
        extraConfig=[vim.option.OptionValue(key=f"{CAPTURE_MARKER}{d.key}", value=policy_id) for d in disks])
    what = f"assigning storage policy {policy_id} to {', '.join(d.label for d in disks)} of VM {vm.name!r}"
    session.wait_task_sync(ref.ReconfigVM_Task(spec=spec), what)
    log.info("%s: %s: done", session.where, what)


def unassign_policy(session: VsphereSession, vm: VsphereVm, disk_keys: Iterable[int]) -> None:
    """Put the disks back on the datastore's default policy and clear their
    markers (an empty extraConfig value removes the key), in one reconfiguration."""
    disks = [vm.disk(k) for k in dict.fromkeys(disk_keys)]
    if not disks:
        return
    ref = vm_ref(session.si, vm.moid)
    devices = {d.key: d for d in ref.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)}
    spec = vim.vm.ConfigSpec(
        deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="edit", device=devices[d.key],
                                                      profile=[vim.vm.EmptyProfileSpec()]) for d in disks],
        extraConfig=[vim.option.OptionValue(key=f"{CAPTURE_MARKER}{d.key}", value="") for d in disks])
    what = f"removing the capture policy from {', '.join(d.label for d in disks)} of VM {vm.name!r}"
    session.wait_task_sync(ref.ReconfigVM_Task(spec=spec), what)
    log.info("%s: %s: done", session.where, what)
