"""The sink's durable state: one SQLite file listing the shadow vdisks.

Design note
-----------
``<state_dir>/sink.db`` holds one row per shadow vdisk: its size, the
migration it belongs to, its files, and how far it is durable
(``durable_seq``, ``closed``).  The row is written only *after* the shadow's
data has been fdatasync'ed (see :meth:`VdiskApplier.sync
<liftshift.sink.apply.VdiskApplier.sync>`), so the database never claims
more than the disk holds; after a restart ``applied_seq`` starts again at
``durable_seq`` and the source re-sends the rest.

SQLite runs in WAL mode with ``synchronous=FULL``: a committed update has
been fsynced, which is what "durable" means in an ack.  The database is
opened once per process, and an exclusive ``flock`` on ``sink.lock`` keeps a
second sink from sharing the state directory (two sinks applying to the
same shadows would corrupt them).  The kernel drops the lock when the
process dies, even by SIGKILL, so a crashed sink never blocks its restart.

Calls come from the event loop and from ``asyncio.to_thread`` workers; one
lock serialises them on the single connection.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from liftshift.daemon.errors import AlreadyExists, FailedPrecondition

SCHEMA_VERSION = 2
DB_NAME = "sink.db"
LOCK_NAME = "sink.lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vdisks (
    vdisk_id        TEXT PRIMARY KEY,
    size_bytes      INTEGER NOT NULL,
    migration_id    TEXT NOT NULL,
    applied_seq     INTEGER NOT NULL DEFAULT 0,
    durable_seq     INTEGER NOT NULL DEFAULT 0,
    closed          INTEGER NOT NULL DEFAULT 0,
    flat_path       TEXT NOT NULL,
    descriptor_path TEXT NOT NULL,
    created_ns      INTEGER NOT NULL,
    updated_ns      INTEGER NOT NULL,
    seed_id         TEXT NOT NULL DEFAULT '',
    seed_state      TEXT NOT NULL DEFAULT ''
) STRICT
"""
# Version 1 databases lack the seed columns.
_MIGRATE_1_TO_2 = ("ALTER TABLE vdisks ADD COLUMN seed_id TEXT NOT NULL DEFAULT ''",
                   "ALTER TABLE vdisks ADD COLUMN seed_state TEXT NOT NULL DEFAULT ''")
SEED_IMPORTING = "importing"
SEED_IMPORTED = "imported"


@dataclass(frozen=True)
class VdiskRow:
    """One shadow vdisk as recorded.  ``applied_seq`` equals ``durable_seq``
    in the database: only durable progress is ever written."""

    vdisk_id: str
    size_bytes: int
    migration_id: str
    applied_seq: int
    durable_seq: int
    closed: bool
    flat_path: Path
    descriptor_path: Path
    created_ns: int
    # A shadow imported from a seed: its id, and "importing" until the import
    # finished ("imported"); migration_id stays "" until a seeded migration
    # binds it.
    seed_id: str = ""
    seed_state: str = ""


_COLUMNS = ("vdisk_id, size_bytes, migration_id, applied_seq, durable_seq, closed, flat_path, descriptor_path, "
            "created_ns, seed_id, seed_state")


def _row(t: tuple[str, int, str, int, int, int, str, str, int, str, str]) -> VdiskRow:
    return VdiskRow(t[0], t[1], t[2], t[3], t[4], bool(t[5]), Path(t[6]), Path(t[7]), t[8], t[9], t[10])


