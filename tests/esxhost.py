"""The ESXi side of a simulated source vCenter: guests and the liftshift IO filter.

Design note
-----------
govmomi's simulator models vCenter's API, not what runs on the hosts: a
"powered-on" VM there executes nothing and its disk files are empty.  The
``vsphere`` platform needs both halves, so :class:`EsxHost` plays the hosts
for the VMs of one simulator, watching it through the vSphere API (pyvmomi,
its own session) the way ESXi would learn of the same events:

* **Disks.**  :func:`make_vm` creates a VM through the API; :meth:`EsxHost.prepare`
  then gives each of its disks what a VMFS datastore holds, a text descriptor
  ``<name>.vmdk`` (``createType="vmfs"``) and its flat extent ``<name>-flat.vmdk``
  filled with known random data, in the simulator's datastore directory.
* **Guests.**  While vCenter says a VM is powered on, a ``liftshift-workload``
  process writes its flat files (the guest); when vCenter says it is off, the
  guest gets SIGTERM, finishes its operation and stops.
* **The IO filter.**  A disk is filtered once it carries the capture policy
  (its ``liftshift.capture.<key>`` marker, as the storage policy would put the
  filter there).  When the daemon has created the disk's ring at
  ``<ring_dir>/<instance uuid>/<device>.ring``, the guest attaches to it
  between two operations and announces itself in the ring (``producer``),
  so every later write is captured; at power-off it appends CLOSE; when the
  ring file disappears (capture detached) it detaches.

It polls every ``poll`` seconds in a thread.  Everything it starts is stopped
by :meth:`EsxHost.stop` (register it with the test's finalizers).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyVim.connect import Disconnect
from pyVim.task import WaitForTask
from pyVmomi import vim
from vcsim import Vcsim

from liftshift.daemon.vsphere_inventory import CAPTURE_MARKER
from liftshift.sink.shadow import descriptor_text

MiB = 1 << 20
_BUS = {vim.vm.device.ParaVirtualSCSIController: "scsi", vim.vm.device.VirtualLsiLogicController: "scsi",
        vim.vm.device.VirtualLsiLogicSASController: "scsi", vim.vm.device.VirtualBusLogicController: "scsi"}


def make_vm(vc: Vcsim, name: str, disks: Sequence[int] = (4 * MiB, 2 * MiB), *, power_on: bool = True,
            disk_modes: Sequence[str] | None = None, cpus: int = 2, memory_mb: int = 2048, firmware: str = "efi",
            networks: Sequence[str] = ("VM Network",)) -> str:
    """Create VM ``name`` on the simulator (PVSCSI disks of ``disks`` bytes on
    units 0, 1, ...; vmxnet3 NICs on ``networks``); returns its moid."""
    si = vc.connect()
    try:
        dc = si.content.rootFolder.childEntity[0]
        changes = [vim.vm.device.VirtualDeviceSpec(operation="add", device=vim.vm.device.ParaVirtualSCSIController(
            key=1000, busNumber=0, sharedBus="noSharing"))]
        for unit, size in enumerate(disks):
            mode = disk_modes[unit] if disk_modes else "persistent"
            disk = vim.vm.device.VirtualDisk(
                key=-1 - unit, controllerKey=1000, unitNumber=unit, capacityInKB=size // 1024, capacityInBytes=size,
                backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(fileName="[LocalDS_0]", diskMode=mode))
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk))
        for i, net in enumerate(networks):
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=vim.vm.device.VirtualVmxnet3(
                key=-10 - i, backing=vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=net))))
        config = vim.vm.ConfigSpec(name=name, guestId="ubuntu64Guest", numCPUs=cpus, memoryMB=memory_mb,
                                   firmware=firmware, files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"),
                                   deviceChange=changes)
        pool = dc.hostFolder.childEntity[0].resourcePool
        task = dc.vmFolder.CreateVM_Task(config=config, pool=pool)
        WaitForTask(task)
        vm = task.info.result
        if power_on:
            WaitForTask(vm.PowerOnVM_Task())
        return str(vm._moId)
    finally:
        Disconnect(si)


@dataclass
class _Disk:
    key: int
    device: str
    descriptor: Path
    flat: Path
    size: int
    marked: bool


@dataclass
class _Vm:
    moid: str
    name: str
    power: str
    uuid: str
    disks: list[_Disk]


@dataclass
class _Guest:
    proc: subprocess.Popen[bytes]
    rings: list[Path]
    status: Path
    attached: bool = False
    ring_inodes: list[int] = field(default_factory=list)


class EsxHost:
    """Guests and IO filter for the VMs of one simulated vCenter (see the module's design note)."""

    def __init__(self, vc: Vcsim, ring_dir: Path, workdir: Path, *, rate_ops: float = 300.0,
                 block_size: int = 4096, seed: int = 7, poll: float = 0.05) -> None:
        self.vc = vc
        self.ring_dir = ring_dir
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rate_ops = rate_ops
        self.block_size = block_size
        self.seed = seed
        self.poll = poll
        self.guests: dict[str, _Guest] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._si: Any = None
        self.log: list[str] = []

    # -- the datastore -----------------------------------------------------------

    def _vms(self) -> list[_Vm]:
        content = self._si.content
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        try:
            out = []
            for vm in view.view:
                cfg = vm.config
                extra = {o.key: o.value for o in cfg.extraConfig or []}
                if extra.get("liftshift.migration_id"):
                    continue  # a shadow VM (same simulator used as destination): nothing runs it here
                controllers = {d.key: d for d in cfg.hardware.device if isinstance(d, vim.vm.device.VirtualController)}
                disks = []
                for d in cfg.hardware.device:
                    if not isinstance(d, vim.vm.device.VirtualDisk):
                        continue
                    ctrl = controllers.get(d.controllerKey)
                    device = f"{_BUS.get(type(ctrl), 'disk')}{getattr(ctrl, 'busNumber', 0)}-{d.unitNumber}"
                    rel = d.backing.fileName.split("]", 1)[1].strip()
                    desc = self.vc.datastore_dir / rel
                    size = d.capacityInBytes or d.capacityInKB * 1024
                    disks.append(_Disk(d.key, device, desc, desc.with_name(desc.stem + "-flat.vmdk"), size,
                                       bool(extra.get(f"{CAPTURE_MARKER}{d.key}"))))
                out.append(_Vm(vm._moId, vm.name, str(vm.runtime.powerState), cfg.instanceUuid, disks))
            return out
        finally:
            view.Destroy()

    def prepare(self, names: Sequence[str] | None = None, fill: float = 0.5) -> dict[str, list[Path]]:
        """Write descriptor + flat file (``fill`` of it random data) for each disk of the
        VMs named (default: all); returns VM name -> flat files."""
        si = self.vc.connect()
        self._si, own = (si, True) if self._si is None else (self._si, False)
        try:
            out = {}
            for vm in self._vms():
                if names is not None and vm.name not in names:
                    continue
                rng = random.Random(f"{self.seed}-{vm.name}")
                for d in vm.disks:
                    d.descriptor.write_text(descriptor_text(d.descriptor.stem, d.size))
                    with open(d.flat, "wb") as f:
                        f.truncate(d.size)
                        for off in range(0, d.size, 64 << 10):
                            if rng.random() < fill:
                                f.seek(off)
                                f.write(rng.randbytes(64 << 10))
                out[vm.name] = [d.flat for d in vm.disks]
            return out
        finally:
            if own:
                Disconnect(si)
                self._si = None

    # -- guests and filter --------------------------------------------------------

    def start(self) -> EsxHost:
        """Start watching the simulator (in a thread)."""
        self._si = self.vc.connect()
        self._thread = threading.Thread(target=self._run, name="esxhost", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as e:  # noqa: BLE001 - keep watching; the test sees self.errors
                self.errors.append(repr(e))
                if len(self.errors) > 100:
                    del self.errors[:50]
            self._stop.wait(self.poll)

    def _ring(self, vm: _Vm, d: _Disk) -> Path:
        return self.ring_dir / vm.uuid / f"{d.device}.ring"

    def tick(self) -> None:
        """One look at vCenter: start/stop guests, attach/detach the filter."""
        for vm in self._vms():
            g = self.guests.get(vm.name)
            if g is not None and g.proc.poll() is not None:
                self.guests.pop(vm.name)
                g = None
            if vm.power == "poweredOn" and g is None:
                self._start_guest(vm)
            elif vm.power != "poweredOn" and g is not None:
                self._stop_guest(vm.name)
            elif g is not None:
                self._filter(vm, g)

    def _start_guest(self, vm: _Vm) -> None:
        rings = [self._ring(vm, d) for d in vm.disks]
        status = self.dir / f"{vm.name}.status.json"
        status.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "liftshift.iofilter.guest", "--rate", repr(self.rate_ops),
               "--block-size", str(self.block_size), "--seed", str(self.seed), "--status", str(status),
               "--attach", "signal"]
        for d, r in zip(vm.disks, rings, strict=True):
            cmd += ["--disk", str(d.flat), "--ring", str(r)]
        with open(self.dir / f"{vm.name}.guest.log", "ab") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        g = self.guests[vm.name] = _Guest(proc, rings, status)
        self._wait(g, lambda st: st.get("pid") == proc.pid)  # signals before its handlers are set would kill it
        self.log.append(f"{vm.name}: guest {proc.pid} started")

    def _stop_guest(self, name: str) -> None:
        g = self.guests.pop(name)
        g.proc.send_signal(signal.SIGTERM)  # finishes its operation, CLOSEs attached rings, exits
        try:
            g.proc.wait(20)
        except subprocess.TimeoutExpired:
            g.proc.kill()
            g.proc.wait()
        self.log.append(f"{name}: guest stopped")

    def _status(self, g: _Guest) -> dict[str, Any]:
        try:
            return json.loads(g.status.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def _wait(self, g: _Guest, ok: Callable[[dict[str, Any]], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not ok(self._status(g)):
            if g.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"guest {g.proc.pid} did not get there (exit {g.proc.poll()}); "
                                   f"status {self._status(g)}")
            time.sleep(0.005)

    def _filter(self, vm: _Vm, g: _Guest) -> None:
        inodes = []
        for r in g.rings:
            try:
                inodes.append(os.stat(r).st_ino)
            except FileNotFoundError:
                inodes.append(0)
        wanted = all(d.marked for d in vm.disks) and all(inodes)
        if g.attached and inodes != g.ring_inodes:
            # The ring was removed or replaced: this filter's mapping is stale.
            g.proc.send_signal(signal.SIGUSR2)
            self._wait(g, lambda st: st.get("attached") is False)
            g.attached = False
            self.log.append(f"{vm.name}: filter detached")
        if wanted and not g.attached:
            g.proc.send_signal(signal.SIGUSR1)  # the guest attaches between operations and announces
            self._wait(g, lambda st: st.get("attached") is True)
            g.attached, g.ring_inodes = True, inodes
            self.log.append(f"{vm.name}: filter attached")

    def stop(self) -> None:
        """Stop watching and stop every guest."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for name in list(self.guests):
            self._stop_guest(name)
        if self._si is not None:
            try:
                Disconnect(self._si)
            except Exception:  # noqa: BLE001 - the simulator may be gone already
                pass
            self._si = None
