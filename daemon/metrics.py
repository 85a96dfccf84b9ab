"""Prometheus metrics of the source daemon and the sink, served on /metrics.

Goal: Prometheus (or anything that reads its text format) can scrape each
daemon and see, per migration, VM and vdisk, how replication is doing.

Plan.

* **Read at scrape time.**  A :class:`MetricsExporter` owns its own
  ``CollectorRegistry`` (never the global one: tests and two daemons in one
  process must not clash) holding one custom collector.  At each scrape it
  calls the daemon's snapshot callback and turns what it returns into metric
  families.  Nothing is kept in sync by hand, so a finished migration's label
  sets vanish as soon as the daemon stops reporting it, instead of lingering
  as stale gauges.
* **Plain snapshots.**  The callbacks return frozen dataclasses
  (:class:`SourceSnapshot`, :class:`SinkSnapshot`) of numbers the daemons
  already keep; counters are their cumulative totals.  Latency histograms
  are accumulated by the sink in :class:`LatencyHistogram` and exported from
  their :class:`HistogramSnapshot`.
* **Thin HTTP.**  :meth:`MetricsExporter.start_http` serves ``/metrics``
  (text format 0.0.4, or OpenMetrics when asked for) from a thread.

Metrics (a Markdown table, for the README):

| name                                      | type      | labels               | meaning                                                   |
|-------------------------------------------|-----------|----------------------|-----------------------------------------------------------|
| liftshift_background_bytes_total          | counter   | migration, vm, vdisk | background copy done, bytes (holes skipped count as done) |
| liftshift_background_size_bytes           | gauge     | migration, vm, vdisk | bytes the background copy covers in all                   |
| liftshift_live_bytes_total                | counter   | migration, vm, vdisk | live (guest) write bytes shipped                          |
| liftshift_live_records_total              | counter   | migration, vm, vdisk | live write records shipped                                |
| liftshift_resent_bytes_total              | counter   | migration, vm, vdisk | bytes shipped again (reconnects, stale chunks)            |
| liftshift_dirty_bytes                     | gauge     | migration, vm, vdisk | dirty ranges waiting to be re-read and shipped            |
| liftshift_backlog_bytes                   | gauge     | migration, vm, vdisk | bytes still to ship: background left, dirty, ring records |
| liftshift_lag_seconds                     | gauge     | migration, vm, vdisk | age of the oldest write not yet durable on the sink       |
| liftshift_bandwidth_bytes_per_second      | gauge     | migration, vm, vdisk | recent shipping rate (background + live)                  |
| liftshift_ring_overflows_total            | counter   | migration, vm, vdisk | capture ring overflows (each a dirty-bitmap resync)       |
| liftshift_ring_fill_ratio                 | gauge     | migration, vm, vdisk | capture ring fill, 0..1                                   |
| liftshift_throttle_limit_bytes_per_second | gauge     | migration, vm, vdisk | replication rate limit in force (0: none)                 |
| liftshift_guest_throttle_seconds_total    | counter   | migration, vm, vdisk | seconds the guest was held back by throttling             |
| liftshift_verified_bytes                  | gauge     | migration, vm, vdisk | bytes proven identical ahead of cutover                   |
| liftshift_connected                       | gauge     | migration, vm, vdisk | 1 while the stream to the sink is up, else 0              |
| liftshift_vm_state                        | gauge     | migration, vm, state | 1 for the VM's current state (one series per VM)          |
| liftshift_vm_eta_seconds                  | gauge     | migration, vm        | seconds until the VM converges (-1: unknown)              |
| liftshift_sink_applied_bytes_total        | counter   | migration, vdisk     | bytes applied to the destination                          |
| liftshift_sink_applied_records_total      | counter   | migration, vdisk     | records applied                                           |
| liftshift_sink_applied_seq                | gauge     | migration, vdisk     | last applied sequence number                              |
| liftshift_sink_durable_seq                | gauge     | migration, vdisk     | last durable (fsynced) sequence number                    |
| liftshift_sink_apply_seconds              | histogram | migration, vdisk     | time to apply one batch of records                        |
| liftshift_sink_fsync_seconds              | histogram | migration, vdisk     | time to make applied records durable                      |
| liftshift_sink_streams                    | gauge     | (none)               | replication streams open                                  |

The source daemon's exporter has the rows without ``sink`` in the name, the
sink's the others; both may add the standard ``process_*`` metrics.

Warnings.

* The callbacks run on the HTTP server's thread, not on the event loop:
  they must be cheap and safe to call from another thread -- e.g. return
  the snapshot the loop last published (rebinding an attribute is atomic).
  A callback that raises fails the scrape with HTTP 500 (``up`` = 0).
* Label cardinality grows with vdisks: fine for hundreds, not millions.
"""  # noqa: E501 (the metrics table is kept one row a line, as the README shows it)

