"""Statistics end to end, through the real daemons and the real CLI.

A sim VM with a steady workload (two disks, ``RATE_OPS`` writes of 4 KiB a
second between them) migrates.  Over a window of ``WINDOW_S`` seconds the
write IOPS and live bytes/s the daemon recorded must be within 10 % of what
the guest really wrote, read from the rings' producer counters over the same
window; ``liftshift stats`` prints the table, JSON and CSV that parse, a
PNG worth looking at and a live view; both daemons serve /metrics with the
documented names and the migration's labels; and after the daemon restarts
the history from before is still there.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from e2e import free_port
from procs import finish
from prometheus_client.parser import text_string_to_metric_families
from simsite import SimVmDef, Site

from liftshift.daemon import metrics
from liftshift.daemon.errors import InvalidArgument
from liftshift.daemon.stats import Row, integrate
from liftshift.iofilter.ring import Mapped
from liftshift.v1 import control_pb2 as cpb

MiB = 1 << 20
RATE_OPS = 400
BLOCK = 4096
WINDOW_S = 12.0
DISKS = ("disk0", "disk1")


def cli(site: Site, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return finish(cli_start(site, *args), timeout)


def cli_start(site: Site, *args: str) -> subprocess.Popen[str]:
    """Start the real CLI (independent runs go on side by side; :func:`finish` collects one)."""
    return subprocess.Popen([sys.executable, "-m", "liftshift.ctl", "--address", site.address, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "160"})


def ring_writes(site: Site, vm: str, disk: str) -> tuple[int, int]:
    """(writes, bytes) the guest has published into the disk's ring so far."""
    m = Mapped(site.shm / vm / f"{disk}.ring", writable=False)
    try:
        return m.get("writes"), m.get("bytes")
    finally:
        m.close()


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by name (counters with _total, histograms as _bucket/_count/_sum)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def mean_rate(rows: list[Row], metric: str, since: float, until: float) -> tuple[float, float]:
    """(time-weighted mean of ``metric``, seconds covered) over the rows lying inside [since, until]."""
    inside = [r for r in rows if r.t - r.seconds >= since - 0.05 and r.t <= until + 0.05]
    seconds = sum(r.seconds for r in inside)
    return sum(r.values.get(metric, 0.0) * r.seconds for r in inside) / seconds, seconds


