"""Replication frames for tests, made the way the source daemon makes them.

:class:`Workload` plays the guest and the daemon's ring side: random writes,
write-zeroes and trims go through a real :class:`RingProducer` into a real
ring and into a reference image (the "source vdisk"); :meth:`Workload.drain`
reads the ring back with :meth:`RingConsumer.read_batch` and returns the raw
regions, exactly what a LiveRecords frame carries.  Ring capacity is small so
the ring wraps and PAD records appear.  :func:`record` hand-builds single
records for the malformed and out-of-range cases a real producer refuses to
make.
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import xxhash

from liftshift.iofilter import RingConsumer, RingProducer, create_ring, remove_ring
from liftshift.iofilter.ring import FLAG_WRITE, REC, RECORD_HEADER, WORD_PAD, align8
from liftshift.v1 import replication_pb2 as pb


@dataclass(frozen=True)
class LiveBatch:
    """One LiveRecords frame's worth of raw ring records."""

    data: bytes
    first_seq: int
    last_seq: int
    count: int

    def frame(self, frame_no: int) -> pb.Frame:
        """As a Frame."""
        return pb.Frame(frame_no=frame_no, live=pb.LiveRecords(records=self.data, first_seq=self.first_seq,
                                                               last_seq=self.last_seq, count=self.count))


@dataclass(frozen=True)
class ChunkCopy:
    """A background chunk read from the reference image."""

    offset: int
    data: bytes  # empty for a zero chunk
    length: int

    @property
    def zero(self) -> bool:
        return not self.data

    def frame(self, frame_no: int) -> pb.Frame:
        """As a Frame."""
        return pb.Frame(frame_no=frame_no, chunk=pb.Chunk(offset=self.offset, length=self.length, data=self.data,
                                                          zero=self.zero, xxh3=xxhash.xxh3_64_intdigest(self.data),
                                                          kind=pb.CHUNK_KIND_BACKGROUND))


class Workload:
    """Random guest IO through a real ring, mirrored in a reference image."""

    def __init__(self, ring_dir: Path, disk_size: int, seed: int, *, capacity: int = 256 << 10,
                 max_record: int = 64 << 10) -> None:
        self.disk_size = disk_size
        self.rng = random.Random(seed)
        self.reference = bytearray(disk_size)
        # Unique per instance: hypothesis reuses one directory for many examples.
        path = Path(tempfile.mkdtemp(prefix="workload-", dir=ring_dir)) / "vdisk.ring"
        self.ring_path = path
        create_ring(path, disk_size, capacity=capacity, chunk_size=4096, max_record=max_record,
                    overflow_wait_ns=0)
        self.producer = RingProducer(path)
        self.consumer = RingConsumer(path)
        self.capacity = capacity
        self.max_bytes = 256 << 10
        self.last_seq = 0
        self._pending: list[LiveBatch] = []

    def _make_room(self, length: int) -> None:
        """Read the ring out (as the daemon would) before it could overflow."""
        c = self.producer.counters()
        if c["reserve"] - c["release"] + 2 * (RECORD_HEADER + align8(length)) > self.capacity:
            self._pending += self._read_all()

    def ops(self, n: int, max_len: int = 48 << 10) -> None:
        """``n`` random writes (mostly), write-zeroes and trims, sector aligned or not."""
        rng = self.rng
        for _ in range(n):
            kind = rng.random()
            if rng.random() < 0.8:
                length = rng.randrange(1, max_len // 512 + 1) * 512
                offset = rng.randrange(0, (self.disk_size - length) // 512 + 1) * 512
            else:
                length = rng.randrange(1, max_len)
                offset = rng.randrange(0, self.disk_size - length + 1)
            self._make_room(length if kind < 0.75 else 0)
            if kind < 0.75:
                data = rng.randbytes(length)
                assert self.producer.write(offset, data), "ring overflowed: drain more often"
                self.reference[offset : offset + length] = data
            else:
                op = self.producer.write_zeroes if kind < 0.88 else self.producer.trim
                assert op(offset, length), "ring overflowed: drain more often"
                self.reference[offset : offset + length] = bytes(length)

    def zero_range(self, offset: int, length: int) -> None:
        """A guest write-zeroes of exactly this range."""
        self._make_room(0)
        assert self.producer.write_zeroes(offset, length)
        self.reference[offset : offset + length] = bytes(length)

    def drain(self) -> list[LiveBatch]:
        """Everything committed, as raw regions of at most ``max_bytes``, released at once."""
        out, self._pending = self._pending + self._read_all(), []
        return out

    def _read_all(self) -> list[LiveBatch]:
        out = []
        while (batch := self.consumer.read_batch(self.max_bytes)) is not None:
            assert not batch.corrupt and batch.last_seq is not None
            # Batch.first_seq is left None by the consumer's fast path for all
            # but its first batch; sequences in a batch are contiguous, so
            # derive it.  Batch.data may run past Batch.end (a record cut by
            # max_bytes): only the whole records belong in the frame.
            first = batch.last_seq - batch.count + 1
            assert batch.first_seq in (None, first)
            out.append(LiveBatch(batch.data[: batch.end - batch.start], first, batch.last_seq, batch.count))
            self.consumer.release(batch.end)
            self.last_seq = batch.last_seq
        return out

    def chunk(self, offset: int, length: int) -> ChunkCopy:
        """Read a background chunk from the reference now (zero chunks carry no data)."""
        data = bytes(self.reference[offset : offset + length])
        return ChunkCopy(offset, b"" if data.count(0) == len(data) else data, length)

    def close(self) -> int:
        """Append the CLOSE record; return its sequence."""
        return self.producer.close()

    def detach(self) -> None:
        """Unmap the ring."""
        self.producer.detach()
        self.consumer.close()
        remove_ring(self.ring_path)
        self.ring_path.parent.rmdir()


def record(seq: int, offset: int, payload: bytes = b"", *, flags: int = FLAG_WRITE, length: int | None = None,
           digest: int | None = None, word_extra: int = 0) -> bytes:
    """One hand-built ring record (header + padded payload)."""
    size = RECORD_HEADER + align8(len(payload))
    length = len(payload) if length is None else length
    digest = xxhash.xxh3_64_intdigest(payload) if digest is None else digest
    head = REC.pack(size | word_extra, seq, offset, length, flags, len(payload), digest, 0)
    return head + payload + bytes(align8(len(payload)) - len(payload))


def pad(size: int) -> bytes:
    """A PAD record of ``size`` bytes (only its word is meaningful)."""
    return (size | WORD_PAD).to_bytes(8, "little") + bytes(size - 8)


def live(records: list[bytes], first_seq: int, last_seq: int | None = None, count: int | None = None) -> LiveBatch:
    """A LiveBatch of hand-built records (header fields derived unless given)."""
    n = len([r for r in records if not int.from_bytes(r[:8], "little") & WORD_PAD])
    return LiveBatch(b"".join(records), first_seq, first_seq + n - 1 if last_seq is None else last_seq,
                     n if count is None else count)
