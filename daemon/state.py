"""The source daemon's persistent state, in one SQLite file (daemon.db).

Per vdisk: which background chunks and dirty units are still to copy (as of
the last durable ack, counting everything in flight as not done), whether
the shadow started out zeroed, and counters that must survive restarts.  A
harvested overflow bitmap is written here *before* it is acted on, so a
crash between harvest and resync loses nothing.  WAL mode with
synchronous=NORMAL survives a daemon crash (not a power loss, which the
source VM would not survive running either).
"""

from __future__ import annotations

import sqlite3
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vdisk (
    vdisk_id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    sink TEXT NOT NULL,
    shadow_zeroed INTEGER NOT NULL DEFAULT 0,
    todo BLOB,
    dirty BLOB,
    resent_bytes INTEGER NOT NULL DEFAULT 0,
    inflight_bytes INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS migration (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS estimate (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS estimate_sample (
    estimate_id TEXT NOT NULL,
    vm TEXT NOT NULL,
    disk TEXT NOT NULL,
    t REAL NOT NULL,
    seconds REAL NOT NULL,
    write_bytes INTEGER NOT NULL,
    write_ops INTEGER NOT NULL,
    new_chunks INTEGER NOT NULL,
    dirty_chunks INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS estimate_sample_by_id ON estimate_sample (estimate_id, t);
CREATE TABLE IF NOT EXISTS seed (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS seed_disk (
    seed_id TEXT NOT NULL,
    disk TEXT NOT NULL,
    done_chunks INTEGER NOT NULL DEFAULT 0,
    data_bytes INTEGER NOT NULL DEFAULT 0,
    hashes BLOB,
    tracked_seq INTEGER NOT NULL DEFAULT 0,
    dirty BLOB,
    PRIMARY KEY (seed_id, disk)
);
CREATE TABLE IF NOT EXISTS estimate_seen (
    estimate_id TEXT NOT NULL,
    vm TEXT NOT NULL,
    disk TEXT NOT NULL,
    seen BLOB NOT NULL,
    PRIMARY KEY (estimate_id, vm, disk)
);
CREATE TABLE IF NOT EXISTS throttle (
    key TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    updated REAL NOT NULL
);
"""


@dataclass
class VdiskRow:
    """What the daemon persisted about one vdisk."""

    vdisk_id: str
    size: int
    sink: str
    shadow_zeroed: bool
    todo: bytes | None
    dirty: list[int]
    resent_bytes: int
    inflight_bytes: int  # chunk bytes in flight at the last save: sent again after a crash


def _pack(units: list[int]) -> bytes:
    return struct.pack(f"<{len(units)}Q", *units)


def _unpack(blob: bytes | None) -> list[int]:
    if not blob:
        return []
    return list(struct.unpack(f"<{len(blob) // 8}Q", blob))


class StateStore:
    """Thread-safe access to daemon.db."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def load(self, vdisk_id: str) -> VdiskRow | None:
        with self._lock:
            row = self._db.execute(
                "SELECT vdisk_id, size, sink, shadow_zeroed, todo, dirty, resent_bytes, inflight_bytes "
                "FROM vdisk WHERE vdisk_id=?",
                (vdisk_id,)).fetchone()
        if row is None:
            return None
        return VdiskRow(row[0], row[1], row[2], bool(row[3]), row[4], _unpack(row[5]), row[6], row[7])

    def save(self, vdisk_id: str, size: int, sink: str, shadow_zeroed: bool, todo: bytes, dirty: list[int],
             resent_bytes: int, inflight_bytes: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO vdisk (vdisk_id, size, sink, shadow_zeroed, todo, dirty, resent_bytes, inflight_bytes, "
                "updated) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(vdisk_id) DO UPDATE SET size=excluded.size, "
                "sink=excluded.sink, shadow_zeroed=excluded.shadow_zeroed, todo=excluded.todo, "
                "dirty=excluded.dirty, resent_bytes=excluded.resent_bytes, inflight_bytes=excluded.inflight_bytes, "
                "updated=excluded.updated",
                (vdisk_id, size, sink, int(shadow_zeroed), todo, _pack(dirty), resent_bytes, inflight_bytes,
                 time.time()))

    def save_migration(self, migration_id: str, body: str) -> None:
        """Store a migration's record (JSON, written by the migrations module)."""
        with self._lock:
            self._db.execute("INSERT INTO migration (id, body, updated) VALUES (?,?,?) ON CONFLICT(id) DO UPDATE "
                             "SET body=excluded.body, updated=excluded.updated", (migration_id, body, time.time()))

    def load_migrations(self) -> list[str]:
        """Every stored migration record, oldest first."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT body FROM migration ORDER BY rowid")]

    def save_estimate(self, estimate_id: str, body: str) -> None:
        """Store an estimate's record (JSON, written by the estimator)."""
        with self._lock:
            self._db.execute("INSERT INTO estimate (id, body, updated) VALUES (?,?,?) ON CONFLICT(id) DO UPDATE "
                             "SET body=excluded.body, updated=excluded.updated", (estimate_id, body, time.time()))

    def load_estimates(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT body FROM estimate ORDER BY rowid")]

    def add_estimate_samples(self, rows: list[tuple[object, ...]]) -> None:
        """(estimate_id, vm, disk, t, seconds, write_bytes, write_ops, new_chunks, dirty_chunks) rows."""
        with self._lock, self._db:
            self._db.executemany("INSERT INTO estimate_sample VALUES (?,?,?,?,?,?,?,?,?)", rows)

    def estimate_samples(self, estimate_id: str) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute("SELECT * FROM estimate_sample WHERE estimate_id=? ORDER BY t",
                                         (estimate_id,)))

    def save_estimate_seen(self, estimate_id: str, vm: str, disk: str, seen: bytes) -> None:
        """The chunks of a disk dirtied since the observation began (one byte per chunk)."""
        with self._lock:
            self._db.execute("INSERT INTO estimate_seen VALUES (?,?,?,?) ON CONFLICT(estimate_id, vm, disk) "
                             "DO UPDATE SET seen=excluded.seen", (estimate_id, vm, disk, seen))

    def estimate_seen(self, estimate_id: str, vm: str, disk: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT seen FROM estimate_seen WHERE estimate_id=? AND vm=? AND disk=?",
                                   (estimate_id, vm, disk)).fetchone()
        return bytes(row[0]) if row else None

    def save_seed(self, seed_id: str, body: str) -> None:
        """Store a seed's record (JSON, written by the seed module)."""
        with self._lock:
            self._db.execute("INSERT INTO seed (id, body, updated) VALUES (?,?,?) ON CONFLICT(id) DO UPDATE "
                             "SET body=excluded.body, updated=excluded.updated", (seed_id, body, time.time()))

    def load_seeds(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT body FROM seed ORDER BY updated")]

    def save_seed_export(self, seed_id: str, disk: str, done_chunks: int, data_bytes: int, hashes: bytes) -> None:
        """How far a disk's export got: chunks written (and fdatasync'ed) and their hashes."""
        with self._lock:
            self._db.execute(
                "INSERT INTO seed_disk (seed_id, disk, done_chunks, data_bytes, hashes) VALUES (?,?,?,?,?) "
                "ON CONFLICT(seed_id, disk) DO UPDATE SET done_chunks=excluded.done_chunks, "
                "data_bytes=excluded.data_bytes, hashes=excluded.hashes", (seed_id, disk, done_chunks, data_bytes,
                                                                           hashes))

    def seed_export(self, seed_id: str, disk: str) -> tuple[int, int, bytes]:
        """(done_chunks, data_bytes, hashes) of a disk's export; zeros when it has not started."""
        with self._lock:
            row = self._db.execute("SELECT done_chunks, data_bytes, hashes FROM seed_disk WHERE seed_id=? AND disk=?",
                                   (seed_id, disk)).fetchone()
        return (row[0], row[1], row[2] or b"") if row else (0, 0, b"")

    def save_seed_track(self, seed_id: str, disk: str, tracked_seq: int, dirty: list[int]) -> None:
        """Writes tracked so far: the last ring sequence taken and the dirty units (before the ring is released)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO seed_disk (seed_id, disk, tracked_seq, dirty) VALUES (?,?,?,?) "
                "ON CONFLICT(seed_id, disk) DO UPDATE SET tracked_seq=excluded.tracked_seq, dirty=excluded.dirty",
                (seed_id, disk, tracked_seq, _pack(dirty)))

    def seed_track(self, seed_id: str, disk: str) -> tuple[int, list[int]]:
        with self._lock:
            row = self._db.execute("SELECT tracked_seq, dirty FROM seed_disk WHERE seed_id=? AND disk=?",
                                   (seed_id, disk)).fetchone()
        return (row[0], _unpack(row[1])) if row else (0, [])

    def save_throttle(self, key: str, body: str | None) -> None:
        """Store a throttle set by hand (JSON, written by the throttling modules); None deletes it."""
        with self._lock:
            if body is None:
                self._db.execute("DELETE FROM throttle WHERE key=?", (key,))
            else:
                self._db.execute("INSERT INTO throttle (key, body, updated) VALUES (?,?,?) ON CONFLICT(key) DO "
                                 "UPDATE SET body=excluded.body, updated=excluded.updated", (key, body, time.time()))

    def load_throttles(self, prefix: str) -> dict[str, str]:
        """Every stored throttle whose key starts with ``prefix``: key -> body."""
        with self._lock:
            rows = self._db.execute("SELECT key, body FROM throttle WHERE substr(key, 1, ?) = ?",
                                    (len(prefix), prefix))
            return {k: b for k, b in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()