from __future__ import annotations

import bisect
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

# prometheus_client and http.server are imported where metrics are served or
# rendered: every daemon and sink imports this module for its snapshot types,
# most of them serve no /metrics (~50 ms of start-up).
if TYPE_CHECKING:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector

log = logging.getLogger("liftshift.metrics")

SOURCE_LABELS = ("migration", "vm", "vdisk")
VM_LABELS = ("migration", "vm")
SINK_LABELS = ("migration", "vdisk")


@dataclass(frozen=True)
class VdiskStats:
    """One vdisk being replicated by the source daemon (counters are totals so far)."""

    migration: str
    vm: str
    vdisk: str
    background_done_bytes: int = 0
    background_total_bytes: int = 0
    live_bytes: int = 0
    live_records: int = 0
    resent_bytes: int = 0
    dirty_bytes: int = 0
    backlog_bytes: int = 0
    lag_seconds: float = 0.0
    bandwidth_bytes_per_second: float = 0.0
    ring_overflows: int = 0
    ring_fill_ratio: float = 0.0
    throttle_limit_bytes_per_second: float = 0.0
    guest_throttle_seconds: float = 0.0
    verified_bytes: int = 0
    connected: bool = False

    @classmethod
    def from_progress(cls, migration: str, vm: str, p: Any, **extra: Any) -> VdiskStats:
        """From a ``liftshift.v1.VdiskProgress``; ``extra`` sets what it lacks (ring fill, throttle)."""
        return cls(migration, vm, p.vdisk_id, background_done_bytes=p.background_done_bytes,
                   background_total_bytes=p.background_total_bytes, live_bytes=p.live_bytes,
                   live_records=p.live_records, resent_bytes=p.resent_bytes, dirty_bytes=p.dirty_bytes,
                   backlog_bytes=p.backlog_bytes, lag_seconds=p.lag_seconds,
                   bandwidth_bytes_per_second=p.bandwidth_bytes_per_s, ring_overflows=p.ring_overflows,
                   verified_bytes=p.verified_bytes, connected=p.connected, **extra)


@dataclass(frozen=True)
class VmStats:
    """One VM of a migration on the source daemon."""

    migration: str
    vm: str
    state: str  # e.g. "syncing", "converged"
    eta_seconds: float = -1.0


@dataclass(frozen=True)
class SourceSnapshot:
    """What the source daemon reports at a scrape: its migrations' live vdisks and VMs."""

    vdisks: Sequence[VdiskStats] = ()
    vms: Sequence[VmStats] = ()


@dataclass(frozen=True)
class HistogramSnapshot:
    """A latency histogram's state: per-bucket counts (not cumulative), the last one +Inf."""

    bounds: tuple[float, ...]  # upper bounds in seconds, ascending, without +Inf
    counts: tuple[int, ...]  # len(bounds) + 1
    sum: float = 0.0

    @property
    def count(self) -> int:
        """Observations in all."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, observations <= le) pairs ending with "+Inf", as Prometheus wants them."""
        from prometheus_client.utils import floatToGoString

        out, acc = [], 0
        for le, n in zip([*(floatToGoString(b) for b in self.bounds), "+Inf"], self.counts, strict=True):
            acc += n
            out.append((le, float(acc)))
        return out

    def mean_since(self, earlier: HistogramSnapshot | None) -> float | None:
        """Mean observation since ``earlier`` (None: since the start), None when there was none.

        Feeds the ``sink_apply_ms``/``sink_fsync_ms`` statistics gauges.
        """
        n = self.count - (earlier.count if earlier else 0)
        return (self.sum - (earlier.sum if earlier else 0.0)) / n if n > 0 else None


EMPTY_HISTOGRAM = HistogramSnapshot((), (0,))
# 100 us .. 2.5 s: an apply is sub-millisecond, an fsync on a slow disk tens of milliseconds.
DEFAULT_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                           2.5)


class LatencyHistogram:
    """A thread-safe histogram of durations, read as a :class:`HistogramSnapshot`."""

    def __init__(self, buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS) -> None:
        if list(buckets) != sorted(set(buckets)):
            raise ValueError(f"histogram buckets must be ascending and distinct: {buckets}")
        self._bounds = tuple(float(b) for b in buckets)
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        """Count one duration."""
        i = bisect.bisect_left(self._bounds, seconds)  # le is inclusive
        with self._lock:
            self._counts[i] += 1
            self._sum += seconds

    def snapshot(self) -> HistogramSnapshot:
        """The counts so far."""
        with self._lock:
            return HistogramSnapshot(self._bounds, tuple(self._counts), self._sum)


