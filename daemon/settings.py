"""The source daemon's configuration (``liftshift-daemon --config daemon.toml``).

Every key has its default and help beside it; environment variables
``LIFTSHIFT_DAEMON_<KEY>`` override top-level keys.  Until the control plane
creates migrations, vdisks to replicate are listed as ``[[replicate]]``
tables.
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
        ids = [r.vdisk_id for r in self.replicate]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ConfigError(f"key 'replicate': vdisk id {sorted(dup)[0]!r} is listed twice")
