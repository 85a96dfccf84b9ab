"""The source daemon's configuration (``liftshift-daemon --config daemon.toml``).

Every key has its default and help beside it; environment variables
``LIFTSHIFT_DAEMON_<KEY>`` override top-level keys.  Migrations are created
through the Control service; ``[[replicate]]`` tables replicate single
vdisks outside any migration (tools and tests).  ``[sim]`` defines the VMs
of the built-in ``sim`` platform.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .config import doc
from .errors import ConfigError

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class ReplicateSpec:
    """One vdisk to replicate."""

    vdisk_id: str = doc(help="Name of the shadow vdisk at the sink ([A-Za-z0-9._-]).")
    ring: Path = doc(help="The vdisk's shared-memory ring file (created by the IO filter).")
    source: Path = doc(help="The source vdisk image the daemon reads (raw).")
    sink: str = doc(help="Sink address host:port.")
    migration_id: str = doc("", help="Migration the vdisk belongs to (recorded at the sink).")

    def check(self) -> None:
        if not _ID.match(self.vdisk_id) or ".." in self.vdisk_id:
            raise ConfigError(f"key 'replicate.vdisk_id': {self.vdisk_id!r} is not a valid vdisk id "
                              "([A-Za-z0-9._-], no '..')")
        if ":" not in self.sink:
            raise ConfigError(f"key 'replicate.sink': {self.sink!r} is not host:port")


@dataclass
class SimDisk:
    """One disk of a sim VM."""

    name: str = doc(help="Disk name inside the VM ([A-Za-z0-9._-]).")
    size: int = doc(size=True, help="Disk size in bytes (\"1GiB\" style accepted).")
    image: Path | None = doc(None, help="Raw image file; default `<sim.dir>/<vm>/<name>.img`, created sparse.")
    fill: int = doc(0, size=True, help="When the image is created, write this much random data spread across it.")


@dataclass
class SimWorkload:
    """What a sim VM's guest does (see `liftshift-workload`)."""

    rate_ops: float = doc(100.0, help="Operations per second (0: as fast as possible).")
    block_size: int = doc(4096, size=True, help="Bytes per operation (a multiple of 512).")
    working_set: int = doc(0, size=True, help="Bytes of each disk the guest touches (0: the whole disk).")
    read_fraction: float = doc(0.0, help="Share of operations that are reads (0..1).")
    seed: int = doc(0, help="Random seed of the guest.")
    boot_digest: bool = doc(False, help="The guest hashes its disks (XXH3-128) before its first write and "
                                        "reports them in its status file (tests: what the destination VM "
                                        "booted from).")


@dataclass
class SimVm:
    """A sim VM: disks plus a workload process as its guest."""

    name: str = doc(help="VM name ([A-Za-z0-9._-]).")
    disks: list[SimDisk] = doc(default_factory=list, help="The VM's disks ([[sim.vm.disks]] tables).")
    workload: SimWorkload = doc(default_factory=SimWorkload, help="The guest's workload ([sim.vm.workload]).")
    power_on: bool = doc(True, help="Power the VM on when the daemon starts (if it is not running already).")

    def check(self) -> None:
        if not _ID.match(self.name) or ".." in self.name:
            raise ConfigError(f"key 'sim.vm.name': {self.name!r} is not a valid VM name ([A-Za-z0-9._-])")
        if not self.disks:
            raise ConfigError(f"key 'sim.vm.disks': VM {self.name!r} has no disks")
        names = [d.name for d in self.disks]
        for d in self.disks:
            if not _ID.match(d.name) or ".." in d.name:
                raise ConfigError(f"key 'sim.vm.disks.name': {d.name!r} is not a valid disk name")
            if d.size <= 0 or d.size % 4096:
                raise ConfigError(f"key 'sim.vm.disks.size': disk {d.name!r} of VM {self.name!r}: "
                                  f"{d.size} is not a positive multiple of 4096")
            if names.count(d.name) > 1:
                raise ConfigError(f"key 'sim.vm.disks.name': VM {self.name!r} has two disks named {d.name!r}")
        w = self.workload
        if w.block_size <= 0 or w.block_size % 512:
            raise ConfigError(f"key 'sim.vm.workload.block_size': {w.block_size} is not a multiple of 512")
        if not 0 <= w.read_fraction <= 1:
            raise ConfigError(f"key 'sim.vm.workload.read_fraction': {w.read_fraction} is not between 0 and 1")
        if w.rate_ops < 0:
            raise ConfigError(f"key 'sim.vm.workload.rate_ops': {w.rate_ops} is negative")


