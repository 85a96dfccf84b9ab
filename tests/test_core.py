"""The replication core against a model of disk, ring, stream and sink.

Random interleavings of guest writes (published to the ring or overflowed to
the dirty bitmap), background and resync reads that take a snapshot of the
source at some moment between being planned and completing, live frames,
delivery to the sink, acks and broken streams.  After the guest stops and
everything drains, the shadow must equal the source byte for byte: no stale
background chunk may survive (DESIGN.md invariant 3), and nothing is lost.
"""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from liftshift.daemon.core import ReadPlan, VdiskSync

SIZE = 4096
CHUNK = 512
UNIT = 128


class ReplicationModel(RuleBasedStateMachine):
    @initialize(max_inflight=st.sampled_from([256, 2048, 1 << 20]))
    def setup(self, max_inflight: int) -> None:
        self.core = VdiskSync(SIZE, bg_chunk=CHUNK, unit=UNIT, max_inflight=max_inflight)
        self.source = bytearray(SIZE)
        self.shadow = bytearray(SIZE)
        self.ring: list[tuple[int, int, bytes]] = []  # (seq, offset, data); index = seq - 1
        self.release = 0  # ring records before this index are durable and released
        self.ship = 0  # next ring index to ship
        self.overflow_bits: set[int] = set()  # the ring's dirty bitmap, not yet harvested
        self.reads: list[tuple[ReadPlan, bytes | None]] = []  # planned, maybe executed
        self.stream: list[tuple[int, str, object]] = []  # frames sent, not yet delivered
        self.frame_no = 0
        self.delivered = 0
        self.applied_seq = 0
        self.counter = 0

    # -- the guest ------------------------------------------------------------

    @rule(off=st.integers(0, SIZE - 1), n=st.integers(1, 300), overflow=st.booleans())
    def guest_write(self, off: int, n: int, overflow: bool) -> None:
        n = min(n, SIZE - off)
        self.counter += 1
        data = bytes([self.counter % 251 + 1]) * n
        self.source[off : off + n] = data  # the write reaches the vdisk first ...
        if overflow:
            self.overflow_bits.update(range(off // UNIT, (off + n - 1) // UNIT + 1))
        else:  # ... then is published
            self.ring.append((len(self.ring) + 1, off, data))

    @rule()
    def harvest(self) -> None:
        self.core.mark_dirty([(u * UNIT, UNIT) for u in sorted(self.overflow_bits)])
        self.overflow_bits.clear()

    # -- the daemon ------------------------------------------------------------

    @rule()
    def plan(self) -> None:
        plan = self.core.plan_read(len(self.ring) + 1)
        if plan is not None:
            self.reads.append((plan, None))

    @precondition(lambda self: any(d is None for _, d in self.reads))
    @rule(i=st.integers(0, 10))
    def execute_read(self, i: int) -> None:
        pending = [k for k, (_, d) in enumerate(self.reads) if d is None]
        k = pending[i % len(pending)]
        plan, _ = self.reads[k]
        self.reads[k] = (plan, bytes(self.source[plan.offset : plan.offset + plan.length]))

    @precondition(lambda self: self.reads and self.reads[0][1] is not None)
    @rule()
    def complete_read(self) -> None:
        plan, data = self.reads[0]  # the adapter completes reads in plan order ...
        if not self.core.ready(plan):
            return  # ... once every older record has shipped
        self.reads.pop(0)
        assert data is not None
        if self.core.read_done(plan) is not None:
            event("chunk discarded by rule 3")
        else:
            self.frame_no += 1
            self.core.chunk_sent(self.frame_no, plan)
            self.stream.append((self.frame_no, "chunk", (plan.offset, data)))

    @precondition(lambda self: self.ship < len(self.ring))
    @rule(k=st.integers(1, 5))
    def ship_live(self, k: int) -> None:
        recs = self.ring[self.ship : self.ship + k]
        if not self.core.can_send(sum(len(d) for _, _, d in recs)):
            return
        self.frame_no += 1
        self.ship += len(recs)
        ranges = [(seq, off, len(d)) for seq, off, d in recs]
        self.core.live_shipped(self.frame_no, recs[0][0], recs[-1][0], sum(len(d) for _, _, d in recs),
                               end_pos=self.ship, first_time_ns=0, records=len(recs),
                               ranges=ranges if self.core.tracking_ranges else None)
        self.stream.append((self.frame_no, "live", recs))

    # -- the sink ----------------------------------------------------------------

    @precondition(lambda self: self.stream)
    @rule()
    def deliver(self) -> None:
        no, kind, body = self.stream.pop(0)
        if kind == "chunk":
            off, data = body  # type: ignore[misc]
            self.shadow[off : off + len(data)] = data
        else:
            for seq, off, data in body:  # type: ignore[union-attr]
                if seq <= self.applied_seq:
                    continue  # idempotent re-send
                assert seq == self.applied_seq + 1
                self.shadow[off : off + len(data)] = data
                self.applied_seq = seq
        self.delivered = no

    @precondition(lambda self: self.delivered)
    @rule()
    def ack(self) -> None:
        got = self.core.acked(self.delivered, self.applied_seq, 0)
        if got.release_pos is not None:
            self.release = max(self.release, got.release_pos)

    @rule()
    def break_stream(self) -> None:
        self.stream.clear()
        self.reads.clear()
        self.core.stream_reset()
        self.delivered = 0  # acks of a broken stream never arrive
        self.ship = self.release  # the consumer re-reads from the release position

    @invariant()
    def credit_bound(self) -> None:
        assert self.core.inflight_bytes >= 0

    def teardown(self) -> None:
        if not hasattr(self, "core"):
            return
        # The guest stops; drain everything in a fair order.
        self.harvest()
        for _ in range(10_000):
            while self.ship < len(self.ring):
                before = self.ship
                self.ship_live(5)
                if self.ship == before:
                    break
            self.plan()
            for k, (plan, d) in enumerate(self.reads):
                if d is None:
                    self.reads[k] = (plan, bytes(self.source[plan.offset : plan.offset + plan.length]))
            while self.reads and self.core.ready(self.reads[0][0]):
                self.complete_read()
            while self.stream:
                self.deliver()
            if self.delivered:
                self.ack()
            if self.core.copy_done() and self.ship == len(self.ring) and not self.stream:
                break
        assert self.core.copy_done()
        assert self.shadow == self.source


TestReplicationModel = ReplicationModel.TestCase
TestReplicationModel.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)


def test_snapshot_counts_in_flight_work_as_not_done() -> None:
    core = VdiskSync(4 << 20, bg_chunk=1 << 20, unit=64 << 10)
    first = core.plan_read(1)
    assert first is not None and core.read_done(first) is None
    core.chunk_sent(1, first)
    todo, dirty = core.snapshot()
    assert todo == b"\x01\x01\x01\x01" and dirty == []  # sent but not durable: still to do
    core.acked(1, 0, 0)
    todo, _ = core.snapshot()
    assert todo == b"\x00\x01\x01\x01"
    assert core.progress.background_done == 1 << 20


def test_chunk_racing_a_shipped_live_write_is_discarded() -> None:
    core = VdiskSync(4 << 20, bg_chunk=1 << 20, unit=64 << 10)
    plan = core.plan_read(1)
    assert plan is not None and plan.p_seq == 1 and core.ready(plan)
    # While the chunk is being read, live write seq 1 into the same chunk ships.
    core.live_shipped(1, 1, 1, 4096, end_pos=4152, first_time_ns=0, records=1, ranges=[(1, 8192, 4096)])
    lost = core.read_done(plan)
    assert lost is not None and lost.by_seq == 1
    todo, _ = core.snapshot()
    assert todo[0] == 1  # the whole chunk is read again
    # A later read of that range is planned after seq 1 shipped: it ships.
    plans = [core.plan_read(2) for _ in range(4)]
    again = next(p for p in plans if p is not None and p.offset == 0)
    assert again.p_seq == 2
    assert core.read_done(again) is None


def test_chunk_waits_for_older_records() -> None:
    core = VdiskSync(4 << 20, bg_chunk=1 << 20, unit=64 << 10)
    plan = core.plan_read(6)  # records 1..5 were published before the read
    assert plan is not None and not core.ready(plan)
    core.live_shipped(1, 1, 5, 5 * 4096, end_pos=5 * 4152, first_time_ns=0, records=5,
                      ranges=[(s, 3 << 20, 4096) for s in range(1, 6)])
    assert core.ready(plan) and core.read_done(plan) is None  # older records do not discard it
