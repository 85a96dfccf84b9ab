"""vSphere client layer: the async API the ``vsphere`` platform is built on.

Design note
-----------
This is the client layer, not the platform adapter: it knows vCenter, not
migrations or rings.  :class:`VsphereClient` wraps one
:class:`~liftshift.daemon.vsphere_session.VsphereSession` (one per side:
source and destination) and exposes every operation as a coroutine that runs
the blocking pyvmomi work in a worker thread, with the session's re-login
and error mapping.  The work itself lives by concept:

* :mod:`.vsphere_session` — configuration of a side, login, re-login, tasks, faults;
* :mod:`.vsphere_inventory` — VMs, disks, NICs; :func:`capturable`;
* :mod:`.vsphere_policy` — the capture storage policy and its per-disk marker;
* :mod:`.vsphere_shadow` — the shadow VM, power operations, rollback.

Results are plain frozen dataclasses (:class:`VsphereVm`); a VM is passed
back in as that object (its ``moid`` names it), never by a pyvmomi reference.
"""

from __future__ import annotations

from collections.abc import Iterable

from . import vsphere_inventory as inv
from . import vsphere_policy as policy
from . import vsphere_shadow as shadow
from .platform import Power
from .vsphere_inventory import NotCapturable, VsphereDisk, VsphereNic, VsphereVm, capturable
from .vsphere_session import TaskTimedOut, UntrustedCertificate, VsphereFault, VsphereSession, VsphereSide
from .vsphere_shadow import ShadowDiskSpec, ShadowVmSpec, Stopped

__all__ = [
    "NotCapturable", "ShadowDiskSpec", "ShadowVmSpec", "Stopped", "TaskTimedOut", "UntrustedCertificate",
    "VsphereClient", "VsphereDisk", "VsphereFault", "VsphereNic", "VsphereSession", "VsphereSide", "VsphereVm",
    "capturable",
]


class VsphereClient:
    """One vCenter (one side of a migration), as coroutines.

    ``async with VsphereClient(side, "source") as vc: await vc.inventory()``
    """

    def __init__(self, side: VsphereSide, name: str = "vsphere") -> None:
        self.session = VsphereSession(side, name)

    async def __aenter__(self) -> VsphereClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Log in; Unauthenticated / Unavailable / UntrustedCertificate on failure."""
        await self.session.connect()

    async def close(self) -> None:
        """Log out."""
        await self.session.close()

    # -- inventory -----------------------------------------------------------

    async def inventory(self) -> list[VsphereVm]:
        """Every VM with power, host, guest, CPU, memory, firmware, NICs and disks."""
        s = self.session
        return await s.run(lambda: inv.inventory(s.si), doing="reading the inventory")

    async def find_vm(self, name: str) -> VsphereVm:
        """The VM called ``name``; NotFound with the known names as hint."""
        s = self.session
        return await s.run(lambda: inv.find_vm(s.si, name), doing=f"looking up VM {name!r}")

    async def refresh(self, vm: VsphereVm) -> VsphereVm:
        """``vm`` read again; NotFound if it is gone."""
        s = self.session
        return await s.run(lambda: inv.read_vm(s.si, vm.moid), doing=f"reading VM {vm.name!r}")

    # -- capture policy --------------------------------------------------------

    async def ensure_policy(self, name: str = policy.DEFAULT_POLICY) -> str:
        """The id of storage policy ``name``, created if it is missing."""
        return await self.session.run(policy.ensure_policy, self.session, name,
                                      doing=f"ensuring storage policy {name!r}")

    async def assign_policy(self, vm: VsphereVm, disk_keys: Iterable[int], policy_id: str) -> VsphereVm:
        """Assign the policy (and the capture marker) to the disks; returns the VM read again."""
        keys = list(disk_keys)
        s = self.session

        def work() -> VsphereVm:
            policy.assign_policy(s, vm, keys, policy_id)
            return inv.read_vm(s.si, vm.moid)

        return await s.run(work, doing=f"assigning storage policy {policy_id} to VM {vm.name!r}")

    async def unassign_policy(self, vm: VsphereVm, disk_keys: Iterable[int]) -> VsphereVm:
        """Back to the default policy, markers cleared; returns the VM read again."""
        keys = list(disk_keys)
        s = self.session

        def work() -> VsphereVm:
            policy.unassign_policy(s, vm, keys)
            return inv.read_vm(s.si, vm.moid)

        return await s.run(work, doing=f"removing the capture policy from VM {vm.name!r}")

    # -- destination VM ------------------------------------------------------

    async def create_shadow_vm(self, spec: ShadowVmSpec) -> VsphereVm:
        """Create the shadow VM on the shadow vdisks, or find it again (idempotent);
        a failure after CreateVM removes it and keeps the disk files."""
        return await self.session.run(shadow.create_shadow_vm, self.session, spec,
                                      doing=f"creating shadow VM {spec.name!r}")

    async def find_shadow_vm(self, migration_id: str) -> VsphereVm | None:
        """The VM tagged with ``migration_id``, if any."""
        return await self.session.run(shadow.find_shadow, self.session, migration_id,
                                      doing=f"looking up the shadow VM of migration {migration_id}")

    async def power_on(self, vm: VsphereVm) -> None:
        """Power on (no-op when on)."""
        await self.session.run(shadow.power_on, self.session, vm, doing=f"powering on VM {vm.name!r}")

    async def power_off(self, vm: VsphereVm) -> None:
        """Hard power off (no-op when off)."""
        await self.session.run(shadow.power_off, self.session, vm, doing=f"powering off VM {vm.name!r}")

    async def shutdown_guest(self, vm: VsphereVm, timeout: float | None = None) -> Stopped:
        """Guest shutdown, wait up to ``timeout`` (guest_shutdown_timeout_s), then power off."""
        return await self.session.run(shadow.shutdown_guest, self.session, vm, timeout,
                                      doing=f"stopping VM {vm.name!r}")

    async def state(self, vm: VsphereVm) -> Power:
        """The VM's power state now."""
        return await self.session.run(shadow.state, self.session, vm, doing=f"reading the state of VM {vm.name!r}")

    # -- rollback --------------------------------------------------------------

    async def restart_source(self, vm: VsphereVm) -> None:
        """Rollback: power the source VM on again (no-op when on)."""
        await self.power_on(vm)

    async def remove_shadow_vm(self, migration_id: str) -> bool:
        """Rollback: remove the shadow VM of ``migration_id`` keeping its disk files; False if none."""
        return await self.session.run(shadow.remove_shadow_vm, self.session, migration_id,
                                      doing=f"removing the shadow VM of migration {migration_id}")
