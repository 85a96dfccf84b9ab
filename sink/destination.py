"""The Destination service: the shadow VM at the destination.

Design note
-----------
A migrated VM is defined at the destination on its shadow vdisks
(:meth:`DestinationServicer.PrepareVm`), and powered on once cutover has
proven the disks identical.  The sink refuses to power a VM on while any of
its shadows lacks the durable CLOSE barrier: the source may still be
writing, and a VM running on a shadow that is still being replicated would
be split-brain.

Each VM's definition is a small JSON file under ``<state_dir>/vms/``
(written atomically), so it survives sink restarts.  What "powering on"
means is the guest kind's business; the built-in ``sim`` guest is a
``liftshift-workload`` process writing the shadow flat files directly (no
capture at the destination), started in its own session so it keeps
running across sink restarts, like a VM would, unless ``stop_vms_on_exit``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from liftshift.daemon import qemu
from liftshift.daemon.errors import FailedPrecondition, InvalidArgument, NotFound
from liftshift.v1 import common_pb2, destination_pb2_grpc
from liftshift.v1 import destination_pb2 as dpb

from .registry import VdiskRegistry
from .shadow import check_migration_id, check_vdisk_id

log = logging.getLogger("liftshift.sink.destination")

SERVICE_NAME = dpb.DESCRIPTOR.services_by_name["Destination"].full_name
_STOP_WAIT_S = 10.0
_QEMU_SETTLE_S = 0.3


def pid_exists(pid: int) -> bool:
    """True when ``pid`` is a process that has not exited (a zombie has)."""
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def pid_alive(pid: int, marker: str) -> bool:
    """True when ``pid`` runs and its command line contains ``marker`` (pids get
    reused).  A process started a moment ago may not show its command line
    yet: callers that just spawned it use :func:`pid_exists`."""
    if not pid_exists(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return marker.encode() in cmdline


def guest_command(disks: list[str], guest: common_pb2.SimGuest, status: Path, rings: list[str] | None = None,
                  attach: str = "now") -> list[str]:
    """The ``liftshift-workload`` command line of a sim guest."""
    cmd = [sys.executable, "-m", "liftshift.iofilter.guest"]
    for d in disks:
        cmd += ["--disk", d]
    for r in rings or []:
        cmd += ["--ring", r]
    if rings:
        cmd += ["--attach", attach]
    cmd += ["--rate", repr(guest.rate_ops), "--block-size", str(guest.block_size or 4096),
            "--working-set", str(guest.working_set_bytes), "--read-fraction", repr(guest.read_fraction),
            "--seed", str(guest.seed), "--status", str(status)]
    if guest.boot_digest:
        cmd.append("--boot-digest")
    return cmd


def spawn_guest(cmd: list[str], log_path: Path) -> int:
    """Start a guest in its own session (it outlives its parent, like a VM)."""
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                                close_fds=True)
    return proc.pid


def _stopped(status: Path | None, pid: int) -> bool:
    if status is None:
        return False
    try:
        st = json.loads(status.read_text())
    except (OSError, ValueError):
        return False
    return bool(st.get("pid") == pid and st.get("running") is False)


async def stop_guest(pid: int, marker: str, timeout: float = _STOP_WAIT_S, status: Path | None = None) -> None:
    """SIGTERM the guest and wait until it has stopped writing: its status file
    says so, or it has exited (SIGKILL after ``timeout``)."""
    if not pid_alive(pid, marker):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while pid_alive(pid, marker) and not _stopped(status, pid):
        reap(pid)
        if time.monotonic() > deadline:
            log.warning("guest %d did not stop within %.0fs: killing it", pid, timeout)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
        await asyncio.sleep(0.002)
    reap(pid)


def reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child (started by an earlier run): init reaps it


class DestinationServicer(destination_pb2_grpc.DestinationServicer):
    """liftshift.v1.Destination over the sink's shadows."""

    MARKER = "liftshift.iofilter.guest"

    def __init__(self, registry: VdiskRegistry, vm_dir: Path) -> None:
        self.registry = registry
        self.dir = vm_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = asyncio.Lock()

    # -- records ------------------------------------------------------------

    def _path(self, vm: str) -> Path:
        return self.dir / f"{check_vdisk_id(vm)}.json"

    def _load(self, vm: str) -> dict[str, Any]:
        if not vm:
            raise InvalidArgument("vm is required")
        try:
            return json.loads(self._path(vm).read_text())  # type: ignore[no-any-return]
        except FileNotFoundError:
            raise NotFound(f"VM {vm!r} is not defined at this destination", hint="PrepareVm first") from None

    def _save(self, rec: dict[str, Any]) -> None:
        path = self._path(rec["vm"])
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(rec))
        os.replace(tmp, path)

    def _running(self, rec: dict[str, Any]) -> bool:
        if rec.get("marker") == "headless":
            return bool(rec.get("powered_on_at")) and not rec.get("powered_off")
        return pid_alive(int(rec.get("pid", 0)), rec.get("marker", self.MARKER))

    async def _stop(self, rec: dict[str, Any]) -> None:
        if rec.get("marker") == "headless":
            rec["powered_off"] = True
            self._save(rec)
            return
        await stop_guest(int(rec.get("pid", 0)), rec.get("marker", self.MARKER))

    def _start_qemu(self, guest: common_pb2.QemuGuest, disks: list[str], vm_dir: Path) -> int:
        """QEMU on the shadow flat files; 0 for a headless VM (its disks are all there is)."""
        if guest.headless:
            return 0
        binary = guest.binary or "qemu-system-x86_64"
        cmd = qemu.command(binary=binary, accel_name=qemu.accel(guest.accel or "auto", binary),
                           memory_mb=guest.memory_mb or 512, drives=[qemu.drive(p) for p in disks],
                           console=vm_dir / "console.log", kernel=guest.kernel, initrd=guest.initrd,
                           append=guest.append, extra=list(guest.extra_args))
        (vm_dir / "console.log").unlink(missing_ok=True)
        pid = spawn_guest(cmd, vm_dir / "qemu.log")
        # QEMU refuses bad arguments at once: say so instead of reporting a running VM.
        time.sleep(_QEMU_SETTLE_S)
        reap(pid)
        if not pid_exists(pid):  # our child, just spawned: its command line may not show yet
            tail = (vm_dir / "qemu.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise FailedPrecondition(f"QEMU exited at start: {' | '.join(tail)}", hint=f"see {vm_dir / 'qemu.log'}")
        return pid

    async def _describe(self, rec: dict[str, Any]) -> dpb.DestinationVm:
        disks = []
        for d in rec["disks"]:
            try:
                shadow = await self.registry.get(d["vdisk_id"])
                row = shadow.row
                closed = shadow.applier.closed if shadow.applier else row.closed
                disks.append(dpb.DestinationDisk(name=d["name"], vdisk_id=d["vdisk_id"], size_bytes=row.size_bytes,
                                                 flat_path=str(row.flat_path),
                                                 descriptor_path=str(row.descriptor_path), closed=closed))
            except NotFound:
                disks.append(dpb.DestinationDisk(name=d["name"], vdisk_id=d["vdisk_id"]))
        if self._running(rec):
            power = common_pb2.POWER_STATE_POWERED_ON
        elif rec.get("powered_on_at"):
            power = common_pb2.POWER_STATE_POWERED_OFF
        else:
            power = common_pb2.POWER_STATE_NOT_CREATED
        return dpb.DestinationVm(vm=rec["vm"], migration_id=rec["migration_id"], power_state=power, disks=disks,
                                 powered_on_at=rec.get("powered_on_at", 0.0))

    # -- RPCs ---------------------------------------------------------------

    async def PrepareVm(self, request: dpb.PrepareVmRequest, context: grpc.aio.ServicerContext) -> dpb.DestinationVm:
        """Define the VM on its shadow vdisks (which must exist); same request again is a no-op."""
        vm = check_vdisk_id(request.vm)
        check_migration_id(request.migration_id)
        if not request.disks:
            raise InvalidArgument(f"VM {vm!r} needs at least one disk")
        kind = request.guest.WhichOneof("kind")
        if kind not in ("sim", "qemu"):
            raise InvalidArgument(f"VM {vm!r}: this sink runs 'sim' and 'qemu' guests, not {kind or 'none'!r}")
        if kind == "qemu":
            q = request.guest.qemu
            for path in (q.kernel, q.initrd):
                if path and not Path(path).is_file():
                    raise FailedPrecondition(f"VM {vm!r}: {path} does not exist on the destination host",
                                             hint="the kernel and initrd of a direct kernel boot must be there too")
        for d in request.disks:
            check_vdisk_id(d.name)
            await self.registry.get(d.vdisk_id)  # NotFound: the shadow was never opened here
        rec = {"vm": vm, "migration_id": request.migration_id,
               "disks": [{"name": d.name, "vdisk_id": d.vdisk_id} for d in request.disks],
               "guest": json_format.MessageToDict(request.guest, preserving_proto_field_name=True),
               "pid": 0, "powered_on_at": 0.0}
        async with self._lock:
            try:
                old = self._load(vm)
            except NotFound:
                old = None
            if old is not None:
                if old["migration_id"] != rec["migration_id"] or old["disks"] != rec["disks"]:
                    if self._running(old):
                        raise FailedPrecondition(f"VM {vm!r} is running here from migration "
                                                 f"{old['migration_id']!r}", hint="power it off first")
                else:
                    rec = old | {"guest": rec["guest"]}
            self._save(rec)
        log.info("VM %s prepared on %s", vm, ", ".join(d["vdisk_id"] for d in rec["disks"]))
        return await self._describe(rec)

    async def PowerOnVm(self, request: dpb.DestinationVmRef, context: grpc.aio.ServicerContext) -> dpb.DestinationVm:
        """Start the VM; refused while any shadow lacks its durable CLOSE."""
        async with self._lock:
            rec = self._load(request.vm)
            if self._running(rec):
                return await self._describe(rec)
            paths = []
            for d in rec["disks"]:
                shadow = await self.registry.get(d["vdisk_id"])
                closed = shadow.applier.closed if shadow.applier else shadow.row.closed
                if not closed:
                    raise FailedPrecondition(f"VM {rec['vm']!r}: shadow {d['vdisk_id']!r} has not received the "
                                             "source's CLOSE yet", hint="stop the source VM and let replication "
                                             "drain (cutover does this) before powering on")
                paths.append(str(shadow.row.flat_path))
            guest = json_format.ParseDict(rec["guest"], common_pb2.GuestSpec())
            vm_dir = self.dir / rec["vm"]
            vm_dir.mkdir(exist_ok=True)
            rec["powered_off"] = False
            if guest.WhichOneof("kind") == "qemu":
                headless = guest.qemu.headless
                rec["pid"] = await asyncio.to_thread(self._start_qemu, guest.qemu, paths, vm_dir)
                rec["marker"] = "headless" if headless else qemu.MARKER
            else:
                cmd = guest_command(paths, guest.sim, vm_dir / "status.json")
                rec["pid"], rec["marker"] = spawn_guest(cmd, vm_dir / "guest.log"), self.MARKER
            rec["powered_on_at"] = time.time()
            self._save(rec)
        log.info("VM %s powered on (guest pid %d)", rec["vm"], rec["pid"])
        return await self._describe(rec)

    async def PowerOffVm(self, request: dpb.DestinationVmRef,
                         context: grpc.aio.ServicerContext) -> dpb.DestinationVm:
        """Stop the VM's guest (its disks stay as they are)."""
        async with self._lock:
            rec = self._load(request.vm)
            await self._stop(rec)
        log.info("VM %s powered off", rec["vm"])
        return await self._describe(rec)

    async def RemoveVm(self, request: dpb.RemoveVmRequest,
                       context: grpc.aio.ServicerContext) -> dpb.RemoveVmResponse:
        """Rollback: stop the VM's guest and forget its definition (the shadow vdisks stay)."""
        async with self._lock:
            rec = self._load(request.vm)
            if request.migration_id and rec["migration_id"] != request.migration_id:
                raise FailedPrecondition(f"VM {rec['vm']!r} here belongs to migration {rec['migration_id']!r}, "
                                         f"not {request.migration_id!r}")
            await self._stop(rec)
            self._path(rec["vm"]).unlink(missing_ok=True)
        log.info("VM %s removed (migration %s); its shadow vdisks are kept", rec["vm"], rec["migration_id"])
        return dpb.RemoveVmResponse(vm=rec["vm"])

    async def GetVm(self, request: dpb.DestinationVmRef, context: grpc.aio.ServicerContext) -> dpb.DestinationVm:
        return await self._describe(self._load(request.vm))

    async def ListVms(self, request: dpb.ListDestinationVmsRequest,
                      context: grpc.aio.ServicerContext) -> dpb.ListDestinationVmsResponse:
        vms = [await self._describe(json.loads(p.read_text())) for p in sorted(self.dir.glob("*.json"))]
        return dpb.ListDestinationVmsResponse(vms=vms)

    async def power_off_all(self) -> None:
        """Stop every running guest (``stop_vms_on_exit``)."""
        for p in sorted(self.dir.glob("*.json")):
            rec = json.loads(p.read_text())
            await self._stop(rec)
