"""The ``vsphere`` platform: source VMs in one vCenter, shadow VMs in another.

Design note
-----------
This adapter joins three things: the two vCenters (through
:class:`~liftshift.daemon.vsphere.VsphereClient`, one per side), the
liftshift IO filter on the source hosts (through rings), and the sink at the
destination (through its Replication service, to know what the shadows hold).

Capture.  vCenter puts the IO filter on a disk through a storage policy
(``liftshift vsphere attach-filter VM``, :meth:`VspherePlatform.attach_filter`).
The filter and the daemon meet at a ring path both can compute:
``<ring_dir>/<VM instance UUID>/<device>.ring``, the device named the way the
VM's configuration does (``scsi0-1`` for scsi0:1).  Attaching capture creates a
fresh ring there and waits until the filter announces itself in the ring's
``producer`` word (it does so once every later write is published), so the
contract's promise holds: nothing written after :meth:`attach_capture`
returns escapes.  Detaching removes the ring file; the filter notices and
stops publishing.  A VM that is powered off gets a ring that is closed at once.

Reading the source.  The background copy reads each disk's flat file where
this daemon sees the datastore (``[vsphere.datastores]``: name -> directory,
e.g. ``/vmfs/volumes/<ds>`` on the host or an NFS mount); the VMDK descriptor
named by vCenter is resolved to its flat extent (:mod:`.vmdk`), refusing
sparse, delta and multi-extent disks.

Stopping the source.  Guest shutdown with a timeout, then power off (each step
logged), then wait until the filter has ended every ring with CLOSE (it does
when the VM's disks close).  A ring nobody announced on can only have been
left by an attach that never completed; the daemon closes that one itself.

Destination.  The shadow VM mirrors the source VM (CPU, memory, firmware,
NICs through ``network_map``, disks on the controllers they had) and its disk
backings are the sink's files, ``[datastore] <shadow_dir>/<vdisk id>.vmdk``:
the sink's ``data_dir`` is that directory on the destination datastore.  It is
found again by its ``liftshift.migration_id`` tag, so reruns never duplicate it.
Before powering it on, the sink is asked whether every shadow vdisk holds
the source's CLOSE barrier; until then power-on is refused.

Rollback removes the shadow VM (keeping the shadow vdisk files) and powers the
source VM on again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import grpc

from liftshift.iofilter import RingProducer, create_ring, remove_ring
from liftshift.iofilter.ring import Mapped, RingClosedError, RingError
from liftshift.v1 import replication_pb2 as rpb
from liftshift.v1 import replication_pb2_grpc

from . import channels, vmdk
from .errors import FailedPrecondition, LiftshiftError, NotFound, Unavailable, from_rpc_error
from .platform import Disk, Nic, Platform, Power, ShadowDisk, VmInfo
from .settings import VsphereConfig
from .vsphere import NotCapturable, ShadowVmSpec, VsphereClient, VsphereDisk, VsphereVm, capturable

log = logging.getLogger("liftshift.daemon.vsphere")

_POLL_S = 0.02
_BUS = {"pvscsi": "scsi", "lsilogic": "scsi", "lsilogic-sas": "scsi", "buslogic": "scsi",
        "ide": "ide", "sata": "sata", "nvme": "nvme"}


def device_name(disk: VsphereDisk) -> str:
    """The disk's device as the VM's configuration names it, file-name safe: ``scsi0-1``."""
    return f"{_BUS.get(disk.controller_kind, 'disk')}{disk.bus}-{disk.unit}"


def ring_path(ring_dir: Path, instance_uuid: str, disk: VsphereDisk) -> Path:
    """Where the IO filter and the daemon meet for ``disk``: ``<ring_dir>/<instance uuid>/<device>.ring``."""
    return ring_dir / instance_uuid / f"{device_name(disk)}.ring"


def _ring_state(path: Path) -> tuple[int, int, int] | None:
    """(producer, closed, disk_size) of a ring file, None when there is none (or it is not a ring)."""
    try:
        m = Mapped(path, writable=False)
    except (FileNotFoundError, RingError):
        return None
    try:
        return m.get("producer"), m.get("closed"), m.geometry.disk_size
    finally:
        m.close()


def _close_ring(path: Path) -> None:
    try:
        with RingProducer(path) as p:
            p.close()
    except RingClosedError:
        pass


class VspherePlatform(Platform):
    """Source VMs in one vCenter, shadow VMs in another (see the module's design note)."""

    name = "vsphere"
    typical_stop_s = 60.0
    typical_power_on_s = 10.0

    def __init__(self, cfg: VsphereConfig, max_message: int = 16 << 20) -> None:
        self.cfg = cfg
        self.source = VsphereClient(cfg.source, "source")
        self.destination = VsphereClient(cfg.destination, "destination")
        self._connected: set[str] = set()
        self._connect_lock = asyncio.Lock()
        self._vm_locks: dict[str, asyncio.Lock] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._max = max_message

    # -- plumbing -----------------------------------------------------------

    async def _client(self, which: str) -> VsphereClient:
        client = self.source if which == "source" else self.destination
        if which not in self._connected:
            async with self._connect_lock:
                if which not in self._connected:
                    await client.connect()
                    self._connected.add(which)
        return client

    def _lock(self, name: str) -> asyncio.Lock:
        return self._vm_locks.setdefault(name, asyncio.Lock())

    async def _source_vm(self, name: str) -> VsphereVm:
        src = await self._client("source")
        try:
            return await src.find_vm(name)
        except NotFound as e:
            raise NotFound(f"no VM {name!r} on the source vCenter ({self.cfg.source.url})", hint=e.hint) from None

    def _ring(self, vm: VsphereVm, d: VsphereDisk) -> Path:
        return ring_path(self.cfg.ring_dir, vm.instance_uuid, d)

    def _descriptor(self, vm: VsphereVm, d: VsphereDisk) -> Path:
        """Where this daemon reads the disk's descriptor (FailedPrecondition if its datastore is not mounted)."""
        root = self.cfg.datastores.get(d.datastore)
        if root is None:
            raise FailedPrecondition(f"disk {d.label!r} of VM {vm.name!r} is on datastore {d.datastore!r}, which "
                                     "this daemon cannot read",
                                     hint=f"add it to [vsphere.datastores] (known: "
                                          f"{', '.join(sorted(self.cfg.datastores)) or 'none'})")
        rel = d.file_name.split("]", 1)[-1].strip()
        if not rel or rel.startswith("/") or ".." in rel.split("/"):
            raise FailedPrecondition(f"disk {d.label!r} of VM {vm.name!r} has backing {d.file_name!r}, not a "
                                     "file on a datastore")
        return Path(root) / rel

    def _image_guess(self, vm: VsphereVm, d: VsphereDisk) -> Path:
        """The flat file if it can be resolved, else the descriptor's path (inventory must not fail)."""
        try:
            return vmdk.flat_file(self._descriptor(vm, d), d.capacity)
        except LiftshiftError:
            root = self.cfg.datastores.get(d.datastore, f"/unmounted/{d.datastore}")
            return Path(root) / d.file_name.split("]", 1)[-1].strip()

    def _info(self, vm: VsphereVm) -> VmInfo:
        disks = []
        for d in vm.disks:
            image = self._image_guess(vm, d)
            try:
                allocated = min(os.stat(image).st_blocks * 512, d.capacity) if image.suffix == ".vmdk" else 0
            except OSError:
                allocated = 0
            ring = self._ring(vm, d)
            state = _ring_state(ring)
            attached = state is not None and state[0] != 0 and not state[1]
            disks.append(Disk(name=device_name(d), size=d.capacity, allocated=allocated, image=image,
                              ring=ring, capture_attached=attached,
                              capture_policy=d.capture_policy or "", backing_file=d.file_name, datastore=d.datastore,
                              controller=f"{d.controller} ({d.controller_kind}) {d.bus}:{d.unit}"))
        return VmInfo(name=vm.name, platform=self.name, power=vm.power, disks=tuple(disks), host=vm.host,
                      guest_os=vm.guest_name or vm.guest_id, num_cpu=vm.num_cpu, memory_mb=vm.memory_mb,
                      firmware=vm.firmware, nics=tuple(Nic(n.label, n.kind, n.network) for n in vm.nics))

    # -- Platform: inventory ------------------------------------------------

    async def inventory(self) -> list[VmInfo]:
        src = await self._client("source")
        # Shadow VMs of earlier migrations are not sources.
        return [self._info(v) for v in await src.inventory() if v.migration_id is None]

    async def vm(self, name: str) -> VmInfo:
        return self._info(await self._source_vm(name))

    async def preflight(self, name: str) -> None:
        await self._check_migratable(await self._source_vm(name))

    async def _check_migratable(self, vm: VsphereVm) -> dict[str, Path]:
        """Every disk capturable, under the capture policy and readable; device name -> flat file."""
        images = {}
        for d in vm.disks:
            capturable(vm.name, d)  # what no policy can fix is said first
        for d in vm.disks:
            if not d.capture_attached:
                raise NotCapturable(f"disk {d.label!r} ({d.file_name}) of VM {vm.name!r} does not have the "
                                    f"liftshift capture policy, so no IO filter sees its writes",
                                    hint=f"run: liftshift vsphere attach-filter {vm.name}")
            images[device_name(d)] = await asyncio.to_thread(vmdk.flat_file, self._descriptor(vm, d), d.capacity)
        if not vm.disks:
            raise NotCapturable(f"VM {vm.name!r} has no virtual disks to migrate")
        return images

    # -- Platform: capture --------------------------------------------------

    async def attach_filter(self, name: str) -> VmInfo:
        """Assign the capture storage policy (created if missing) to every disk of VM ``name``."""
        src = await self._client("source")
        async with self._lock(name):
            vm = await self._source_vm(name)
            for d in vm.disks:
                capturable(vm.name, d)
            todo = [d.key for d in vm.disks if not d.capture_attached]
            if todo:
                policy_id = await src.ensure_policy(self.cfg.policy)
                vm = await src.assign_policy(vm, todo, policy_id)
                log.info("VM %s: storage policy %r assigned to %d disk(s)", name, self.cfg.policy, len(todo))
            return self._info(vm)

    async def attach_capture(self, name: str) -> VmInfo:
        async with self._lock(name):
            vm = await self._source_vm(name)
            await self._check_migratable(vm)
            waiting = []
            for d in vm.disks:
                path = self._ring(vm, d)
                state = _ring_state(path)
                if vm.power is Power.ON and state is not None and state[0] and not state[1] \
                        and state[2] == d.capacity:
                    continue  # attached already
                path.parent.mkdir(parents=True, exist_ok=True)
                # A ring left by an earlier migration carries its sequence and maybe
                # a CLOSE: capture always starts on a fresh one.
                remove_ring(path)
                create_ring(path, d.capacity, capacity=self.cfg.ring_capacity)
                if vm.power is Power.ON:
                    waiting.append((d, path))
                else:
                    _close_ring(path)  # nothing will write: the ring ends right away
            deadline = time.monotonic() + self.cfg.capture_wait_s
            for d, path in waiting:
                while not (_ring_state(path) or (0, 0, 0))[0]:
                    if time.monotonic() > deadline:
                        raise Unavailable(
                            f"the liftshift IO filter on host {vm.host!r} did not take ring {path} for disk "
                            f"{d.label!r} of VM {name!r} within {self.cfg.capture_wait_s:g} s",
                            hint="check that the filter is installed on the host and uses the daemon's ring_dir "
                                 f"({self.cfg.ring_dir}), and that the VM is running")
                    await asyncio.sleep(_POLL_S)
            if waiting:
                log.info("VM %s: capture attached on %d disk(s)", name, len(waiting))
            return self._info(vm)

    async def detach_capture(self, name: str) -> None:
        async with self._lock(name):
            vm = await self._source_vm(name)
            for d in vm.disks:
                remove_ring(self._ring(vm, d))  # the filter sees its ring gone and stops publishing
            log.info("VM %s: capture detached", name)

    async def stop_source(self, name: str) -> None:
        async with self._lock(name):
            src = await self._client("source")
            vm = await self._source_vm(name)
            how = await src.shutdown_guest(vm)
            log.info("VM %s: source stopped (%s); waiting for the IO filter to close its rings", name, how.value)
            deadline = time.monotonic() + self.cfg.close_wait_s
            for d in vm.disks:
                path = self._ring(vm, d)
                while True:
                    state = _ring_state(path)
                    if state is None or state[1]:
                        break
                    if not state[0]:
                        _close_ring(path)  # nobody ever announced on it: nothing can have been published
                        break
                    if time.monotonic() > deadline:
                        raise Unavailable(
                            f"VM {name!r} is powered off but the IO filter did not end ring {path} (disk "
                            f"{d.label!r}) with CLOSE within {self.cfg.close_wait_s:g} s",
                            hint="check the filter on the host; the source VM stays powered off, retry the cutover")
                    await asyncio.sleep(_POLL_S)

    async def start_source(self, name: str) -> None:
        async with self._lock(name):
            src = await self._client("source")
            await src.restart_source(await self._source_vm(name))

    # -- Platform: destination ------------------------------------------------

    async def _sink_vdisks(self, destination: str) -> dict[str, rpb.VdiskInfo]:
        ch = self._channels.get(destination)
        if ch is None:
            ch = self._channels[destination] = channels.dial(destination, self._max)
        try:
            got = await replication_pb2_grpc.ReplicationStub(ch).ListVdisks(rpb.ListVdisksRequest(), timeout=30)
        except grpc.RpcError as e:
            err = from_rpc_error(e)
            if isinstance(err, Unavailable):
                raise Unavailable(f"destination {destination} is unreachable: {err.message}",
                                  hint="check that the sink runs and its address") from None
            raise err from None
        return {v.vdisk_id: v for v in got.vdisks}

    async def _shadow(self, name: str) -> VsphereVm | None:
        dst = await self._client("destination")
        found = [v for v in await dst.inventory() if v.name == name and v.migration_id]
        if len(found) > 1:
            raise FailedPrecondition(f"{len(found)} shadow VMs are called {name!r} on the destination vCenter "
                                     f"(migrations {', '.join(str(v.migration_id) for v in found)})",
                                     hint="roll back or remove the stale ones")
        return found[0] if found else None

    async def create_destination(self, name: str, destination: str, migration_id: str,
                                 disks: list[ShadowDisk]) -> None:
        async with self._lock(name):
            vm = await self._source_vm(name)
            by_device = {device_name(d): d for d in vm.disks}
            unknown = [s.name for s in disks if s.name not in by_device]
            if unknown:
                raise NotFound(f"VM {name!r} has no disk {unknown[0]!r}", hint=f"its disks: {', '.join(by_device)}")
            have = await self._sink_vdisks(destination)
            for s in disks:
                info = have.get(s.vdisk_id)
                if info is None or info.size_bytes != by_device[s.name].capacity:
                    raise FailedPrecondition(f"the sink at {destination} has no shadow vdisk {s.vdisk_id!r} of "
                                             f"{by_device[s.name].capacity} bytes for disk {s.name} of VM {name!r}")
            spec = ShadowVmSpec.mirror(vm, migration_id, {by_device[s.name].key: s.vdisk_id for s in disks})
            dst = await self._client("destination")
            shadow = await dst.create_shadow_vm(spec)
            log.info("VM %s: shadow VM %s defined on the destination vCenter (%d disk(s))", name, shadow.moid,
                     len(disks))

    async def power_on_destination(self, name: str, destination: str) -> None:
        async with self._lock(name):
            shadow = await self._shadow(name)
            if shadow is None:
                raise NotFound(f"no shadow VM {name!r} on the destination vCenter ({self.cfg.destination.url})",
                               hint="the cutover defines it first")
            have = await self._sink_vdisks(destination)
            for d in shadow.disks:
                vid = Path(d.file_name.split("]", 1)[-1].strip()).name.removesuffix(".vmdk")
                info = have.get(vid)
                if info is None or not info.closed:
                    raise FailedPrecondition(
                        f"shadow vdisk {vid} of VM {name!r} does not hold the source's CLOSE barrier yet: the "
                        "source may still be writing", hint="power-on comes after the cutover drained every disk")
            dst = await self._client("destination")
            await dst.power_on(shadow)

    async def destination_power(self, name: str, destination: str) -> Power:
        await self._sink_vdisks(destination)  # the sink must answer as well
        shadow = await self._shadow(name)
        if shadow is None:
            return Power.NOT_CREATED
        return await (await self._client("destination")).state(shadow)

    async def remove_destination(self, name: str, destination: str, migration_id: str) -> bool:
        async with self._lock(name):
            dst = await self._client("destination")
            return await dst.remove_shadow_vm(migration_id)

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
        for which in list(self._connected):
            await (self.source if which == "source" else self.destination).close()
        self._connected.clear()
