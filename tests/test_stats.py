"""Statistics building blocks: the SQLite time series, rates from counters,
the Prometheus endpoint, and the charts."""

from __future__ import annotations

import csv
import io
import json
import math
import random
import sqlite3
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from liftshift.ctl import charts
from liftshift.daemon import metrics
from liftshift.daemon.errors import InvalidArgument
from liftshift.daemon.state import StateStore
from liftshift.daemon.stats import (
    RATES,
    Row,
    Sample,
    Sampler,
    StatsStore,
    combine,
    integrate,
    to_csv,
    to_json,
)

T0 = 1_700_000_040.0  # a minute boundary (divisible by 60): 2023-11-14T22:14:00Z


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _synthetic(seconds: int, key: str = "d1", seed: int = 1, start: float = T0) -> list[Sample]:
    """About one sample a second with irregular gaps and dts, varying rates and gauges."""
    rng = random.Random(seed)
    out, t = [], start
    while t < start + seconds:
        dt = rng.choice([1.0, 1.0, 1.0, 0.5, 2.0, 3.0])
        t += dt
        values = {"background_bps": 50e6 * (1 + math.sin(t / 37)), "lag_s": rng.uniform(0, 4),
                  "backlog_bytes": rng.uniform(0, 1e9)}
        if rng.random() < 0.8:  # live writes are not always reported
            values["live_bps"] = rng.uniform(0, 20e6)
        if rng.random() < 0.5:
            values["dirty_bytes"] = rng.uniform(0, 1e8)
        out.append(Sample(t, "vdisk", key, values, dt))
    return out


def _truth(samples: list[Sample]) -> dict[str, float]:
    total: dict[str, float] = {}
    for s in samples:
        for n in RATES:
            if n in s.values:
                total[n] = total.get(n, 0.0) + s.values[n] * s.dt
    return total


def _counts(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path) as db:
        return (db.execute("SELECT COUNT(*) FROM stats_1s").fetchone()[0],
                db.execute("SELECT COUNT(*) FROM stats_1m").fetchone()[0])


# -- StatsStore ------------------------------------------------------------------


def test_downsampling_preserves_totals_and_gauge_extremes(tmp_path: Path) -> None:
    clock = Clock(T0)
    store = StatsStore(tmp_path / "daemon.db", clock=clock)
    samples = _synthetic(6 * 60)
    for i in range(0, len(samples), 10):  # the daemon adds a batch and compacts every ~10 s
        batch = samples[i:i + 10]
        store.add(batch)
        clock.now = batch[-1].t
        store.compact()
    # A late sample for a minute already rolled up is folded in at the next compaction.
    late = Sample(T0 + 61.5, "vdisk", "d1", {"background_bps": 7e6, "lag_s": 99.0}, 0.5)
    store.add([late])
    clock.now = T0 + 8 * 60
    store.compact()
    samples.append(late)

    truth = _truth(samples)
    assert truth["background_bps"] > 1e10 and truth["live_bps"] > 1e9
    fine = store.query(T0, resolution="1s")
    coarse = store.query(T0, resolution="1m")
    assert len(fine) == len(samples) and {r.resolution for r in fine} == {1}
    minutes = {math.floor(s.t / 60) * 60 for s in samples}
    assert [r.t for r in coarse] == sorted(minutes) and {r.resolution for r in coarse} == {60}
    for rows in (fine, coarse):
        got = integrate(rows)[("vdisk", "d1")]
        assert set(got) == set(truth)
        for n, v in truth.items():
            assert got[n] == pytest.approx(v, rel=1e-12)
    assert store.totals(T0)[("vdisk", "d1")]["background_bps"] == pytest.approx(truth["background_bps"], rel=1e-12)
    assert sum(r.seconds for r in coarse) == pytest.approx(sum(s.dt for s in samples))

    # Gauges: time-weighted mean over the samples that carry them, and their max.
    for row in coarse:
        inside = [s for s in samples if row.t <= s.t < row.t + 60]
        lag = [s for s in inside if "lag_s" in s.values]
        assert row.peaks["lag_s"] == max(s.values["lag_s"] for s in lag)
        mean = sum(s.values["lag_s"] * s.dt for s in lag) / sum(s.dt for s in lag)
        assert row.values["lag_s"] == pytest.approx(mean, rel=1e-12)
        dirty = [s for s in inside if "dirty_bytes" in s.values]
        mean = sum(s.values["dirty_bytes"] * s.dt for s in dirty) / sum(s.dt for s in dirty)
        assert row.values["dirty_bytes"] == pytest.approx(mean, rel=1e-12)
        assert "background_bps" not in row.peaks  # rates are averaged only
    assert coarse[1].peaks["lag_s"] == 99.0  # the late sample's minute was recomputed
    store.close()


