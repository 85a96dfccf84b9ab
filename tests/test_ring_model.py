"""Stateful model test of the Python producer and consumer.

The model is the reference image: every write lands there first (as a guest
write reaches the vdisk before the filter publishes it).  Records read from
the ring are replayed onto a shadow; overflowed ranges harvested from the
dirty bitmap are copied from the reference at the end (after every record,
as the daemon's resync does).  Whatever the interleaving of writes, wraps,
overflows, releases and consumer restarts, the shadow must equal the
reference and sequences must be contiguous.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from liftshift.iofilter import (
    FLAG_CLOSE,
    FLAG_TRIM,
    FLAG_WRITE,
    FLAG_ZERO,
    Record,
    RingConsumer,
    RingProducer,
    create_ring,
)

DISK = 256 << 10
SECTOR = 512


def apply(shadow: bytearray, rec: Record) -> None:
    """Replay one record onto an image held in memory."""
    if rec.flags & FLAG_WRITE:
        shadow[rec.offset : rec.offset + rec.length] = rec.payload
    elif rec.flags & (FLAG_ZERO | FLAG_TRIM):
        shadow[rec.offset : rec.offset + rec.length] = bytes(rec.length)


class RingModel(RuleBasedStateMachine):
    """Producer/consumer against a reference image."""

    @initialize(capacity=st.sampled_from([4096, 8192, 32768]), max_record=st.sampled_from([512, 1536]))
    def setup(self, capacity: int, max_record: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ringmodel-", dir="/dev/shm"))
        self.path = self.dir / "disk.ring"
        create_ring(self.path, DISK, capacity=capacity, chunk_size=4096, max_record=max_record,
                    overflow_wait_ns=0)
        self.producer = RingProducer(self.path)
        self.consumer = RingConsumer(self.path)
        self.reference = bytearray(DISK)
        self.shadow = bytearray(DISK)
        self.dirty: list[tuple[int, int]] = []
        self.last_seq = 0  # highest sequence applied to the shadow
        self.counter = 0
        self.closed = False
        self.expect_seq: int | None = None
        self.released_seq = 0
        self.unreleased: list[tuple[int, int]] = []

    def teardown(self) -> None:
        if hasattr(self, "consumer"):
            self.producer.detach()
            self.consumer.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _range(self, sector: int, sectors: int) -> tuple[int, int]:
        offset = min(sector * SECTOR, DISK - SECTOR)
        return offset, min(sectors * SECTOR, DISK - offset)

    @precondition(lambda self: not self.closed)
    @rule(sector=st.integers(0, DISK // SECTOR - 1), sectors=st.integers(1, 12), hot=st.booleans())
    def write(self, sector: int, sectors: int, hot: bool) -> None:
        offset, length = self._range(0 if hot else sector, sectors)
        self.counter += 1
        data = bytes((self.counter + i) & 0xFF for i in range(length))
        self.reference[offset : offset + length] = data
        if not self.producer.write(offset, data):
            event("overflow")

    @precondition(lambda self: not self.closed)
    @rule(sector=st.integers(0, DISK // SECTOR - 1), sectors=st.integers(1, 64), trim=st.booleans())
    def zero(self, sector: int, sectors: int, trim: bool) -> None:
        offset, length = self._range(sector, sectors)
        self.reference[offset : offset + length] = bytes(length)
        (self.producer.trim if trim else self.producer.write_zeroes)(offset, length)

    @rule(max_bytes=st.integers(1, 16384))
    def consume(self, max_bytes: int) -> None:
        self.consume_list(self.consumer.read(max_bytes=max_bytes))

    def consume_list(self, recs: list) -> None:
        for rec in recs:
            assert isinstance(rec, Record), rec
            if self.expect_seq is not None:
                assert rec.seq == self.expect_seq, f"sequence {rec.seq}, expected {self.expect_seq}"
            # After a restart the unreleased suffix is replayed in order: idempotent.
            assert rec.seq <= self.last_seq + 1, f"gap: {rec.seq} after {self.last_seq}"
            self.expect_seq = rec.seq + 1
            apply(self.shadow, rec)
            self.last_seq = max(self.last_seq, rec.seq)
            self.unreleased.append((rec.end, rec.seq))

    @rule(k=st.integers(0, 64))
    def release(self, k: int) -> None:
        if self.unreleased:
            end, seq = self.unreleased[min(k, len(self.unreleased) - 1)]
            self.consumer.release(end)
            self.released_seq = seq
            self.unreleased = [(e, s) for e, s in self.unreleased if s > seq]

    @rule()
    def restart_consumer(self) -> None:
        self.consumer.close()
        self.consumer = RingConsumer(self.path)
        self.unreleased = []
        # A fresh consumer resumes at release: the next record is the first unreleased one.
        self.expect_seq = self.released_seq + 1

    @rule()
    def crash_mid_harvest(self) -> None:
        class Died(Exception):
            pass

        def die(ranges: list[tuple[int, int]]) -> None:
            raise Died  # the consumer dies after the swap, before persisting

        try:
            self.consumer.take_dirty(die)
        except Died:
            pass
        self.restart_consumer()
        self.dirty.extend(self.consumer.recover_dirty())

    @rule()
    def harvest(self) -> None:
        got = self.consumer.take_dirty()
        if got:
            event("dirty ranges harvested")
        self.dirty.extend(got)

    @precondition(lambda self: not self.closed)
    @rule()
    def close(self) -> None:
        self.drain()
        self.final = self.producer.close()
        self.closed = True
        recs = self.consumer.read()
        assert len(recs) == 1 and recs[0].flags == FLAG_CLOSE and recs[0].seq == self.final
        self.consume_list(recs)

    def drain(self) -> None:
        while True:
            recs = self.consumer.read(max_bytes=1 << 20)
            self.consume_list(recs)
            # Release even when nothing came back: the read may have stepped
            # over PAD records only, which still hold ring space.
            self.consumer.release(self.consumer.read_pos)
            self.unreleased = []
            self.released_seq = self.last_seq  # everything read so far is released now
            if not recs:
                return

    @invariant()
    def positions_ordered(self) -> None:
        c = self.consumer.counters()
        assert c["release"] <= c["commit"] <= c["reserve"]
        assert c["reserve"] - c["release"] <= self.consumer.geometry.capacity

    def check_final(self) -> None:
        self.drain()
        self.dirty.extend(self.consumer.take_dirty())
        for offset, length in self.dirty:
            self.shadow[offset : offset + length] = self.reference[offset : offset + length]
        assert self.shadow == self.reference


class FinalCheck(RingModel):
    """Same machine, ending every run with the image comparison."""

    def teardown(self) -> None:
        try:
            if hasattr(self, "consumer"):
                self.check_final()
        finally:
            super().teardown()  # a failing example must not leave its ring in /dev/shm


TestRingModel = FinalCheck.TestCase
TestRingModel.settings = settings(max_examples=150, stateful_step_count=80, deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow])
