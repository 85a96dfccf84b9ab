"""vSphere client layer, part 4: the shadow VM at the destination, and power.

Design note
-----------
The shadow VM mirrors the source's CPU, memory, firmware, NICs (networks
mapped through ``network_map``) and disks, whose backings are the shadow
vdisks the sink wrote, ``[datastore] <shadow_dir>/<vdisk id>.vmdk`` (flat
file plus descriptor).  Disks are added with ``fileOperation`` omitted (use
the existing file; "create" would refuse or replace it) and with both
``capacityInBytes`` and ``capacityInKB`` set.

Everything is looked up before anything is created: datacenter, folder,
resource pool, datastore and every destination network (govmomi's simulator
fails the request midway and leaves a half-made VM when a NIC names an
unknown network).  Creation is two steps so that each can be cleaned up:
``CreateVM`` with the hardware, the NICs, the disk controllers and the tag
``liftshift.migration_id`` in extraConfig, then one ``ReconfigVM`` that adds
the disks.  A rerun finds the tagged VM and only adds the disks it lacks, so
nothing is duplicated (vCenter, and the simulator even more so, accepts
several VMs with one name).  If a step after ``CreateVM`` fails, the VM is
removed keeping the shadow files: its disks are detached first (a
``ReconfigVM`` remove without ``fileOperation``), since ``Destroy_Task``
deletes the files of attached disks.

Power operations check the state first, so calling them again is harmless
(and the session's re-login retry may run them twice).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pyVmomi import vim, vmodl

from .errors import FailedPrecondition, InvalidArgument, LiftshiftError, NotFound
from .platform import Power
from .vsphere_inventory import MIGRATION_TAG, VsphereVm, collect, read_vm, vm_ref
from .vsphere_session import VsphereSession

log = logging.getLogger("liftshift.daemon.vsphere")

_CONTROLLERS: dict[str, Any] = {
    "pvscsi": vim.vm.device.ParaVirtualSCSIController,
    "lsilogic": vim.vm.device.VirtualLsiLogicController,
    "lsilogic-sas": vim.vm.device.VirtualLsiLogicSASController,
    "buslogic": vim.vm.device.VirtualBusLogicController,
}
_NICS: dict[str, Any] = {
    "vmxnet3": vim.vm.device.VirtualVmxnet3, "vmxnet2": vim.vm.device.VirtualVmxnet2,
    "e1000": vim.vm.device.VirtualE1000, "e1000e": vim.vm.device.VirtualE1000e,
    "pcnet32": vim.vm.device.VirtualPCNet32,
}


@dataclass(frozen=True)
class ShadowDiskSpec:
    """A disk of the shadow VM: the shadow vdisk and where the source had it."""

    vdisk_id: str
    capacity: int
    controller_kind: str = "pvscsi"
    bus: int = 0
    unit: int = 0


@dataclass(frozen=True)
class ShadowVmSpec:
    """What the shadow VM must look like (networks are the *source* names)."""

    name: str
    migration_id: str
    num_cpu: int
    memory_mb: int
    firmware: str
    guest_id: str
    nics: tuple[tuple[str, str], ...]  # (adapter kind, source network)
    disks: tuple[ShadowDiskSpec, ...]

    @classmethod
    def mirror(cls, vm: VsphereVm, migration_id: str, vdisk_ids: Mapping[int, str],
               name: str | None = None) -> ShadowVmSpec:
        """The spec mirroring source ``vm``; ``vdisk_ids`` maps its disk keys to shadow vdisk ids."""
        missing = [d.label for d in vm.disks if d.key not in vdisk_ids]
        if missing:
            raise InvalidArgument(f"no shadow vdisk given for {', '.join(missing)} of VM {vm.name!r}")
        return cls(name=name or vm.name, migration_id=migration_id, num_cpu=vm.num_cpu, memory_mb=vm.memory_mb,
                   firmware=vm.firmware, guest_id=vm.guest_id or "otherGuest64",
                   nics=tuple((n.kind, n.network) for n in vm.nics),
                   disks=tuple(ShadowDiskSpec(vdisk_ids[d.key], d.capacity, d.controller_kind, d.bus, d.unit)
                               for d in vm.disks))


@dataclass(frozen=True)
class Placement:
    """Where shadow VMs go, resolved to objects (all looked up before creating)."""

    datacenter: Any
    folder: Any
    pool: Any
    datastore: str
    networks: dict[str, Any]  # destination network name -> network object


def _one(kind: str, key: str, wanted: str, found: dict[str, Any]) -> Any:
    if wanted:
        if wanted in found:
            return found[wanted]
        raise NotFound(f"{kind} {wanted!r} (key '{key}') does not exist",
                       hint=f"known: {', '.join(sorted(found)) or '(none)'}")
    if len(found) == 1:
        return next(iter(found.values()))
    raise InvalidArgument(f"key '{key}' is empty and there are {len(found)} {kind}s: choose one",
                          hint=f"known: {', '.join(sorted(found)) or '(none)'}")


def networks(session: VsphereSession, datacenter: Any) -> dict[str, Any]:
    """Network name -> object in ``datacenter`` (DVS uplink portgroups left out)."""
    out: dict[str, Any] = {}
    for obj, props in collect(session.si, vim.Network, ["name"], root=datacenter.networkFolder):
        if isinstance(obj, vim.dvs.DistributedVirtualPortgroup) and "-DVUplinks-" in props.get("name", ""):
            continue
        out.setdefault(props.get("name", ""), obj)
    return out


def placement(session: VsphereSession, spec: ShadowVmSpec | None = None) -> Placement:
    """Resolve datacenter, folder, pool, datastore and the spec's mapped networks."""
    side, si = session.side, session.si
    dcs = {dc.name: dc for dc in si.content.rootFolder.childEntity if isinstance(dc, vim.Datacenter)}
    dc = _one("datacenter", "datacenter", side.datacenter, dcs)
    index = si.content.searchIndex
    folder = dc.vmFolder
    if side.folder:
        folder = index.FindByInventoryPath(f"{dc.name}/vm/{side.folder.strip('/')}")
        if not isinstance(folder, vim.Folder):
            raise NotFound(f"VM folder {side.folder!r} (key 'folder') does not exist in datacenter {dc.name!r}")
    if side.resource_pool:
        pool = index.FindByInventoryPath(f"{dc.name}/host/{side.resource_pool.strip('/')}")
        if not isinstance(pool, vim.ResourcePool):
            raise NotFound(f"resource pool {side.resource_pool!r} (key 'resource_pool') does not exist "
                           f"in datacenter {dc.name!r}")
    else:
        computes = {c.name: c for c in dc.hostFolder.childEntity if isinstance(c, vim.ComputeResource)}
        pool = _one("cluster", "cluster", side.cluster, computes).resourcePool
    datastore = _one("datastore", "datastore", side.datastore, {d.name: d for d in dc.datastore}).name
    known = networks(session, dc) if spec is not None else {}
    wanted = {side.network_map.get(source, source): source for _, source in (spec.nics if spec else ())}
    unknown = sorted(n for n in wanted if n not in known)
    if unknown:
        mapped = ", ".join(f"{wanted[n]!r} -> {n!r}" for n in unknown)
        raise NotFound(f"destination network(s) {', '.join(map(repr, unknown))} do not exist in datacenter "
                       f"{dc.name!r} (source network mapped: {mapped})",
                       hint=f"map them in network_map; destination networks: {', '.join(sorted(known))}")
    return Placement(dc, folder, pool, datastore, {n: known[n] for n in wanted})


