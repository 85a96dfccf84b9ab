"""The source daemon's statistics: sampled every second into daemon.db, published for /metrics.

Goal: ``liftshift stats`` and Prometheus see, per vdisk, VM, migration and
for the whole daemon, how fast the background copy and the live writes were
shipped, how many writes the guests made, and how far behind the sink was.

Plan.

* **Readings, then samples.**  Once a second the loop reads every running
  replicator into a :class:`VdiskReading`: cumulative counters (bytes
  shipped, ring producer writes, ...), gauges (lag, backlog, ring fill, ...)
  and the sink's apply / fsync time totals from its acks.  Reading is all
  that touches live state, and it happens on the event loop.
  :class:`SampleBuilder` (no I/O) turns readings into
  :class:`~liftshift.daemon.stats.Sample` rows: rates through a
  :class:`~liftshift.daemon.stats.Sampler`, sink latencies as the mean per
  ack over the interval, and VM, migration and global samples combined from
  the vdisks' by each metric's rule.
* **Off the loop for SQLite.**  Samples go to the
  :class:`~liftshift.daemon.stats.StatsStore` (its own connection to
  daemon.db) in a worker thread, and a worker thread rolls minutes up every
  ``compact_every`` seconds.
* **Published, not walked.**  Each tick also rebinds :attr:`StatsCollector.snapshot`
  (a frozen :class:`~liftshift.daemon.metrics.SourceSnapshot`), which the
  /metrics HTTP thread returns as it is.

Warnings.

* A replicator that is replaced (pause/resume, daemon restart) starts its
  counters over.  Those it starts at 0 (:data:`FROM_ZERO`) get a rate from
  its first reading on, over the time since it started; the others (ring
  producer counters, resent bytes) only from its second reading.  What a
  replicator ships between the last reading and its stop (at most
  ``interval``) is not recorded.
* ``background_bps`` counts every chunk shipped (background copy, dirty
  resyncs, repairs): it is what the copy puts on the link.  ``live_bps``
  counts ring records as shipped (payload plus a 56-byte header each).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from .config import host_port
from .errors import LiftshiftError
from .lifecycle import FINAL
from .metrics import MetricsExporter, SourceSnapshot, VdiskStats, VmStats
from .migrations import Migrations
from .migrations import _backlog as backlog_bytes
from .stats import Sample, Sampler, StatsStore, combine
from .vdisk import VdiskReplicator

log = logging.getLogger("liftshift.daemon.stats")

# Counters a new replicator starts at 0: its first reading already has a rate
# for them, over the time since it started (the start of a short copy is kept).
FROM_ZERO = ("background_bps", "live_bps", "sink_applied_bps")


@dataclass(frozen=True)
class VdiskReading:
    """One vdisk's replication at one instant (counters are totals so far)."""

    vdisk: str
    migration: str = ""  # "" for a vdisk replicated outside any migration
    vm: str = ""
    generation: int = 0  # changes when the replicator is replaced (its counters restart)
    started: float | None = None  # Unix time the counters of FROM_ZERO started from 0 (the replicator's start)
    counters: Mapping[str, float] = field(default_factory=dict)  # rate metric -> cumulative total
    gauges: Mapping[str, float] = field(default_factory=dict)  # gauge metric -> level now
    sink_apply_ns: int = 0  # totals over the acks that carried a time, and how many did
    sink_applies: int = 0
    sink_fsync_ns: int = 0
    sink_fsyncs: int = 0


