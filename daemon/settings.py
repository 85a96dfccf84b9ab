"""The source daemon's configuration (``liftshift-daemon --config daemon.toml``).

Every key has its default and help beside it; environment variables
``LIFTSHIFT_DAEMON_<KEY>`` override top-level keys.  Migrations are created
through the Control service; ``[[replicate]]`` tables replicate single
vdisks outside any migration (tools and tests).  ``[sim]`` defines the VMs
of the built-in ``sim`` platform.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import doc, host_port
from .errors import ConfigError, LiftshiftError

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
class VsphereSide:
    """How to reach one vCenter and where things go there (``[vsphere.source]``
    / ``[vsphere.destination]``)."""

    url: str = doc("", help="vCenter URL, https://host[:port] (port 443 by default; a /sdk path is accepted).")
    user: str = doc("", help="vCenter user, e.g. liftshift@vsphere.local.")
    password: str = doc("", help="Password in clear (prefer password_env or password_file). "
                                 "Exactly one of password, password_env, password_file.")
    password_env: str = doc("", help="Name of an environment variable holding the password.")
    password_file: Path | None = doc(None, help="File whose first line is the password (mode 0600 advised).")
    ca_file: Path | None = doc(None, help="PEM bundle of CAs trusted for the vCenter certificate "
                                          "(default: the system's CAs).")
    insecure: bool = doc(False, help="Do not verify the vCenter certificate at all (logged as a warning; "
                                     "tests and labs only).")
    datacenter: str = doc("", help="Datacenter name (empty: the only one); on the destination, where shadow VMs go.")
    cluster: str = doc("", help="(destination) Cluster whose root resource pool receives shadow VMs.")
    resource_pool: str = doc("", help="(destination) Resource pool, inventory path under the datacenter's host "
                                      "folder (e.g. \"DC0_C0/Resources/pool1\"); instead of cluster.")
    folder: str = doc("", help="(destination) VM folder, path under the datacenter's VM folder (empty: its root).")
    datastore: str = doc("", help="(destination) Datastore holding the shadow vdisks (empty: the only one).")
    shadow_dir: str = doc("liftshift", help="(destination) Directory on the datastore where the sink writes "
                                            "shadow vdisks ([datastore] <shadow_dir>/<vdisk id>.vmdk).")
    network_map: dict[str, str] = doc(default_factory=dict,
                                      help="(destination) Source network name -> destination network name "
                                           "(unmapped networks keep their name).")
    task_timeout_s: float = doc(600.0, help="Longest wait for one vSphere task (create, reconfigure, power).")
    guest_shutdown_timeout_s: float = doc(300.0, help="Longest wait for a guest shutdown before powering off.")
    request_timeout_s: float = doc(120.0, help="HTTP timeout of one vSphere API request.")

    def validate(self, prefix: str = "vsphere.") -> None:
        """Raise ConfigError naming the first bad key (``prefix`` + key).

        Not ``check``: the loader would call that for an empty side too, and
        only the platform in use needs its sides complete."""
        if not self.url:
            raise ConfigError(f"key '{prefix}url' is required (https://host[:port])")
        u = urllib.parse.urlsplit(self.url)
        if u.scheme != "https" or not u.hostname:
            raise ConfigError(f"key '{prefix}url': {self.url!r} is not https://host[:port]")
        try:
            u.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ConfigError(f"key '{prefix}url': {self.url!r} has an invalid port") from None
        if not self.user:
            raise ConfigError(f"key '{prefix}user' is required")
        given = [k for k in ("password", "password_env", "password_file") if getattr(self, k)]
        if len(given) != 1:
            raise ConfigError(f"key '{prefix}password': set exactly one of password, password_env, "
                              f"password_file (got {', '.join(given) or 'none'})")
        if self.resource_pool and self.cluster:
            raise ConfigError(f"key '{prefix}resource_pool': set cluster or resource_pool, not both")
        if self.insecure and self.ca_file:
            raise ConfigError(f"key '{prefix}insecure': insecure skips verification, ca_file would be ignored")
        if not isinstance(self.network_map, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and k and v for k, v in self.network_map.items()):
            raise ConfigError(f"key '{prefix}network_map': expected a table of source network = "
                              "\"destination network\" strings")
        if not self.shadow_dir or self.shadow_dir.startswith("/") or ".." in self.shadow_dir.split("/"):
            raise ConfigError(f"key '{prefix}shadow_dir': {self.shadow_dir!r} must be a relative datastore path")
        for key in ("task_timeout_s", "guest_shutdown_timeout_s", "request_timeout_s"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"key '{prefix}{key}' must be positive")

    def host_port(self) -> tuple[str, int]:
        u = urllib.parse.urlsplit(self.url)
        return u.hostname or "", u.port or 443

    def resolve_password(self) -> str:
        """The password from wherever the configuration says; ConfigError if unavailable."""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(f"key 'vsphere.password_env': environment variable {self.password_env} is not set")
            return value
        if self.password_file is not None:
            try:
                return self.password_file.read_text().splitlines()[0] if self.password_file.stat().st_size else ""
            except OSError as e:
                raise ConfigError(f"key 'vsphere.password_file': cannot read {self.password_file}: "
                                  f"{e.strerror or e}") from None
        return self.password


@dataclass
class VsphereConfig:
    """The `vsphere` platform: VMs of a source vCenter, migrated to a destination vCenter."""

    source: VsphereSide = doc(default_factory=VsphereSide, help="The source vCenter ([vsphere.source]).")
    destination: VsphereSide = doc(default_factory=VsphereSide,
                                   help="The destination vCenter ([vsphere.destination]): placement keys, "
                                        "network_map and shadow_dir apply here.")
    datastores: dict[str, str] = doc(default_factory=dict,
                                     help="Source datastore name -> directory where this daemon reads it "
                                          "(e.g. LocalDS_0 = \"/vmfs/volumes/LocalDS_0\" on the host, or an "
                                          "NFS mount); the background copy reads each disk's flat file there.")
    ring_dir: Path = doc(Path("/dev/shm/liftshift"),
                         help="Where capture rings are created: <ring_dir>/<VM instance UUID>/<device>.ring "
                              "(device like scsi0-1), the path the liftshift IO filter on the host maps.")
    ring_capacity: int = doc(64 << 20, size=True, help="Ring data capacity per disk (a power of two).")
    policy: str = doc("liftshift-capture", help="Name of the storage policy that puts the liftshift IO "
                                                "filter on a disk (created by `liftshift vsphere attach-filter` "
                                                "when missing).")
    capture_wait_s: float = doc(30.0, help="How long attaching capture waits for the IO filter to announce "
                                           "itself in a new ring.")
    close_wait_s: float = doc(60.0, help="How long stopping the source waits, after power-off, for the IO "
                                         "filter to end every ring with CLOSE.")

    def check(self) -> None:
        self.source.validate("vsphere.source.")
        self.destination.validate("vsphere.destination.")
        if not isinstance(self.datastores, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and k and v.startswith("/")
                for k, v in self.datastores.items()):
            raise ConfigError("key 'vsphere.datastores': expected a table of datastore name = "
                              "\"/absolute/directory\" strings")
        if self.ring_capacity <= 0 or self.ring_capacity & (self.ring_capacity - 1):
            raise ConfigError(f"key 'vsphere.ring_capacity': {self.ring_capacity} is not a power of two")
        if not self.policy:
            raise ConfigError("key 'vsphere.policy' must not be empty")
        for key in ("capture_wait_s", "close_wait_s"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"key 'vsphere.{key}' must be positive")


@dataclass
class QemuDisk:
    """One disk of a QEMU VM, served to it through liftshift-nbd."""

    name: str = doc(help="Disk name inside the VM ([A-Za-z0-9._-]); disks become virtio drives in this order.")
    image: Path = doc(help="Raw image file (created sparse at `size` if missing).")
    size: int = doc(0, size=True, help="Size when the image has to be created (0: the image must exist).")


@dataclass
class QemuVm:
    """A QEMU/KVM VM: its disks go through liftshift-nbd, so every write is captured."""

    name: str = doc(help="VM name ([A-Za-z0-9._-]).")
    memory_mb: int = doc(512, help="Guest memory in MiB.")
    kernel: str = doc("", help="Direct kernel boot: the kernel image (empty: boot from the first disk).")
    initrd: str = doc("", help="Initial ramdisk for the direct kernel boot.")
    append: str = doc("", help="Kernel command line for the direct kernel boot.")
    extra_args: list[str] = doc(default_factory=list, help="More QEMU arguments, appended as they are.")
    headless: bool = doc(False, help="No QEMU: the VM is only its disks, served by liftshift-nbd on "
                                     "<qemu.dir>/<vm>/<disk>.sock for NBD clients (qemu-io, fio, a QEMU "
                                     "elsewhere).")
    power_on: bool = doc(True, help="Power the VM on when the daemon starts (if it is not running already).")
    disks: list[QemuDisk] = doc(default_factory=list, help="The VM's disks ([[qemu.vm.disks]] tables).")

    def check(self) -> None:
        if not _ID.match(self.name) or ".." in self.name:
            raise ConfigError(f"key 'qemu.vm.name': {self.name!r} is not a valid VM name ([A-Za-z0-9._-])")
        if not self.disks:
            raise ConfigError(f"key 'qemu.vm.disks': VM {self.name!r} has no disks")
        names = [d.name for d in self.disks]
        for d in self.disks:
            if not _ID.match(d.name) or ".." in d.name or names.count(d.name) > 1:
                raise ConfigError(f"key 'qemu.vm.disks.name': {d.name!r} of VM {self.name!r} is not a valid, "
                                  "unique disk name")
            if d.size < 0 or d.size % 512:
                raise ConfigError(f"key 'qemu.vm.disks.size': {d.size} is not a multiple of 512")
        if self.memory_mb < 16:
            raise ConfigError(f"key 'qemu.vm.memory_mb': {self.memory_mb} is too small")
        if self.initrd and not self.kernel:
            raise ConfigError(f"key 'qemu.vm.initrd': VM {self.name!r} has an initrd but no kernel")


@dataclass
class QemuConfig:
    """The `qemu` platform: QEMU/KVM VMs whose disks are served through liftshift-nbd."""

    dir: Path | None = doc(None, help="Sockets, pid files, consoles and logs of the VMs; default "
                                      "`<state_dir>/qemu`.")
    ring_dir: Path = doc(Path("/dev/shm/liftshift"), help="Where capture rings are created "
                                                          "(<ring_dir>/<vm>/<disk>.ring).")
    ring_capacity: int = doc(64 << 20, size=True, help="Ring data capacity per disk (a power of two).")
    binary: str = doc("qemu-system-x86_64", help="The QEMU system emulator.")
    accel: str = doc("auto", help="kvm, tcg, or auto: KVM when a probe guest really runs under it (hosts with "
                                  "nested virtualisation often cannot), else TCG.")
    powerdown_timeout_s: float = doc(60.0, help="At cutover, how long the guest gets to shut down after the ACPI "
                                                "power button before QEMU is told to quit.")
    capture_wait_s: float = doc(30.0, help="How long attaching capture waits for liftshift-nbd to take a new ring.")
    stop_vms_on_exit: bool = doc(False, help="Power the VMs off when the daemon stops (demo and tests); by default "
                                             "they keep running.")
    vm: list[QemuVm] = doc(default_factory=list, help="The VMs ([[qemu.vm]] tables).")

    def check(self) -> None:
        names = [v.name for v in self.vm]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(f"key 'qemu.vm': VM {sorted(dup)[0]!r} is defined twice")
        if self.ring_capacity <= 0 or self.ring_capacity & (self.ring_capacity - 1):
            raise ConfigError(f"key 'qemu.ring_capacity': {self.ring_capacity} is not a power of two")
        if self.accel not in ("auto", "kvm", "tcg"):
            raise ConfigError(f"key 'qemu.accel': {self.accel!r} is not one of auto, kvm, tcg")
        for key in ("powerdown_timeout_s", "capture_wait_s"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"key 'qemu.{key}' must be positive")


@dataclass
class TlsConfig:
    """Mutual TLS of the Control service and of the connections to sinks ([tls])."""

    cert: Path | None = doc(None, help="PEM certificate the Control service presents (a server certificate; "
                                       "`liftshift certs issue DIR NAME --server`).")
    key: Path | None = doc(None, help="Its private key.")
    ca: Path | None = doc(None, help="CA certificate(s) that clients of the Control service and the sinks must "
                                     "chain to.")
    client_cert: Path | None = doc(None, help="Client certificate this daemon presents to sinks "
                                              "(`liftshift certs issue DIR NAME --client --role operator`).")
    client_key: Path | None = doc(None, help="Its private key.")
    tokens_file: Path | None = doc(None, help="Bearer tokens accepted besides client certificates: lines of "
                                              "`name role sha256-of-token` (`liftshift certs token`).")
    insecure: bool = doc(False, help="Plain text instead of TLS, anyone on the address is admin: allowed only "
                                     "on a loopback listen address, and logged as a warning (demo, tests).")

    def check(self) -> None:
        if self.insecure:
            return
        for key in ("cert", "key", "ca", "client_cert", "client_key"):
            if getattr(self, key) is None:
                raise ConfigError(f"key 'tls.{key}' is required: mutual TLS is on by default "
                                  "(`liftshift certs init DIR` makes a quick-start CA and certificates; "
                                  "tls.insecure = true listens in plain text on loopback only)")


@dataclass
class ThrottleConfig:
    """Replication rate limit ([throttle])."""

    rate: str = doc("unlimited", help="Global replication rate limit outside the schedule's windows, e.g. "
                                      "\"200MB/s\" (live writes go first, background copy gets the rest).")
    schedule: list[dict[str, Any]] = doc(default_factory=list,
                                         help="Time-of-day windows ([[throttle.schedule]] tables with days = "
                                              "\"mon-fri\", start = \"08:00\", end = \"18:00\", rate = "
                                              "\"100MB/s\"); windows may not overlap; local time.")

    def check(self) -> None:
        from .throttle import Schedule, parse_rate_value

        try:
            Schedule.parse(self.schedule, field="throttle.schedule",
                           default_bps=parse_rate_value(self.rate, "throttle.rate"))
        except LiftshiftError as e:
            raise ConfigError(f"key {e.message}") from None


@dataclass
class DaemonConfig:
    """Source daemon settings."""

    listen: str = doc("127.0.0.1:50051", help="Control service address host:port (port 0 picks one).")
    state_dir: Path = doc(Path("/var/lib/liftshift"),
                          help="Where the daemon keeps daemon.db (SQLite) and its audit log (audit.log, audit.head).")
    chunk_size: int = doc(1 << 20, size=True, help="Background copy chunk size (a multiple of the ring's dirty unit).")
    frame_bytes: int = doc(1 << 20, size=True, help="Target size of a live-records frame.")
    max_inflight: int = doc(16 << 20, size=True,
                            help="Bytes sent to a sink and not yet durable, per vdisk (credits).")
    read_ahead: int = doc(4, help="Background chunk reads in flight per vdisk.")
    max_message: int = doc(16 << 20, size=True, help="Largest gRPC message sent or received.")
    harvest_interval_ms: int = doc(100, help="How often overflow dirty bitmaps are harvested.")
    reconnect_max_s: float = doc(5.0, help="Longest wait between reconnect attempts to a sink.")
    log_level: str = doc("INFO", help="Logging level (DEBUG, INFO, WARNING, ERROR).")
    platform: str = doc("sim", help="Where VMs come from: `sim` (built-in workload VMs), `vsphere` "
                                    "(a source vCenter, see [vsphere]) or `qemu` (QEMU/KVM VMs, see [qemu]).")
    sim: SimConfig = doc(default_factory=SimConfig, help="The sim platform ([sim] table).")
    vsphere: VsphereConfig = doc(default_factory=VsphereConfig, help="The vsphere platform ([vsphere] table).")
    qemu: QemuConfig = doc(default_factory=QemuConfig, help="The qemu platform ([qemu] table).")
    converge_threshold: int = doc(64 << 20, size=True,
                                  help="Default for new migrations: a VM has converged when its background copy "
                                       "is done and at most this many bytes wait to be shipped.")
    cutover_drain_timeout_s: float = doc(300.0, help="How long a cutover waits for the last writes to become "
                                                     "durable before it fails (the source VM stays stopped).")
    preverify_bytes_per_s: int = doc(512 << 20, size=True,
                                     help="While a VM has converged, chunks are verified ahead of cutover at up "
                                          "to this rate (0: off; cutover then hashes every chunk).")
    preverify_quiet_s: float = doc(1.0, help="A chunk written after it was verified is verified again ahead of "
                                             "cutover only once the guest has left it alone this long (a chunk "
                                             "rewritten all the time would be un-verified right after each proof; "
                                             "what was written lately is proven in rounds just before the stop).")
    estimate_copy_efficiency: float = doc(0.8, help="Estimator: share of the probed bandwidth the replication path "
                                                   "achieves (it reads the source, interleaves live frames and the "
                                                   "sink syncs; 0.8 measured on a throttled loopback link).")
    sneakernet_ship_days: float = doc(3.0, help="Estimator: days a disk shipped physically takes to arrive "
                                                "(the seeded-migration alternative).")
    progress_interval_ms: int = doc(500, help="How often migrations are checked for convergence and progress "
                                              "events are published.")
    replicate: list[ReplicateSpec] = doc(default_factory=list,
                                         help="Vdisks to replicate at start ([[replicate]] tables).")
    tls: TlsConfig = doc(default_factory=TlsConfig, help="Mutual TLS and tokens ([tls] table).")
    throttle: ThrottleConfig = doc(default_factory=ThrottleConfig, help="Replication rate limit ([throttle] table).")
    metrics_listen: str = doc("", help="Prometheus /metrics address host:port (empty: off).")

    def check(self) -> None:
        self.tls.check()  # also when there is no [tls] table: TLS is on by default
        if self.metrics_listen and not re.match(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$", self.metrics_listen):
            raise ConfigError(f"key 'metrics_listen': {self.metrics_listen!r} is not host:port")
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
        if self.platform not in ("sim", "vsphere", "qemu"):
            raise ConfigError(f"key 'platform': {self.platform!r} is not a known platform "
                              "(known: sim, vsphere, qemu)")
        if self.platform == "vsphere":
            self.vsphere.check()
        if not 0 < self.estimate_copy_efficiency <= 1:
            raise ConfigError(f"key 'estimate_copy_efficiency': {self.estimate_copy_efficiency} must be in (0, 1]")
        if self.sneakernet_ship_days < 0:
            raise ConfigError(f"key 'sneakernet_ship_days': {self.sneakernet_ship_days} must not be negative")
        if not 0 <= self.preverify_quiet_s <= 3600:
            raise ConfigError(f"key 'preverify_quiet_s': {self.preverify_quiet_s} must be in [0, 3600]")
        if self.progress_interval_ms < 10:
            raise ConfigError(f"key 'progress_interval_ms': {self.progress_interval_ms} must be at least 10")
        if self.metrics_listen:
            host_port(self.metrics_listen, "metrics_listen")
        ids = [r.vdisk_id for r in self.replicate]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ConfigError(f"key 'replicate': vdisk id {sorted(dup)[0]!r} is listed twice")