def find_shadow(session: VsphereSession, migration_id: str) -> VsphereVm | None:
    """The VM tagged with ``migration_id`` (FailedPrecondition if several are)."""
    found = [o for o, p in collect(session.si, vim.VirtualMachine, ["config.extraConfig"])
             if any(x.key == MIGRATION_TAG and x.value == migration_id for x in p.get("config.extraConfig") or [])]
    if len(found) > 1:
        raise FailedPrecondition(f"{len(found)} VMs carry {MIGRATION_TAG} = {migration_id!r} "
                                 f"({', '.join(o._moId for o in found)})", hint="remove the extra ones")
    return read_vm(session.si, found[0]._moId) if found else None


def _nic_backing(network: Any, name: str) -> Any:
    if isinstance(network, vim.dvs.DistributedVirtualPortgroup):
        port = vim.dvs.PortConnection(portgroupKey=network.key,
                                      switchUuid=getattr(network.config.distributedVirtualSwitch, "uuid", None))
        return vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(port=port)
    return vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=name, network=network)


def _create_spec(session: VsphereSession, spec: ShadowVmSpec, where: Placement) -> Any:
    changes = []
    for i, (bus, kind) in enumerate(sorted({(d.bus, d.controller_kind) for d in spec.disks})):
        if kind not in _CONTROLLERS:
            raise InvalidArgument(f"shadow VM {spec.name!r}: disk controller kind {kind!r} is not supported "
                                  f"(supported: {', '.join(_CONTROLLERS)})")
        ctrl = _CONTROLLERS[kind](key=1000 + i, busNumber=bus, sharedBus="noSharing")
        changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=ctrl))
    for i, (kind, source) in enumerate(spec.nics):
        target = session.side.network_map.get(source, source)
        nic = _NICS.get(kind, vim.vm.device.VirtualVmxnet3)(
            key=-100 - i, addressType="generated", backing=_nic_backing(where.networks[target], target),
            connectable=vim.vm.device.VirtualDevice.ConnectInfo(startConnected=True, allowGuestControl=True))
        changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=nic))
    return vim.vm.ConfigSpec(
        name=spec.name, guestId=spec.guest_id, numCPUs=spec.num_cpu, memoryMB=spec.memory_mb,
        firmware=spec.firmware, files=vim.vm.FileInfo(vmPathName=f"[{where.datastore}]"), deviceChange=changes,
        extraConfig=[vim.option.OptionValue(key=MIGRATION_TAG, value=spec.migration_id)])