@dataclass
class SimConfig:
    """The built-in `sim` platform."""

    dir: Path | None = doc(None, help="Where sim VM images, guest logs and pid files live; "
                                      "default `<state_dir>/sim`.")
    ring_dir: Path = doc(Path("/dev/shm/liftshift"), help="Where the capture rings (shared memory) are created.")
    ring_capacity: int = doc(64 << 20, size=True, help="Ring data capacity per disk (a power of two).")
    stop_vms_on_exit: bool = doc(False, help="Power the sim VMs off when the daemon stops (demo and tests); "
                                             "by default they keep running like real VMs.")
    vm: list[SimVm] = doc(default_factory=list, help="The sim VMs ([[sim.vm]] tables).")

    def check(self) -> None:
        names = [v.name for v in self.vm]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(f"key 'sim.vm': VM {sorted(dup)[0]!r} is defined twice")
        if self.ring_capacity <= 0 or self.ring_capacity & (self.ring_capacity - 1):
            raise ConfigError(f"key 'sim.ring_capacity': {self.ring_capacity} is not a power of two")


@dataclass
class DaemonConfig:
    """Source daemon settings."""

    listen: str = doc("127.0.0.1:50051", help="Control service address host:port (port 0 picks one).")
    state_dir: Path = doc(Path("/var/lib/liftshift"), help="Where the daemon keeps daemon.db (SQLite).")
    chunk_size: int = doc(1 << 20, size=True, help="Background copy chunk size (a multiple of the ring's dirty unit).")
    frame_bytes: int = doc(1 << 20, size=True, help="Target size of a live-records frame.")
    max_inflight: int = doc(16 << 20, size=True,
                            help="Bytes sent to a sink and not yet durable, per vdisk (credits).")
    read_ahead: int = doc(4, help="Background chunk reads in flight per vdisk.")
    max_message: int = doc(16 << 20, size=True, help="Largest gRPC message sent or received.")
    harvest_interval_ms: int = doc(100, help="How often overflow dirty bitmaps are harvested.")
    reconnect_max_s: float = doc(5.0, help="Longest wait between reconnect attempts to a sink.")
    log_level: str = doc("INFO", help="Logging level (DEBUG, INFO, WARNING, ERROR).")
    platform: str = doc("sim", help="Where VMs come from: `sim` (built-in workload VMs).")
    sim: SimConfig = doc(default_factory=SimConfig, help="The sim platform ([sim] table).")
    converge_threshold: int = doc(64 << 20, size=True,
                                  help="Default for new migrations: a VM has converged when its background copy "
                                       "is done and at most this many bytes wait to be shipped.")
    cutover_drain_timeout_s: float = doc(300.0, help="How long a cutover waits for the last writes to become "
                                                     "durable before it fails (the source VM stays stopped).")
    preverify_bytes_per_s: int = doc(512 << 20, size=True,
                                     help="While a VM has converged, chunks are verified ahead of cutover at up "
                                          "to this rate (0: off; cutover then hashes every chunk).")
    progress_interval_ms: int = doc(500, help="How often migrations are checked for convergence and progress "
                                              "events are published.")
    replicate: list[ReplicateSpec] = doc(default_factory=list,
                                         help="Vdisks to replicate at start ([[replicate]] tables).")

    def check(self) -> None:
        if self.chunk_size <= 0 or self.chunk_size & (self.chunk_size - 1):
            raise ConfigError(f"key 'chunk_size': {self.chunk_size} is not a power of two")
        if not 64 << 10 <= self.frame_bytes <= self.max_message // 2:
            raise ConfigError(f"key 'frame_bytes': {self.frame_bytes} must be between 64KiB and max_message/2")
        if self.chunk_size > self.max_message // 2:
            raise ConfigError(f"key 'chunk_size': {self.chunk_size} must be at most max_message/2")
        if self.read_ahead < 1:
            raise ConfigError(f"key 'read_ahead': {self.read_ahead} must be at least 1")
        if self.max_inflight < self.chunk_size:
            raise ConfigError(f"key 'max_inflight': {self.max_inflight} must be at least chunk_size")
        if self.platform != "sim":
            raise ConfigError(f"key 'platform': {self.platform!r} is not a known platform (known: sim)")
        if self.progress_interval_ms < 10:
            raise ConfigError(f"key 'progress_interval_ms': {self.progress_interval_ms} must be at least 10")
        ids = [r.vdisk_id for r in self.replicate]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ConfigError(f"key 'replicate': vdisk id {sorted(dup)[0]!r} is listed twice")
