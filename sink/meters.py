"""What the sink counts for Prometheus: per vdisk, bytes and records applied, positions, latencies.

Design note
-----------
A :class:`VdiskMeter` per vdisk lives as long as the sink process, so its
counters are totals since the sink started, across streams and takeovers.
The Replicate stream (:mod:`liftshift.sink.stream`) feeds it: applied
frames (on the event loop or the applying worker thread, never two at once
for one vdisk) and acks (apply and fsync time of the batch each one closes).

The /metrics HTTP thread calls :meth:`SinkMeters.snapshot`, which only
copies plain numbers out of the meters (and the histograms under their own
locks) into a frozen :class:`~liftshift.daemon.metrics.SinkSnapshot`; it
never walks the registry or the streams.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from liftshift.daemon.metrics import LatencyHistogram, SinkSnapshot, SinkVdiskStats
from liftshift.v1 import replication_pb2 as pb


@dataclass(eq=False)
class VdiskMeter:
    """Counters of one vdisk since the sink started."""

    vdisk: str
    migration: str = ""
    applied_bytes: int = 0  # payload bytes written (live records and chunks)
    applied_records: int = 0  # live records written (resent ones skipped are not counted)
    applied_seq: int = 0
    durable_seq: int = 0
    streams: int = 0  # Replicate streams open for this vdisk (0 or 1, briefly 2 during a takeover)
    apply: LatencyHistogram = field(default_factory=LatencyHistogram)
    fsync: LatencyHistogram = field(default_factory=LatencyHistogram)

    def applied(self, nbytes: int, records: int, applied_seq: int) -> None:
        """A frame was applied."""
        self.applied_bytes += nbytes
        self.applied_records += records
        self.applied_seq = applied_seq

    def acked(self, ack: pb.Ack) -> None:
        """An ack went out: positions, and the batch's apply / fsync time."""
        self.applied_seq, self.durable_seq = ack.applied_seq, ack.durable_seq
        if ack.apply_ns:
            self.apply.observe(ack.apply_ns / 1e9)
        if ack.fsync_ns:
            self.fsync.observe(ack.fsync_ns / 1e9)

    def stats(self) -> SinkVdiskStats:
        return SinkVdiskStats(self.vdisk, self.migration, self.applied_bytes, self.applied_records,
                              self.applied_seq, self.durable_seq, self.apply.snapshot(), self.fsync.snapshot())


class SinkMeters:
    """Every vdisk's meter, created on first use (thread-safe)."""

    def __init__(self) -> None:
        self._meters: dict[str, VdiskMeter] = {}
        self._lock = threading.Lock()

    def vdisk(self, vdisk_id: str, migration: str = "") -> VdiskMeter:
        """The meter of ``vdisk_id`` (its migration label updated when given)."""
        with self._lock:
            m = self._meters.get(vdisk_id)
            if m is None:
                m = self._meters[vdisk_id] = VdiskMeter(vdisk_id, migration)
            elif migration:
                m.migration = migration
            return m

    def snapshot(self) -> SinkSnapshot:
        """What /metrics shows now (callable from any thread)."""
        with self._lock:
            meters = list(self._meters.values())
        return SinkSnapshot([m.stats() for m in meters], streams=sum(m.streams for m in meters))