def test_retention_prunes_and_rows_stay_bounded(tmp_path: Path) -> None:
    clock = Clock(T0)
    path = tmp_path / "stats.db"
    store = StatsStore(path, fine_retention=300, coarse_retention=1800, grace=5, clock=clock)
    pages = []
    for step in range(2 * 3600 // 30):  # two hours, a batch of 30 s per key every 30 s
        batch = [Sample(T0 + step * 30 + i + 1, "vdisk", key, {"background_bps": 1e6, "lag_s": 0.5})
                 for key in ("d1", "d2") for i in range(30)]
        store.add(batch)
        clock.now = T0 + (step + 1) * 30
        store.compact()
        fine, coarse = _counts(path)
        assert fine <= 2 * (300 + 60 + 30)  # the retained minutes, the open one, one batch
        assert coarse <= 2 * (1800 // 60 + 1)
        if step % 120 == 119:  # every hour
            with sqlite3.connect(path) as db:
                pages.append(db.execute("PRAGMA page_count").fetchone()[0])
    now = clock.now
    rows = store.query(0, resolution="1s")
    assert min(r.t for r in rows) >= now - 360
    rows = store.query(0, resolution="1m")
    assert min(r.t for r in rows) >= now - 1800 - 60
    assert {r.key for r in rows} == {"d1", "d2"}
    assert pages[1] <= pages[0] * 1.1  # freed pages are reused: the file stopped growing
    # A sample older than the pruned 1 s rows cannot be rolled up any more: dropped.
    assert store.add([Sample(now - 1000, "vdisk", "d1", {"lag_s": 1.0})]) == 0 and store.dropped == 1
    store.delete("vdisk", "d2")
    assert {r.key for r in store.query(0, resolution="1m")} == {"d1"}
    store.close()
    # The watermarks survive a restart: the old sample is still refused.
    again = StatsStore(path, fine_retention=300, coarse_retention=1800, grace=5, clock=clock)
    assert again.add([Sample(now - 1000, "vdisk", "d1", {"lag_s": 1.0})]) == 0
    again.close()


def test_query_picks_the_resolution(tmp_path: Path) -> None:
    clock = Clock(T0)
    store = StatsStore(tmp_path / "daemon.db", fine_retention=600, clock=clock)
    for step in range(40 * 6):  # 40 minutes in 10 s batches, two keys
        store.add([Sample(T0 + step * 10 + i, "vdisk", key, {"live_bps": 1e6, "ring_fill": 0.25})
                   for key in ("a", "b") for i in range(10)])
        clock.now = T0 + step * 10 + 10
        store.compact()
    clock.now = now = T0 + 40 * 60 + 42  # 42 s into a minute that is not rolled up yet
    store.add([Sample(T0 + 2400 + i, "vdisk", "a", {"live_bps": 1e6}) for i in range(42)])

    recent = store.query(now - 300, key="a")
    assert {r.resolution for r in recent} == {1} and len(recent) == 300

    old = store.query(now - 1800, key="a", metrics=["live_bps"])
    split = [r.resolution for r in old]
    assert split == sorted(split, reverse=True)  # minute rows, then the 1 s rows of the open minutes
    # Minutes starting at T0+11m .. T0+38m; rolled up until T0+39m (grace), 1 s rows after.
    assert split.count(60) == 28 and split.count(1) == 60 + 42
    assert old[0].t == T0 + 11 * 60 and old[28].t == T0 + 39 * 60
    assert all(set(r.values) == {"live_bps"} and not r.peaks for r in old)
    # Every second counted exactly once across the two resolutions.
    assert integrate(old)[("vdisk", "a")]["live_bps"] == pytest.approx(1e6 * (28 * 60 + 60 + 42))
    assert {r.resolution for r in store.query(now - 1800, resolution="1s")} == {1}
    assert len(store.query(now - 300, resolution="1m")) == 2 * 3  # T0+36m .. T0+38m

    with pytest.raises(InvalidArgument):
        store.query(now - 60, resolution="5s")
    with pytest.raises(InvalidArgument):
        store.query(now - 60, metrics=["bogus"])
    with pytest.raises(InvalidArgument):
        store.add([Sample(now, "host", "x", {"lag_s": 1.0})])
    with pytest.raises(InvalidArgument, match="nope"):
        store.record(now, "vdisk", "a", {"nope": 1.0})
    store.close()


def test_shares_daemon_db_with_the_state_store_across_threads(tmp_path: Path) -> None:
    path = tmp_path / "daemon.db"
    state = StateStore(path)
    store = StatsStore(path, clock=Clock(T0 + 3000))
    done = threading.Event()

    def writer(k: int) -> None:
        for i in range(40):
            store.add([Sample(T0 + i * 10 + j, "vdisk", f"d{k}", {"live_bps": 2.0}) for j in range(10)])
            state.save_migration(f"m{k}", json.dumps({"i": i}))

    def compactor() -> None:
        while not done.is_set():
            store.compact()

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    background = threading.Thread(target=compactor)
    background.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    background.join()
    store.compact()
    assert len(store.query(T0, resolution="1s")) == 4 * 400
    coarse = integrate(store.query(T0, resolution="1m"))
    assert coarse == {("vdisk", f"d{k}"): {"live_bps": 800.0} for k in range(4)}
    assert sorted(json.loads(b)["i"] for b in state.load_migrations()) == [39] * 4
    store.close()
    state.close()


def test_combine_adds_vdisks_up_by_metric() -> None:
    a = Sample(T0 + 1, "vdisk", "d1", {"background_bps": 5.0, "lag_s": 1.0, "backlog_bytes": 10.0})
    b = Sample(T0 + 2, "vdisk", "d2", {"background_bps": 7.0, "lag_s": 3.0, "backlog_bytes": 5.0})
    vm = combine([a, b], "vm", "web")
    assert (vm.t, vm.scope, vm.key) == (T0 + 2, "vm", "web")
    assert vm.values == {"background_bps": 12.0, "lag_s": 3.0, "backlog_bytes": 15.0}


def test_csv_and_json_parse_back(tmp_path: Path) -> None:
    store = StatsStore(tmp_path / "daemon.db", clock=Clock(T0 + 600))
    store.add(_synthetic(120, seed=3))
    store.compact()
    rows = store.query(T0, resolution="auto")
    rows += store.query(T0, resolution="1m")
    assert {r.resolution for r in rows} == {1, 60}

    assert [Row.from_dict(d) for d in json.loads(to_json(rows))] == rows

    parsed = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert len(parsed) == len(rows)
    for r, p in zip(rows, parsed, strict=True):
        assert float(p["t"]) == r.t and p["key"] == r.key and int(p["resolution"]) == r.resolution
        assert p["time"].endswith("Z") and p["time"].startswith("2023-11-14T22:")
        for n, v in r.values.items():
            assert float(p[n]) == v
        for n, v in r.peaks.items():
            assert float(p[f"{n}_max"]) == v
        if "live_bps" not in r.values:
            assert p["live_bps"] == ""
    store.close()


# -- Sampler ---------------------------------------------------------------------


def test_sampler_rates_are_exact_and_survive_a_reset() -> None:
    def counter(t: float) -> float:
        return 3000.0 * (t - T0) ** 2

    s = Sampler()
    times = [T0 + x for x in (0.0, 0.7, 1.0, 2.5, 2.6, 6.0)]
    assert s.observe(times[0], "vdisk", "d1", {"background_bps": counter(times[0])}) is None
    total = 0.0
    for t0, t1 in zip(times, times[1:], strict=False):
        got = s.observe(t1, "vdisk", "d1", {"background_bps": counter(t1)}, {"lag_s": 0.5})
        assert got is not None and got.dt == pytest.approx(t1 - t0) and got.t == t1
        assert got.values["background_bps"] == pytest.approx((counter(t1) - counter(t0)) / (t1 - t0), rel=1e-12)
        assert got.values["lag_s"] == 0.5
        total += got.values["background_bps"] * got.dt
    assert total == pytest.approx(counter(times[-1]), rel=1e-12)

    # The replicator restarted: the counter counts from 0 again.
    after = s.observe(T0 + 8, "vdisk", "d1", {"background_bps": 500.0, "write_iops": 10})
    assert after is not None and after.values == {"background_bps": 250.0}  # write_iops: baseline only
    after = s.observe(T0 + 9, "vdisk", "d1", {"background_bps": 900.0, "write_iops": 14})
    assert after is not None and after.values == {"background_bps": 400.0, "write_iops": 4.0}
    # The clock stepped back: start over instead of a negative or infinite rate.
    assert s.observe(T0 + 5, "vdisk", "d1", {"background_bps": 1000.0}) is None
    again = s.observe(T0 + 7, "vdisk", "d1", {"background_bps": 1100.0})
    assert again is not None and again.values == {"background_bps": 50.0}
    # Keys are independent; forget() starts a key over.
    assert s.observe(T0 + 7, "vdisk", "d2", {"background_bps": 1.0}) is None
    s.forget("vdisk", "d1")
    assert s.observe(T0 + 8, "vdisk", "d1", {"background_bps": 1200.0}) is None

    slow = Sampler(min_interval=1.0)
    slow.observe(T0, "vm", "web", {"live_bps": 0.0})
    assert slow.observe(T0 + 0.5, "vm", "web", {"live_bps": 100.0}) is None  # baseline kept
    got = slow.observe(T0 + 1.0, "vm", "web", {"live_bps": 300.0})
    assert got is not None and got.values == {"live_bps": 300.0}
    with pytest.raises(InvalidArgument):
        slow.observe(T0 + 2, "vm", "web", {"lag_s": 1.0})  # a gauge is not a counter


# -- Prometheus ------------------------------------------------------------------


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _labels(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def test_metrics_endpoint_serves_the_snapshot_and_drops_finished_migrations() -> None:
    d1 = metrics.VdiskStats("m1", "web", "d1", background_done_bytes=123, background_total_bytes=1000,
                            live_bytes=45, lag_seconds=1.5, dirty_bytes=4096, ring_overflows=2,
                            ring_fill_ratio=0.25, throttle_limit_bytes_per_second=1e6, guest_throttle_seconds=0.75,
                            connected=True)
    d2 = metrics.VdiskStats("m2", "db", "d2", live_bytes=7)
    snap = {"now": metrics.SourceSnapshot([d1, d2], [metrics.VmStats("m1", "web", "syncing", 30.0),
                                                     metrics.VmStats("m2", "db", "converged")])}
    exporter = metrics.MetricsExporter(source=lambda: snap["now"])
    other = metrics.MetricsExporter(source=lambda: snap["now"])  # a second daemon in the process: no clash
    server, port = exporter.start_http("127.0.0.1", 0)
    try:
        assert port > 0 and server.url == f"http://127.0.0.1:{port}/metrics"
        got = _scrape(server.url)
        names = {n for n, _ in got}
        for name in metrics.metric_names("source"):
            assert name in names or f"{name}_total" in names
        assert "process_cpu_seconds_total" in names
        one = _labels(migration="m1", vm="web", vdisk="d1")
        assert got[("liftshift_background_bytes_total", one)] == 123
        assert got[("liftshift_background_size_bytes", one)] == 1000
        assert got[("liftshift_live_bytes_total", one)] == 45
        assert got[("liftshift_lag_seconds", one)] == 1.5
        assert got[("liftshift_dirty_bytes", one)] == 4096
        assert got[("liftshift_ring_overflows_total", one)] == 2
        assert got[("liftshift_ring_fill_ratio", one)] == 0.25
        assert got[("liftshift_throttle_limit_bytes_per_second", one)] == 1e6
        assert got[("liftshift_guest_throttle_seconds_total", one)] == 0.75
        assert got[("liftshift_connected", one)] == 1
        assert got[("liftshift_vm_state", _labels(migration="m1", vm="web", state="syncing"))] == 1
        assert got[("liftshift_vm_eta_seconds", _labels(migration="m1", vm="web"))] == 30
        assert got[("liftshift_live_bytes_total", _labels(migration="m2", vm="db", vdisk="d2"))] == 7

        snap["now"] = metrics.SourceSnapshot([d2], [metrics.VmStats("m2", "db", "converged")])  # m1 finished
        got = _scrape(server.url)
        assert not [k for k in got if dict(k[1]).get("migration") == "m1"]
        assert got[("liftshift_live_bytes_total", _labels(migration="m2", vm="db", vdisk="d2"))] == 7

        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
        assert err.value.code == 404
        body, _ = other.render()
        assert b'liftshift_live_bytes_total{migration="m2",vdisk="d2",vm="db"} 7.0' in body
    finally:
        exporter.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url, timeout=2)


def test_sink_metrics_with_histograms_and_a_failing_snapshot() -> None:
    apply, fsync = metrics.LatencyHistogram(), metrics.LatencyHistogram(buckets=(0.001, 0.01))
    for s in (0.0002, 0.0002, 0.003):
        apply.observe(s)
    before = fsync.snapshot()
    for s in (0.001, 0.005, 0.5):
        fsync.observe(s)
    assert fsync.snapshot().mean_since(before) == pytest.approx(0.506 / 3)
    assert fsync.snapshot().mean_since(fsync.snapshot()) is None
    vd = metrics.SinkVdiskStats("d1", "m1", applied_bytes=1 << 20, applied_records=3, applied_seq=9, durable_seq=8,
                                apply_seconds=apply.snapshot(), fsync_seconds=fsync.snapshot())
    broken = {"yes": False}

    def snapshot() -> metrics.SinkSnapshot:
        if broken["yes"]:
            raise RuntimeError("daemon state unavailable")
        return metrics.SinkSnapshot([vd], streams=1)

    exporter = metrics.MetricsExporter(sink=snapshot, process=False)
    server, port = exporter.start_http("127.0.0.1", 0)
    try:
        got = _scrape(f"http://127.0.0.1:{port}/metrics")
        names = {n for n, _ in got}
        for name in metrics.metric_names("sink"):
            assert name in names or f"{name}_total" in names or f"{name}_count" in names
        assert not any(n.startswith(("process_", "liftshift_lag")) for n in names)
        lab = _labels(migration="m1", vdisk="d1")
        assert got[("liftshift_sink_applied_bytes_total", lab)] == 1 << 20
        assert got[("liftshift_sink_durable_seq", lab)] == 8
        assert got[("liftshift_sink_apply_seconds_count", lab)] == 3
        assert got[("liftshift_sink_apply_seconds_bucket", _labels(migration="m1", vdisk="d1", le="0.00025"))] == 2
        for le, n in (("0.001", 1), ("0.01", 2), ("+Inf", 3)):  # le is inclusive
            assert got[("liftshift_sink_fsync_seconds_bucket", _labels(migration="m1", vdisk="d1", le=le))] == n
        assert got[("liftshift_sink_fsync_seconds_sum", lab)] == pytest.approx(0.506)
        assert got[("liftshift_sink_streams", ())] == 1
        broken["yes"] = True
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert err.value.code == 500
        broken["yes"] = False
        assert _scrape(f"http://127.0.0.1:{port}/metrics")[("liftshift_sink_streams", ())] == 1
    finally:
        server.close()


def test_the_docstring_table_matches_the_metrics() -> None:
    documented = {}
    for line in (metrics.__doc__ or "").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| liftshift_"):
            labels = () if cells[2] == "(none)" else tuple(c.strip() for c in cells[2].split(","))
            documented[cells[0]] = (cells[1], labels)
    exported = {n: (kind, labels) for role in ("source", "sink") for n, kind, labels in metrics.metric_table(role)}
    assert documented == exported


# -- charts ----------------------------------------------------------------------


def test_render_png_draws_three_panels(tmp_path: Path) -> None:
    from PIL import Image

    store = StatsStore(tmp_path / "daemon.db", fine_retention=600, clock=Clock(T0 + 1200))
    store.add(_synthetic(600, key="d1", seed=5) + _synthetic(600, key="d2", seed=6))
    store.compact(T0 + 300)
    rows = store.query(T0)  # minute rows for the first four minutes, 1 s rows after
    store.close()
    assert {r.resolution for r in rows} == {1, 60}
    out = charts.render_png(rows, tmp_path / "chart.png", title="migration m1")
    assert out == tmp_path / "chart.png" and 20_000 < out.stat().st_size < 2_000_000
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (1000, 750)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 500  # lines, bands, text: not a blank canvas
    with pytest.raises(InvalidArgument):
        charts.render_png([], tmp_path / "empty.png", title="nothing")


def test_render_png_without_matplotlib_says_what_to_install(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    row = Row(T0, "vdisk", "d1", 1, 1.0, {"background_bps": 1.0})
    with pytest.raises(charts.ChartsUnavailable) as err:
        charts.render_png([row], tmp_path / "x.png", title="x")
    assert "pip install 'liftshift[charts]'" in str(err.value)
    assert not (tmp_path / "x.png").exists()


def test_sparkline_shape() -> None:
    assert charts.sparkline(list(range(8)), 8) == "▁▂▃▄▅▆▇█"
    assert charts.sparkline(list(range(16)), 8) == "▁▂▃▄▅▆▇█"  # averaged in pairs
    assert charts.sparkline([0, 7], 4) == "  ▁█"  # newest on the right
    assert charts.sparkline([3, None, 3, math.nan], 4) == "█ █ "
    assert charts.sparkline([0, 0, 0], 3) == "▁▁▁"
    assert charts.sparkline([5, 10], 2, lo=0, hi=20) == "▃▅"
    assert charts.sparkline([], 5) == " " * 5 and charts.sparkline([1, 2], 0) == ""
    assert all(len(charts.sparkline([1.0] * n, 7)) == 7 for n in (1, 7, 100))


def test_dashboard_shows_latest_values_and_trends() -> None:
    rows = [Row(T0 + i, "vdisk", "d1", 1, 1.0, {"background_bps": float(i) * (1 << 20), "live_bps": 0.0,
                                                 "lag_s": 0.25 * i, "backlog_bytes": float(1 << 30)})
            for i in range(1, 31)]
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(charts.dashboard({"d1": rows, "d2": []}, width=10, title="m1"))
    text = console.export_text()
    assert "vdisk" in text and "d1" in text and "d2" in text
    assert "30.0 MiB/s" in text and "7.50 s" in text and "1.00 GiB" in text
    line = next(ln for ln in text.splitlines() if "d1" in ln)
    trend = charts.sparkline([float(i) for i in range(1, 31)], 10)  # rising throughput (and lag)
    assert trend[0] == "▁" and trend[-1] == "█" and list(trend) == sorted(trend, key=charts.BLOCKS.index)
    assert line.count(trend) == 2
    assert charts.human(1536, "B/s") == "1.5 KiB/s" and charts.human(0) == "0"
