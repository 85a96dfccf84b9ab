"""The narrow interface every platform adapter implements.

Design note
-----------
What "a VM" is depends on where it runs (vCenter, QEMU/KVM, the built-in
``sim``), but a migration needs only a few things from it, so that is all the
interface has: the inventory, a VM's disks, attaching and detaching write
capture, stopping the source VM, and creating / powering on / inspecting the
VM at the destination.  Every adapter passes the same contract suite
(``tests/platform_contract.py``).

Promises an adapter keeps (the suite checks them):

* :meth:`Platform.attach_capture` returns only once every later guest write
  is captured in the disk's ring; calling it again is harmless.  A VM that
  is powered off gets rings that are already closed (nothing will write).
* :meth:`Platform.stop_source` returns only once the guest has stopped and
  every ring ends with its CLOSE record; calling it again is harmless.  The
  source VM and its disks are left as they are (rollback).
* The destination VM can only be powered on once its shadow disks hold the
  source's CLOSE barrier (the sink enforces it; the vsphere adapter asks the
  sink before it asks vCenter).
* Rollback: :meth:`Platform.remove_destination` removes the destination VM
  but keeps the shadow vdisks, and :meth:`Platform.start_source` powers the
  source VM on again; both are harmless when repeated.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class Power(StrEnum):
    """A VM's power state."""

    ON = "on"
    OFF = "off"
    NOT_CREATED = "not-created"


@dataclass(frozen=True)
class Disk:
    """One disk of a source VM."""

    name: str
    size: int
    allocated: int
    image: Path
    ring: Path | None  # where its writes are captured, once attached
    capture_attached: bool
    capture_policy: str = ""  # vsphere: the capture storage policy on the disk ("" if none)
    backing_file: str = ""  # where the platform keeps it (vsphere: "[datastore] dir/name.vmdk")
    datastore: str = ""
    controller: str = ""  # e.g. "SCSI controller 0 (pvscsi) 0:1"


@dataclass(frozen=True)
class Nic:
    """A network adapter of a source VM."""

    label: str
    kind: str
    network: str


@dataclass(frozen=True)
class VmInfo:
    """A source VM as the platform sees it."""

    name: str
    platform: str
    power: Power
    disks: tuple[Disk, ...]
    # What the platform knows besides (empty when it does not say).
    host: str = ""
    guest_os: str = ""
    num_cpu: int = 0
    memory_mb: int = 0
    firmware: str = ""
    nics: tuple[Nic, ...] = ()


@dataclass(frozen=True)
class ShadowDisk:
    """A disk of the destination VM and the shadow vdisk that holds it."""

    name: str
    vdisk_id: str


class Platform(abc.ABC):
    """A place VMs run: the source side of a migration and its destination."""

    name: str
    # What the estimator assumes a cutover's stop and power-on take here until
    # this daemon has measured some (then it uses the medians of real cutovers).
    typical_stop_s: float = 5.0
    typical_power_on_s: float = 2.0

    @abc.abstractmethod
    async def inventory(self) -> list[VmInfo]:
        """Every VM the platform can migrate."""

    @abc.abstractmethod
    async def vm(self, name: str) -> VmInfo:
        """One VM; raises :class:`~liftshift.daemon.errors.NotFound`."""

    async def preflight(self, name: str) -> None:
        """Raise a typed error if VM ``name`` cannot be migrated (checked before a
        migration is recorded); nothing by default."""
        await self.vm(name)

    @abc.abstractmethod
    async def attach_capture(self, name: str) -> VmInfo:
        """Capture every guest write of the VM's disks into their rings."""

    @abc.abstractmethod
    async def detach_capture(self, name: str) -> None:
        """Stop capturing (a migration was aborted); the VM keeps running."""

    @abc.abstractmethod
    async def stop_source(self, name: str) -> None:
        """Stop the source VM; every ring then ends with CLOSE."""

    @abc.abstractmethod
    async def start_source(self, name: str) -> None:
        """Power the source VM on again (rollback); harmless when it runs."""

    @abc.abstractmethod
    async def create_destination(self, name: str, destination: str, migration_id: str,
                                 disks: list[ShadowDisk]) -> None:
        """Define the VM at the destination on its shadow disks (idempotent)."""

    @abc.abstractmethod
    async def power_on_destination(self, name: str, destination: str) -> None:
        """Power the destination VM on (idempotent)."""

    @abc.abstractmethod
    async def destination_power(self, name: str, destination: str) -> Power:
        """The destination VM's power state."""

    @abc.abstractmethod
    async def remove_destination(self, name: str, destination: str, migration_id: str) -> bool:
        """Remove the destination VM (rollback), keeping the shadow vdisks; False if there was none."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release what the adapter holds (connections, child processes)."""
