"""The ``qemu`` platform: QEMU/KVM VMs whose disks are served through ``liftshift-nbd``.

Design note
-----------
A VM is defined in the daemon's configuration (``[[qemu.vm]]``: memory, a
kernel or a boot disk, its disks).  Powering it on starts one
``liftshift-nbd`` per disk on a Unix socket (``<qemu.dir>/<vm>/<disk>.sock``)
and then QEMU, whose virtio drives are those exports, with a QMP socket and
its serial console in a file.  Every process runs in its own session, so
like a real VM it outlives a daemon restart; pids are kept beside the
sockets and checked against ``/proc`` (pids are reused).  A ``headless`` VM
is only its NBD servers: the writes come from NBD clients (qemu-io, fio, a
QEMU run elsewhere).

Capture: each ``liftshift-nbd`` runs with ``--ring-watch <ring>``, the way a
filter put on a disk by policy behaves: attaching capture creates a fresh
ring at ``<ring_dir>/<vm>/<disk>.ring`` and waits until the server announces
in it (``producer``) that every later write is published.  Detaching removes
the ring; the server notices and stops publishing.  A powered-off VM gets a
ring that is closed at once.

Stopping at cutover: the ACPI power button (QMP ``system_powerdown``), up to
``powerdown_timeout_s`` for the guest to shut down, then QMP ``quit``; once
QEMU is gone, SIGTERM to the NBD servers, which finish every request they
read and append CLOSE (``--close-on-exit``).  A ring still open after that
(its server was killed, or never announced) has no producer left, so the
platform closes it itself.

The destination is a liftshift sink: its Destination service starts QEMU on
the shadow flat files with the same memory, kernel and command line
(:class:`~liftshift.v1.common_pb2.QemuGuest`; the kernel paths must exist on
the sink's host).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

from liftshift.iofilter import RingProducer, create_ring, remove_ring
from liftshift.iofilter.ring import Mapped, RingClosedError, RingError
from liftshift.sink.destination import pid_alive, pid_exists, reap, spawn_guest
from liftshift.v1 import common_pb2
from liftshift.v1 import destination_pb2 as dpb

from . import qemu
from .errors import FailedPrecondition, LiftshiftError, NotFound, Unavailable
from .platform import Disk, Platform, Power, ShadowDisk, VmInfo
from .settings import QemuConfig, QemuVm
from .sim import DestinationClient, allocated_bytes

log = logging.getLogger("liftshift.daemon.qemu")

NBD_MARKER = "liftshift.iofilter.nbd"
_POLL_S = 0.02
_START_WAIT_S = 30.0


def _ring_state(path: Path) -> tuple[int, int] | None:
    """(producer, closed) of a ring file, None when there is none."""
    try:
        m = Mapped(path, writable=False)
    except (FileNotFoundError, RingError):
        return None
    try:
        return m.get("producer"), m.get("closed")
    finally:
        m.close()


def _pid(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return 0


class QemuPlatform(Platform):
    """VMs defined in ``[qemu]`` (see the module's design note)."""

    name = "qemu"
    typical_stop_s = 10.0
    typical_power_on_s = 0.5

    def __init__(self, cfg: QemuConfig, qemu_dir: Path, max_message: int = 16 << 20) -> None:
        self.cfg = cfg
        self.dir = qemu_dir
        self.vms = {v.name: v for v in cfg.vm}
        self.destinations = DestinationClient(max_message)
        self._locks = {name: asyncio.Lock() for name in self.vms}

    # -- paths and processes ---------------------------------------------------------

    def _vm(self, name: str) -> QemuVm:
        vm = self.vms.get(name)
        if vm is None:
            raise NotFound(f"no VM {name!r} on platform qemu",
                           hint=f"known VMs: {', '.join(sorted(self.vms)) or 'none'}")
        return vm

    def vm_dir(self, vm: QemuVm) -> Path:
        return self.dir / vm.name

    def socket(self, vm: QemuVm, disk: str) -> Path:
        """The Unix socket of a disk's NBD export (what QEMU, or any NBD client, opens)."""
        return self.vm_dir(vm) / f"{disk}.sock"

    def ring(self, vm: QemuVm, disk: str) -> Path:
        return self.cfg.ring_dir / vm.name / f"{disk}.ring"

    def console(self, vm: QemuVm) -> Path:
        """The guest's serial console (a file)."""
        return self.vm_dir(vm) / "console.log"

    def _qemu_pid(self, vm: QemuVm) -> int:
        return _pid(self.vm_dir(vm) / "qemu.pid")

    def _nbd_pids(self, vm: QemuVm) -> list[int]:
        return [_pid(self.vm_dir(vm) / f"{d.name}.nbd.pid") for d in vm.disks]

    def running(self, vm: QemuVm) -> bool:
        """QEMU runs (headless: every NBD server runs)."""
        if vm.headless:
            return all(pid_alive(p, NBD_MARKER) for p in self._nbd_pids(vm))
        return pid_alive(self._qemu_pid(vm), qemu.MARKER)

    def accel(self) -> str:
        return qemu.accel(self.cfg.accel, self.cfg.binary)

    # -- power ------------------------------------------------------------------

    async def power_on(self, name: str) -> None:
        """Start the VM: its NBD servers, then QEMU (creating missing images)."""
        vm = self._vm(name)
        async with self._locks[name]:
            if self.running(vm):
                return
            vdir = self.vm_dir(vm)
            vdir.mkdir(parents=True, exist_ok=True)
            for sock in [vdir / "qmp.sock", *(self.socket(vm, d.name) for d in vm.disks)]:
                qemu.check_socket_path(sock)
            for d in vm.disks:
                if not d.image.exists():
                    if not d.size:
                        raise FailedPrecondition(f"VM {name}: image {d.image} of disk {d.name} does not exist",
                                                 hint="create it, or give the disk a size to create it empty")
                    d.image.parent.mkdir(parents=True, exist_ok=True)
                    with open(d.image, "wb") as f:
                        f.truncate(d.size)
                pid = _pid(vdir / f"{d.name}.nbd.pid")
                if pid_alive(pid, NBD_MARKER):
                    continue
                await self._start_nbd(vm, d.name, d.image)
            if vm.headless:
                log.info("qemu VM %s (headless) powered on: disks served on %s", name,
                         ", ".join(str(self.socket(vm, d.name)) for d in vm.disks))
                return
            qmp = vdir / "qmp.sock"
            qmp.unlink(missing_ok=True)
            cmd = qemu.command(binary=self.cfg.binary, accel_name=self.accel(), memory_mb=vm.memory_mb,
                               drives=[qemu.drive(self.socket(vm, d.name), nbd_socket=True) for d in vm.disks],
                               console=self.console(vm), qmp_socket=qmp, kernel=vm.kernel, initrd=vm.initrd,
                               append=vm.append, extra=vm.extra_args)
            self.console(vm).unlink(missing_ok=True)
            pid = spawn_guest(cmd, vdir / "qemu.log")
            (vdir / "qemu.pid").write_text(f"{pid}\n")
            deadline = time.monotonic() + _START_WAIT_S
            while not qmp.exists():
                reap(pid)
                # pid_exists, not pid_alive: our unreaped child cannot be another process, and
                # right after spawning its command line may still read empty (exec not finished).
                if not pid_exists(pid):
                    raise FailedPrecondition(f"VM {name}: QEMU exited at start",
                                             hint=f"see {vdir / 'qemu.log'}: {_tail(vdir / 'qemu.log')}")
                if time.monotonic() > deadline:
                    raise LiftshiftError(f"VM {name}: QEMU did not open its QMP socket within {_START_WAIT_S:g} s")
                await asyncio.sleep(_POLL_S)
            log.info("qemu VM %s powered on (QEMU pid %d, %s)", name, pid, self.accel())

    async def _start_nbd(self, vm: QemuVm, disk: str, image: Path) -> None:
        vdir = self.vm_dir(vm)
        sock, ready = self.socket(vm, disk), vdir / f"{disk}.nbd.ready"
        sock.unlink(missing_ok=True)
        ready.unlink(missing_ok=True)
        self.ring(vm, disk).parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "liftshift.iofilter.nbd",
               "--image", str(image), "--unix", str(sock), "--ring-watch", str(self.ring(vm, disk)),
               "--close-on-exit", "--port-file", str(ready)]
        pid = spawn_guest(cmd, vdir / f"{disk}.nbd.log")
        (vdir / f"{disk}.nbd.pid").write_text(f"{pid}\n")
        deadline = time.monotonic() + _START_WAIT_S
        while not ready.exists():
            reap(pid)
            if not pid_exists(pid):  # just spawned: see power_on
                raise FailedPrecondition(f"VM {vm.name}: liftshift-nbd of disk {disk} exited at start",
                                         hint=_tail(vdir / f"{disk}.nbd.log"))
            if time.monotonic() > deadline:
                raise LiftshiftError(f"VM {vm.name}: liftshift-nbd of disk {disk} did not start within "
                                     f"{_START_WAIT_S:g} s")
            await asyncio.sleep(_POLL_S)

    async def power_on_all(self) -> None:
        """Power on every VM configured with ``power_on`` (daemon start)."""
        for vm in self.vms.values():
            if vm.power_on:
                await self.power_on(vm.name)

    # -- Platform -----------------------------------------------------------------

    async def inventory(self) -> list[VmInfo]:
        return [await self.vm(name) for name in self.vms]

    async def vm(self, name: str) -> VmInfo:
        vm = self._vm(name)
        disks = []
        for d in vm.disks:
            try:
                size = d.image.stat().st_size
            except FileNotFoundError:
                size = d.size
            state = _ring_state(self.ring(vm, d.name))
            disks.append(Disk(name=d.name, size=size, allocated=allocated_bytes(d.image), image=d.image,
                              ring=self.ring(vm, d.name), capture_attached=bool(state and state[0] and not state[1]),
                              backing_file=str(d.image), controller="virtio-blk via liftshift-nbd"))
        return VmInfo(name=name, platform=self.name, power=Power.ON if self.running(vm) else Power.OFF,
                      disks=tuple(disks), memory_mb=0 if vm.headless else vm.memory_mb,
                      guest_os="(headless: NBD clients)" if vm.headless else "")

    async def attach_capture(self, name: str) -> VmInfo:
        vm = self._vm(name)
        async with self._locks[name]:
            running = self.running(vm)
            waiting = []
            for d in vm.disks:
                path = self.ring(vm, d.name)
                state = _ring_state(path)
                if running and state is not None and state[0] and not state[1]:
                    continue  # attached already
                size = d.image.stat().st_size if d.image.exists() else d.size
                path.parent.mkdir(parents=True, exist_ok=True)
                # A ring left by an earlier migration carries its sequence and maybe a
                # CLOSE: capture always starts on a fresh one.
                remove_ring(path)
                create_ring(path, size, capacity=self.cfg.ring_capacity)
                if running:
                    waiting.append(path)
                else:
                    _close(path)  # nothing will write: the ring ends right away
            deadline = time.monotonic() + self.cfg.capture_wait_s
            for path in waiting:
                while not (_ring_state(path) or (0, 0))[0]:
                    if time.monotonic() > deadline:
                        raise Unavailable(f"liftshift-nbd of VM {name} did not take ring {path} within "
                                          f"{self.cfg.capture_wait_s:g} s", hint=f"see {self.vm_dir(vm)}/*.nbd.log")
                    await asyncio.sleep(_POLL_S)
            if waiting:
                log.info("qemu VM %s: capture attached on %d disk(s)", name, len(waiting))
        return await self.vm(name)

    async def detach_capture(self, name: str) -> None:
        vm = self._vm(name)
        async with self._locks[name]:
            for d in vm.disks:
                remove_ring(self.ring(vm, d.name))  # the NBD server sees it gone and stops publishing

    async def stop_source(self, name: str) -> None:
        vm = self._vm(name)
        async with self._locks[name]:
            vdir = self.vm_dir(vm)
            pid = self._qemu_pid(vm)
            if not vm.headless and pid_alive(pid, qemu.MARKER):
                log.info("qemu VM %s: ACPI power button (guest shutdown, up to %g s)", name,
                         self.cfg.powerdown_timeout_s)
                try:
                    await qemu.qmp(vdir / "qmp.sock", "system_powerdown")
                except LiftshiftError as e:
                    log.warning("qemu VM %s: system_powerdown failed: %s", name, e)
                if not await _wait_gone(pid, qemu.MARKER, self.cfg.powerdown_timeout_s):
                    log.warning("qemu VM %s: the guest did not shut down within %g s: quitting QEMU", name,
                                self.cfg.powerdown_timeout_s)
                    try:
                        await qemu.qmp(vdir / "qmp.sock", "quit")
                    except LiftshiftError:
                        pass
                    if not await _wait_gone(pid, qemu.MARKER, 10.0):
                        os.kill(pid, signal.SIGKILL)
                        await _wait_gone(pid, qemu.MARKER, 10.0)
                log.info("qemu VM %s: QEMU stopped", name)
            for npid in self._nbd_pids(vm):
                if pid_alive(npid, NBD_MARKER):
                    os.kill(npid, signal.SIGTERM)  # answers what it read, appends CLOSE, exits
            for npid in self._nbd_pids(vm):
                if not await _wait_gone(npid, NBD_MARKER, 30.0):
                    os.kill(npid, signal.SIGKILL)
                    await _wait_gone(npid, NBD_MARKER, 10.0)
            # No producer is left: a ring still open can be closed here.
            for d in vm.disks:
                path = self.ring(vm, d.name)
                state = _ring_state(path)
                if state is not None and not state[1]:
                    _close(path)
            log.info("qemu VM %s stopped; every ring ends with CLOSE", name)

    async def start_source(self, name: str) -> None:
        await self.power_on(name)

    def guest_spec(self, vm: QemuVm) -> common_pb2.GuestSpec:
        return common_pb2.GuestSpec(qemu=common_pb2.QemuGuest(
            memory_mb=vm.memory_mb, kernel=vm.kernel, initrd=vm.initrd, append=vm.append,
            extra_args=vm.extra_args, accel=self.cfg.accel, headless=vm.headless, binary=self.cfg.binary))

    async def create_destination(self, name: str, destination: str, migration_id: str,
                                 disks: list[ShadowDisk]) -> None:
        vm = self._vm(name)
        order = {d.name: i for i, d in enumerate(vm.disks)}
        ordered = sorted(disks, key=lambda s: order.get(s.name, len(order)))
        req = dpb.PrepareVmRequest(vm=name, migration_id=migration_id, guest=self.guest_spec(vm),
                                   disks=[dpb.DestinationDiskRef(name=d.name, vdisk_id=d.vdisk_id) for d in ordered])
        await self.destinations.call(destination, "PrepareVm", req)

    async def power_on_destination(self, name: str, destination: str) -> None:
        await self.destinations.power_on(destination, name)

    async def destination_power(self, name: str, destination: str) -> Power:
        return await self.destinations.power(destination, name)

    async def remove_destination(self, name: str, destination: str, migration_id: str) -> bool:
        return await self.destinations.remove(destination, name, migration_id)

    async def power_off_all(self) -> None:
        """Stop every running VM (``stop_vms_on_exit``); rings get their CLOSE."""
        for name in self.vms:
            await self.stop_source(name)

    async def close(self) -> None:
        if self.cfg.stop_vms_on_exit:
            await self.power_off_all()
        await self.destinations.close()


def _close(path: Path) -> None:
    try:
        with RingProducer(path) as p:
            p.close()
    except RingClosedError:
        pass


async def _wait_gone(pid: int, marker: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid, marker):
        reap(pid)
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(_POLL_S)
    return True


def _tail(path: Path, n: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return ""
