"""Python ring producer, for tools, tests and the NBD front-end.

It follows the producer protocol in :mod:`liftshift.iofilter.ring` with one
simplification: it is the only producer *process* of its ring, so it does not
take the C spin lock; threads of one process are serialised by a local lock.
Records are therefore reserved and committed in one step and ``commit`` moves
straight to the end of the new record.
"""

from __future__ import annotations

import abc
import errno
import os
import struct
import threading
import time

import xxhash

from .ring import (
    FLAG_CLOSE,
    FLAG_TRIM,
    FLAG_WRITE,
    FLAG_ZERO,
    HEADER,
    REC,
    RECORD_HEADER,
    WORD_PAD,
    Mapped,
    OutOfRangeError,
    RingClosedError,
    RingError,
    RingFrozenError,
    align8,
    bell_path,
)

_Q = struct.Struct("<Q")
_EMPTY_XXH3 = xxhash.xxh3_64_intdigest(b"")
_MAX_RANGE_RECORD = 1 << 30  # ZERO / TRIM ranges are split at 1 GiB
_CLOSE_WAIT_S = 30.0


class AdmitAndPublish(abc.ABC):
    """``write``/``write_zeroes``/``trim`` as admit + publish, for a producer's callers
    with no vdisk write of their own in between (shared by both producers)."""

    @abc.abstractmethod
    def admit(self, offset: int, length: int) -> None: ...

    @abc.abstractmethod
    def publish_write(self, offset: int, data: bytes | bytearray | memoryview) -> bool: ...

    @abc.abstractmethod
    def publish_zeroes(self, offset: int, length: int) -> bool: ...

    @abc.abstractmethod
    def publish_trim(self, offset: int, length: int) -> bool: ...

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> bool:
        """Admit and publish a WRITE (for callers with no vdisk of their own)."""
        self.admit(offset, len(memoryview(data).cast("B")))
        return self.publish_write(offset, data)

    def write_zeroes(self, offset: int, length: int) -> bool:
        """Admit and publish a ZERO record."""
        self.admit(offset, length)
        return self.publish_zeroes(offset, length)

    def trim(self, offset: int, length: int) -> bool:
        """Admit and publish a TRIM record."""
        self.admit(offset, length)
        return self.publish_trim(offset, length)


