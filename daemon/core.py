"""Replication decisions for one vdisk, with no I/O.

Design note
-----------
The adapter (:mod:`liftshift.daemon.vdisk`) reads rings and images and talks
gRPC; every decision lives here, in a plain class that takes sequence
numbers, ranges and ``now`` and says what to read, what to ship and what has
become durable.  It is tested exhaustively in memory (``tests/test_core.py``).

What must reach the shadow:

* **background**: every chunk (``bg_chunk``, 1 MiB) of the source once, in a
  bitmap of chunks still to copy; chunks that are holes in the source are
  dropped up front when the shadow started out zeroed;
* **dirty**: units (``unit``, the ring's dirty-bitmap granularity) whose
  writes went to the overflow bitmap, failed their checksum, or whose
  background read lost a race (rule 3 below); they are read again from the
  source;
* **live**: ring records, shipped in sequence order by the adapter.

Invariant 3 (DESIGN.md): before a chunk is read, note ``P``, the ring's next
sequence (its ``next_seq`` word).  Every record below ``P`` was published
before the read started, so its write is older than what the read sees: the
chunk ships only after all of them (:meth:`VdiskSync.ready`), otherwise an
old record applied after the chunk could undo a newer write that reached the
chunk through the overflow bitmap.  When the read completes, if a record with
sequence >= ``P`` touching the chunk has already been shipped, the chunk may
be older than that record: it is discarded and its range marked dirty.
Otherwise it ships ahead of every record not yet shipped.  Two reads of
overlapping ranges are never outstanding at once, so chunks cannot overtake
each other either.

Durability: the adapter numbers frames; when the sink acks ``durable_frame``
every frame up to it is durable: chunks are done for good, and the ring can be
released up to the end of the last durable live frame.  :meth:`snapshot`
gives the state to persist — chunks and units still to copy *including* the
ones in flight — so a daemon crash re-copies at most what was in flight.
On a broken stream :meth:`stream_reset` puts everything in flight back.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

BACKGROUND, RESYNC, REPAIR, LIVE = "background", "resync", "repair", "live"


@dataclass(frozen=True)
class ReadPlan:
    """Read ``[offset, offset+length)`` of the source; ``p_seq`` is rule 3's P."""

    id: int
    offset: int
    length: int
    kind: str
    p_seq: int


@dataclass(frozen=True)
class ChunkDiscarded:
    """A read lost the race with a live write (rule 3) and was re-dirtied."""

    plan: ReadPlan
    by_seq: int


@dataclass(frozen=True)
class FramesDurable:
    """What an ack made durable."""

    release_pos: int | None  # ring position to release up to, if it moved
    durable_seq: int
    chunk_bytes: int
    live_bytes: int
    lag_ns: list[int]  # per durable live frame: now - commit time of its oldest record


@dataclass
class _Frame:
    kind: str
    nbytes: int
    plan: ReadPlan | None = None
    end_pos: int = 0
    last_seq: int = 0
    first_time_ns: int = 0


