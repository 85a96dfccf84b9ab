"""Seeds: a VM's disks copied to a drive while its writes keep being tracked.

Design note
-----------
A seeded ("sneakernet") migration starts from a copy of the disks that
travelled physically; only what the guest wrote since, and chunks of the seed
that arrive damaged, cross the network.

Export (``liftshift seed export VM --to DIR``): capture is attached first,
then a :class:`DirtyTracker` per disk consumes the ring for as long as the
seed waits: it marks the units every write touches as dirty, stores them and
the last sequence taken in the daemon's SQLite, and only then releases the
ring space (the same rule as replication: a write leaves the ring only once
it is durable somewhere else, here as a dirty mark).  Overflowed ranges are
harvested the same way.  Because capture starts before the first chunk is
read, a chunk that was not marked dirty still holds what was exported.  The
export itself copies each disk into ``<DIR>/<vdisk>.img`` (sparse: zero
chunks are holes), hashing each chunk with XXH3-128; progress and hashes are
stored after each fdatasync'ed batch, so a restarted daemon resumes the
export and the tracking where they stood.  At the end come the hash files and
the manifest (:mod:`liftshift.daemon.seedfile`).

Hand-over (a seeded migration starts a VM): the trackers stop; the sink's
imported shadow is hashed chunk by chunk and compared with the hashes the
export recorded here (not with the seed's files, which travelled); the
chunks that differ, plus the dirty units, become the replicator's work; and
the sink binds the shadow at the tracked sequence, so live records continue
exactly where the tracker stopped taking them.  The seed is marked ``used``
before its replicators start: after that it is never tracked again.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import xxhash

from liftshift.iofilter import RingConsumer
from liftshift.iofilter.ring import FLAG_CLOSE, FLAG_VOID
from liftshift.v1 import replication_pb2 as pb
from liftshift.v1 import replication_pb2_grpc

from . import channels, seedfile
from .errors import FailedPrecondition, InvalidArgument, LiftshiftError, NotFound, from_rpc_error
from .hashing import zero_digest
from .migrations import _id_part
from .platform import Platform
from .settings import DaemonConfig
from .state import StateStore

log = logging.getLogger("liftshift.daemon.seed")

EXPORTING, EXPORTED, USED, DROPPED, FAILED = "exporting", "exported", "used", "dropped", "failed"
ACTIVE = (EXPORTING, EXPORTED)
_BATCH_CHUNKS = 32  # chunks copied between fdatasyncs and progress saves
_HASH_BATCH = 8192  # chunks per HashRanges call at hand-over
_POLL_S = 0.1


@dataclass
class SeedDiskRec:
    """One disk of a seed."""

    name: str
    vdisk_id: str
    size: int
    image: str  # the source image the export reads
    ring: str
    done_chunks: int = 0
    data_bytes: int = 0


@dataclass
class SeedRec:
    """A seed as persisted."""

    id: str
    vm: str
    directory: str
    state: str
    created: float
    chunk_size: int
    disks: list[SeedDiskRec] = field(default_factory=list)
    exported_at: float = 0.0
    error: str = ""
    migration_id: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SeedRec:
        d = json.loads(text)
        disks = [SeedDiskRec(**x) for x in d.pop("disks")]
        return cls(**d, disks=disks)

    def nchunks(self, disk: SeedDiskRec) -> int:
        return (disk.size + self.chunk_size - 1) // self.chunk_size


@dataclass
class Handover:
    """What one disk's replicator starts from."""

    base_seq: int
    todo: bytes  # background chunks to send (mismatching the export)
    dirty: list[int]  # ring units written since the export started
    mismatched: int