class SampleBuilder:
    """Samples of every scope from successive vdisk readings (see the module notes).

    ``build(t, readings)`` returns the vdisk samples of the readings that
    have a baseline, plus one sample per VM and per migration they belong
    to and one ``global`` sample; nothing when no vdisk has a baseline yet.
    """

    def __init__(self) -> None:
        self._rates = Sampler()
        self._generation: dict[str, int] = {}
        self._sink: dict[str, tuple[int, int, int, int]] = {}

    def build(self, t: float, readings: Iterable[VdiskReading]) -> list[Sample]:
        """The samples for readings taken at Unix time ``t``."""
        vdisks: list[tuple[VdiskReading, Sample]] = []
        seen = set()
        for rd in readings:
            seen.add(rd.vdisk)
            if self._generation.get(rd.vdisk) != rd.generation:
                self._forget(rd.vdisk)
                self._generation[rd.vdisk] = rd.generation
                if rd.started is not None and rd.started < t:
                    self._rates.observe(rd.started, "vdisk", rd.vdisk, dict.fromkeys(FROM_ZERO, 0.0))
            gauges = {**rd.gauges, **self._sink_latency(rd)}
            s = self._rates.observe(t, "vdisk", rd.vdisk, rd.counters, gauges)
            if s is not None:
                vdisks.append((rd, s))
        for gone in set(self._generation) - seen:
            self._forget(gone)
            del self._generation[gone]
        if not vdisks:
            return []
        out = [s for _, s in vdisks]
        vms: dict[str, list[Sample]] = {}
        migrations: dict[str, list[Sample]] = {}
        for rd, s in vdisks:
            if rd.vm:
                vms.setdefault(rd.vm, []).append(s)
            if rd.migration:
                migrations.setdefault(rd.migration, []).append(s)
        out += [combine(ss, "vm", vm) for vm, ss in vms.items()]
        out += [combine(ss, "migration", mid) for mid, ss in migrations.items()]
        out.append(combine(out[:len(vdisks)], "global", ""))
        return out

    def _sink_latency(self, rd: VdiskReading) -> dict[str, float]:
        """Mean sink apply / fsync time per ack since the last reading, in ms (only when acks came)."""
        now = (rd.sink_apply_ns, rd.sink_applies, rd.sink_fsync_ns, rd.sink_fsyncs)
        last = self._sink.get(rd.vdisk)
        self._sink[rd.vdisk] = now
        out: dict[str, float] = {}
        if last is None:
            return out
        if now[1] > last[1] and now[0] >= last[0]:
            out["sink_apply_ms"] = (now[0] - last[0]) / (now[1] - last[1]) / 1e6
        if now[3] > last[3] and now[2] >= last[2]:
            out["sink_fsync_ms"] = (now[2] - last[2]) / (now[3] - last[3]) / 1e6
        return out

    def _forget(self, vdisk: str) -> None:
        self._rates.forget("vdisk", vdisk)
        self._sink.pop(vdisk, None)


def replication_limit(r: VdiskReplicator) -> int:
    """The replication rate limit that caps ``r`` now: its migration's effective limit, else the global one."""
    if r.limiters is None:
        return 0
    limits = r.limiters.limits()
    mine = next((ls for ls in limits if ls.migration_id == r.spec.migration_id), None)
    return (mine or limits[0]).effective_bps


def read(r: VdiskReplicator, migration: str, vm: str, link_bps: float) -> tuple[VdiskReading, VdiskStats]:
    """One replicator's reading and its /metrics row (on the event loop: it touches live state)."""
    p = r.core.progress
    ring = r.consumer.counters()
    capacity = r.consumer.geometry.capacity
    backlog = backlog_bytes(r)
    fill = min(1.0, max(0.0, (ring["reserve"] - ring["release"]) / capacity)) if capacity else 0.0
    lag = r.lag_seconds()
    limit = replication_limit(r)
    gauges = {"lag_s": lag, "backlog_bytes": float(backlog), "dirty_bytes": float(r.core.dirty_bytes),
              "ring_fill": fill, "link_bps": link_bps, "limit_bps": float(limit),
              "guest_limit_bps": float(ring["throttle_bps"])}
    if backlog == 0 or link_bps > 0:
        gauges["eta_s"] = backlog / link_bps if backlog else 0.0
    st = r.stats
    reading = VdiskReading(
        r.spec.vdisk_id, migration, vm, id(r), st.started,
        counters={"background_bps": p.chunk_bytes_sent, "live_bps": p.live_bytes, "resent_bps": p.resent_bytes,
                  "write_iops": ring["writes"], "ring_overflows_ps": ring["overflows"],
                  "guest_throttle_s": ring["throttled_ns"] / 1e9, "sink_applied_bps": st.acked_bytes},
        gauges=gauges, sink_apply_ns=st.sink_apply_ns, sink_applies=st.sink_applies,
        sink_fsync_ns=st.sink_fsync_ns, sink_fsyncs=st.sink_fsyncs)
    export = VdiskStats(migration, vm, r.spec.vdisk_id, background_done_bytes=p.background_done,
                        background_total_bytes=p.background_total, live_bytes=p.live_bytes,
                        live_records=p.live_records, resent_bytes=p.resent_bytes, dirty_bytes=r.core.dirty_bytes,
                        backlog_bytes=backlog, lag_seconds=lag, bandwidth_bytes_per_second=link_bps,
                        ring_overflows=ring["overflows"], ring_fill_ratio=fill,
                        throttle_limit_bytes_per_second=float(limit),
                        guest_throttle_seconds=ring["throttled_ns"] / 1e9, connected=st.connected)
    return reading, export