@dataclass
class Progress:
    """Counters the daemon reports per vdisk."""

    background_total: int = 0
    background_done: int = 0
    live_bytes: int = 0
    live_records: int = 0
    chunk_bytes_sent: int = 0
    resent_bytes: int = 0
    discarded_chunks: int = 0
    dirty_units_marked: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class VdiskSync:
    """Replication state of one vdisk (see the module note)."""

    def __init__(self, size: int, *, bg_chunk: int = 1 << 20, unit: int = 64 << 10,
                 max_inflight: int = 32 << 20, to_copy: bytes | None = None,
                 dirty: list[int] | None = None, durable_seq: int = 0) -> None:
        if bg_chunk % unit:
            raise ValueError(f"background chunk {bg_chunk} is not a multiple of the dirty unit {unit}")
        self.size = size
        self.bg_chunk = bg_chunk
        self.unit = unit
        self.max_inflight = max_inflight
        self.nchunks = (size + bg_chunk - 1) // bg_chunk
        self._todo = bytearray(to_copy) if to_copy is not None else bytearray([1]) * self.nchunks
        if len(self._todo) != self.nchunks:
            raise ValueError("persisted background state does not match the disk size")
        self._cursor = 0
        self._dirty: set[int] = set(dirty or ())
        self._plans: dict[int, ReadPlan] = {}  # outstanding reads
        self._next_id = 1
        self._p_seq = 1
        self._recent: deque[tuple[int, int, int]] = deque()  # (seq, offset, end) shipped while reads outstand
        self._frames: dict[int, _Frame] = {}
        self.inflight_bytes = 0
        self.shipped_seq = durable_seq  # highest live sequence handed to the stream
        self._resumed = True
        self.durable_seq = durable_seq
        self.progress = Progress()
        self.progress.background_total = self._chunk_bytes_total()
        self.progress.background_done = self.progress.background_total - self._chunk_bytes_todo()

    # -- background bookkeeping ------------------------------------------

    def _chunk_len(self, idx: int) -> int:
        return min(self.bg_chunk, self.size - idx * self.bg_chunk)

    def _chunk_bytes_total(self) -> int:
        return self.size

    def _chunk_bytes_todo(self) -> int:
        return sum(self._chunk_len(i) for i, v in enumerate(self._todo) if v)

    def drop_holes(self, data_extents: list[tuple[int, int]]) -> None:
        """Forget chunks with no data in the source (the shadow reads zeros there)."""
        keep = bytearray(self.nchunks)
        for off, length in data_extents:
            for idx in range(off // self.bg_chunk, (off + length - 1) // self.bg_chunk + 1):
                if idx < self.nchunks:
                    keep[idx] = 1
        for idx in range(self.nchunks):
            if self._todo[idx] and not keep[idx]:
                self._todo[idx] = 0
                self.progress.background_done += self._chunk_len(idx)

    def mark_dirty(self, ranges: list[tuple[int, int]]) -> None:
        """Ranges whose content must be read from the source again."""
        for off, length in ranges:
            if length <= 0:
                continue
            first, last = off // self.unit, (min(off + length, self.size) - 1) // self.unit
            for u in range(first, last + 1):
                if u not in self._dirty:
                    self._dirty.add(u)
                    self.progress.dirty_units_marked += 1

    @property
    def dirty_bytes(self) -> int:
        """Bytes still to resync (outstanding reads and in-flight chunks excluded)."""
        return len(self._dirty) * self.unit

    @property
    def background_left(self) -> int:
        return self.progress.background_total - self.progress.background_done

    def copy_done(self) -> bool:
        """No background chunk or dirty unit is left to read, ship or make durable."""
        return (1 not in self._todo and not self._dirty and not self._plans
                and not any(f.plan for f in self._frames.values()))

    # -- reads -----------------------------------------------------------

    def _overlaps_outstanding(self, off: int, end: int) -> bool:
        return any(p.offset < end and off < p.offset + p.length for p in self._plans.values())

    def plan_read(self, next_seq: int) -> ReadPlan | None:
        """The next range to read from the source, or None (nothing, or it
        would overlap an outstanding read).  Dirty units come first.
        ``next_seq`` is the ring's next sequence, read just before the read."""
        self._p_seq = next_seq
        plan = self._plan_dirty() or self._plan_background()
        if plan is not None:
            self._plans[plan.id] = plan
        return plan

    def _new_plan(self, off: int, length: int, kind: str) -> ReadPlan:
        plan = ReadPlan(self._next_id, off, length, kind, self._p_seq)
        self._next_id += 1
        return plan

    def _plan_dirty(self) -> ReadPlan | None:
        if not self._dirty:
            return None
        for u in sorted(self._dirty):
            off = u * self.unit
            if self._overlaps_outstanding(off, off + self.unit):
                continue
            n = 1
            per = self.bg_chunk // self.unit
            while n < per and u + n in self._dirty and not self._overlaps_outstanding(
                    (u + n) * self.unit, (u + n + 1) * self.unit):
                n += 1
            for k in range(n):
                self._dirty.discard(u + k)
            return self._new_plan(off, min(n * self.unit, self.size - off), RESYNC)
        return None

    def _plan_background(self) -> ReadPlan | None:
        # The first chunk still to copy at or after the cursor, wrapping around.
        # bytearray.find is a memchr: the send loop asks on every pass, and
        # once the copy is done a Python scan of every chunk cost more than
        # shipping a live frame.
        n = self.nchunks
        todo = self._todo
        for start, stop in ((self._cursor, n), (0, self._cursor)):
            idx = todo.find(1, start, stop)
            while idx != -1:
                off = idx * self.bg_chunk
                length = self._chunk_len(idx)
                if not self._overlaps_outstanding(off, off + length):
                    todo[idx] = 0
                    self._cursor = (idx + 1) % n
                    return self._new_plan(off, length, BACKGROUND)
                idx = todo.find(1, idx + 1, stop)
        return None

    def plan_repair(self, offset: int, length: int, next_seq: int) -> ReadPlan:
        """A read to re-send a range that failed verification."""
        self._p_seq = next_seq
        plan = self._new_plan(offset, length, REPAIR)
        self._plans[plan.id] = plan
        return plan

    @property
    def tracking_ranges(self) -> bool:
        """True while reads are outstanding: :meth:`live_shipped` needs ranges."""
        return bool(self._plans)

    def ready(self, plan: ReadPlan) -> bool:
        """True once every record older than the read has been shipped."""
        return self.shipped_seq >= plan.p_seq - 1

    def _loser(self, plan: ReadPlan) -> int | None:
        end = plan.offset + plan.length
        return next((seq for seq, off, rend in self._recent
                     if seq >= plan.p_seq and off < end and plan.offset < rend), None)

    def stale(self, plan: ReadPlan) -> bool:
        """True if :meth:`read_done` would discard this read now (a live write it may predate has
        shipped): the caller need not wait for anything, a rate limit say, before finding out."""
        return self._loser(plan) is not None

    def read_done(self, plan: ReadPlan) -> ChunkDiscarded | None:
        """A read finished: None means ship it now; else it was re-dirtied."""
        del self._plans[plan.id]
        loser = self._loser(plan)
        if not self._plans:
            self._recent.clear()
        if loser is None:
            return None
        self._requeue(plan)  # read again later, as background or as dirty units
        self.progress.discarded_chunks += 1
        return ChunkDiscarded(plan, loser)

    def read_failed(self, plan: ReadPlan) -> None:
        """The read itself failed: put the range back to be tried again."""
        self._plans.pop(plan.id, None)
        self._requeue(plan)

    def _requeue(self, plan: ReadPlan) -> None:
        if plan.kind == BACKGROUND:
            self._todo[plan.offset // self.bg_chunk] = 1
        else:
            self.mark_dirty([(plan.offset, plan.length)])

    # -- frames ------------------------------------------------------------

    def can_send(self, nbytes: int) -> bool:
        """Credit check: bytes in flight stay under ``max_inflight``."""
        return not self._frames or self.inflight_bytes + nbytes <= self.max_inflight

    def chunk_sent(self, frame_no: int, plan: ReadPlan) -> None:
        self._frames[frame_no] = _Frame(plan.kind, plan.length, plan=plan)
        self.inflight_bytes += plan.length
        self.progress.chunk_bytes_sent += plan.length

    def live_shipped(self, frame_no: int, first_seq: int, last_seq: int, nbytes: int, end_pos: int,
                     first_time_ns: int, records: int, ranges: list[tuple[int, int, int]] | None = None) -> None:
        """A live frame went out; ``ranges`` are (seq, offset, length) of its
        records, needed only while :attr:`tracking_ranges`."""
        if self._resumed:
            # First frame after (re)connecting: the ring is re-read from its
            # release position, which may be behind what the sink holds.
            if first_seq > self.shipped_seq + 1:
                raise ValueError(f"live frame starts at {first_seq}, after a gap from {self.shipped_seq}")
            self._resumed = False
        elif first_seq != self.shipped_seq + 1:
            raise ValueError(f"live frame starts at {first_seq}, expected {self.shipped_seq + 1}")
        self.shipped_seq = last_seq
        if self._plans:
            if ranges is None:
                raise ValueError("reads are outstanding: live_shipped needs the records' ranges")
            self._recent.extend((seq, off, off + length) for seq, off, length in ranges)
        self._frames[frame_no] = _Frame(LIVE, nbytes, end_pos=end_pos, last_seq=last_seq,
                                        first_time_ns=first_time_ns)
        self.inflight_bytes += nbytes
        self.progress.live_bytes += nbytes
        self.progress.live_records += records

    def acked(self, durable_frame: int, durable_seq: int, now_ns: int) -> FramesDurable:
        """The sink made every frame up to ``durable_frame`` durable."""
        release = None
        chunk_bytes = live_bytes = 0
        lags = []
        for no in sorted(k for k in self._frames if k <= durable_frame):
            f = self._frames.pop(no)
            self.inflight_bytes -= f.nbytes
            if f.plan is not None:
                chunk_bytes += f.nbytes
                if f.kind == BACKGROUND:
                    self.progress.background_done += f.nbytes
            else:
                live_bytes += f.nbytes
                release = f.end_pos
                lags.append(now_ns - f.first_time_ns)
        self.durable_seq = max(self.durable_seq, durable_seq)
        return FramesDurable(release, self.durable_seq, chunk_bytes, live_bytes, lags)

    def inflight_chunk_bytes(self) -> int:
        """Bytes of chunks sent and not yet durable."""
        return sum(f.nbytes for f in self._frames.values() if f.plan is not None)

    def oldest_unacked_time_ns(self) -> int | None:
        """Commit time of the oldest live record shipped but not yet durable."""
        times = [f.first_time_ns for f in self._frames.values() if f.kind == LIVE]
        return min(times) if times else None

    def stream_reset(self) -> int:
        """The stream broke: requeue every chunk in flight or being read and
        forget live frames (the ring is re-read from its release position).
        Returns the bytes that will be sent again."""
        resent = 0
        for f in self._frames.values():
            resent += f.nbytes
            if f.plan is not None:
                self._requeue(f.plan)
        for plan in self._plans.values():
            self._requeue(plan)
        self._frames.clear()
        self._plans.clear()
        self._recent.clear()
        self.inflight_bytes = 0
        self.shipped_seq = self.durable_seq
        self._resumed = True
        self.progress.resent_bytes += resent
        return resent

    # -- persistence --------------------------------------------------------

    def snapshot(self) -> tuple[bytes, list[int]]:
        """(background chunks still to copy, dirty units) counting everything
        not yet durable as still to do."""
        todo = bytearray(self._todo)
        dirty = set(self._dirty)
        pending = [f.plan for f in self._frames.values() if f.plan is not None] + list(self._plans.values())
        for plan in pending:
            if plan.kind == BACKGROUND:
                todo[plan.offset // self.bg_chunk] = 1
            else:
                dirty.update(range(plan.offset // self.unit, (plan.offset + plan.length - 1) // self.unit + 1))
        return bytes(todo), sorted(dirty)
