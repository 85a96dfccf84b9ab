"""Replication statistics over time, in SQLite, at 1 s and 1 min resolution.

Goal: ``liftshift stats`` can show what a migration did -- how fast the
background copy and the live writes were shipped, how far the sink lagged,
how much was left to ship -- second by second for the last hour and minute
by minute for the last month, from a file whose size stays bounded.

Plan.

* **One declaration.**  :data:`METRICS` names every metric with its kind,
  unit and how vdisks add up to a VM.  *Rates* are per-second amounts of
  something countable (``background_bps`` bytes, ``write_iops`` writes,
  ``guest_throttle_s`` seconds of throttling per second); *gauges* are levels
  (``lag_s``, ``backlog_bytes``, ``ring_fill`` ...).  A sample naming anything
  else is refused, so a typo cannot open a new, silent series.
* **Two tables, a column per metric.**  ``stats_1s`` holds samples as they
  come (nominally one a second per scope and key; each says how many seconds
  ``dt`` it covers, ending at ``t``); ``stats_1m`` holds one row per scope,
  key and minute, stamped with the minute's start.  One column per metric
  (added by ALTER TABLE when METRICS grows) keeps a sample one row and lets
  SQLite do the roll-up.  The tables live beside the daemon's own in
  daemon.db (or any file), through a connection of their own.
* **Totals survive downsampling.**  A minute's rate is sum(rate*dt)/sum(dt)
  over its samples and the row keeps ``seconds`` = sum(dt), so rate*seconds
  over minute rows integrates to exactly what the 1 s rows do (bytes, writes,
  throttled seconds) -- also when seconds are missing or samples irregular.
  (A rate missing from some samples of a minute counts as 0 there: the
  minute's mean is lower, its total right.)  A gauge keeps its time-weighted
  mean over the samples that carry it, and its max.
* **Incremental roll-up.**  :meth:`StatsStore.compact` rolls up each
  complete minute (ended ``grace`` seconds ago) that got samples since the
  last call, recomputing it from its 1 s rows so that late samples are folded
  in, then prunes 1 s rows older than ``fine_retention`` (whole minutes) and
  minute rows older than ``coarse_retention``.  Call it every few seconds
  from the loop that adds samples.  A sample older than the pruned 1 s rows
  is dropped (:attr:`StatsStore.dropped`): its minute can no longer be
  recomputed.
* **Picking a resolution.**  ``query(resolution="auto")`` returns 1 s rows
  when ``since`` lies within the retained hour, else minute rows up to the
  last rolled-up minute followed by the 1 s rows after it (the newest minute
  or so); every :class:`Row` says its resolution.

Bounds: per scope and key at most ~3700 rows of 1 s (one hour, the minute
in progress, ``grace``) and 43200 minute rows (30 days): up to 12 MB with a
dozen metrics set (measured, indexes included), so a migration of 20 vdisks
that runs for a month may take ~300 MB.  Keys that stop reporting age out;
:meth:`StatsStore.delete` drops one at once.  SQLite reuses the pages freed
by pruning, so the file stops growing once the retention windows are full.

Warnings.

* Rows are selected by their stamp: a minute row is in ``[since, until)``
  when its minute *starts* there.
* Times are Unix seconds (wall clock).  :class:`Sampler` re-baselines when
  the clock steps back; rates across the step are lost, not negative.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from .errors import InvalidArgument

RATE: Final = "rate"
GAUGE: Final = "gauge"
SCOPES = ("vdisk", "vm", "migration", "global")
RESOLUTIONS = {"1s": 1, "1m": 60}


@dataclass(frozen=True)
class MetricSpec:
    """One metric: what it measures and how it is downsampled and combined."""

    name: str
    kind: Literal["rate", "gauge"]  # rate: averaged over time (totals kept); gauge: mean and max
    unit: str  # of the value, e.g. "B/s", "s", "bytes", "ratio"
    help: str
    combine: Literal["sum", "max"] = "sum"  # vdisks -> VM -> migration (see combine())
    total_unit: str = ""  # rates: unit of the integral (bytes for B/s)


METRICS: dict[str, MetricSpec] = {m.name: m for m in (
    # Rates: per-second amounts; their integral over time is a total.
    MetricSpec("background_bps", RATE, "B/s", "background copy shipped", total_unit="bytes"),
    MetricSpec("live_bps", RATE, "B/s", "live (guest) writes shipped", total_unit="bytes"),
    MetricSpec("resent_bps", RATE, "B/s", "bytes shipped again (reconnects, stale chunks)", total_unit="bytes"),
    MetricSpec("write_iops", RATE, "1/s", "guest writes captured", total_unit="writes"),
    MetricSpec("guest_throttle_s", RATE, "s/s", "seconds the guest spent throttled, per second",
               total_unit="seconds"),
    MetricSpec("ring_overflows_ps", RATE, "1/s", "capture ring overflows (dirty-bitmap resyncs)",
               total_unit="overflows"),
    MetricSpec("sink_applied_bps", RATE, "B/s", "bytes applied by the sink", total_unit="bytes"),
    # Gauges: levels at the sample time.
    MetricSpec("lag_s", GAUGE, "s", "age of the oldest write not yet durable on the sink", "max"),
    MetricSpec("backlog_bytes", GAUGE, "bytes", "still to ship: background left, dirty ranges, ring records"),
    MetricSpec("dirty_bytes", GAUGE, "bytes", "dirty ranges waiting to be re-read and shipped"),
    MetricSpec("ring_fill", GAUGE, "ratio", "capture ring fill, 0..1", "max"),
    MetricSpec("link_bps", GAUGE, "B/s", "estimated bandwidth of the link to the sink", "max"),
    MetricSpec("limit_bps", GAUGE, "B/s", "replication rate limit in force for the vdisk's migration (0: none)"),
    MetricSpec("guest_limit_bps", GAUGE, "B/s", "guest write cap on the vdisk's ring (0: none)"),
    MetricSpec("eta_s", GAUGE, "s", "estimated seconds until the backlog is shipped", "max"),
    MetricSpec("sink_apply_ms", GAUGE, "ms", "sink time to apply a batch of records", "max"),
    MetricSpec("sink_fsync_ms", GAUGE, "ms", "sink time to make applied records durable", "max"),
)}
RATES = tuple(n for n, m in METRICS.items() if m.kind == RATE)
GAUGES = tuple(n for n, m in METRICS.items() if m.kind == GAUGE)


@dataclass(frozen=True)
class Sample:
    """Metric values of one scope and key over the ``dt`` seconds ending at ``t`` (Unix seconds)."""

    t: float
    scope: str  # one of SCOPES
    key: str  # vdisk id, VM name, migration id; "" for global
    values: Mapping[str, float]  # metric name -> value; rates are per second over dt
    dt: float = 1.0


@dataclass(frozen=True)
class Row:
    """One stored row, as :meth:`StatsStore.query` returns it."""

    t: float  # 1 s rows: the sample's time; minute rows: the minute's start
    scope: str
    key: str
    resolution: int  # 1 or 60 (seconds)
    seconds: float  # seconds of samples behind the row (its dt; sum of dts for a minute)
    values: dict[str, float] = field(default_factory=dict)  # rates: mean; gauges: time-weighted mean
    peaks: dict[str, float] = field(default_factory=dict)  # gauges: max (equal to values in 1 s rows)

    def to_dict(self) -> dict[str, Any]:
        """The row as plain JSON values."""
        return {"t": self.t, "scope": self.scope, "key": self.key, "resolution": self.resolution,
                "seconds": self.seconds, "values": dict(self.values), "peaks": dict(self.peaks)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Row:
        """The inverse of :meth:`to_dict`."""
        return cls(float(d["t"]), str(d["scope"]), str(d["key"]), int(d["resolution"]), float(d["seconds"]),
                   {k: float(v) for k, v in d.get("values", {}).items()},
                   {k: float(v) for k, v in d.get("peaks", {}).items()})


def _check_metrics(names: Iterable[str], kinds: tuple[str, ...] = (RATE, GAUGE)) -> list[str]:
    out = []
    for n in names:
        m = METRICS.get(n)
        if m is None or m.kind not in kinds:
            known = ", ".join(n for n, m in METRICS.items() if m.kind in kinds)
            raise InvalidArgument(f"unknown {'/'.join(kinds)} metric {n!r}", hint=f"one of {known}")
        out.append(n)
    return out


def _check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise InvalidArgument(f"unknown statistics scope {scope!r}", hint=f"one of {', '.join(SCOPES)}")


def _minute(t: float) -> float:
    return math.floor(t / 60) * 60.0


_META = "CREATE TABLE IF NOT EXISTS stats_meta (name TEXT PRIMARY KEY, value REAL NOT NULL)"
_FINE = """CREATE TABLE IF NOT EXISTS stats_1s (
    t REAL NOT NULL, scope TEXT NOT NULL, key TEXT NOT NULL, dt REAL NOT NULL,
    minute REAL NOT NULL, rolled INTEGER NOT NULL DEFAULT 0)"""
_COARSE = """CREATE TABLE IF NOT EXISTS stats_1m (
    t REAL NOT NULL, scope TEXT NOT NULL, key TEXT NOT NULL, seconds REAL NOT NULL,
    PRIMARY KEY (scope, key, t))"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS stats_1s_t ON stats_1s (t);