@dataclass(frozen=True)
class SinkVdiskStats:
    """One vdisk on the sink (counters are totals since the sink started)."""

    vdisk: str
    migration: str = ""  # "" when the sink does not know it
    applied_bytes: int = 0
    applied_records: int = 0
    applied_seq: int = 0
    durable_seq: int = 0
    apply_seconds: HistogramSnapshot = EMPTY_HISTOGRAM
    fsync_seconds: HistogramSnapshot = EMPTY_HISTOGRAM


@dataclass(frozen=True)
class SinkSnapshot:
    """What the sink reports at a scrape."""

    vdisks: Sequence[SinkVdiskStats] = ()
    streams: int = 0


# (name, type, VdiskStats attribute, help): one line per exported per-vdisk series.
_SOURCE_VDISK: tuple[tuple[str, str, str, str], ...] = (
    ("liftshift_background_bytes_total", "counter", "background_done_bytes",
     "Background copy done, in bytes (holes skipped count as done)."),
    ("liftshift_background_size_bytes", "gauge", "background_total_bytes", "Bytes the background copy covers."),
    ("liftshift_live_bytes_total", "counter", "live_bytes", "Live (guest) write bytes shipped."),
    ("liftshift_live_records_total", "counter", "live_records", "Live write records shipped."),
    ("liftshift_resent_bytes_total", "counter", "resent_bytes", "Bytes shipped again after reconnects."),
    ("liftshift_dirty_bytes", "gauge", "dirty_bytes", "Dirty ranges waiting to be re-read and shipped."),
    ("liftshift_backlog_bytes", "gauge", "backlog_bytes", "Bytes still to ship: background, dirty, ring records."),
    ("liftshift_lag_seconds", "gauge", "lag_seconds", "Age of the oldest write not yet durable on the sink."),
    ("liftshift_bandwidth_bytes_per_second", "gauge", "bandwidth_bytes_per_second", "Recent shipping rate."),
    ("liftshift_ring_overflows_total", "counter", "ring_overflows", "Capture ring overflows (dirty resyncs)."),
    ("liftshift_ring_fill_ratio", "gauge", "ring_fill_ratio", "Capture ring fill, 0..1."),
    ("liftshift_throttle_limit_bytes_per_second", "gauge", "throttle_limit_bytes_per_second",
     "Replication rate limit in force (0: none)."),
    ("liftshift_guest_throttle_seconds_total", "counter", "guest_throttle_seconds",
     "Seconds the guest was throttled."),
    ("liftshift_verified_bytes", "gauge", "verified_bytes", "Bytes proven identical ahead of cutover."),
    ("liftshift_connected", "gauge", "connected", "1 while the stream to the sink is up."),
)
_SINK_VDISK: tuple[tuple[str, str, str, str], ...] = (
    ("liftshift_sink_applied_bytes_total", "counter", "applied_bytes", "Bytes applied to the destination."),
    ("liftshift_sink_applied_records_total", "counter", "applied_records", "Records applied."),
    ("liftshift_sink_applied_seq", "gauge", "applied_seq", "Last applied sequence number."),
    ("liftshift_sink_durable_seq", "gauge", "durable_seq", "Last durable (fsynced) sequence number."),
    ("liftshift_sink_apply_seconds", "histogram", "apply_seconds", "Time to apply one batch of records."),
    ("liftshift_sink_fsync_seconds", "histogram", "fsync_seconds", "Time to make applied records durable."),
)
_VM_STATE = ("liftshift_vm_state", "gauge", "state", "1 for the VM's current state.")
_VM_ETA = ("liftshift_vm_eta_seconds", "gauge", "eta_seconds", "Seconds to converge (-1: unknown).")
_SINK_STREAMS = ("liftshift_sink_streams", "gauge", "streams", "Replication streams open.")