class StatsCollector:
    """Samples the daemon's replication every ``interval`` seconds into ``store`` (see the module notes)."""

    def __init__(self, store: StatsStore, migrations: Migrations, replicators: dict[str, VdiskReplicator], *,
                 interval: float = 1.0, compact_every: float = 10.0) -> None:
        self.store = store
        self.migrations = migrations
        self.replicators = replicators
        self.interval = interval
        self.compact_every = compact_every
        self.builder = SampleBuilder()
        # What /metrics serves: rebound (atomically) by every tick.
        self.snapshot = SourceSnapshot()
        self._exporter: MetricsExporter | None = None
        self._task: asyncio.Task[None] | None = None

    # -- the loop schedules ---------------------------------------------------------

    def start(self) -> None:
        """Start sampling (once the migrations have been resumed)."""
        self._task = asyncio.create_task(self.run(), name="stats")

    async def run(self) -> None:
        """Every ``interval``: :meth:`tick`; every ``compact_every``: roll minutes up."""
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.store.compact)  # minutes left complete by the last run
        next_at = last_compact = loop.time()
        while True:
            try:
                await self.tick()
                if loop.time() - last_compact >= self.compact_every:
                    last_compact = loop.time()
                    await asyncio.to_thread(self.store.compact)
            except asyncio.CancelledError:
                raise
            except Exception:  # statistics must never take replication down
                log.exception("statistics")
            next_at = max(next_at + self.interval, loop.time())  # no burst after a stall
            await asyncio.sleep(next_at - loop.time())

    async def stop(self) -> None:
        """Stop sampling and serving /metrics; close the store."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._exporter is not None:
            self._exporter.stop()
        self.store.close()

    # -- the methods do the work ----------------------------------------------------

    async def tick(self) -> int:
        """Read, publish the snapshot, store the samples; returns how many were stored."""
        t = time.time()
        readings, self.snapshot = self.read_all()
        samples = self.builder.build(t, readings)
        return await asyncio.to_thread(self.store.add, samples) if samples else 0

    def read_all(self) -> tuple[list[VdiskReading], SourceSnapshot]:
        """Every running replicator's reading, and the /metrics snapshot of every unfinished migration."""
        owner: dict[str, tuple[str, str]] = {}
        vms = []
        stale: list[VdiskStats] = []
        mig = self.migrations
        for m in mig.recs.values():
            if m.state in FINAL:
                continue
            for v in m.vms:
                if v.state in FINAL:
                    continue
                etas = []
                for d in v.disks:
                    owner[d.vdisk_id] = (m.id, v.vm)
                    p = mig.last_progress.get(d.vdisk_id)
                    etas.append(p.eta_seconds if p is not None else -1.0)
                    if p is not None and d.vdisk_id not in self.replicators:  # paused: the last numbers
                        stale.append(replace(VdiskStats.from_progress(m.id, v.vm, p), connected=False,
                                             bandwidth_bytes_per_second=0.0))
                eta = -1.0 if not etas or min(etas) < 0 else max(etas)
                vms.append(VmStats(m.id, v.vm, v.state.value, eta))
        readings, exported = [], []
        for vdisk, r in list(self.replicators.items()):
            migration, vm = owner.get(vdisk, (r.spec.migration_id, ""))
            rate = mig.rates.get(vdisk)
            reading, export = read(r, migration, vm, rate.bps if rate is not None else 0.0)
            p = mig.last_progress.get(vdisk)
            if p is not None:
                export = replace(export, verified_bytes=p.verified_bytes)
            readings.append(reading)
            exported.append(export)
        return readings, SourceSnapshot(exported + stale, vms)

    # -- Prometheus -------------------------------------------------------------------

    def serve_metrics(self, listen: str) -> str:
        """Serve /metrics on ``listen`` (host:port) from the published snapshot; returns its URL."""
        host, port = host_port(listen, "metrics_listen")
        self._exporter = MetricsExporter(source=lambda: self.snapshot)
        try:
            server, _ = self._exporter.start_http(host, port)
        except OSError as e:
            raise LiftshiftError(f"cannot serve metrics on {listen} (key 'metrics_listen'): {e}") from None
        log.info("Prometheus metrics on %s", server.url)
        return server.url