CREATE INDEX IF NOT EXISTS stats_1s_key ON stats_1s (scope, key, t);
CREATE INDEX IF NOT EXISTS stats_1s_unrolled ON stats_1s (minute) WHERE rolled = 0;
CREATE INDEX IF NOT EXISTS stats_1m_t ON stats_1m (t);
"""


@dataclass(frozen=True)
class Compacted:
    """What one :meth:`StatsStore.compact` did."""

    minutes: int  # minute rows written (new or recomputed)
    pruned_fine: int  # 1 s rows deleted
    pruned_coarse: int  # minute rows deleted


class StatsStore:
    """Thread-safe time series of :data:`METRICS` in a SQLite file (see the module notes)."""

    def __init__(self, path: Path | str, *, fine_retention: float = 3600.0, coarse_retention: float = 30 * 86400.0,
                 grace: float = 5.0, clock: Any = time.time) -> None:
        """Open (creating) the statistics tables in ``path``.

        ``fine_retention``/``coarse_retention``: seconds of 1 s and minute
        rows kept; ``grace``: seconds a minute stays open for late samples;
        ``clock``: Unix time now (a fake in tests).
        """
        if not grace >= 0 or not fine_retention >= 60 + grace or not coarse_retention >= fine_retention:
            raise InvalidArgument(f"statistics retention {fine_retention}s/{coarse_retention}s, grace {grace}s",
                                  hint="need grace >= 0, fine_retention >= 60 + grace, coarse >= fine retention")
        self.path = Path(path)
        self.fine_retention, self.coarse_retention, self.grace = fine_retention, coarse_retention, grace
        self._clock = clock
        self.dropped = 0  # samples refused for being older than the retained 1 s rows
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # statistics may lose the last seconds in a power loss
        with self._tx():
            for ddl in (_META, _FINE, _COARSE):
                self._db.execute(ddl)
            self._add_columns()
            for ddl in _INDEXES.strip().split(";\n"):
                self._db.execute(ddl)
            meta = dict(self._db.execute("SELECT name, value FROM stats_meta"))
        self._rolled_until = meta.get("rolled_until", -math.inf)  # minute rows are complete before this
        self._fine_floor = meta.get("fine_floor", -math.inf)  # 1 s rows were pruned before this

    def _add_columns(self) -> None:
        """Give both tables a column for every metric of METRICS (and a max column for gauges)."""
        have_fine = {r[1] for r in self._db.execute("PRAGMA table_info(stats_1s)")}
        have_coarse = {r[1] for r in self._db.execute("PRAGMA table_info(stats_1m)")}
        for name, m in METRICS.items():
            if name not in have_fine:
                self._db.execute(f"ALTER TABLE stats_1s ADD COLUMN {name} REAL")
            if name not in have_coarse:
                self._db.execute(f"ALTER TABLE stats_1m ADD COLUMN {name} REAL")
            if m.kind == GAUGE and f"{name}_max" not in have_coarse:
                self._db.execute(f"ALTER TABLE stats_1m ADD COLUMN {name}_max REAL")

    @contextmanager
    def _tx(self) -> Iterator[None]:
        # BEGIN IMMEDIATE takes the write lock up front: no deadlock upgrading
        # a read transaction while the daemon's StateStore writes.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- writing -----------------------------------------------------------------

    def add(self, samples: Iterable[Sample]) -> int:
        """Store samples in one transaction; returns how many were stored.

        Raises InvalidArgument for an unknown scope or metric or a bad time;
        values that are not finite are left out.  Samples older than the
        pruned 1 s rows are dropped (counted in :attr:`dropped`).
        """
        cols = list(METRICS)
        rows: list[tuple[Any, ...]] = []
        for s in samples:
            _check_scope(s.scope)
            _check_metrics(s.values)
            if not (math.isfinite(s.t) and math.isfinite(s.dt) and s.dt > 0):
                raise InvalidArgument(f"statistics sample at t={s.t} covering dt={s.dt}s",
                                      hint="t must be finite Unix seconds, dt a positive number of seconds")
            vals = [s.values.get(c) for c in cols]
            rows.append((s.t, s.scope, str(s.key), s.dt, _minute(s.t),
                         *[float(v) if v is not None and math.isfinite(v) else None for v in vals]))
        sql = (f"INSERT INTO stats_1s (t, scope, key, dt, minute, {', '.join(cols)}) "
               f"VALUES ({', '.join('?' * (5 + len(cols)))})")
        with self._lock:
            kept = [r for r in rows if r[0] >= self._fine_floor]
            self.dropped += len(rows) - len(kept)
            if kept:
                with self._tx():
                    self._db.executemany(sql, kept)
        return len(kept)

    def record(self, t: float, scope: str, key: str, values: Mapping[str, float], dt: float = 1.0) -> int:
        """Store one sample (see :meth:`add`)."""
        return self.add([Sample(t, scope, key, values, dt)])

    def compact(self, now: float | None = None) -> Compacted:
        """Roll up complete minutes, then prune rows past their retention (see the module notes)."""
        now = self._clock() if now is None else now
        horizon = _minute(now - self.grace)  # minutes starting before this are complete
        fine_cut = _minute(now - self.fine_retention)
        coarse_cut = _minute(now - self.coarse_retention)
        aggs = []
        for name, m in METRICS.items():
            if m.kind == RATE:  # mean over all the minute's seconds: rate * seconds = the 1 s total
                aggs.append(f"SUM({name} * dt) / SUM(dt)")
            else:
                aggs.append(f"SUM({name} * dt) / SUM(CASE WHEN {name} IS NOT NULL THEN dt END)")
                aggs.append(f"MAX({name})")
        targets = [c for n, m in METRICS.items() for c in ((n,) if m.kind == RATE else (n, f"{n}_max"))]
        with self._lock, self._tx():
            first = self._db.execute("SELECT MIN(minute) FROM stats_1s WHERE rolled = 0 AND minute < ?",
                                     (horizon,)).fetchone()[0]
            minutes = 0
            if first is not None:
                # Recompute every (minute, scope, key) that got a sample since the last roll-up.
                cur = self._db.execute(
                    f"INSERT OR REPLACE INTO stats_1m (t, scope, key, seconds, {', '.join(targets)}) "
                    f"SELECT minute, scope, key, SUM(dt), {', '.join(aggs)} FROM stats_1s "
                    "WHERE t >= ? AND t < ? AND (minute, scope, key) IN "
                    "(SELECT minute, scope, key FROM stats_1s WHERE rolled = 0 AND minute < ?) "
                    "GROUP BY minute, scope, key", (first, horizon, horizon))
                minutes = cur.rowcount
                self._db.execute("UPDATE stats_1s SET rolled = 1 WHERE rolled = 0 AND minute < ?", (horizon,))
            # Whole minutes only, and all of them rolled up by now (fine_cut <= horizon).
            pruned_fine = self._db.execute("DELETE FROM stats_1s WHERE t < ?", (fine_cut,)).rowcount
            pruned_coarse = self._db.execute("DELETE FROM stats_1m WHERE t < ?", (coarse_cut,)).rowcount
            rolled_until, fine_floor = max(self._rolled_until, horizon), max(self._fine_floor, fine_cut)
            self._db.executemany("INSERT OR REPLACE INTO stats_meta (name, value) VALUES (?, ?)",
                                 [("rolled_until", rolled_until), ("fine_floor", fine_floor)])
            self._rolled_until, self._fine_floor = rolled_until, fine_floor
        return Compacted(minutes, pruned_fine, pruned_coarse)

    def delete(self, scope: str, key: str) -> None:
        """Forget every row of one scope and key (e.g. a deleted migration)."""
        with self._lock, self._tx():
            self._db.execute("DELETE FROM stats_1s WHERE scope = ? AND key = ?", (scope, key))
            self._db.execute("DELETE FROM stats_1m WHERE scope = ? AND key = ?", (scope, key))

    # -- reading -----------------------------------------------------------------

    def query(self, since: float, until: float | None = None, scope: str | None = None, key: str | None = None,
              metrics: Iterable[str] | None = None, resolution: str = "auto") -> list[Row]:
        """Rows stamped in ``[since, until)``, oldest first (then by scope, key).

        ``resolution``: "1s", "1m", or "auto": 1 s rows when ``since`` is
        within the retained hour, else minute rows up to the last rolled-up
        minute and 1 s rows after it.  ``metrics`` limits the values returned.
        """
        if resolution not in ("auto", *RESOLUTIONS):
            raise InvalidArgument(f"unknown resolution {resolution!r}", hint="auto, 1s or 1m")
        if scope is not None:
            _check_scope(scope)
        names = _check_metrics(metrics) if metrics is not None else list(METRICS)
        end = math.inf if until is None else until
        with self._lock:
            if resolution == "1s" or (resolution == "auto" and since >= self._clock() - self.fine_retention):
                return self._select(1, since, end, scope, key, names)
            if resolution == "1m":
                return self._select(60, since, end, scope, key, names)
            split = min(max(since, self._rolled_until), end)
            rows = self._select(60, since, split, scope, key, names) + self._select(1, split, end, scope, key, names)
        rows.sort(key=lambda r: (r.t, r.scope, r.key))
        return rows

    def _select(self, res: int, since: float, until: float, scope: str | None, key: str | None,
                names: Sequence[str]) -> list[Row]:
        if since >= until:
            return []
        table, span = ("stats_1s", "dt") if res == 1 else ("stats_1m", "seconds")
        peaks = [n for n in names if METRICS[n].kind == GAUGE]
        cols = [*names, *(n if res == 1 else f"{n}_max" for n in peaks)]
        where, args = ["t >= ?"], [since]  # type: list[str], list[Any]
        if math.isfinite(until):
            where.append("t < ?")
            args.append(until)
        for col, v in (("scope", scope), ("key", key)):
            if v is not None:
                where.append(f"{col} = ?")
                args.append(v)
        sql = (f"SELECT t, scope, key, {span}, {', '.join(cols)} FROM {table} WHERE {' AND '.join(where)} "
               "ORDER BY t, scope, key")
        out = []
        for r in self._db.execute(sql, args):
            vals = {n: v for n, v in zip(names, r[4:4 + len(names)], strict=True) if v is not None}
            pk = {n: v for n, v in zip(peaks, r[4 + len(names):], strict=True) if v is not None}
            out.append(Row(r[0], r[1], r[2], res, r[3], vals, pk))
        return out

    def totals(self, since: float, until: float | None = None, scope: str | None = None, key: str | None = None,
               metrics: Iterable[str] | None = None) -> dict[tuple[str, str], dict[str, float]]:
        """Integrated rates per (scope, key): bytes for ``*_bps``, writes for ``write_iops``, ...

        Uses the rows ``query(resolution="auto")`` picks; see :func:`integrate`.
        """
        names = _check_metrics(metrics, (RATE,)) if metrics is not None else list(RATES)
        return integrate(self.query(since, until, scope, key, names), names)

    def close(self) -> None:
        """Close the store's connection."""
        with self._lock:
            self._db.close()