class DirtyTracker:
    """Consumes one ring while its seed waits (see the module note)."""

    def __init__(self, store: StateStore, seed_id: str, disk: str, ring: str) -> None:
        self.store = store
        self.seed_id = seed_id
        self.disk = disk
        self.consumer = RingConsumer(ring)
        self.unit = self.consumer.geometry.chunk_size
        self.size = self.consumer.geometry.disk_size
        seq, units = store.seed_track(seed_id, disk)
        self.tracked_seq = seq
        self.dirty: set[int] = set(units)
        self.closed = False
        # A previous run may have died between harvesting and clearing.
        self.consumer.recover_dirty(self._persist_ranges)

    def _mark(self, offset: int, length: int) -> None:
        first = offset // self.unit
        last = (offset + max(length, 1) - 1) // self.unit
        self.dirty.update(range(first, last + 1))

    def _persist_ranges(self, ranges: list[tuple[int, int]]) -> None:
        for off, n in ranges:
            self._mark(off, n)
        self._persist()

    def _persist(self) -> None:
        self.store.save_seed_track(self.seed_id, self.disk, self.tracked_seq, sorted(self.dirty))

    def poll(self) -> bool:
        """Take what the ring holds now; True when anything was taken."""
        if self.closed:
            return False
        took = False
        self.consumer.take_dirty(self._persist_ranges)
        while (batch := self.consumer.read_batch(4 << 20)) is not None:
            good_seq = good_end = None
            for r in batch.records():
                if r.flags & FLAG_CLOSE:
                    self.closed = True
                    break
                if not r.flags & FLAG_VOID:
                    self._mark(r.offset, r.length)
                good_seq, good_end = r.seq, r.end
            for c in batch.corrupt:  # their data is unusable: the range is resent from the source
                self._mark(c.offset, c.length)
            if self.closed:
                # The source stopped.  The CLOSE (and anything unreadable just
                # before it) stays in the ring for the migration's replicator,
                # which must ship it.
                if good_end is not None and good_seq is not None:
                    self.tracked_seq = good_seq
                    self._persist()
                    self.consumer.release(good_end)
                    took = True
                self.consumer.rewind()
                break
            assert batch.last_seq is not None
            self.tracked_seq = batch.last_seq
            self._persist()
            self.consumer.release(batch.end)
            took = True
        return took

    def dirty_bytes(self) -> int:
        return min(len(self.dirty) * self.unit, self.size)

    def close(self) -> None:
        self.consumer.close()


