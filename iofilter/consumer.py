"""Python ring consumer: what the source daemon reads guest writes with.

Two positions: the read cursor lives in this object's memory and moves as
records are read; the shared ``release`` position moves only when the caller
says so (the daemon releases after the sink's durable ack).  A new consumer
starts reading at ``release``, so everything not yet made durable is read
again after a crash.

Records are copied out of shared memory a region at a time (a
:class:`Batch`), and every payload's XXH3-64 is verified before the batch is
handed out; a record whose checksum fails becomes a :class:`CorruptRecord`,
is never yielded as data, and its range joins the consumer's private dirty set,
which :meth:`RingConsumer.take_dirty` returns together with the overflow
bitmap.  The consumer never busy-spins: :meth:`RingConsumer.wait` and
:meth:`RingConsumer.wait_async` sleep on the doorbell FIFO.
"""

from __future__ import annotations

import asyncio
import os
import select
import struct
from collections.abc import Callable, Iterator
from typing import NamedTuple

import xxhash

from . import cproducer
from .ring import (
    FLAG_CLOSE,
    HEADER,
    REC,
    RECORD_HEADER,
    WORD_BUSY,
    WORD_LEN_MASK,
    WORD_PAD,
    Mapped,
    RingCorruptError,
    bell_path,
)

_Q = struct.Struct("<Q")


class Record(NamedTuple):
    """One captured write (or ZERO / TRIM / CLOSE), payload copied out.

    A NamedTuple rather than a frozen dataclass: it is built once per guest
    write on the consumer's hot path, and tuple construction is several
    times cheaper.
    """

    seq: int
    offset: int
    length: int
    flags: int
    payload: bytes | memoryview
    time_ns: int
    end: int  # ring position just past this record: release(end) frees it


class CorruptRecord(NamedTuple):
    """A record whose payload failed its XXH3-64: never applied, range dirtied."""

    seq: int
    offset: int
    length: int
    flags: int
    end: int
    expected: int
    actual: int


class Batch:
    """A verified region of records copied out of the ring.

    ``data`` holds the raw records exactly as the ring laid them out (see
    :mod:`liftshift.iofilter.ring`), PAD records included; ``corrupt`` lists
    the records whose checksum failed, which :meth:`records` skips and which
    must never be applied.  ``end`` is the ring position to release once the
    batch is durable elsewhere.
    """

    __slots__ = ("data", "start", "end", "count", "payload_bytes", "first_seq", "last_seq",
                 "first_time_ns", "last_time_ns", "close_seq", "corrupt")

    def __init__(self, data: bytes, start: int) -> None:
        self.data = data
        self.start = start
        self.end = start
        self.count = 0
        self.payload_bytes = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.first_time_ns = 0
        self.last_time_ns = 0
        self.close_seq: int | None = None
        self.corrupt: list[CorruptRecord] = []

    def records(self) -> Iterator[Record]:
        """The batch's good records in order (payloads are memoryviews of ``data``)."""
        yield from iter_records(self.data, self.start, self.end - self.start,
                                {c.seq for c in self.corrupt} if self.corrupt else None)


def iter_records(data: bytes, start: int, used: int, skip: set[int] | None = None) -> Iterator[Record]:
    """Records in ``data[:used]`` (raw ring layout read at position ``start``),
    without PAD records and without the sequences in ``skip``."""
    mv = memoryview(data)
    o = 0
    while o < used:
        if used - o < RECORD_HEADER:
            return  # a short tail PAD
        word, seq, offset, length, flags, paylen, _digest, time_ns = REC.unpack_from(data, o)
        end = o + (word & WORD_LEN_MASK)
        if not word & WORD_PAD and not (skip and seq in skip):
            yield Record(seq, offset, length, flags, mv[o + RECORD_HEADER : o + RECORD_HEADER + paylen],
                         time_ns, start + end)
        o = end