def shadow_path(session: VsphereSession, datastore: str, vdisk_id: str) -> str:
    return f"[{datastore}] {session.side.shadow_dir.strip('/')}/{vdisk_id}.vmdk"


def _attach_disks(session: VsphereSession, spec: ShadowVmSpec, ref: Any, datastore: str) -> None:
    devices = ref.config.hardware.device
    have = {getattr(d.backing, "fileName", None) for d in devices if isinstance(d, vim.vm.device.VirtualDisk)}
    controllers = {(d.busNumber, k): d.key for d in devices for k, cls in _CONTROLLERS.items()
                   if isinstance(d, cls)}
    changes = []
    for i, d in enumerate(spec.disks):
        path = shadow_path(session, datastore, d.vdisk_id)
        if path in have:
            continue
        disk = vim.vm.device.VirtualDisk(
            key=-1 - i, controllerKey=controllers[(d.bus, d.controller_kind)], unitNumber=d.unit,
            capacityInBytes=d.capacity, capacityInKB=d.capacity // 1024,
            backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(fileName=path, diskMode="persistent"))
        changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=disk))  # no fileOperation
    if changes:
        what = f"attaching {len(changes)} shadow disk(s) to VM {spec.name!r}"
        session.wait_task_sync(ref.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=changes)), what)
        log.info("%s: %s: done", session.where, what)


def create_shadow_vm(session: VsphereSession, spec: ShadowVmSpec) -> VsphereVm:
    """Create (or find again, completing its disks) the shadow VM of ``spec.migration_id``."""
    where = placement(session, spec)
    existing = find_shadow(session, spec.migration_id)
    created = existing is None
    if existing is None:
        config = _create_spec(session, spec, where)
        what = f"creating shadow VM {spec.name!r} for migration {spec.migration_id}"
        log.info("%s: %s in %s", session.where, what, where.folder.name)
        try:
            ref = session.wait_task_sync(where.folder.CreateVM_Task(config=config, pool=where.pool), what)
        except LiftshiftError:
            _cleanup(session, spec.migration_id)  # vCenter may have registered part of it
            raise
    else:
        log.info("%s: shadow VM %r (%s) of migration %s exists: reusing it", session.where, existing.name,
                 existing.moid, spec.migration_id)
        ref = vm_ref(session.si, existing.moid)
    try:
        _attach_disks(session, spec, ref, where.datastore)
        return read_vm(session.si, ref._moId)
    except LiftshiftError:
        if created:
            _cleanup(session, spec.migration_id)
        raise


def _cleanup(session: VsphereSession, migration_id: str) -> None:
    log.warning("%s: creating the shadow VM of migration %s failed: removing what was created (keeping the "
                "shadow disk files)", session.where, migration_id)
    try:
        remove_shadow_vm(session, migration_id)
    except LiftshiftError as e:  # the original error matters more; say what is left
        log.error("%s: could not remove the half-created shadow VM of migration %s: %s", session.where,
                  migration_id, e)