def metric_table(role: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """(name, type, labels) of every metric the exporter of ``role`` ("source" or "sink") exposes, process_* aside."""
    if role == "source":
        return [*((d[0], d[1], SOURCE_LABELS) for d in _SOURCE_VDISK),
                (_VM_STATE[0], _VM_STATE[1], (*VM_LABELS, "state")), (_VM_ETA[0], _VM_ETA[1], VM_LABELS)]
    return [*((d[0], d[1], SINK_LABELS) for d in _SINK_VDISK), (_SINK_STREAMS[0], _SINK_STREAMS[1], ())]


def metric_names(role: str) -> list[str]:
    """Every metric name the exporter of ``role`` ("source" or "sink") exposes (process_* aside)."""
    return [name for name, _, _ in metric_table(role)]


def _family(name: str, kind: str, help: str, labels: Sequence[str]) -> CounterMetricFamily | GaugeMetricFamily:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    if kind == "counter":  # the family is named without _total; the exposition adds it
        return CounterMetricFamily(name.removesuffix("_total"), help, labels=labels)
    return GaugeMetricFamily(name, help, labels=labels)


class _SnapshotCollector:
    """Metric families built from the daemon's snapshot at every scrape (a prometheus_client
    ``Collector`` by its methods, which is all a registry asks for)."""

    def __init__(self, source: Callable[[], SourceSnapshot] | None,
                 sink: Callable[[], SinkSnapshot] | None) -> None:
        self._source, self._sink = source, sink

    def describe(self) -> Iterable[Metric]:
        # Names only, so that registering does not call the snapshot callbacks.
        return list(self._families(SourceSnapshot() if self._source else None,
                                   SinkSnapshot() if self._sink else None))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self._source() if self._source else None,
                                   self._sink() if self._sink else None))

    @staticmethod
    def _families(src: SourceSnapshot | None, snk: SinkSnapshot | None) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

        if src is not None:
            for name, kind, attr, help in _SOURCE_VDISK:
                fam = _family(name, kind, help, SOURCE_LABELS)
                for v in src.vdisks:
                    fam.add_metric([v.migration, v.vm, v.vdisk], float(getattr(v, attr)))
                yield fam
            state = GaugeMetricFamily(_VM_STATE[0], _VM_STATE[3], labels=[*VM_LABELS, "state"])
            eta = GaugeMetricFamily(_VM_ETA[0], _VM_ETA[3], labels=VM_LABELS)
            for vm in src.vms:
                state.add_metric([vm.migration, vm.vm, vm.state], 1.0)
                eta.add_metric([vm.migration, vm.vm], float(vm.eta_seconds))
            yield state
            yield eta
        if snk is not None:
            for name, kind, attr, help in _SINK_VDISK:
                if kind == "histogram":
                    hist = HistogramMetricFamily(name, help, labels=SINK_LABELS)
                    for s in snk.vdisks:
                        h: HistogramSnapshot = getattr(s, attr)
                        hist.add_metric([s.migration, s.vdisk], h.cumulative(), h.sum)
                    yield hist
                    continue
                fam = _family(name, kind, help, SINK_LABELS)
                for s in snk.vdisks:
                    fam.add_metric([s.migration, s.vdisk], float(getattr(s, attr)))
                yield fam
            streams = GaugeMetricFamily(_SINK_STREAMS[0], _SINK_STREAMS[3])
            streams.add_metric([], float(snk.streams))
            yield streams


class MetricsServer:
    """A running /metrics endpoint; :meth:`close` stops it."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._httpd, self._thread = httpd, thread
        self.host: str = httpd.server_address[0]  # type: ignore[assignment]
        self.port: int = httpd.server_address[1]

    @property
    def url(self) -> str:
        """The endpoint's URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()


def _handler(registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    from http.server import BaseHTTPRequestHandler

    from prometheus_client.exposition import choose_encoder

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.split("?", 1)[0] not in ("/metrics", "/metrics/"):
                self.send_error(404, "only /metrics is served here")
                return
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            try:
                body = encoder(registry)
            except Exception as e:  # a failing snapshot: the scrape fails, the server lives
                log.exception("metrics scrape")
                self.send_error(500, f"cannot collect metrics: {e}")
                return
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("metrics %s: " + format, self.client_address[0], *args)

    return Handler


class MetricsExporter:
    """The Prometheus metrics of one daemon, in a registry of its own.

    ``source``/``sink``: callbacks returning the daemon's current snapshot
    (give the one for the daemon's role); ``process``: also export the
    standard ``process_*`` metrics of this process.
    """

    def __init__(self, *, source: Callable[[], SourceSnapshot] | None = None,
                 sink: Callable[[], SinkSnapshot] | None = None, process: bool = True) -> None:
        from prometheus_client import CollectorRegistry, ProcessCollector

        self.registry = CollectorRegistry()
        self.registry.register(cast("Collector", _SnapshotCollector(source, sink)))
        if process:
            ProcessCollector(registry=self.registry)
        self._servers: list[MetricsServer] = []

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type) of a scrape with this Accept header."""
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def start_http(self, host: str = "127.0.0.1", port: int = 0) -> tuple[MetricsServer, int]:
        """Serve /metrics on ``host``:``port`` (0: any free port) from a thread; returns (server, real port)."""
        from http.server import ThreadingHTTPServer

        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        httpd = Server((host, port), _handler(self.registry))
        # A short poll interval: close() waits for it (serve_forever checks for shutdown that often).
        thread = threading.Thread(target=httpd.serve_forever, args=(0.05,),
                                  name=f"metrics-http-{httpd.server_address[1]}", daemon=True)
        thread.start()
        server = MetricsServer(httpd, thread)
        self._servers.append(server)
        return server, server.port

    def stop(self) -> None:
        """Stop every server :meth:`start_http` started."""
        while self._servers:
            self._servers.pop().close()