def test_statistics_match_the_guest_and_survive_a_restart(tmp_path: Path, shm_dir: Path, request) -> None:
    t_start = time.monotonic()
    vm = SimVmDef("stat-1", [("disk0", 32 * MiB, 8 * MiB), ("disk1", 16 * MiB, 4 * MiB)], rate_ops=RATE_OPS,
                  block_size=BLOCK, working_set=8 * MiB)
    source_metrics, sink_metrics = free_port(), free_port()
    site = Site(tmp_path, shm_dir, [vm], request.addfinalizer,
                daemon_extra=f'metrics_listen = "127.0.0.1:{source_metrics}"\n',
                sink_extra=f'metrics_listen = "127.0.0.1:{sink_metrics}"\n').start()
    assert site.daemon is not None and site.sink is not None
    assert f"Prometheus metrics on http://127.0.0.1:{source_metrics}/metrics" in site.daemon.log()
    assert f"Prometheus metrics on http://127.0.0.1:{sink_metrics}/metrics" in site.sink.log()
    m = site.call("CreateMigration", cpb.CreateMigrationRequest(vms=["stat-1"], destination=site.destination,
                                                                start=True))
    assert isinstance(m, cpb.Migration)
    mid = m.id
    site.wait_state(mid, cpb.MIGRATION_STATE_CONVERGED, timeout=60)
    vdisks = {d: f"{mid}.stat-1.{d}" for d in DISKS}

    # The truth: what the guest published into its rings over the window.
    t1, before = time.time(), {d: ring_writes(site, "stat-1", d) for d in DISKS}
    time.sleep(WINDOW_S)
    t2, after = time.time(), {d: ring_writes(site, "stat-1", d) for d in DISKS}
    time.sleep(1.5)  # the daemon samples past t2
    truth = {d: ((after[d][0] - before[d][0]) / (t2 - t1), (after[d][1] - before[d][1]) / (t2 - t1)) for d in DISKS}

    r = cli(site, "stats", "--migration", mid, "--since", "5m", "--json")
    assert r.returncode == 0, r.stderr
    rows = [Row.from_dict(d) for d in json.loads(r.stdout)]
    keys = {(row.scope, row.key) for row in rows}
    assert {("migration", mid), ("vm", "stat-1"), *(("vdisk", v) for v in vdisks.values())} <= keys, keys
    report = []
    for d, vdisk in vdisks.items():
        mine = [row for row in rows if row.key == vdisk]
        iops, covered = mean_rate(mine, "write_iops", t1, t2)
        live, _ = mean_rate(mine, "live_bps", t1, t2)
        assert covered >= WINDOW_S - 3, (covered, mine[-5:])
        report.append(f"{d}: write IOPS {iops:.1f} vs {truth[d][0]:.1f} in the ring, live {live / 1e3:.1f} kB/s vs "
                      f"{truth[d][1] / 1e3:.1f} kB/s written (+56-byte record headers)")
        assert iops == pytest.approx(truth[d][0], rel=0.10), report[-1]
        assert live == pytest.approx(truth[d][1], rel=0.10), report[-1]
    vm_rows = [row for row in rows if row.scope == "vm"]
    vm_iops, _ = mean_rate(vm_rows, "write_iops", t1, t2)
    ring_iops = sum(t[0] for t in truth.values())
    report.append(f"VM: write IOPS {vm_iops:.1f} vs {ring_iops:.1f} in the rings; workload asks for {RATE_OPS}")
    print("\n".join(report))
    assert vm_iops == pytest.approx(ring_iops, rel=0.10), report
    assert vm_iops == pytest.approx(RATE_OPS, rel=0.20), report  # the guest keeps (roughly) its pace
    # Totals: the background copy as recorded adds up to what was shipped.
    shipped = {d.vdisk_id: d.chunk_bytes_sent for v in site.migration(mid).vms for d in v.vdisks}
    recorded = integrate(rows)
    for vdisk in vdisks.values():
        assert recorded[("vdisk", vdisk)]["background_bps"] == pytest.approx(shipped[vdisk], rel=0.01), vdisk
    assert recorded[("migration", mid)]["background_bps"] == pytest.approx(sum(shipped.values()), rel=0.01)
    latest = rows[-1]
    assert all(row.values.get("sink_fsync_ms", 0) >= 0 for row in rows)
    assert any("sink_apply_ms" in row.values for row in rows if row.scope == "vdisk"), latest

    # The CSV, the table and the PNG (the slowest: matplotlib) are made side by side.
    png = tmp_path / "stats.png"
    runs = {"csv": cli_start(site, "stats", "--migration", mid, "--since", "5m", "--csv"),
            "table": cli_start(site, "stats", "--migration", mid),
            "png": cli_start(site, "stats", "--png", str(png), "--migration", mid, "--since", "5m")}

    # CSV parses, with the same keys.
    r = finish(runs["csv"])
    assert r.returncode == 0, r.stderr
    parsed = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(parsed) >= len(rows) and {(p["scope"], p["key"]) for p in parsed} == keys
    assert all(float(p["write_iops"]) >= 0 for p in parsed if p["scope"] == "vdisk" and p["write_iops"])

    # The table: one line per key, latest rates and the range's totals.
    r = finish(runs["table"])
    assert r.returncode == 0, r.stderr
    for word in (f"migration {mid}", "vm stat-1", f"vdisk {vdisks['disk0']}", "in this range", "live"):
        assert word in r.stdout, r.stdout

    # A PNG worth looking at.
    r = finish(runs["png"])
    assert r.returncode == 0, r.stderr
    assert f"Wrote {png}" in r.stdout
    from PIL import Image

    with Image.open(png) as img:
        assert img.format == "PNG" and img.size == (1000, 750)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 300, len(colours or [])

    # /metrics of both daemons: every documented name, with the migration's labels.
    src = scrape(source_metrics)
    for name in metrics.metric_names("source"):
        got = src.get(name)
        assert got, f"{name} missing from the source's /metrics"
        assert any(lab.get("migration") == mid and lab.get("vm") == "stat-1" for lab, _ in got), (name, got)
    live_total = {lab["vdisk"]: v for lab, v in src["liftshift_live_bytes_total"]}
    assert set(live_total) == set(vdisks.values()) and all(v > 0 for v in live_total.values())
    snk = scrape(sink_metrics)
    for name, kind, labels in metrics.metric_table("sink"):
        got = snk.get(f"{name}_count" if kind == "histogram" else name)
        assert got, f"{name} missing from the sink's /metrics"
        if labels:
            assert {lab["vdisk"] for lab, _ in got if lab.get("migration") == mid} == set(vdisks.values()), got
    assert snk["liftshift_sink_streams"][0][1] == 2
    assert all(v > 0 for _, v in snk["liftshift_sink_fsync_seconds_count"])

    # The live view, in a pipe: one plain line per new row until Ctrl-C.
    watch = subprocess.Popen([sys.executable, "-m", "liftshift.ctl", "--address", site.address, "stats",
                              "--watch", "--vm", "stat-1", "--interval", "1s"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    time.sleep(3.5)
    watch.send_signal(signal.SIGINT)
    out, err = watch.communicate(timeout=10)
    assert watch.returncode == 0, err
    lines = [ln for ln in out.splitlines() if "vm stat-1:" in ln]
    assert len(lines) >= 3 and "writes/s" in lines[-1] and "live" in lines[-1], out

    # Refusals name the field.
    for field, req in (("scope", cpb.StatsRequest(scope="host")), ("metrics", cpb.StatsRequest(metrics=["bogus"])),
                       ("resolution", cpb.StatsRequest(resolution="5s")),
                       ("until", cpb.StatsRequest(since=2e9, until=1e9))):
        with pytest.raises(InvalidArgument, match=f"field '{field}'"):
            site.call("GetStats", req)

    # After a restart the history is still there, and new rows follow it.
    stopped = time.time()
    site.daemon.stop()
    site.start_daemon()
    deadline = time.monotonic() + 30  # until the restarted daemon has recorded a row (a few seconds)
    while not any(row.t > stopped + 1 for row in site.call("GetStats", cpb.StatsRequest(
            since=stopped, scope="migration", key=mid)).rows):
        assert time.monotonic() < deadline, site.daemon.log()[-3000:]
        time.sleep(0.2)
    r = cli(site, "stats", "--migration", mid, "--since", "5m", "--json")
    assert r.returncode == 0, r.stderr
    again = [Row.from_dict(d) for d in json.loads(r.stdout) if d["scope"] == "migration"]
    assert len([row for row in again if row.t < stopped]) >= WINDOW_S, (stopped, again)
    assert any(row.t > stopped + 1 for row in again), (stopped, again[-3:], site.daemon.log()[-3000:])
    print(f"test took {time.monotonic() - t_start:.1f} s")