class RingConsumer:
    """Read records of one ring in order; release them explicitly."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._m = Mapped(path)
        self.path = self._m.path
        self.geometry = self._m.geometry
        self._mm = self._m.mm
        self._commit_off = HEADER["commit"][0]
        self._release_off = HEADER["release"][0]
        self._waiting_off = HEADER["consumer_waiting"][0]
        self.read_pos = self._get_release()
        self.release_pos = self.read_pos
        self.next_seq: int | None = None  # learned from the first record read
        self.closed_seq: int | None = None
        self._corrupt: list[tuple[int, int]] = []
        self._zero_bitmap = bytes(self.geometry.bitmap_bytes)
        self._bell = os.open(bell_path(self.path), os.O_RDWR | os.O_NONBLOCK)
        self._xxh = xxhash.xxh3_64_intdigest
        self._scan = cproducer.scanner()  # plain records checked in C when the library is there
        self._set_waiting(0)

    # -- positions --------------------------------------------------------

    def _get_release(self) -> int:
        return _Q.unpack_from(self._mm, self._release_off)[0]

    def commit_pos(self) -> int:
        """The shared commit position (aligned 8-byte load)."""
        return _Q.unpack_from(self._mm, self._commit_off)[0]

    def ring_next_seq(self) -> int:
        """The producers' next sequence number: every record below it has been
        reserved (its write already reached the vdisk)."""
        return self._m.get("next_seq")

    def pending_bytes(self) -> int:
        """Committed bytes not yet read."""
        return self.commit_pos() - self.read_pos

    def release(self, pos: int) -> None:
        """Free ring space up to ``pos`` (a record's ``end``); never moves back."""
        if pos > self.read_pos:
            raise ValueError(f"cannot release {pos}: only {self.read_pos} has been read")
        if pos > self.release_pos:
            self.release_pos = pos
            _Q.pack_into(self._mm, self._release_off, pos)

    def rewind(self) -> None:
        """Forget unreleased reads: the next read starts at ``release`` again."""
        self.read_pos = self.release_pos
        self.next_seq = None

    # -- reading ----------------------------------------------------------

    def read_batch(self, max_bytes: int = 1 << 20) -> Batch | None:
        """Copy out and verify the committed records after the read cursor.

        One contiguous region of at most ``max_bytes`` (never across the wrap;
        always at least one whole record) is copied out of shared memory in a
        single copy, then every record's sequence and XXH3-64 are checked
        without building per-record objects (the daemon ships the region as
        it is).  Returns None when nothing is committed.
        """
        commit = _Q.unpack_from(self._mm, self._commit_off)[0]
        pos = self.read_pos
        if pos >= commit:
            return None
        m = self._m
        at = pos & m.mask
        start = m.data_offset + at
        avail = min(commit - pos, m.capacity - at)
        first = _Q.unpack_from(self._mm, start)[0] & WORD_LEN_MASK
        span = min(avail, max(max_bytes, first))  # one whole record always fits
        batch = Batch(self._mm[start : start + span], pos)
        used = self._verify(batch)
        if used == 0:
            raise RingCorruptError(self.path, f"no record fits in the {span} committed bytes at position {pos}")
        batch.end = pos + used
        self.read_pos = batch.end
        if batch.count == 0:
            # Only the PAD before the wrap: the records go on at the start.
            return self.read_batch(max_bytes) if batch.end < commit else None
        if batch.close_seq is not None:
            self.closed_seq = batch.close_seq
        return batch

    def read(self, max_bytes: int = 1 << 20) -> list[Record | CorruptRecord]:
        """Like :meth:`read_batch`, as a list of records (corrupt ones included)."""
        batch = self.read_batch(max_bytes)
        if batch is None:
            return []
        out: list[Record | CorruptRecord] = list(batch.records())
        if batch.corrupt:
            out.extend(batch.corrupt)
            out.sort(key=lambda r: r.seq)
        return out

    def _verify(self, batch: Batch) -> int:
        """Check the whole records at the start of ``batch.data``; fill in the
        batch's summary and return the bytes they use.  The hot loop is one
        header unpack and one checksum per record; anything unusual (PAD, a
        record cut by the region's end, corruption) takes the slow branch."""
        blob = batch.data
        pos = batch.start
        mv = memoryview(blob)
        n = len(blob)
        unpack = REC.unpack_from
        xxh = self._xxh
        expect = self.next_seq
        count = payload = 0
        last = (0, 0, 0)
        o = 0
        if self._scan is not None:
            # The plain records in one C call; the loop below takes over at the first other one.
            o, count, payload, last = self._scan(blob, expect)
            if count:
                expect = last[0] + 1
        while n - o >= RECORD_HEADER:
            word, seq, offset, length, flags, paylen, digest, time_ns = unpack(blob, o)
            end = o + (word & WORD_LEN_MASK)
            if word >> 62 or end > n or paylen > end - o - RECORD_HEADER or seq != expect:
                if word & WORD_BUSY or (word & WORD_LEN_MASK) < 8 or word & 7:
                    raise RingCorruptError(self.path, f"bad record word {word:#x} at position {pos + o}")
                if end > n:
                    break  # cut by the end of the region: read it next time
                if word & WORD_PAD:
                    o = end
                    continue
                if paylen > end - o - RECORD_HEADER:
                    raise RingCorruptError(self.path, f"record {seq} payload {paylen} exceeds its size")
                if expect is not None and seq != expect:
                    raise RingCorruptError(self.path, f"sequence {seq} at position {pos + o}, expected {expect}")
            actual = xxh(mv[o + RECORD_HEADER : o + RECORD_HEADER + paylen])
            if actual != digest:
                batch.corrupt.append(CorruptRecord(seq, offset, length, flags, pos + end, digest, actual))
                self._corrupt.append((offset, length))
            expect = seq + 1
            count += 1
            payload += paylen
            last = (seq, flags, time_ns)
            o = end
        if 8 <= n - o < RECORD_HEADER:
            # A tail shorter than a record header can only be a PAD.
            word = _Q.unpack_from(blob, o)[0]
            if word & WORD_PAD and o + (word & WORD_LEN_MASK) == n and (pos + n) & self._m.mask == 0:
                o = n
        if count:
            first = 0
            while REC.unpack_from(blob, first)[0] & WORD_PAD:  # at most one PAD, before the wrap
                first += REC.unpack_from(blob, first)[0] & WORD_LEN_MASK
            _w, batch.first_seq, *_rest, batch.first_time_ns = REC.unpack_from(blob, first)
            batch.count, batch.payload_bytes = count, payload
            batch.last_seq, flags, batch.last_time_ns = last
            if flags & FLAG_CLOSE:
                batch.close_seq = batch.last_seq
        self.next_seq = expect
        return o

    # -- waiting ----------------------------------------------------------

    def _set_waiting(self, value: int) -> None:
        _Q.pack_into(self._mm, self._waiting_off, value)

    def _arm(self) -> bool:
        """Say we are waiting; return True when nothing arrived meanwhile."""
        self._set_waiting(1)
        self._m.fence()  # the store must be visible before we re-read commit
        if self.commit_pos() > self.read_pos:
            self._set_waiting(0)
            return False
        return True

    def _drain_bell(self) -> None:
        try:
            while os.read(self._bell, 4096):
                pass
        except BlockingIOError:
            pass

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a record is committed or ``timeout`` passes; True if data."""
        if not self._arm():
            return True
        try:
            select.select([self._bell], [], [], timeout)
            self._drain_bell()
        finally:
            self._set_waiting(0)
        return self.commit_pos() > self.read_pos

    async def wait_async(self, timeout: float | None = None) -> bool:
        """Like :meth:`wait`, on the running event loop (no thread, no spin)."""
        if not self._arm():
            return True
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        loop.add_reader(self._bell, _wake, fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            loop.remove_reader(self._bell)
            self._drain_bell()
            self._set_waiting(0)
        return self.commit_pos() > self.read_pos

    # -- dirty ranges -----------------------------------------------------

    def take_dirty(self, persist: Callable[[list[tuple[int, int]]], None] | None = None) -> list[tuple[int, int]]:
        """Harvest overflow bitmap and corrupt-record ranges as merged
        ``(offset, length)`` chunk-aligned ranges clipped to the disk.

        The epoch swap stops producers writing the harvested bitmap; its
        bits are cleared only after ``persist(ranges)`` has returned, so a
        consumer that dies in between leaves them for :meth:`recover_dirty`.
        """
        m = self._m
        epoch = m.get("dirty_epoch")
        m.set("dirty_epoch", epoch + 1)
        m.fence()  # producers must see the new epoch before we read the old bitmap
        return self._harvest(epoch & 1, persist)

    def recover_dirty(self, persist: Callable[[list[tuple[int, int]]], None] | None = None) -> list[tuple[int, int]]:
        """Harvest what a consumer that died mid-harvest left in the inactive
        bitmap (producers only write the active one).  Call once after opening."""
        return self._harvest((self._m.get("dirty_epoch") + 1) & 1, persist)

    def _harvest(self, which: int, persist: Callable[[list[tuple[int, int]]], None] | None) -> list[tuple[int, int]]:
        g = self.geometry
        start = self._m.bitmap_word_offset(which, 0)
        words = g.bitmap_bytes // 8
        raw = self._mm[start : start + g.bitmap_bytes]
        chunks: set[int] = set()
        nonzero = []
        # Harvests run on every idle wake-up and the bitmap is almost always
        # clear: compare it whole (memcmp) before looking at words in Python.
        clear = raw == self._zero_bitmap
        for w, value in enumerate(() if clear else struct.unpack(f"<{words}Q", raw)):
            if value:
                nonzero.append(w)
                base = w * 64
                while value:
                    low = value & -value
                    chunks.add(base + low.bit_length() - 1)
                    value ^= low
        cs = g.chunk_size
        for offset, length in self._corrupt:
            chunks.update(range(offset // cs, (offset + length - 1) // cs + 1))
        ranges = _merge(sorted(chunks), cs, g.disk_size)
        if persist is not None and ranges:
            persist(ranges)
        for w in nonzero:
            _Q.pack_into(self._mm, start + w * 8, 0)
        self._corrupt.clear()
        return ranges

    def counters(self) -> dict[str, int]:
        """Producer counters, control words and positions."""
        return self._m.counters()

    def set_control(self, *, throttle_bps: int | None = None, throttle_iops: int | None = None,
                    freeze: bool | None = None, overflow_wait_ns: int | None = None) -> None:
        """Write the daemon's control words (None leaves a word unchanged)."""
        for name, value in (("throttle_bps", throttle_bps), ("throttle_iops", throttle_iops),
                            ("overflow_wait_ns", overflow_wait_ns)):
            if value is not None:
                if value < 0:
                    raise ValueError(f"{name} must be >= 0, got {value}")
                self._m.set(name, value)
        if freeze is not None:
            self._m.set("freeze", int(freeze))

    def close(self) -> None:
        """Unmap the ring (the shared state stays as it is)."""
        os.close(self._bell)
        self._m.close()

    def __enter__(self) -> RingConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _merge(chunks: list[int], chunk_size: int, disk_size: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for c in chunks:
        off = c * chunk_size
        if off >= disk_size:
            continue
        end = min(off + chunk_size, disk_size)
        if out and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], end - out[-1][0])
        else:
            out.append((off, end - off))
    return out
