"""The ``sim`` platform: VMs whose guest is a ``liftshift-workload`` process.

Design note
-----------
A sim VM is defined in the daemon's configuration (``[[sim.vm]]``): disks
with sizes and image files, and a workload.  Powering it on starts the
guest (:mod:`liftshift.iofilter.guest`) in its own session, so like a real
VM it keeps running when the daemon restarts; its pid is kept in
``<sim.dir>/<vm>/guest.pid`` and checked against ``/proc`` (pids are reused).

Capture: the guest is started with its rings named but detached; attaching
creates fresh rings and sends SIGUSR1, and returns once the guest's status
file says the switch happened (it switches between operations, so every
later write is captured).  Stopping sends SIGTERM: the guest finishes its
operation, appends CLOSE to every ring and exits.  If it has to be killed,
the platform appends the CLOSE itself (the guest was the only producer).
A VM that is powered off gets rings that are closed at once.

The destination is a liftshift sink: its Destination service defines the VM
on the shadow vdisks and runs the same workload against them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import grpc

from liftshift.iofilter import RingProducer, create_ring, remove_ring
from liftshift.iofilter.ring import RingClosedError
from liftshift.sink.destination import guest_command, pid_alive, pid_exists, reap, spawn_guest, stop_guest
from liftshift.v1 import common_pb2, destination_pb2_grpc
from liftshift.v1 import destination_pb2 as dpb

from . import channels
from .errors import FailedPrecondition, LiftshiftError, NotFound, Unavailable, from_rpc_error
from .platform import Disk, Platform, Power, ShadowDisk, VmInfo
from .settings import SimConfig, SimVm

log = logging.getLogger("liftshift.daemon.sim")

MARKER = "liftshift.iofilter.guest"
_ATTACH_WAIT_S = 10.0
_FILL_PIECE = 1 << 20


def allocated_bytes(path: Path) -> int:
    """Bytes a (sparse) file really holds."""
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def create_image(path: Path, size: int, fill: int, seed: int) -> None:
    """A sparse image of ``size`` with ``fill`` bytes of data spread evenly.

    Each 1 MiB piece is a different window of one random buffer, stamped with
    its index: every piece differs (a misplaced one shows in any comparison)
    and creating gigabytes costs memcpy, not a random generator.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    base = random.Random(seed).randbytes(8 * _FILL_PIECE)
    span = len(base) - _FILL_PIECE
    with open(tmp, "wb") as f:
        f.truncate(size)
        pieces = min(fill // _FILL_PIECE, size // _FILL_PIECE)
        if pieces:
            stride = size // pieces // _FILL_PIECE * _FILL_PIECE
            for i in range(pieces):
                start = (i * 4104) % span
                piece = bytearray(base[start : start + _FILL_PIECE])
                piece[:16] = i.to_bytes(8, "little") + seed.to_bytes(8, "little", signed=True)
                os.pwrite(f.fileno(), piece, i * stride)
        os.fsync(f.fileno())
    os.replace(tmp, path)


class DestinationClient:
    """Calls a sink's Destination service (one channel per address)."""

    def __init__(self, max_message: int) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._max = max_message

    def _stub(self, address: str) -> destination_pb2_grpc.DestinationStub:
        ch = self._channels.get(address)
        if ch is None:
            ch = self._channels[address] = channels.dial(address, self._max)
        return destination_pb2_grpc.DestinationStub(ch)

    async def call(self, address: str, method: str, request: Any, timeout: float = 30) -> Any:
        try:
            return await getattr(self._stub(address), method)(request, timeout=timeout)  # type: ignore[no-any-return]
        except grpc.RpcError as e:
            err = from_rpc_error(e)
            if isinstance(err, Unavailable):
                raise Unavailable(f"destination {address} is unreachable: {err.message}",
                                  hint="check that the sink runs and its address") from None
            raise err from None

    async def power_on(self, address: str, vm: str) -> None:
        await self.call(address, "PowerOnVm", dpb.DestinationVmRef(vm=vm))

    async def power(self, address: str, vm: str) -> Power:
        """The VM's power state at the sink (NOT_CREATED when it is not defined there)."""
        try:
            got = await self.call(address, "GetVm", dpb.DestinationVmRef(vm=vm))
        except NotFound:
            return Power.NOT_CREATED
        return {common_pb2.POWER_STATE_POWERED_ON: Power.ON,
                common_pb2.POWER_STATE_POWERED_OFF: Power.OFF}.get(got.power_state, Power.NOT_CREATED)

    async def remove(self, address: str, vm: str, migration_id: str) -> bool:
        """Rollback: forget the VM at the sink (shadows kept); False if it was not defined."""
        try:
            await self.call(address, "RemoveVm", dpb.RemoveVmRequest(vm=vm, migration_id=migration_id))
        except NotFound:
            return False
        return True

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()


class SimPlatform(Platform):
    """VMs defined in ``[sim]``; guests are local processes."""

    name = "sim"
    typical_stop_s = 0.05
    typical_power_on_s = 0.05

    def __init__(self, cfg: SimConfig, sim_dir: Path, max_message: int = 16 << 20) -> None:
        self.cfg = cfg
        self.dir = sim_dir
        self.vms = {v.name: v for v in cfg.vm}
        self.destinations = DestinationClient(max_message)
        self._locks = {name: asyncio.Lock() for name in self.vms}

    # -- paths and process --------------------------------------------------------

    def _vm(self, name: str) -> SimVm:
        vm = self.vms.get(name)
        if vm is None:
            raise NotFound(f"no VM {name!r} on platform sim",
                           hint=f"known VMs: {', '.join(sorted(self.vms)) or 'none'}")
        return vm

    def _vm_dir(self, vm: SimVm) -> Path:
        return self.dir / vm.name

    def image(self, vm: SimVm, i: int) -> Path:
        d = vm.disks[i]
        return d.image if d.image is not None else self._vm_dir(vm) / f"{d.name}.img"

    def ring(self, vm: SimVm, i: int) -> Path:
        return self.cfg.ring_dir / vm.name / f"{vm.disks[i].name}.ring"

    def _pid(self, vm: SimVm) -> int:
        try:
            return int((self._vm_dir(vm) / "guest.pid").read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def _status(self, vm: SimVm) -> dict[str, Any]:
        try:
            return json.loads((self._vm_dir(vm) / "status.json").read_text())  # type: ignore[no-any-return]
        except (FileNotFoundError, ValueError):
            return {}

    def running(self, vm: SimVm) -> bool:
        """The guest runs and has not reported that it stopped."""
        pid = self._pid(vm)
        if not pid_alive(pid, MARKER):
            return False
        st = self._status(vm)
        return not (st.get("pid") == pid and st.get("running") is False)

    def _attached(self, vm: SimVm) -> bool:
        st = self._status(vm)
        return bool(self.running(vm) and st.get("pid") == self._pid(vm) and st.get("attached"))

    def guest_spec(self, vm: SimVm) -> common_pb2.GuestSpec:
        w = vm.workload
        return common_pb2.GuestSpec(sim=common_pb2.SimGuest(rate_ops=w.rate_ops, block_size=w.block_size,
                                                            working_set_bytes=w.working_set,
                                                            read_fraction=w.read_fraction, seed=w.seed,
                                                            boot_digest=w.boot_digest))

    # -- power --------------------------------------------------------------

    async def power_on(self, name: str) -> None:
        """Start the VM's guest (creating its images on first use)."""
        vm = self._vm(name)
        async with self._locks[name]:
            if self.running(vm):
                return
            for i, d in enumerate(vm.disks):
                path = self.image(vm, i)
                if not path.exists():
                    await asyncio.to_thread(create_image, path, d.size, d.fill, vm.workload.seed * 1000 + i)
                elif path.stat().st_size != d.size:
                    raise FailedPrecondition(f"VM {name}: image {path} is {path.stat().st_size} bytes, the "
                                             f"configuration says {d.size}")
            vdir = self._vm_dir(vm)
            vdir.mkdir(parents=True, exist_ok=True)
            (vdir / "status.json").unlink(missing_ok=True)
            rings = [str(self.ring(vm, i)) for i in range(len(vm.disks))]
            cmd = guest_command([str(self.image(vm, i)) for i in range(len(vm.disks))], self.guest_spec(vm).sim,
                                vdir / "status.json", rings=rings, attach="signal")
            pid = spawn_guest(cmd, vdir / "guest.log")
            (vdir / "guest.pid").write_text(f"{pid}\n")
            # Wait for the guest to be up: signals sent before it installs its
            # handlers would kill it.
            await self._wait_status(vm, lambda st: st.get("pid") == pid, "start")
            log.info("sim VM %s powered on (guest pid %d)", name, pid)

    async def _wait_status(self, vm: SimVm, ok: Any, what: str) -> None:
        deadline = time.monotonic() + _ATTACH_WAIT_S
        pid = self._pid(vm)
        while not ok(self._status(vm)):
            reap(pid)
            if not pid_exists(pid):
                raise FailedPrecondition(f"VM {vm.name}: the guest exited during {what}",
                                         hint=f"see {self._vm_dir(vm) / 'guest.log'}")
            if time.monotonic() > deadline:
                raise LiftshiftError(f"VM {vm.name}: the guest did not {what} within {_ATTACH_WAIT_S:.0f}s")
            await asyncio.sleep(0.01)

    async def power_on_all(self) -> None:
        """Power on every VM configured with ``power_on`` (daemon start)."""
        for vm in self.vms.values():
            if vm.power_on:
                await self.power_on(vm.name)

    # -- Platform -------------------------------------------------------------

    async def inventory(self) -> list[VmInfo]:
        return [await self.vm(name) for name in self.vms]

    async def vm(self, name: str) -> VmInfo:
        vm = self._vm(name)
        attached = self._attached(vm)
        disks = tuple(Disk(name=d.name, size=d.size, allocated=allocated_bytes(self.image(vm, i)),
                           image=self.image(vm, i), ring=self.ring(vm, i), capture_attached=attached)
                      for i, d in enumerate(vm.disks))
        return VmInfo(name=name, platform=self.name, power=Power.ON if self.running(vm) else Power.OFF, disks=disks)

    async def attach_capture(self, name: str) -> VmInfo:
        vm = self._vm(name)
        async with self._locks[name]:
            if not self._attached(vm):
                running = self.running(vm)
                for i, d in enumerate(vm.disks):
                    ring = self.ring(vm, i)
                    ring.parent.mkdir(parents=True, exist_ok=True)
                    # A ring left by an earlier migration carries its sequence and
                    # maybe a CLOSE: capture always starts on a fresh one.
                    remove_ring(ring)
                    create_ring(ring, d.size, capacity=self.cfg.ring_capacity)
                    if not running:
                        with RingProducer(ring) as p:
                            p.close()  # nothing will write: the ring ends right away
                if running:
                    os.kill(self._pid(vm), signal.SIGUSR1)
                    await self._wait_status(vm, lambda st: st.get("attached") is True, "attach capture")
                    log.info("sim VM %s: capture attached", name)
        return await self.vm(name)

    async def detach_capture(self, name: str) -> None:
        vm = self._vm(name)
        async with self._locks[name]:
            if self._attached(vm):
                os.kill(self._pid(vm), signal.SIGUSR2)
                await self._wait_status(vm, lambda st: st.get("attached") is False, "detach capture")

    async def stop_source(self, name: str) -> None:
        vm = self._vm(name)
        async with self._locks[name]:
            await stop_guest(self._pid(vm), MARKER, status=self._vm_dir(vm) / "status.json")
            # Normally the guest closed its rings; after a kill, close them for it.
            for i in range(len(vm.disks)):
                ring = self.ring(vm, i)
                if ring.exists():
                    try:
                        with RingProducer(ring) as p:
                            p.close()
                    except RingClosedError:
                        pass
            log.info("sim VM %s stopped", name)

    async def create_destination(self, name: str, destination: str, migration_id: str,
                                 disks: list[ShadowDisk]) -> None:
        vm = self._vm(name)
        req = dpb.PrepareVmRequest(vm=name, migration_id=migration_id, guest=self.guest_spec(vm),
                                   disks=[dpb.DestinationDiskRef(name=d.name, vdisk_id=d.vdisk_id) for d in disks])
        await self.destinations.call(destination, "PrepareVm", req)

    async def power_on_destination(self, name: str, destination: str) -> None:
        await self.destinations.power_on(destination, name)

    async def destination_power(self, name: str, destination: str) -> Power:
        return await self.destinations.power(destination, name)

    async def start_source(self, name: str) -> None:
        await self.power_on(name)

    async def remove_destination(self, name: str, destination: str, migration_id: str) -> bool:
        return await self.destinations.remove(destination, name, migration_id)

    async def power_off_all(self) -> None:
        """Stop every running sim VM (``stop_vms_on_exit``); rings get their CLOSE."""
        for name in self.vms:
            await self.stop_source(name)

    async def close(self) -> None:
        if self.cfg.stop_vms_on_exit:
            await self.power_off_all()
        await self.destinations.close()