class SinkState:
    """The sink's SQLite state, opened once per process."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / DB_NAME
        self._lock_fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise FailedPrecondition(f"state directory {state_dir} is in use by another liftshift-sink",
                                     hint="give each sink its own data_dir / state_dir") from None
        self._mu = threading.Lock()
        try:
            # isolation_level=None: explicit transactions only; check_same_thread
            # off because to_thread workers persist progress (serialised by _mu).
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise FailedPrecondition(f"{self.path} has schema version {version}; this sink reads "
                                         f"version {SCHEMA_VERSION}", hint="run the newer liftshift-sink")
            self._db.execute(_SCHEMA)
            if version == 1:
                for stmt in _MIGRATE_1_TO_2:
                    self._db.execute(stmt)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            os.close(self._lock_fd)
            raise

    def get(self, vdisk_id: str) -> VdiskRow | None:
        """The row of ``vdisk_id``, or None."""
        with self._mu:
            t = self._db.execute(f"SELECT {_COLUMNS} FROM vdisks WHERE vdisk_id = ?", (vdisk_id,)).fetchone()
        return _row(t) if t else None

    def all(self) -> list[VdiskRow]:
        """Every recorded vdisk, by id."""
        with self._mu:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM vdisks ORDER BY vdisk_id").fetchall()
        return [_row(t) for t in rows]

    def insert(self, vdisk_id: str, size_bytes: int, migration_id: str, flat_path: Path,
               descriptor_path: Path) -> VdiskRow:
        """Record a newly created shadow (nothing applied yet)."""
        now = time.time_ns()
        with self._mu:
            try:
                self._db.execute(
                    "INSERT INTO vdisks (vdisk_id, size_bytes, migration_id, flat_path, descriptor_path, "
                    "created_ns, updated_ns) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (vdisk_id, size_bytes, migration_id, str(flat_path), str(descriptor_path), now, now))
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"vdisk {vdisk_id!r} is already recorded") from None
        return VdiskRow(vdisk_id, size_bytes, migration_id, 0, 0, False, flat_path, descriptor_path, now)

    def insert_seed(self, vdisk_id: str, size_bytes: int, seed_id: str, flat_path: Path,
                    descriptor_path: Path) -> VdiskRow:
        """Record a shadow being imported from a seed (bound to no migration yet)."""
        now = time.time_ns()
        with self._mu:
            try:
                self._db.execute(
                    "INSERT INTO vdisks (vdisk_id, size_bytes, migration_id, flat_path, descriptor_path, "
                    "created_ns, updated_ns, seed_id, seed_state) VALUES (?, ?, '', ?, ?, ?, ?, ?, ?)",
                    (vdisk_id, size_bytes, str(flat_path), str(descriptor_path), now, now, seed_id,
                     SEED_IMPORTING))
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"vdisk {vdisk_id!r} is already recorded") from None
        return VdiskRow(vdisk_id, size_bytes, "", 0, 0, False, flat_path, descriptor_path, now, seed_id,
                        SEED_IMPORTING)

    def set_seed_state(self, vdisk_id: str, seed_state: str) -> None:
        """Mark a seed import started again or finished (after its data is fdatasync'ed)."""
        with self._mu:
            self._db.execute("UPDATE vdisks SET seed_state = ?, updated_ns = ? "
                             "WHERE vdisk_id = ? AND migration_id = ''", (seed_state, time.time_ns(), vdisk_id))

    def bind_seed(self, vdisk_id: str, migration_id: str, base_seq: int) -> None:
        """A seeded migration takes an imported shadow: it belongs to
        ``migration_id`` from now on and holds everything up to ``base_seq``."""
        with self._mu:
            cur = self._db.execute(
                "UPDATE vdisks SET migration_id = ?, applied_seq = ?, durable_seq = ?, updated_ns = ? "
                "WHERE vdisk_id = ? AND migration_id = '' AND seed_state = ?",
                (migration_id, base_seq, base_seq, time.time_ns(), vdisk_id, SEED_IMPORTED))
            if cur.rowcount != 1:
                raise FailedPrecondition(f"vdisk {vdisk_id!r} is not an imported seed waiting for its migration")

    def persist(self, vdisk_id: str, durable_seq: int, closed: bool) -> None:
        """Record durable progress (call only after the data is fdatasync'ed).

        ``MAX`` keeps the recorded position monotonic even if two syncs of the
        same vdisk finish out of order.
        """
        with self._mu:
            cur = self._db.execute(
                "UPDATE vdisks SET durable_seq = MAX(durable_seq, ?), applied_seq = MAX(applied_seq, ?), "
                "closed = MAX(closed, ?), updated_ns = ? WHERE vdisk_id = ?",
                (durable_seq, durable_seq, int(closed), time.time_ns(), vdisk_id))
            if cur.rowcount != 1:
                raise FailedPrecondition(f"vdisk {vdisk_id!r} vanished from the sink's state")

    def close(self) -> None:
        """Close the database and release the state-directory lock."""
        with self._mu:
            self._db.close()
        os.close(self._lock_fd)
