"""Replicating one vdisk: the adapter around :class:`~liftshift.daemon.core.VdiskSync`.

Design note
-----------
One task per vdisk keeps a session with the sink: OpenVdisk, then one
Replicate stream.  The send loop schedules and the methods do the work:
live batches from the ring go first (they hold the guest's RPO), completed
source reads next, new reads are started up to ``read_ahead``; when there is
nothing to do it sleeps on the ring's doorbell, a read completing, or an ack
freeing credits.  A second task reads acks: it releases the ring only up to
what the sink made durable and persists the copy state.

Every frame first takes its bytes from the daemon's rate limits
(:class:`~liftshift.daemon.throttle.Limiters`), live frames ahead of
background chunks; a chunk waiting for its turn steps aside, keeping its
place in the queue, whenever this vdisk's own live records are ready, and a
chunk already stale is discarded without waiting.  Unlimited, a take is a
check and a subtraction.

Any failure of the session (sink down, link cut, a refused frame) ends it;
the core puts everything in flight back, the consumer rewinds to the ring's
release position, and the session is retried with backoff.  The sink skips
records it already holds, so nothing is applied twice or lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import xxhash

from liftshift.iofilter import RingConsumer
from liftshift.iofilter.consumer import Batch
from liftshift.iofilter.ring import FLAG_VOID, REC, WORD_PAD
from liftshift.v1 import replication_pb2 as pb
from liftshift.v1 import replication_pb2_grpc

from . import channels, hashing, sourceio, wire
from .core import BACKGROUND, REPAIR, RESYNC, ReadPlan, VdiskSync
from .errors import LiftshiftError, Unavailable, from_rpc_error
from .lag import LagWindow
from .settings import DaemonConfig, ReplicateSpec
from .state import StateStore
from .throttle import Limiters
from .verifymap import VerifyMap

log = logging.getLogger("liftshift.daemon.vdisk")

_KIND = {BACKGROUND: pb.CHUNK_KIND_BACKGROUND, RESYNC: pb.CHUNK_KIND_RESYNC, REPAIR: pb.CHUNK_KIND_REPAIR}
_EMPTY_XXH3 = xxhash.xxh3_64_intdigest(b"")
_SAVE_INTERVAL_S = 0.05
_LINGER_S = 0.002  # longest a small live batch waits for more records (see VdiskReplicator._linger)
_BUSY_S = 0.010  # a live frame went out this recently: the guest is writing steadily (see _linger)
_RECHECK_S = 0.01  # a chunk waiting for the rate limit looks this often whether held-back records may go


_Chunk = tuple[bytes | bytearray, bool, int]  # a chunk read from the source: data, all zero, XXH3-64


@dataclass
class _Read:
    plan: ReadPlan
    task: asyncio.Future[_Chunk]


@dataclass
class Stats:
    """Counters and recent samples for status and benchmarks."""

    reconnects: int = 0
    last_error: str = ""
    connected: bool = False
    closed: bool = False
    lag_samples_ns: LagWindow = field(default_factory=LagWindow)
    # For statistics (liftshift.daemon.stats_collector): when the progress counters started from 0,
    # and totals from the sink's acks.
    started: float = field(default_factory=time.time)
    acked_bytes: int = 0  # frames made durable by the sink
    sink_apply_ns: int = 0
    sink_applies: int = 0  # acks that carried an apply time
    sink_fsync_ns: int = 0
    sink_fsyncs: int = 0  # acks that carried an fsync time

    def sink_acked(self, ack: pb.Ack, durable_bytes: int) -> None:
        """Count one ack: the bytes it made durable and the sink's apply / fsync times."""
        self.acked_bytes += durable_bytes
        if ack.apply_ns:
            self.sink_apply_ns += ack.apply_ns
            self.sink_applies += 1
        if ack.fsync_ns:
            self.sink_fsync_ns += ack.fsync_ns
            self.sink_fsyncs += 1


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) runs of data in a sparse file, via SEEK_DATA/SEEK_HOLE."""
    out = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break  # ENXIO: no data after pos
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            out.append((start, end - start))
            pos = end
    except OSError:
        return [(0, size)]  # no SEEK_DATA here: treat everything as data
    return out


def void_corrupt(batch: Batch) -> bytes:
    """The batch's records with every corrupt record turned into a VOID one
    (no payload, same sequence), so the sink keeps its sequence without
    applying bad data; the ranges were already marked dirty by the consumer."""
    bad = {c.seq for c in batch.corrupt}
    data = bytearray(batch.data[: batch.end - batch.start])
    o = 0
    while o + 56 <= len(data):
        word, seq, offset, length, _flags, _paylen, _digest, time_ns = REC.unpack_from(data, o)
        size = word & 0xFFFFFFFF
        if not word & WORD_PAD and seq in bad:
            REC.pack_into(data, o, size, seq, offset, length, FLAG_VOID, 0, _EMPTY_XXH3, time_ns)
            data[o + 56 : o + size] = bytes(size - 56)
        o += size
    return bytes(data)


class VdiskReplicator:
    """Ships one vdisk to its sink until stopped."""

    def __init__(self, spec: ReplicateSpec, cfg: DaemonConfig, store: StateStore) -> None:
        self.spec = spec
        self.cfg = cfg
        self.store = store
        self.consumer = RingConsumer(spec.ring)
        self.unit = self.consumer.geometry.chunk_size
        self.size = self.consumer.geometry.disk_size
        self.fd = os.open(spec.source, os.O_RDONLY)
        self._inline_reads = sourceio.inline_mode(self.fd)
        log.debug("%s: source reads on the event loop: %s", spec.vdisk_id, self._inline_reads)
        src_size = os.fstat(self.fd).st_size
        if src_size < self.size:
            raise LiftshiftError(f"source {spec.source} is {src_size} bytes, the ring says the disk is {self.size}")
        row = store.load(spec.vdisk_id)
        bg_chunk = max(cfg.chunk_size, self.unit)
        self.core = VdiskSync(self.size, bg_chunk=bg_chunk, unit=self.unit, max_inflight=cfg.max_inflight,
                              to_copy=row.todo if row and row.size == self.size else None,
                              dirty=row.dirty if row and row.size == self.size else None)
        self.shadow_zeroed = bool(row and row.shadow_zeroed)
        self.known = row is not None and row.size == self.size
        if row:
            # Chunks in flight when the last run stopped are sent again.
            self.core.progress.resent_bytes = row.resent_bytes + row.inflight_bytes
        # A previous run may have died between harvesting and clearing.
        self.consumer.recover_dirty(self._persist_dirty_early)
        self.stats = Stats()
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._hashing: set[asyncio.Future[list[tuple[int, int, bytes]]]] = set()
        self._last_save = 0.0
        self._close_seq: int | None = None
        self._sink_durable_at_open = 0
        self._close_sent = False
        self._linger_since: float | None = None
        self._live_sent_at = 0.0  # monotonic time the last live frame was written
        self._channel: grpc.aio.Channel | None = None
        self._stub: replication_pb2_grpc.ReplicationStub | None = None
        self._zero = bytes(bg_chunk)
        # Set by a migration: chunks proven identical ahead of cutover, which
        # everything shipped from here on un-proves (see verifymap).
        self.verify_map: VerifyMap | None = None
        # Set by a seeded migration: (seed id, ring sequence the imported shadow starts after).
        self.seed: tuple[str, int] | None = None
        # Set by the daemon: the replication rate limits every frame takes its bytes from.
        self.limiters: Limiters | None = None
        self._bg_take: tuple[asyncio.Future[None], int] | None = None  # see _take_background

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Start shipping; a second call does nothing (the daemon starts every replicator it holds,
        migrations start theirs when they resume: two loops on one ring would fight over it)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"replicate-{self.spec.vdisk_id}")

    async def stop(self) -> None:
        """Stop shipping; persist what is durable.  The migration stays resumable."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._save(force=True)
        if self._channel is not None:
            await self._channel.close()
        self.consumer.close()
        if self._hashing:  # threads still reading self.fd (their callers already saw the channel close)
            await asyncio.gather(*self._hashing, return_exceptions=True)
        os.close(self.fd)

    async def _run(self) -> None:
        delay = 0.1
        while not self._stopping:
            try:
                await self._session()
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any broken session is retried: that is the point
                err = from_rpc_error(exc) if isinstance(exc, grpc.RpcError) else exc
                self.stats.last_error = f"{type(err).__name__}: {err}"
                log.warning("%s: session ended: %s; retrying in %.1fs", self.spec.vdisk_id, self.stats.last_error,
                            delay, exc_info=log.isEnabledFor(logging.DEBUG))
            finally:
                self.stats.connected = False
                self._reset()
            self.stats.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.cfg.reconnect_max_s)

    def _reset(self) -> None:
        """Put everything in flight back; the ring is read again from release."""
        self.core.stream_reset()
        self.consumer.rewind()
        self._close_sent = False
        self._save(force=True)

    # -- session --------------------------------------------------------------

    async def _open(self) -> replication_pb2_grpc.ReplicationStub:
        if self._stub is None:
            self._channel = channels.dial(self.spec.sink, self.cfg.max_message)
            self._stub = replication_pb2_grpc.ReplicationStub(self._channel)
        return self._stub

    async def _session(self) -> None:
        stub = await self._open()
        seed_id, base = self.seed or ("", 0)
        opened = await stub.OpenVdisk(pb.OpenVdiskRequest(vdisk_id=self.spec.vdisk_id, size_bytes=self.size,
                                                          migration_id=self.spec.migration_id, seed_id=seed_id,
                                                          seed_base_seq=base), timeout=30)
        if not self.known:
            # First contact: a shadow created just now reads as zeros, so
            # holes in the source need not be sent at all.
            self.shadow_zeroed = opened.created
            if opened.created:
                self.core.drop_holes(data_extents(self.fd, self.size))
            self.known = True
            self._save(force=True)
        self._sink_durable_at_open = opened.durable_seq
        self.core.durable_seq = max(self.core.durable_seq, opened.durable_seq)
        self.core.shipped_seq = self.core.durable_seq
        if opened.closed and self.consumer.closed_seq is None:
            self._close_seq = opened.durable_seq
        # Frames go out as bytes encoded by .wire: protobuf objects would copy
        # every payload twice more on the way.
        call = wire.replicate_call(self._channel)
        frame_no = 1
        await call.write(wire.encode(pb.Frame(frame_no=1, hello=pb.Hello(vdisk_id=self.spec.vdisk_id))))
        self.stats.connected = True
        self.stats.last_error = ""
        acks = asyncio.create_task(self._read_acks(call))
        reads: deque[_Read] = deque()
        try:
            while not self._stopping:
                if acks.done():
                    acks.result()  # raises the stream's error
                    raise LiftshiftError("sink closed the stream")
                progressed = False
                # 1. live records first (a small batch may wait a little for company)
                linger = 0.0
                if self._close_seq is None or not self._close_sent:
                    batch = None
                    if self._can_live():
                        linger = self._linger()
                        if not linger:
                            batch = self.consumer.read_batch(self.cfg.frame_bytes)
                    if batch is not None:
                        if self.verify_map is not None:
                            now = time.monotonic()
                            for rec in batch.records():
                                self.verify_map.touched(rec.offset, rec.length, now)
                        frame_no += 1
                        await self._take_live(batch.end - batch.start)
                        await call.write(self._live_frame(frame_no, batch))
                        self._live_sent_at = time.monotonic()
                        progressed = True
                        if batch.close_seq is not None:
                            self._close_seq = batch.close_seq
                            self._harvest()  # overflows before CLOSE are resynced after it
                # 2. completed reads, in plan order, once older records have shipped
                while reads and reads[0].task.done() and self.core.ready(reads[0].plan):
                    data, zero, digest = reads[0].task.result()
                    nbytes = 0 if zero else len(data)
                    took = not self.core.stale(reads[0].plan)  # a stale read is discarded: no need to wait
                    if not took:
                        self._drop_background_take()
                    elif not await self._take_background(nbytes):
                        break  # live records came while it waited for the rate limit: they go first
                    r = reads.popleft()
                    if self.core.read_done(r.plan) is None:
                        frame_no += 1
                        self.core.chunk_sent(frame_no, r.plan)
                        if self.verify_map is not None:
                            self.verify_map.touched(r.plan.offset, r.plan.length)
                        await call.write(self._chunk_frame(frame_no, r.plan, data, zero, digest))
                    elif took and self.limiters is not None:
                        self.limiters.refund(self.spec.migration_id, nbytes, live=False)  # stale: not sent
                    progressed = True
                # 3. CLOSE barrier once the CLOSE record is out
                if self._close_seq is not None and not self._close_sent and self.core.shipped_seq >= self._close_seq:
                    frame_no += 1
                    await call.write(wire.encode(pb.Frame(frame_no=frame_no,
                                                          close=pb.CloseBarrier(final_seq=self._close_seq))))
                    self._close_sent = True
                    progressed = True
                # 4. start reads
                while len(reads) < self.cfg.read_ahead and self.core.can_send(self.core.bg_chunk * (len(reads) + 1)):
                    plan = self.core.plan_read(self.consumer.ring_next_seq())
                    if plan is None:
                        break
                    reads.append(_Read(plan, self._start_read(plan)))
                    progressed = True
                if not progressed:
                    await self._idle(reads, linger)
        finally:
            for r in reads:
                r.task.cancel()
            self._drop_background_take()
            acks.cancel()
            call.cancel()


    def _can_live(self) -> bool:
        return self.core.can_send(self.cfg.frame_bytes)

    # -- rate limit -------------------------------------------------------------

    async def _take_live(self, nbytes: int) -> None:
        """Wait for the rate limit to let a live frame of ``nbytes`` go (live takes go first)."""
        lim = self.limiters
        if lim is not None and not lim.try_take(self.spec.migration_id, nbytes, live=True):
            await lim.take(self.spec.migration_id, nbytes, live=True)

    async def _take_background(self, nbytes: int) -> bool:
        """Wait for the rate limit to let the next chunk (``nbytes``) go.  False when live records
        became ready to send meanwhile: the caller ships them first and asks again for the same
        chunk, whose take keeps its place in the bucket's queue meanwhile.

        The bucket serves live takes before background ones across vdisks;
        this gives the same priority within one vdisk, whose loop would
        otherwise sit in a background take while its own guest writes wait.
        """
        take = self._bg_take[0] if self._bg_take is not None else None
        self._bg_take = None
        if take is None:
            lim = self.limiters
            if not nbytes or lim is None or lim.try_take(self.spec.migration_id, nbytes, live=False):
                return True  # a hole (nothing to send), unlimited, or tokens to spare: no task, no wait
            take = asyncio.ensure_future(lim.take(self.spec.migration_id, nbytes, live=False))
        try:
            while not take.done():
                if self._live_ready():
                    self._bg_take, take = (take, nbytes), None
                    return False
                if self.consumer.pending_bytes():
                    # Records wait, held back by linger or credits: look again soon.
                    await asyncio.wait([take], timeout=self._linger() or _RECHECK_S)
                    continue
                wait = self.cfg.harvest_interval_ms / 1000
                bell = asyncio.ensure_future(self.consumer.wait_async(wait))
                try:
                    await asyncio.wait([take, bell], timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not bell.done():
                        bell.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await bell
            take.result()  # raises what the take raised
            take = None
            return True
        finally:
            if take is not None:  # the session is going down: give the place (and any grant) back
                self._bg_take = (take, nbytes)
                self._drop_background_take()

    def _drop_background_take(self) -> None:
        """Give up a take kept for the next chunk (the session ended, or the chunk went stale),
        returning what it was granted."""
        if self._bg_take is None:
            return
        take, nbytes = self._bg_take
        self._bg_take = None
        if not take.done():
            take.cancel()  # the bucket gives back a grant that raced the cancel
        elif not take.cancelled() and take.exception() is None and self.limiters is not None:
            self.limiters.refund(self.spec.migration_id, nbytes, live=False)

    def _live_ready(self) -> bool:
        """Live records wait in the ring and step 1 of the loop would send them now."""
        return ((self._close_seq is None or not self._close_sent) and self._can_live()
                and self.consumer.pending_bytes() > 0
                and not self._linger())

    def _live_frame(self, frame_no: int, batch: Batch) -> bytes:
        used = batch.end - batch.start
        data = void_corrupt(batch) if batch.corrupt else (
            batch.data if len(batch.data) == used else memoryview(batch.data)[:used])
        ranges = None
        if self.core.tracking_ranges:
            ranges = [(r.seq, r.offset, r.length) for r in batch.records()]
        assert batch.first_seq is not None and batch.last_seq is not None
        if batch.first_seq <= self._sink_durable_at_open:
            self.core.progress.resent_bytes += used  # the sink held (some of) these already
        self.core.live_shipped(frame_no, batch.first_seq, batch.last_seq, used, batch.end, batch.first_time_ns,
                               batch.count, ranges)
        return wire.live_frame(frame_no, data, batch.first_seq, batch.last_seq, batch.count)

    @staticmethod
    def _chunk_frame(frame_no: int, plan: ReadPlan, data: bytes | bytearray, zero: bool, digest: int) -> bytes:
        return wire.chunk_frame(frame_no, plan.offset, plan.length, b"" if zero else data, zero, digest,
                                _KIND[plan.kind])

    def _linger(self) -> float:
        """Seconds to hold back a small live frame (0: send it now).

        Every frame costs both daemons a fixed ~0.5 ms of CPU, so a record
        sent alone costs far more than its bytes: at 20,000 writes/s frames
        of a few records took most of the CPU.  Like Nagle's algorithm: when
        frames are already in flight (the sink is busy with them anyway) a
        batch smaller than a quarter frame waits up to _LINGER_S for more
        records.  Also when nothing is in flight but a live frame went out
        in the last _BUSY_S: a guest writing steadily with a fast sink would
        otherwise get one small frame per ack round trip (fio at 16,000
        writes/s: ~1,000 frames/s, most of both daemons' CPU).  A quiet
        guest's write goes at once."""
        pending = self.consumer.pending_bytes()
        now = time.monotonic()
        busy = self.core.inflight_bytes or now - self._live_sent_at < _BUSY_S
        if not pending or pending >= self.cfg.frame_bytes // 4 or not busy:
            self._linger_since = None
            return 0.0
        if self._linger_since is None:
            self._linger_since = now
        left = self._linger_since + _LINGER_S - now
        if left <= 0:
            self._linger_since = None
            return 0.0
        return left

    async def _idle(self, reads: deque[_Read], linger: float = 0.0) -> None:
        """Sleep until the ring rings, a read completes, an ack arrives, or the
        harvest interval passes; while a small batch lingers, until its time is
        up (the bell is not needed: the records are already there)."""
        self._wake.clear()
        waits: list[asyncio.Future[object]] = [asyncio.ensure_future(self._wake.wait())]
        if reads and not reads[0].task.done():
            waits.append(reads[0].task)  # type: ignore[arg-type]
        bell = None
        try:
            if linger:
                await asyncio.wait(waits, timeout=linger, return_when=asyncio.FIRST_COMPLETED)
            else:
                if self._can_live() and self._close_seq is None:
                    bell = asyncio.ensure_future(self.consumer.wait_async(self.cfg.harvest_interval_ms / 1000))
                    waits.append(bell)
                await asyncio.wait(waits, timeout=self.cfg.harvest_interval_ms / 1000,
                                   return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also when the session is cancelled (stop): a bell left waiting would
            # touch the ring's bell fd after stop() closed it.
            for w in waits:
                if w is not bell and not (reads and w is reads[0].task):
                    w.cancel()
            if bell is not None and not bell.done():
                bell.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await bell
        self._harvest()

    def _harvest(self) -> None:
        """Take the ring's overflow bitmap; persist it before acting on it."""
        self.consumer.take_dirty(self._persist_dirty)

    def _persist_dirty_early(self, ranges: list[tuple[int, int]]) -> None:
        self.core.mark_dirty(ranges)
        todo, dirty = self.core.snapshot()
        self.store.save(self.spec.vdisk_id, self.size, self.spec.sink, self.shadow_zeroed, todo, dirty,
                        self.core.progress.resent_bytes, 0)

    def _persist_dirty(self, ranges: list[tuple[int, int]]) -> None:
        """Record harvested ranges durably before the ring's bits are cleared."""
        self.core.mark_dirty(ranges)
        self._save(force=True)

    def _start_read(self, plan: ReadPlan) -> asyncio.Future[_Chunk]:
        """Read ``plan``'s range on the event loop when that cannot wait for a
        disk (:mod:`~liftshift.daemon.sourceio`), else in a worker thread."""
        if self._inline_reads != "thread":
            fut: asyncio.Future[_Chunk] = asyncio.get_running_loop().create_future()
            try:
                data = sourceio.read_inline(self.fd, self._inline_reads, plan.offset, plan.length)
                if data is not None:
                    # A hole (the source was trimmed since the copy began)
                    # reads as zeros and goes as ZERO, as from _read.
                    fut.set_result(self._checked(plan, data))
                    return fut
            except Exception as e:  # noqa: BLE001 - surfaces where a thread's read error would
                fut.set_exception(e)
                return fut
        return asyncio.ensure_future(asyncio.to_thread(self._read, plan))

    def _read(self, plan: ReadPlan) -> _Chunk:
        """Read a range of the source (in a worker thread); holes are not read."""
        end = plan.offset + plan.length
        try:
            hole = os.lseek(self.fd, plan.offset, os.SEEK_DATA) >= end
        except OSError:
            hole = True  # ENXIO: no data at or after offset
        if hole:
            return b"", True, _EMPTY_XXH3
        return self._checked(plan, os.pread(self.fd, plan.length, plan.offset))

    def _checked(self, plan: ReadPlan, data: bytes | bytearray) -> _Chunk:
        """(data, zero, XXH3-64) of a chunk read from the source."""
        if len(data) != plan.length:
            raise LiftshiftError(f"short read of {self.spec.source} at {plan.offset}: {len(data)} of {plan.length}")
        if data == self._zero[: plan.length]:
            return b"", True, _EMPTY_XXH3
        return data, False, xxhash.xxh3_64_intdigest(data)

    async def _read_acks(self, call: grpc.aio.StreamStreamCall) -> None:
        async for ack in call:
            got = self.core.acked(ack.durable_frame, ack.durable_seq, time.monotonic_ns())
            if got.release_pos is not None:
                self.consumer.release(got.release_pos)
            self.stats.lag_samples_ns.extend(got.lag_ns)
            self.stats.sink_acked(ack, got.chunk_bytes + got.live_bytes)
            if ack.closed and self._close_seq is not None:
                self.stats.closed = True
            self._save()
            self._wake.set()

    def _save(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_save < _SAVE_INTERVAL_S:
            return
        self._last_save = now
        todo, dirty = self.core.snapshot()
        self.store.save(self.spec.vdisk_id, self.size, self.spec.sink, self.shadow_zeroed, todo, dirty,
                        self.core.progress.resent_bytes, self.core.inflight_chunk_bytes())

    # -- reporting ----------------------------------------------------------------

    def state(self) -> str:
        if self.stats.closed and self.core.copy_done():
            return "closed"
        if self.core.copy_done() and self.core.dirty_bytes == 0:
            return "converged"
        return "copying"

    def lag_seconds(self) -> float:
        """Age of the oldest record shipped but not yet durable (0 when none)."""
        oldest = self.core.oldest_unacked_time_ns()
        return 0.0 if oldest is None else max(0.0, (time.monotonic_ns() - oldest) / 1e9)

    # -- verification ----------------------------------------------------------------

    async def hashes_match(self, offset: int, length: int, chunk: int) -> list[tuple[int, int]]:
        """Ranges of ``[offset, offset+length)`` whose XXH3-128 differs between source and shadow."""
        stub = await self._verify_stub()
        resp = await channels.call(stub.HashRanges(pb.HashRangesRequest(vdisk_id=self.spec.vdisk_id, offset=offset,
                                                                        length=length, chunk_size=chunk), timeout=600),
                                   f"hashes of {self.spec.vdisk_id}")
        local = await self._hash_locally(lambda: hashing.hash_ranges(self.fd, offset, length, chunk))
        remote = {(h.offset, h.length): h.xxh3_128 for h in resp.hashes}
        return [(off, n) for off, n, digest in local if remote.get((off, n)) != digest]

    async def mismatched(self, ranges: list[tuple[int, int]], chunk: int) -> list[tuple[int, int]]:
        """Chunks of ``ranges`` whose XXH3-128 differs between source and shadow (one call to the sink)."""
        stub = await self._verify_stub()
        req = pb.HashRangesRequest(vdisk_id=self.spec.vdisk_id, chunk_size=chunk,
                                   ranges=[pb.ByteRange(offset=o, length=n) for o, n in ranges])
        remote_call = channels.call(stub.HashRanges(req, timeout=600), f"hashes of {self.spec.vdisk_id}")

        def local_hashes() -> list[tuple[int, int, bytes]]:
            return [h for o, n in ranges for h in hashing.hash_ranges(self.fd, o, n, chunk)]

        local, resp = await asyncio.gather(self._hash_locally(local_hashes), remote_call)
        remote = {(h.offset, h.length): h.xxh3_128 for h in resp.hashes}
        return [(off, n) for off, n, digest in local if remote.get((off, n)) != digest]

    async def _verify_stub(self) -> replication_pb2_grpc.ReplicationStub:
        if self._stopping:  # its channel is closed (or closing)
            raise Unavailable(f"{self.spec.vdisk_id}: replication has stopped")
        return await self._open()

    async def _hash_locally(self, work: Callable[[], list[tuple[int, int, bytes]]]) -> list[tuple[int, int, bytes]]:
        """Run ``work`` (hashing the source through ``self.fd``) in a thread that
        stop() waits for before it closes the fd: a closed fd number can be
        reused at once by another open file."""
        if self._stopping:
            raise Unavailable(f"{self.spec.vdisk_id}: replication has stopped")
        fut = asyncio.ensure_future(asyncio.to_thread(work))
        self._hashing.add(fut)
        fut.add_done_callback(self._hashing.discard)
        return await fut

    def repair(self, ranges: list[tuple[int, int]]) -> None:
        """Send these ranges again (they failed verification)."""
        self.core.mark_dirty(ranges)
        self._save(force=True)
        self._wake.set()

    def drained(self) -> bool:
        """Nothing left to read or ship, and everything shipped is durable."""
        return self.core.copy_done() and not self.core.inflight_bytes and self.consumer.pending_bytes() == 0