def integrate(rows: Iterable[Row], metrics: Iterable[str] | None = None) -> dict[tuple[str, str], dict[str, float]]:
    """Sum of rate * seconds over ``rows`` per (scope, key) and rate metric (gauges are not integrable)."""
    names = _check_metrics(metrics, (RATE,)) if metrics is not None else list(RATES)
    out: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        acc = out.setdefault((r.scope, r.key), {})
        for n in names:
            if n in r.values:
                acc[n] = acc.get(n, 0.0) + r.values[n] * r.seconds
    return out


def combine(samples: Sequence[Sample], scope: str, key: str) -> Sample:
    """One sample for ``scope``/``key`` from its parts' (a VM's vdisks, say), by each metric's ``combine``.

    Its time is the latest of the parts', its dt their mean.
    """
    _check_scope(scope)
    if not samples:
        raise InvalidArgument(f"no samples to combine into {scope} {key!r}")
    values: dict[str, float] = {}
    for s in samples:
        for n, v in s.values.items():
            values[n] = v if n not in values else (values[n] + v if METRICS[n].combine == "sum" else max(values[n], v))
    return Sample(max(s.t for s in samples), scope, key, values, sum(s.dt for s in samples) / len(samples))


def to_json(rows: Iterable[Row]) -> str:
    """Rows as a JSON array of :meth:`Row.to_dict` objects."""
    return json.dumps([r.to_dict() for r in rows], allow_nan=False)


