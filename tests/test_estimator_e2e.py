"""The Migration Estimator against reality: predict, then migrate over the same slow link.

A sim VM with a known write rate and working set is observed for a short
window through a link throttled to a known rate (a loopback proxy); then the
real migration runs over that link with automatic cutover.  The predicted
time to completion must be within 15 % of the measured one and the predicted
cutover downtime within 25 %.  Also: the observation survives a daemon
restart, and bad requests are refused without recording anything.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from procs import start_process
from simsite import SimVmDef, Site

from liftshift.daemon.errors import InvalidArgument, NotFound
from liftshift.v1 import control_pb2 as cpb

MiB = 1 << 20
LINK_BPS = 24e6


def wait_estimate(site: Site, eid: str, state: str, timeout: float = 120) -> cpb.EstimateReport:
    deadline = time.monotonic() + timeout
    while True:
        rep = site.call("GetEstimate", cpb.EstimateRef(estimate_id=eid))
        assert isinstance(rep, cpb.EstimateReport)
        if rep.estimate.state == state:
            return rep
        assert time.monotonic() < deadline, rep
        time.sleep(0.2)


def test_prediction_matches_the_real_migration_over_a_throttled_link(tmp_path, shm_dir, request) -> None:
    vm = SimVmDef("app-1", [("disk0", 512 * MiB, 256 * MiB)], rate_ops=50, block_size=4096,
                  working_set=128 * MiB)
    site = Site(tmp_path, shm_dir, [vm], request.addfinalizer,
                daemon_extra='converge_threshold = "4MiB"\n').start()
    proxy = start_process([sys.executable, str(Path(__file__).with_name("tcpproxy.py")), str(site.sink_port),
                           str(LINK_BPS), str(tmp_path / "proxy.port")], tmp_path / "proxy.port",
                          cleanup=request.addfinalizer, credentials=site.pki.credentials())
    link = proxy.address

    e = site.call("StartEstimate", cpb.StartEstimateRequest(vms=["app-1"], destination=link, window_seconds=8,
                                                            interval_seconds=1, probe_bytes=96 * MiB,
                                                            probe_seconds=4), timeout=60)
    assert isinstance(e, cpb.Estimate)
    assert 0.7 * LINK_BPS < e.bandwidth_bytes_per_s < 1.3 * LINK_BPS, e  # the probe saw the link
    rep = wait_estimate(site, e.id, "done")
    (v,) = rep.vms
    assert v.converges, v
    # The workload's own numbers: 50 ops/s of 4 KiB, all writes, over a 128 MiB working set.
    assert 0.8 * 50 * 4096 < v.write_bytes_per_s < 1.2 * 50 * 4096, v
    predicted_total = v.total_seconds.estimate + v.cutover_downtime_seconds.estimate
    predicted_downtime = v.cutover_downtime_seconds.estimate

    t0 = time.monotonic()
    m = site.call("CreateMigration", cpb.CreateMigrationRequest(vms=["app-1"], destination=link, start=True,
                                                                auto_cutover=True))
    assert isinstance(m, cpb.Migration)
    done = site.wait_state(m.id, cpb.MIGRATION_STATE_COMPLETED, timeout=180)
    measured_total = time.monotonic() - t0
    measured_downtime = done.vms[0].cutover.downtime_seconds
    print(f"predicted total {predicted_total:.2f} s, measured {measured_total:.2f} s; predicted downtime "
          f"{predicted_downtime:.3f} s, measured {measured_downtime:.3f} s")
    assert abs(predicted_total - measured_total) <= 0.15 * measured_total, (predicted_total, measured_total, v)
    assert abs(predicted_downtime - measured_downtime) <= 0.25 * measured_downtime + 0.05, (
        predicted_downtime, measured_downtime, v)
    # The observation ended when the migration took the VM's rings; its samples are kept.
    after = site.call("GetEstimate", cpb.EstimateRef(estimate_id=e.id))
    assert isinstance(after, cpb.EstimateReport) and after.vms[0].write_bytes_per_s > 0


def test_observation_resumes_after_a_daemon_restart_and_bad_requests_change_nothing(tmp_path, shm_dir,
                                                                                    request) -> None:
    vm = SimVmDef("db-1", [("disk0", 64 * MiB, 16 * MiB)], rate_ops=100, block_size=4096)
    site = Site(tmp_path, shm_dir, [vm], request.addfinalizer).start()
    for bad, needle in ((cpb.StartEstimateRequest(vms=["ghost"], destination=site.destination), NotFound),
                        (cpb.StartEstimateRequest(vms=["db-1"], destination="nowhere"), InvalidArgument),
                        (cpb.StartEstimateRequest(vms=["db-1", "db-1"], destination=site.destination),
                         InvalidArgument),
                        (cpb.StartEstimateRequest(vms=["db-1"], destination=site.destination, window_seconds=1),
                         InvalidArgument)):
        with pytest.raises(needle):
            site.call("StartEstimate", bad)
    with pytest.raises(NotFound, match="no estimate yet"):
        site.call("GetEstimate", cpb.EstimateRef())
    e = site.call("StartEstimate", cpb.StartEstimateRequest(vms=["db-1"], destination=site.destination,
                                                            window_seconds=8, interval_seconds=1,
                                                            bandwidth_bytes_per_s=50e6))
    assert isinstance(e, cpb.Estimate) and e.bandwidth_bytes_per_s == 50e6
    time.sleep(3)
    assert site.daemon is not None
    site.daemon.kill()  # kill -9: the observation must go on from where it was
    site.start_daemon()
    rep = wait_estimate(site, e.id, "done", timeout=60)
    assert rep.estimate.observed_seconds >= 8
    ts = rep.vms[0]
    assert 0.7 * 100 * 4096 < ts.write_bytes_per_s < 1.3 * 100 * 4096, ts


def test_estimate_cli_start_show_stop(tmp_path, shm_dir, request) -> None:
    import json
    import subprocess

    vm = SimVmDef("web-1", [("disk0", 64 * MiB, 16 * MiB)], rate_ops=100, block_size=4096, working_set=8 * MiB)
    site = Site(tmp_path, shm_dir, [vm], request.addfinalizer).start()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "liftshift.ctl", "--address", site.address, *args],
                              capture_output=True, text=True, timeout=60, check=False)

    bad = cli("estimate", "start", "web-1", "--destination", site.destination, "--window", "forever")
    assert bad.returncode == 2 and "not a duration" in bad.stderr, bad
    started = cli("estimate", "start", "web-1", "--destination", site.destination, "--window", "30s",
                  "--interval", "1s", "--probe-bytes", "16MiB", "--probe-time", "2s")
    assert started.returncode == 0 and "usable bandwidth" in started.stdout, started
    time.sleep(3)
    shown = cli("estimate", "show")
    assert shown.returncode == 0, shown
    for text in ("web-1", "converges", "Group plan", "Sneakernet", "24 h"):
        assert text in shown.stdout, (text, shown.stdout)
    stopped = cli("estimate", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped
    report = json.loads(cli("--json", "estimate", "show").stdout)
    assert report["estimate"]["state"] == "stopped" and report["vms"][0]["converges"] is True
    assert report["vms"][0]["write_iops"] > 50