def remove_shadow_vm(session: VsphereSession, migration_id: str) -> bool:
    """Power off and delete the shadow VM of ``migration_id``, keeping its disk
    files (disks detached first); False if there is none."""
    vm = find_shadow(session, migration_id)
    if vm is None:
        return False
    ref = vm_ref(session.si, vm.moid)
    power_off(session, vm)
    disks = [d for d in ref.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
    if disks:
        detach = vim.vm.ConfigSpec(deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="remove", device=d)
                                                 for d in disks])
        session.wait_task_sync(ref.ReconfigVM_Task(spec=detach), f"detaching the disks of shadow VM {vm.name!r}")
    session.wait_task_sync(ref.Destroy_Task(), f"removing shadow VM {vm.name!r}")
    log.info("%s: removed shadow VM %r (%s) of migration %s (%d disk(s) detached first: their files are kept)",
             session.where, vm.name, vm.moid, migration_id, len(disks))
    return True


# -- power -------------------------------------------------------------------

def state(session: VsphereSession, vm: VsphereVm) -> Power:
    """The VM's power state now (one property read; NotFound if the VM is gone)."""
    try:
        found = collect(session.si, vim.VirtualMachine, ["runtime.powerState"], obj=vm_ref(session.si, vm.moid))
    except vmodl.fault.ManagedObjectNotFound:
        found = []
    if not found:
        raise NotFound(f"VM {vm.name!r} ({vm.moid}) no longer exists on {session.where}")
    return Power.ON if found[0][1].get("runtime.powerState") == "poweredOn" else Power.OFF


def power_on(session: VsphereSession, vm: VsphereVm) -> None:
    """Power the VM on (nothing to do if it is on)."""
    if state(session, vm) is Power.ON:
        log.info("%s: VM %r is already powered on", session.where, vm.name)
        return
    log.info("%s: powering on VM %r", session.where, vm.name)
    session.wait_task_sync(vm_ref(session.si, vm.moid).PowerOnVM_Task(), f"powering on VM {vm.name!r}")
    log.info("%s: VM %r is powered on", session.where, vm.name)


def power_off(session: VsphereSession, vm: VsphereVm) -> None:
    """Power the VM off, hard (nothing to do if it is off)."""
    if state(session, vm) is not Power.ON:
        log.info("%s: VM %r is already powered off", session.where, vm.name)
        return
    log.info("%s: powering off VM %r", session.where, vm.name)
    session.wait_task_sync(vm_ref(session.si, vm.moid).PowerOffVM_Task(), f"powering off VM {vm.name!r}")
    log.info("%s: VM %r is powered off", session.where, vm.name)


class Stopped(StrEnum):
    """How :func:`shutdown_guest` stopped the VM."""

    ALREADY_OFF = "already-off"
    GUEST_SHUTDOWN = "guest-shutdown"
    POWERED_OFF_AFTER_TIMEOUT = "powered-off-after-timeout"
    POWERED_OFF_NO_TOOLS = "powered-off-guest-shutdown-refused"


def shutdown_guest(session: VsphereSession, vm: VsphereVm, timeout: float | None = None) -> Stopped:
    """Ask the guest to shut down, wait up to ``timeout`` (default
    guest_shutdown_timeout_s), then power off if it is still on."""
    timeout = session.side.guest_shutdown_timeout_s if timeout is None else timeout
    if state(session, vm) is not Power.ON:
        log.info("%s: VM %r is already powered off", session.where, vm.name)
        return Stopped.ALREADY_OFF
    log.info("%s: asking the guest of VM %r to shut down (up to %g s)", session.where, vm.name, timeout)
    try:
        vm_ref(session.si, vm.moid).ShutdownGuest()
    except (vim.fault.ToolsUnavailable, vim.fault.InvalidState, vim.fault.TaskInProgress) as e:
        log.warning("%s: VM %r refused a guest shutdown (%s): powering it off", session.where, vm.name,
                    type(e).__name__)
        power_off(session, vm)
        return Stopped.POWERED_OFF_NO_TOOLS
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state(session, vm) is not Power.ON:
            log.info("%s: the guest of VM %r shut down", session.where, vm.name)
            return Stopped.GUEST_SHUTDOWN
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    log.warning("%s: the guest of VM %r did not shut down within %g s: powering it off", session.where,
                vm.name, timeout)
    power_off(session, vm)
    return Stopped.POWERED_OFF_AFTER_TIMEOUT