def to_csv(rows: Iterable[Row]) -> str:
    """Rows as CSV: t, time (ISO 8601 UTC), scope, key, resolution, seconds, then metrics and ``<gauge>_max``.

    Metric columns appear in METRICS order, only those some row carries; a
    missing value is an empty cell.
    """
    rows = list(rows)
    present = {n for r in rows for n in r.values}
    present_peaks = {n for r in rows for n in r.peaks}
    cols = [n for n in METRICS if n in present]
    peak_cols = [n for n in METRICS if n in present_peaks]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["t", "time", "scope", "key", "resolution", "seconds", *cols, *(f"{n}_max" for n in peak_cols)])
    for r in rows:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(r.t)) + f".{int(r.t % 1 * 1000):03d}Z"
        w.writerow([repr(r.t), stamp, r.scope, r.key, r.resolution, repr(r.seconds),
                    *(repr(r.values[n]) if n in r.values else "" for n in cols),
                    *(repr(r.peaks[n]) if n in r.peaks else "" for n in peak_cols)])
    return buf.getvalue()


@dataclass
class _Baseline:
    t: float
    counters: dict[str, float]


class Sampler:
    """Per-second rates from cumulative counters read at arbitrary times.

    ``observe(t, scope, key, counters)`` takes, per rate metric, the total it
    is the rate of so far (``{"background_bps": background bytes done,
    "live_bps": live bytes shipped, "write_iops": writes captured}``) and
    returns a :class:`Sample` of (total now - total then) / dt over the time
    since the last observation of that scope and key -- None for the first
    one, which only sets the baseline.  A counter that went down was reset
    (a replicator or daemon restart): it counted from 0 since, so its
    increase is its new value; a rate is never negative.  A reset that is
    followed by more counting than the old value within one interval cannot
    be told from no reset.  Not thread-safe: use it from one task.
    """

    def __init__(self, *, min_interval: float = 0.0) -> None:
        """``min_interval``: observations closer than this to the baseline return None and keep it."""
        self.min_interval = min_interval
        self._last: dict[tuple[str, str], _Baseline] = {}

    def observe(self, t: float, scope: str, key: str, counters: Mapping[str, float],
                gauges: Mapping[str, float] | None = None) -> Sample | None:
        """The sample since the last observation, with ``gauges`` copied in (None: see the class notes)."""
        _check_scope(scope)
        _check_metrics(counters, (RATE,))
        _check_metrics(gauges or {}, (GAUGE,))
        now = {n: float(v) for n, v in counters.items() if math.isfinite(v) and v >= 0}
        last = self._last.get((scope, key))
        if last is None or not t > last.t:  # first sight, or the clock stepped back: start over
            self._last[(scope, key)] = _Baseline(t, now)
            return None
        dt = t - last.t
        if dt < self.min_interval:
            return None
        values: dict[str, float] = {}
        for n, v in now.items():
            if n in last.counters:
                prev = last.counters[n]
                values[n] = (v - prev if v >= prev else v) / dt
        values.update(gauges or {})
        self._last[(scope, key)] = _Baseline(t, now)
        return Sample(t, scope, key, values, dt)

    def forget(self, scope: str, key: str) -> None:
        """Drop the baseline of a scope and key that is gone (a finished vdisk)."""
        self._last.pop((scope, key), None)