class RingProducer(AdmitAndPublish):
    """Publish writes of one vdisk into its ring.

    Each public write method returns ``True`` when the write went into the
    ring and ``False`` when the ring stayed full for ``overflow_wait_ns`` and
    the range was marked in the dirty bitmap instead.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._m = Mapped(path)
        self.path = self._m.path
        self.geometry = self._m.geometry
        self._lock = threading.Lock()
        self._bell = os.open(bell_path(self.path), os.O_RDWR | os.O_NONBLOCK)
        self._xxh = xxhash.xxh3_64_intdigest
        mm = self._m.mm
        self._mm = mm
        self._off = {name: off for name, (off, _) in HEADER.items()}
        # Words only this producer writes are cached: the shared copy is
        # written on every change but never read back on the hot path.
        self._reserve = self._get("reserve")
        self._next_seq = self._get("next_seq")
        self._writes = self._get("writes")
        self._bytes = self._get("bytes")
        self._announced = 0

    # -- public API -------------------------------------------------------

    def admit(self, offset: int, length: int) -> None:
        """Admit a guest write before it goes to the vdisk.

        Refuses writes outside the disk, after close and while frozen, and
        waits for a throttle slot.  A front-end that writes the vdisk itself
        calls ``admit`` -> writes the vdisk -> ``publish_*``: a write admitted
        before a freeze is still published, so a freeze never loses one.
        """
        self._check_range(offset, length)
        with self._lock:
            self._admit(length)

    def publish_write(self, offset: int, data: bytes | bytearray | memoryview) -> bool:
        """Publish an admitted WRITE of ``data`` at ``offset`` (split at ``max_record``)."""
        mv = memoryview(data).cast("B")
        n = len(mv)
        self._check_range(offset, n)
        step = self.geometry.max_record
        with self._lock:
            self._check_open()
            for start in range(0, n, step):
                part = mv[start : start + step]
                if not self._publish(FLAG_WRITE, offset + start, len(part), part, self._xxh(part)):
                    return self._overflowed(offset + start, n - start, n)
            self._count(n)
            return True

    def publish_zeroes(self, offset: int, length: int) -> bool:
        """Publish an admitted ZERO: the range reads back as zeros."""
        return self._publish_range(FLAG_ZERO, offset, length)

    def publish_trim(self, offset: int, length: int) -> bool:
        """Publish an admitted TRIM: the range is discarded (reads back as zeros)."""
        return self._publish_range(FLAG_TRIM, offset, length)

    def close(self) -> int:
        """Append the CLOSE record and return its sequence, the ring's final one."""
        with self._lock:
            if self._get("closed"):
                raise RingClosedError(self.path, "ring is already closed")
            deadline = time.monotonic() + _CLOSE_WAIT_S
            while True:
                seq = self._try_append(FLAG_CLOSE, 0, 0, None, _EMPTY_XXH3)
                if seq is not None:
                    break
                if time.monotonic() > deadline:
                    raise RingError(self.path, f"CLOSE could not be appended within {_CLOSE_WAIT_S:.0f} s: "
                                    "the consumer is not releasing")
                time.sleep(0.0005)
            self._set("closed", 1)
            self._ring_bell()
            return seq

    def counters(self) -> dict[str, int]:
        """Current producer counters and control words."""
        return self._m.counters()

    def announce(self, ident: int | None = None) -> None:
        """Say in the header's ``producer`` word that every later write is
        published here (``ident``: nonzero, default this process's pid).

        A filter that attaches on its own (vSphere: the storage policy put it
        on the disk) calls this once capture is in effect; the daemon waits
        for it before copying anything.  :meth:`detach` clears it again.
        """
        self._announced = ident or os.getpid()
        self._set("producer", self._announced)

    def detach(self) -> None:
        """Unmap the ring (clearing ``producer`` if this handle announced itself)."""
        if self._announced:
            self._set("producer", 0)
            self._announced = 0
        os.close(self._bell)
        self._m.close()

    def __enter__(self) -> RingProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # -- internals --------------------------------------------------------

    def _get(self, name: str) -> int:
        return int(_Q.unpack_from(self._mm, self._off[name])[0])

    def _set(self, name: str, value: int) -> None:
        _Q.pack_into(self._mm, self._off[name], value)

    def _check_range(self, offset: int, length: int) -> None:
        size = self.geometry.disk_size
        if offset < 0 or length <= 0 or offset + length > size:
            raise OutOfRangeError(self.path, f"write [{offset}, +{length}) is outside the {size}-byte disk")

    def _publish_range(self, flag: int, offset: int, length: int) -> bool:
        self._check_range(offset, length)
        with self._lock:
            self._check_open()
            for start in range(0, length, _MAX_RANGE_RECORD):
                part = min(_MAX_RANGE_RECORD, length - start)
                if not self._publish(flag, offset + start, part, None, _EMPTY_XXH3):
                    return self._overflowed(offset + start, length - start, length)
            self._count(length)
            return True

    def _check_open(self) -> None:
        if self._get("closed"):
            raise RingClosedError(self.path, "ring is closed; the source VM has stopped")

    def _admit(self, nbytes: int) -> None:
        """Refuse when closed or frozen; otherwise wait for a throttle slot."""
        self._check_open()
        if self._get("freeze"):
            self._set("frozen_rejects", self._get("frozen_rejects") + 1)
            raise RingFrozenError(self.path, "writes are frozen: the source VM is being stopped for cutover")
        bps, iops = self._get("throttle_bps"), self._get("throttle_iops")
        if bps or iops:
            cost = max(nbytes * 1_000_000_000 // bps if bps else 0, 1_000_000_000 // iops if iops else 0)
            now = time.monotonic_ns()
            slot = max(self._get("throttle_next_ns"), now)
            self._set("throttle_next_ns", slot + cost)
            if slot > now:
                time.sleep((slot - now) / 1e9)
                self._set("throttled_ns", self._get("throttled_ns") + slot - now)

    def _count(self, nbytes: int) -> None:
        self._writes += 1
        self._bytes += nbytes
        self._set("writes", self._writes)
        self._set("bytes", self._bytes)

    def _publish(self, flag: int, offset: int, length: int, payload: memoryview | None, digest: int) -> bool:
        """Append one record, waiting up to ``overflow_wait_ns`` for space."""
        if self._try_append(flag, offset, length, payload, digest) is not None:
            return True
        deadline = time.monotonic_ns() + self._get("overflow_wait_ns")
        delay = 0.00002
        while time.monotonic_ns() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 0.0005)
            if self._try_append(flag, offset, length, payload, digest) is not None:
                return True
        return False

    def _overflowed(self, offset: int, rest: int, whole: int) -> bool:
        """The ring stayed full: the rest of the call goes to the dirty bitmap
        without waiting again; counted once per call, as the C producer does."""
        self._mark_dirty(offset, rest)
        self._set("overflows", self._get("overflows") + 1)
        self._set("overflow_bytes", self._get("overflow_bytes") + rest)
        self._count(whole)
        return False

    def _try_append(self, flag: int, offset: int, length: int, payload: memoryview | None,
                    digest: int) -> int | None:
        """Write one record if it fits; return its sequence or None when full."""
        m = self._m
        mm = self._mm
        cap = m.capacity
        paylen = len(payload) if payload is not None else 0
        size = RECORD_HEADER + align8(paylen)
        reserve = self._reserve
        release = self._get("release")
        pos = reserve & m.mask
        pad = cap - pos if pos + size > cap else 0
        if reserve + pad + size - release > cap:
            return None
        base = m.data_offset
        if pad:
            # The tail is too short for this record: fill it with a PAD record.
            mm[base + pos : base + pos + 8] = (pad | WORD_PAD).to_bytes(8, "little")
            pos = 0
        seq = self._next_seq
        at = base + pos
        # Fields and payload first; commit (below) publishes them (x86-64 TSO).
        REC.pack_into(mm, at, size, seq, offset, length, flag, paylen, digest, time.monotonic_ns())
        if payload is not None and paylen:
            mm[at + RECORD_HEADER : at + RECORD_HEADER + paylen] = payload
        self._next_seq = seq + 1
        self._set("next_seq", seq + 1)
        end = reserve + pad + size
        self._reserve = end
        self._set("reserve", end)
        self._set("commit", end)
        self._ring_bell()
        return seq

    def _ring_bell(self) -> None:
        self._m.fence()
        if self._get("consumer_waiting"):
            try:
                os.write(self._bell, b"\x01")
            except BlockingIOError:
                pass  # FIFO full: the consumer has plenty of wake-ups queued
            except OSError as e:  # pragma: no cover - a FIFO write fails only when broken
                if e.errno != errno.EPIPE:
                    raise

    def _mark_dirty(self, offset: int, length: int) -> None:
        """Set the chunk bits of the range in the active bitmap (epoch protocol)."""
        m = self._m
        cs = self.geometry.chunk_size
        first, last = offset // cs, (offset + length - 1) // cs
        while True:
            epoch = self._get("dirty_epoch")
            which = epoch & 1
            for word in range(first // 64, last // 64 + 1):
                lo = max(first, word * 64) - word * 64
                hi = min(last, word * 64 + 63) - word * 64
                bits = ((1 << (hi - lo + 1)) - 1) << lo
                at = m.bitmap_word_offset(which, word)
                old = int.from_bytes(self._mm[at : at + 8], "little")
                self._mm[at : at + 8] = (old | bits).to_bytes(8, "little")
            m.fence()
            if self._get("dirty_epoch") == epoch:
                return
