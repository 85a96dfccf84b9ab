"""Python ring consumer: what the source daemon reads guest writes with.

Two positions: the read cursor lives in this object's memory and moves as
records are read; the shared ``release`` position moves only when the caller
says so (the daemon releases after the sink's durable ack).  A new consumer
starts reading at ``release``, so everything not yet made durable is read
again after a crash.

Payloads are copied out of shared memory and their XXH3-64 verified before a
:class:`Record` is handed out; a record whose checksum fails becomes a
:class:`CorruptRecord` and its range joins the consumer's private dirty set,
which :meth:`RingConsumer.take_dirty` returns together with the overflow
bitmap.  The consumer never busy-spins: :meth:`RingConsumer.wait` and
:meth:`RingConsumer.wait_async` sleep on the doorbell FIFO.
"""

from __future__ import annotations

import asyncio
import os
import select
import struct
from dataclasses import dataclass

import xxhash

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


@dataclass(frozen=True, slots=True)
class Record:
    """One captured write (or ZERO / TRIM / CLOSE), payload copied out."""

    seq: int
    offset: int
    length: int
    flags: int
    payload: bytes
    time_ns: int
    end: int  # ring position just past this record: release(end) frees it


@dataclass(frozen=True, slots=True)
class CorruptRecord:
    """A record whose payload failed its XXH3-64: never applied, range dirtied."""

    seq: int
    offset: int
    length: int
    flags: int
    end: int
    expected: int
    actual: int


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
        self._bell = os.open(bell_path(self.path), os.O_RDWR | os.O_NONBLOCK)
        self._xxh = xxhash.xxh3_64_intdigest
        self._set_waiting(0)

    # -- positions --------------------------------------------------------

    def _get_release(self) -> int:
        return _Q.unpack_from(self._mm, self._release_off)[0]

    def commit_pos(self) -> int:
        """The shared commit position (aligned 8-byte load)."""
        return _Q.unpack_from(self._mm, self._commit_off)[0]

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

    def read(self, max_bytes: int = 1 << 20, max_records: int = 1 << 30) -> list[Record | CorruptRecord]:
        """Return committed records from the read cursor, at most ``max_bytes``
        of ring space (always at least one record when there is one)."""
        mm = self._mm
        commit = _Q.unpack_from(mm, self._commit_off)[0]
        pos = self.read_pos
        if pos >= commit:
            return []
        limit = min(commit, pos + max_bytes)
        mask = self._m.mask
        cap = self._m.capacity
        base = self._m.data_offset
        unpack = REC.unpack_from
        xxh = self._xxh
        out: list[Record | CorruptRecord] = []
        append = out.append
        expect = self.next_seq
        while pos < commit and (pos < limit or not out) and len(out) < max_records:
            at = pos & mask
            if at + RECORD_HEADER > cap:
                # Only a PAD record fits in a tail this short; it may be 8 bytes.
                word = _Q.unpack_from(mm, base + at)[0]
                if not word & WORD_PAD or (word & WORD_LEN_MASK) != cap - at:
                    raise RingCorruptError(self.path, f"bad tail record word {word:#x} at position {pos}")
                pos += cap - at
                continue
            word, seq, offset, length, flags, paylen, digest, time_ns = unpack(mm, base + at)
            if word & WORD_BUSY:
                raise RingCorruptError(self.path, f"record at position {pos} is busy below commit {commit}")
            size = word & WORD_LEN_MASK
            if size == 0 or size & 7 or at + size > cap:
                raise RingCorruptError(self.path, f"record at position {pos} has impossible size {size}")
            if word & WORD_PAD:
                pos += size
                continue
            if expect is not None and seq != expect:
                raise RingCorruptError(self.path, f"sequence {seq} at position {pos}, expected {expect}")
            expect = seq + 1
            if RECORD_HEADER + paylen > size:
                raise RingCorruptError(self.path, f"record {seq} payload {paylen} exceeds its size {size}")
            pos += size
            start = base + at + RECORD_HEADER
            payload = mm[start : start + paylen]
            actual = xxh(payload)
            if actual != digest:
                append(CorruptRecord(seq, offset, length, flags, pos, digest, actual))
                self._corrupt.append((offset, length))
                continue
            if flags & FLAG_CLOSE:
                self.closed_seq = seq
            append(Record(seq, offset, length, flags, payload, time_ns, pos))
        self.read_pos = pos
        self.next_seq = expect
        return out

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
        loop.add_reader(self._bell, lambda: fut.done() or fut.set_result(None))
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

    def take_dirty(self) -> list[tuple[int, int]]:
        """Harvest overflow bitmap and corrupt-record ranges as merged
        ``(offset, length)`` chunk-aligned ranges clipped to the disk."""
        m = self._m
        g = self.geometry
        epoch = m.get("dirty_epoch")
        m.set("dirty_epoch", epoch + 1)
        m.fence()  # producers must see the new epoch before we read the old bitmap
        which = epoch & 1
        start = m.bitmap_word_offset(which, 0)
        words = g.bitmap_bytes // 8
        raw = self._mm[start : start + g.bitmap_bytes]
        chunks: set[int] = set()
        for w, value in enumerate(struct.unpack(f"<{words}Q", raw)):
            if value:
                _Q.pack_into(self._mm, start + w * 8, 0)
                base = w * 64
                while value:
                    low = value & -value
                    chunks.add(base + low.bit_length() - 1)
                    value ^= low
        cs = g.chunk_size
        for offset, length in self._corrupt:
            chunks.update(range(offset // cs, (offset + length - 1) // cs + 1))
        self._corrupt.clear()
        return _merge(sorted(chunks), cs, g.disk_size)

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