class Seeds:
    """Every seed of this daemon: exports, tracking, hand-over to migrations."""

    def __init__(self, cfg: DaemonConfig, store: StateStore, platform: Platform) -> None:
        self.cfg = cfg
        self.store = store
        self.platform = platform
        self.recs: dict[str, SeedRec] = {}
        self.trackers: dict[str, dict[str, DirtyTracker]] = {}
        self._exports: dict[str, asyncio.Task[None]] = {}
        self._track_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # Set by the daemon: why a VM cannot be seeded now (in a migration, observed), or None.
        self.busy: Callable[[str], str | None] = lambda vm: None
        for body in store.load_seeds():
            rec = SeedRec.from_json(body)
            self.recs[rec.id] = rec

    # -- lifecycle ------------------------------------------------------------

    async def resume(self) -> None:
        """Daemon start: tracking and unfinished exports go on."""
        for rec in self.recs.values():
            if rec.state not in ACTIVE:
                continue
            try:
                await self.platform.attach_capture(rec.vm)  # nothing changes if it still is
                self._start_trackers(rec)
            except (LiftshiftError, OSError) as e:
                self._fail(rec, f"cannot resume tracking: {e}")
                continue
            if rec.state == EXPORTING:
                self._spawn_export(rec)
            log.info("seed %s of VM %s: %s, tracking writes", rec.id, rec.vm, rec.state)
        self._ensure_tracking()

    async def stop_all(self) -> None:
        tasks = [t for t in [self._track_task, *self._exports.values()] if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for seed_id in list(self.trackers):
            self._stop_trackers(seed_id)

    # -- lookups --------------------------------------------------------------

    def get(self, seed_id: str) -> SeedRec:
        rec = self.recs.get(seed_id)
        if rec is None:
            raise NotFound(f"no seed {seed_id!r}", hint="`liftshift seed list` shows them")
        return rec

    def tracking(self, vm: str) -> SeedRec | None:
        """The seed whose tracker holds ``vm``'s rings."""
        return next((r for r in self.recs.values() if r.vm == vm and r.state in ACTIVE), None)

    def dirty_bytes(self, rec: SeedRec, disk: SeedDiskRec) -> int:
        t = self.trackers.get(rec.id, {}).get(disk.name)
        if t is not None:
            return t.dirty_bytes()
        _seq, units = self.store.seed_track(rec.id, disk.name)
        return min(disk.size, len(units) * self.cfg.chunk_size) if units else 0

    def tracked_seq(self, rec: SeedRec, disk: SeedDiskRec) -> int:
        t = self.trackers.get(rec.id, {}).get(disk.name)
        return t.tracked_seq if t is not None else self.store.seed_track(rec.id, disk.name)[0]

    async def sink_vdisks(self, sink: str) -> list[pb.VdiskInfo]:
        """The shadows ``sink`` holds (to check that a seed was imported there)."""
        async with channels.dial(sink, self.cfg.max_message) as ch:
            try:
                got = await replication_pb2_grpc.ReplicationStub(ch).ListVdisks(pb.ListVdisksRequest(), timeout=30)
            except grpc.RpcError as e:
                raise from_rpc_error(e) from None
        return list(got.vdisks)

    # -- commands -------------------------------------------------------------

    async def export(self, vm: str, directory: str) -> SeedRec:
        """Check everything, attach capture, start tracking and copying."""
        if not vm:
            raise InvalidArgument("say which VM")
        if not directory or not os.path.isabs(directory):
            raise InvalidArgument(f"the seed directory {directory!r} must be an absolute path on the daemon's host")
        path = Path(directory)
        async with self._lock:
            info = await self.platform.vm(vm)  # NotFound for an unknown VM
            await self.platform.preflight(vm)
            why = self.busy(vm)
            if why:
                raise FailedPrecondition(f"VM {vm!r} {why}")
            other = self.tracking(vm)
            if other is not None:
                raise FailedPrecondition(f"VM {vm!r} already has seed {other.id} ({other.state}) in {other.directory}",
                                         hint=f"use it, or `liftshift seed drop {other.id}` first")
            if path.exists() and (not path.is_dir() or any(path.iterdir())):
                raise FailedPrecondition(f"{directory} exists and is not an empty directory",
                                         hint="export each seed into a directory of its own")
            # Space is checked before the directory is made: a refused export
            # leaves nothing behind.
            need = sum(d.allocated or d.size for d in info.disks)
            free = seedfile.free_bytes(_existing_ancestor(path))
            if need > free:
                raise seedfile.InsufficientSpace(f"{directory} has {free} bytes free; VM {vm}'s disks hold {need}",
                                                 hint="export to a larger drive")
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise FailedPrecondition(f"cannot create {directory}: {e.strerror}") from None
            sid = "s-" + secrets.token_hex(4)
            while sid in self.recs:
                sid = "s-" + secrets.token_hex(4)
            info = await self.platform.attach_capture(vm)
            rec = SeedRec(id=sid, vm=vm, directory=str(path), state=EXPORTING, created=time.time(), chunk_size=0)
            for d in info.disks:
                rec.disks.append(SeedDiskRec(name=d.name, vdisk_id=f"{sid}.{_id_part(vm)}.{_id_part(d.name)}",
                                             size=d.size, image=str(d.image), ring=str(d.ring)))
            try:
                self._start_trackers(rec)
            except (OSError, LiftshiftError) as e:
                self._stop_trackers(sid)
                raise FailedPrecondition(f"cannot track VM {vm}'s writes: {e}") from None
            units = {t.unit for t in self.trackers[sid].values()}
            rec.chunk_size = max([self.cfg.chunk_size, *units])
            self.recs[sid] = rec
            self._save(rec)
            log.info("seed %s: exporting VM %s to %s", sid, vm, directory)
            self._spawn_export(rec)
            self._ensure_tracking()
            return rec

    async def drop(self, seed_id: str) -> SeedRec:
        """Stop tracking (capture is detached); the files stay where they are."""
        async with self._lock:
            rec = self.get(seed_id)
            if rec.state == USED:
                raise FailedPrecondition(f"seed {seed_id} is used by migration {rec.migration_id}",
                                         hint="abort the migration instead")
            if rec.state not in ACTIVE:
                return rec
            task = self._exports.pop(seed_id, None)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            self._stop_trackers(seed_id)
            rec.state = DROPPED
            self._save(rec)
            try:
                await self.platform.detach_capture(rec.vm)
            except LiftshiftError as e:
                log.warning("seed %s: detaching capture of VM %s: %s", seed_id, rec.vm, e)
            log.info("seed %s of VM %s dropped", seed_id, rec.vm)
            return rec

    async def handover(self, seed_id: str, vm: str, sink: str, migration_id: str,
                       bg_chunk: int) -> dict[str, Handover]:
        """Stop tracking ``seed_id`` and work out what each disk's replicator
        (background chunks of ``bg_chunk`` bytes) still has to send; see the
        module note.  Marks the seed used."""
        async with self._lock:
            rec = self.get(seed_id)
            if rec.vm != vm:
                raise FailedPrecondition(f"seed {seed_id} is of VM {rec.vm}, not {vm}")
            if rec.state == USED and rec.migration_id != migration_id:
                raise FailedPrecondition(f"seed {seed_id} is used by migration {rec.migration_id}")
            if rec.state not in (EXPORTED, USED):
                raise FailedPrecondition(f"seed {seed_id} is {rec.state}",
                                         hint="wait until its export has finished" if rec.state == EXPORTING
                                         else "export a new seed")
            # Take the last records, then stop before anything is awaited: a
            # record the tracker released after this point would reach neither
            # the dirty set nor the replicator.
            tracked: dict[str, tuple[int, list[int], int]] = {}
            for d in rec.disks:
                t = self.trackers.get(seed_id, {}).get(d.name)
                if t is not None:
                    t.poll()
                    tracked[d.name] = (t.tracked_seq, sorted(t.dirty), t.unit)
                else:
                    seq, units = self.store.seed_track(seed_id, d.name)
                    tracked[d.name] = (seq, units, 0)
            self._stop_trackers(seed_id)
            try:
                out = await self._plan(rec, sink, bg_chunk, tracked)
            except BaseException:
                if rec.state in ACTIVE:
                    self._start_trackers(rec)  # resumes from what was stored
                raise
            rec.state, rec.migration_id = USED, migration_id
            self._save(rec)
            return out

    async def _plan(self, rec: SeedRec, sink: str, bg_chunk: int,
                    tracked: dict[str, tuple[int, list[int], int]]) -> dict[str, Handover]:
        out: dict[str, Handover] = {}
        channel = channels.dial(sink, self.cfg.max_message)
        try:
            stub = replication_pb2_grpc.ReplicationStub(channel)
            for d in rec.disks:
                seq, units, unit = tracked[d.name]
                _done, _data, hashes = self.store.seed_export(rec.id, d.name)
                bad = await self._mismatched(stub, rec, d, hashes)
                dirty = set(units)
                if bg_chunk == rec.chunk_size:
                    todo = bytearray((d.size + bg_chunk - 1) // bg_chunk)
                    for i in bad:
                        todo[i] = 1
                else:
                    # The chunk size changed since the export: resend the
                    # differing chunks as dirty units instead.
                    todo = bytearray((d.size + bg_chunk - 1) // bg_chunk)
                    unit = unit or min(bg_chunk, rec.chunk_size)
                    for i in bad:
                        off = i * rec.chunk_size
                        dirty.update(range(off // unit, (min(d.size, off + rec.chunk_size) - 1) // unit + 1))
                out[d.name] = Handover(base_seq=seq, todo=bytes(todo), dirty=sorted(dirty), mismatched=len(bad))
                log.info("seed %s: disk %s: %d chunks of the imported seed differ from the export, %d units written "
                         "since; live records continue after seq %d", rec.id, d.name, len(bad), len(units), seq)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        finally:
            await channel.close()
        return out

    async def _mismatched(self, stub: replication_pb2_grpc.ReplicationStub, rec: SeedRec, d: SeedDiskRec,
                          hashes: bytes) -> list[int]:
        """Chunks whose hash at the sink differs from the hash recorded at export."""
        c = rec.chunk_size
        n = rec.nchunks(d)
        bad = []
        for first in range(0, n, _HASH_BATCH):
            off = first * c
            length = min(_HASH_BATCH * c, d.size - off)
            resp = await stub.HashRanges(pb.HashRangesRequest(vdisk_id=d.vdisk_id, offset=off, length=length,
                                                              chunk_size=c), timeout=600)
            got = {h.offset: h.xxh3_128 for h in resp.hashes}
            for i in range(first, min(n, first + _HASH_BATCH)):
                want = hashes[i * 16:(i + 1) * 16]
                if len(want) != 16 or got.get(i * c) != want:
                    bad.append(i)
        return bad

    # -- tracking -------------------------------------------------------------

    def _start_trackers(self, rec: SeedRec) -> None:
        if rec.id in self.trackers:
            return
        ts: dict[str, DirtyTracker] = {}
        self.trackers[rec.id] = ts
        for d in rec.disks:
            ts[d.name] = DirtyTracker(self.store, rec.id, d.name, d.ring)

    def _stop_trackers(self, seed_id: str) -> None:
        for t in self.trackers.pop(seed_id, {}).values():
            t.close()

    def _ensure_tracking(self) -> None:
        if self._track_task is None or self._track_task.done():
            self._track_task = asyncio.create_task(self._track(), name="seed-tracking")

    async def _track(self) -> None:
        """Every tracker takes its ring's records, every _POLL_S."""
        while True:
            for seed_id, ts in list(self.trackers.items()):
                for t in ts.values():
                    try:
                        t.poll()
                    except Exception as e:  # a broken ring must not stop the others
                        rec = self.recs.get(seed_id)
                        log.error("seed %s: tracking disk %s: %s", seed_id, t.disk, e)
                        if rec is not None and rec.state in ACTIVE:
                            self._fail(rec, f"tracking disk {t.disk} failed: {e}")
                        break
            await asyncio.sleep(_POLL_S)

    # -- export ---------------------------------------------------------------

    def _spawn_export(self, rec: SeedRec) -> None:
        self._exports[rec.id] = asyncio.create_task(self._export(rec), name=f"seed-export-{rec.id}")

    async def _export(self, rec: SeedRec) -> None:
        try:
            directory = Path(rec.directory)
            manifest = seedfile.Manifest(seed_id=rec.id, vm=rec.vm, chunk_size=rec.chunk_size, created=rec.created,
                                         source=socket.gethostname())
            for d in rec.disks:
                await self._export_disk(rec, d, directory)
            for d in rec.disks:
                _done, data_bytes, hashes = self.store.seed_export(rec.id, d.name)
                await asyncio.to_thread(_write_file, directory / seedfile.hashes_name(d.vdisk_id), hashes)
                manifest.disks.append(seedfile.SeedDiskFile(
                    name=d.name, vdisk_id=d.vdisk_id, size=d.size, image=seedfile.image_name(d.vdisk_id),
                    hashes=seedfile.hashes_name(d.vdisk_id), hashes_xxh3=xxhash.xxh3_128_hexdigest(hashes),
                    data_bytes=data_bytes, tracked_seq=self.tracked_seq(rec, d)))
            await asyncio.to_thread(seedfile.write_manifest, directory, manifest)
        except asyncio.CancelledError:
            raise
        except (OSError, LiftshiftError) as e:
            log.error("seed %s: export failed: %s", rec.id, e)
            self._fail(rec, f"export failed: {e}")
            return
        rec.state = EXPORTED
        rec.exported_at = time.time()
        self._save(rec)
        log.info("seed %s: VM %s exported to %s; its writes are tracked until a seeded migration starts",
                 rec.id, rec.vm, rec.directory)

    async def _export_disk(self, rec: SeedRec, d: SeedDiskRec, directory: Path) -> None:
        c = rec.chunk_size
        n = rec.nchunks(d)
        done, data_bytes, hashes = self.store.seed_export(rec.id, d.name)
        buf = bytearray(hashes.ljust(n * 16, b"\0")[: n * 16])
        src = os.open(d.image, os.O_RDONLY | os.O_CLOEXEC)
        dst = os.open(directory / seedfile.image_name(d.vdisk_id), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(dst, d.size)
            # Resuming: the batch in flight when the daemon stopped may have
            # left data where the source now holds zeros.
            rewrite = done > 0
            while done < n:
                stop = min(n, done + _BATCH_CHUNKS)
                data_bytes += await asyncio.to_thread(_copy_chunks, src, dst, d.size, c, done, stop, buf, rewrite)
                rewrite = False
                await asyncio.to_thread(os.fdatasync, dst)
                done = stop
                self.store.save_seed_export(rec.id, d.name, done, data_bytes, bytes(buf))
                d.done_chunks, d.data_bytes = done, data_bytes
        finally:
            os.close(src)
            os.close(dst)
        d.done_chunks, d.data_bytes = n, data_bytes
        self._save(rec)

    # -- persistence ----------------------------------------------------------

    def _fail(self, rec: SeedRec, why: str) -> None:
        rec.state = FAILED
        rec.error = why
        self._stop_trackers(rec.id)
        self._save(rec)

    def _save(self, rec: SeedRec) -> None:
        self.store.save_seed(rec.id, rec.to_json())


def _existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (whose filesystem ``path`` will be on)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _copy_chunks(src: int, dst: int, size: int, chunk: int, first: int, stop: int, hashes: bytearray,
                 write_zeros: bool = False) -> int:
    """Copy chunks [first, stop) of the source into the seed image and hash them;
    all-zero chunks stay holes (are written as zeros with ``write_zeros``).
    Returns the data bytes written."""
    written = 0
    for i in range(first, stop):
        off = i * chunk
        n = min(chunk, size - off)
        try:
            hole = os.lseek(src, off, os.SEEK_DATA) >= off + n
        except OSError:
            hole = True  # ENXIO: no data at or after off
        data = b"" if hole else os.pread(src, n, off)
        if not hole and len(data) != n:
            raise LiftshiftError(f"short read of the source at {off}: {len(data)} of {n} bytes")
        if hole or data == _zeros(n):
            digest = zero_digest(n)
            if write_zeros:
                os.pwrite(dst, _zeros(n), off)
        else:
            digest = xxhash.xxh3_128_digest(data)
            os.pwrite(dst, data, off)
            written += n
        hashes[i * 16:(i + 1) * 16] = digest
    return written


@functools.lru_cache(maxsize=4)
def _zeros(n: int) -> bytes:
    return bytes(n)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
