"""The shadow vdisks a sink process has open, and who is streaming to each.

Design note
-----------
:class:`VdiskRegistry` turns vdisk ids into open :class:`Shadow` objects:
``open`` creates or reopens one (OpenVdisk), ``get`` finds one already on
record (Hello, HashRanges), opening it lazily so that a restarted sink serves
a reconnecting source without a fresh OpenVdisk.  Each open shadow holds one
:class:`~liftshift.sink.apply.VdiskApplier` over its flat file.

Ownership: at most one Replicate stream applies to a shadow at a time.  A new
stream takes over (the source reconnected, perhaps before the old TCP
connection was noticed dead): :meth:`Shadow.take_over` stops the old stream
(it acks what it applied and ends with FAILED_PRECONDITION), waits for it to
finish, and cancels it outright if it does not within ``TAKEOVER_GRACE_S``
(its peer stopped reading).  If yet another stream arrives meanwhile, the
newest wins.

An applier poisoned by a failed fdatasync is replaced by a fresh one from
the durable position when the next stream takes the shadow over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from liftshift.daemon.errors import AlreadyExists, FailedPrecondition, LiftshiftError, NotFound, Unavailable

from .apply import VdiskApplier
from .disk import FileDisk
from .shadow import ShadowPaths, allocated_bytes, check_vdisk_id, create_shadow, open_flat
from .state import SEED_IMPORTED, SinkState, VdiskRow
from .stream import ReplicateSession

log = logging.getLogger("liftshift.sink.registry")

TAKEOVER_GRACE_S = 2.0


@dataclass(eq=False)
class Shadow:
    """One open shadow vdisk: its record, its applier, its current stream."""

    row: VdiskRow
    applier: VdiskApplier
    owner: ReplicateSession | None = None
    _latest: ReplicateSession | None = field(default=None, repr=False)

    async def take_over(self, session: ReplicateSession, reopen: Callable[[Shadow], VdiskApplier], *,
                        grace: float = TAKEOVER_GRACE_S) -> None:
        """Make ``session`` the only stream applying to this shadow; an old
        stream gets ``grace`` seconds to stop before it is cancelled."""
        self._latest = session
        while True:
            # Checked on every wake-up: a newer stream may have arrived (and
            # even taken over) while this one waited; it must not be stopped.
            if self._latest is not session:
                raise FailedPrecondition(f"vdisk {self.row.vdisk_id!r}: a newer Replicate stream took over")
            old = self.owner
            if old is None:
                break
            log.info("vdisk %s: stream from %s takes over from %s", self.row.vdisk_id, session.peer, old.peer)
            old.stop(FailedPrecondition(f"vdisk {self.row.vdisk_id!r}: a newer Replicate stream took over",
                                        hint="only one source may stream a vdisk at a time"))
            try:
                await asyncio.wait_for(old.finished.wait(), grace)
            except TimeoutError:
                log.warning("vdisk %s: old stream from %s did not stop within %.1f s; cancelling it",
                            self.row.vdisk_id, old.peer, grace)
                old.cancel()
                await old.finished.wait()
            if self.owner is old:
                self.owner = None
        if self.applier.broken is not None:
            log.warning("vdisk %s: reopening after %s", self.row.vdisk_id, self.applier.broken)
            self.applier = reopen(self)
        session.applier = self.applier
        self.owner = session

    def release(self, session: ReplicateSession) -> None:
        """``session`` has ended."""
        if self.owner is session:
            self.owner = None


class VdiskRegistry:
    """Open shadows by id, backed by the state database and the data directory."""

    def __init__(self, state: SinkState, data_dir: Path) -> None:
        self.state = state
        self.data_dir = data_dir
        self._open: dict[str, Shadow] = {}
        self._importing: set[str] = set()
        self._lock = asyncio.Lock()
        self._closing = False

    def _check_open(self) -> None:
        if self._closing:
            raise Unavailable("the sink is shutting down", hint="retry against the restarted sink")

    async def open(self, vdisk_id: str, size: int, migration_id: str, seed_id: str = "",
                   seed_base_seq: int = 0) -> tuple[Shadow, bool]:
        """Create or reopen a shadow; True when it was created by this call.

        With ``seed_id`` the shadow must have been imported from that seed;
        the first such open binds it to ``migration_id`` at ``seed_base_seq``."""
        self._check_open()
        async with self._lock:
            row = self.state.get(vdisk_id)
            if seed_id:
                row = await self._bind_seed(row, vdisk_id, size, migration_id, seed_id, seed_base_seq)
            if row is not None:
                if (row.size_bytes, row.migration_id) != (size, migration_id):
                    raise AlreadyExists(
                        f"vdisk {vdisk_id!r} exists with size_bytes={row.size_bytes} for migration "
                        f"{row.migration_id!r}; asked for size_bytes={size} for migration {migration_id!r}",
                        hint="use another vdisk id, or reopen with the recorded size and migration")
                return self._load(row), False
            if ShadowPaths.of(self.data_dir, vdisk_id).flat.exists():
                log.warning("vdisk %s: replacing shadow files that the sink's state does not record", vdisk_id)
            paths = await asyncio.to_thread(create_shadow, self.data_dir, vdisk_id, size)
            # The insert commits with an fsync (synchronous=FULL): off the event loop too.
            row = await asyncio.to_thread(self.state.insert, vdisk_id, size, migration_id, paths.flat,
                                          paths.descriptor)
            log.info("vdisk %s: created %d-byte shadow %s (migration %r)", vdisk_id, size, paths.flat, migration_id)
            return self._load(row), True

    async def _bind_seed(self, row: VdiskRow | None, vdisk_id: str, size: int, migration_id: str, seed_id: str,
                         base_seq: int) -> VdiskRow:
        if row is None:
            raise FailedPrecondition(f"seed {seed_id}: vdisk {vdisk_id!r} has not been imported at this sink",
                                     hint="run `liftshift seed import DIR --sink ...` with the seed's directory")
        if row.seed_id != seed_id:
            got = f"seed {row.seed_id}" if row.seed_id else "no seed"
            raise FailedPrecondition(f"vdisk {vdisk_id!r} holds {got}; the migration expects seed {seed_id}")
        if row.seed_state != SEED_IMPORTED:
            raise FailedPrecondition(f"seed {seed_id}: the import of vdisk {vdisk_id!r} did not finish",
                                     hint="run `liftshift seed import` again")
        if row.migration_id:
            return row  # bound already: the usual reopen checks follow
        if row.size_bytes != size:
            raise AlreadyExists(f"vdisk {vdisk_id!r} was imported with size {row.size_bytes}, asked for {size}")
        if vdisk_id in self._importing:
            raise FailedPrecondition(f"seed {seed_id}: vdisk {vdisk_id!r} is being imported right now")
        await asyncio.to_thread(self.state.bind_seed, vdisk_id, migration_id, base_seq)
        self.forget(vdisk_id)  # an applier opened before (HashRanges) starts from 0
        log.info("vdisk %s: seed %s bound to migration %s at seq %d", vdisk_id, seed_id, migration_id, base_seq)
        bound = self.state.get(vdisk_id)
        assert bound is not None
        return bound

    @contextlib.asynccontextmanager
    async def importing(self, vdisk_id: str) -> AsyncIterator[None]:
        """Hold ``vdisk_id`` for one seed import at a time."""
        self._check_open()
        async with self._lock:
            if vdisk_id in self._importing:
                raise AlreadyExists(f"vdisk {vdisk_id!r} is being imported by another ImportSeed stream")
            shadow = self._open.get(vdisk_id)
            if shadow is not None and shadow.owner is not None:
                raise AlreadyExists(f"vdisk {vdisk_id!r} is being replicated")
            self._importing.add(vdisk_id)
        try:
            yield
        finally:
            self._importing.discard(vdisk_id)

    def forget(self, vdisk_id: str) -> None:
        """Close an idle open shadow so the next use reloads it from its record."""
        shadow = self._open.get(vdisk_id)
        if shadow is not None and shadow.owner is None:
            del self._open[vdisk_id]
            if isinstance(shadow.applier.disk, FileDisk):
                shadow.applier.disk.close()

    async def get(self, vdisk_id: str) -> Shadow:
        """The shadow called ``vdisk_id``; NotFound when the sink has no record of it."""
        check_vdisk_id(vdisk_id)
        self._check_open()
        shadow = self._open.get(vdisk_id)
        if shadow is not None:
            return shadow
        async with self._lock:
            row = self.state.get(vdisk_id)
            if row is None:
                raise NotFound(f"vdisk {vdisk_id!r} is not known to this sink", hint="call OpenVdisk first")
            return self._load(row)

    def _load(self, row: VdiskRow) -> Shadow:
        shadow = self._open.get(row.vdisk_id)
        if shadow is None:
            shadow = Shadow(row, self._applier(row))
            self._open[row.vdisk_id] = shadow
        return shadow

    def _applier(self, row: VdiskRow) -> VdiskApplier:
        # Only durable progress is on record: applied restarts from it.
        fd = open_flat(ShadowPaths(row.flat_path, row.descriptor_path), row.size_bytes)
        return VdiskApplier(row.vdisk_id, FileDisk(fd, row.size_bytes), self.state,
                            durable_seq=row.durable_seq, closed=row.closed)

    def reopen(self, shadow: Shadow) -> VdiskApplier:
        """A fresh applier for ``shadow`` from its durable record (after an I/O error)."""
        old = shadow.applier
        if isinstance(old.disk, FileDisk):
            old.disk.close()
        row = self.state.get(shadow.row.vdisk_id)
        if row is None:
            raise NotFound(f"vdisk {shadow.row.vdisk_id!r} vanished from the sink's state")
        shadow.row = row
        return self._applier(row)

    def describe(self) -> list[tuple[VdiskRow, VdiskApplier | None, int]]:
        """Every recorded vdisk with its live applier (if open) and allocated bytes."""
        out = []
        for row in self.state.all():
            shadow = self._open.get(row.vdisk_id)
            out.append((row, shadow.applier if shadow else None, allocated_bytes(row.flat_path)))
        return out

    async def stop_streams(self, reason: LiftshiftError, grace: float) -> None:
        """Refuse new work; end every stream (each acks what it applied),
        cancelling stragglers after ``grace``."""
        self._closing = True
        sessions = [s.owner for s in self._open.values() if s.owner is not None]
        for session in sessions:
            session.stop(reason)
        if not sessions:
            return
        waits = [asyncio.ensure_future(s.finished.wait()) for s in sessions]
        _done, pending = await asyncio.wait(waits, timeout=grace)
        for session in sessions:
            if not session.finished.is_set():
                session.cancel()
        for w in pending:
            w.cancel()
        await asyncio.gather(*(s.finished.wait() for s in sessions))

    async def close(self) -> None:
        """Sync every open shadow (everything applied becomes durable), close
        the files and the state database."""
        # Streams that slipped in after stop_streams are ended first.
        await self.stop_streams(Unavailable("the sink is shutting down"), 0)
        for shadow in self._open.values():
            applier = shadow.applier
            if applier.broken is None and applier.needs_sync:
                try:
                    synced = await asyncio.to_thread(applier.sync)
                    log.info("vdisk %s: durable up to seq %d at shutdown", shadow.row.vdisk_id, synced.durable_seq)
                except (OSError, LiftshiftError) as e:
                    log.error("vdisk %s: final sync failed: %s", shadow.row.vdisk_id, e)
            if isinstance(applier.disk, FileDisk):
                applier.disk.close()
        self._open.clear()
        self.state.close()
