"""Cutover details end to end: repair of a damaged shadow, forced cutover,
guest-write throttling while converging, and the workload on its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from simsite import MiB, SimVmDef, Site, assert_identical_at_stop
from tooling import REPO

from liftshift.daemon import config
from liftshift.daemon.settings import DaemonConfig
from liftshift.iofilter import FLAG_CLOSE, FLAG_WRITE, RingConsumer, create_ring
from liftshift.sink.config import load_config
from liftshift.v1 import control_pb2 as cpb


def test_cutover_repairs_a_damaged_shadow(tmp_path: Path, shm_dir: Path, request: pytest.FixtureRequest) -> None:
    """A shadow changed behind the sink's back is found by the cutover's
    verification, re-sent, checked again, and the VM boots from the right bytes.
    (Verification ahead of cutover is off here: a chunk proven before the damage
    would be trusted, which is the design's stated assumption.)"""
    vm = SimVmDef("db-1", [("disk0", 16 * MiB, 8 * MiB)], rate_ops=50, working_set=1 * MiB)
    site = Site(tmp_path, shm_dir, [vm], request.addfinalizer, boot_digest=True,
                daemon_extra="preverify_bytes_per_s = 0\n").start()
    mid = site.call("CreateMigration", cpb.CreateMigrationRequest(vms=["db-1"], destination=site.destination,
                                                                  start=True)).id
    site.wait_state(mid, cpb.MIGRATION_STATE_CONVERGED, 60)
    shadow = site.shadow(mid, "db-1", "disk0")
    with open(shadow, "r+b") as f:  # outside the guest's working set: nothing will rewrite it
        f.seek(12 * MiB + 4096)
        f.write(b"\xde\xad" * 2048)
    got = site.call("Cutover", cpb.CutoverRequest(migration_id=mid, vm="db-1"), timeout=120)
    (rep,) = got.reports
    assert rep.identical and rep.chunks_repaired >= 1 and not rep.error, rep
    assert rep.chunks_preverified == 0
    assert_identical_at_stop(site, mid, vm)


def test_forced_cutover_before_convergence(tmp_path: Path, shm_dir: Path, request: pytest.FixtureRequest) -> None:
    vm = SimVmDef("web-9", [("disk0", 96 * MiB, 64 * MiB)], rate_ops=100)
    site = Site(tmp_path, shm_dir, [vm], request.addfinalizer, boot_digest=True,
                daemon_extra="max_inflight = \"1MiB\"\nread_ahead = 1\n").start()
    mid = site.call("CreateMigration", cpb.CreateMigrationRequest(vms=["web-9"], destination=site.destination,
                                                                  start=True)).id
    m = site.migration(mid)
    assert m.vms[0].state == cpb.MIGRATION_STATE_SYNCING and "force-cutover" in m.allowed
    got = site.call("Cutover", cpb.CutoverRequest(migration_id=mid, vm="web-9", force=True), timeout=180)
    (rep,) = got.reports
    assert rep.forced and rep.identical and not rep.error, rep
    # Forced from syncing: the background copy finished during the drain, after the stop.
    assert rep.drain_seconds > 0 and rep.residual_bytes > 0
    assert got.migration.state == cpb.MIGRATION_STATE_COMPLETED
    assert_identical_at_stop(site, mid, vm)


def test_guest_writes_are_throttled_until_converged(tmp_path: Path, shm_dir: Path,
                                                     request: pytest.FixtureRequest) -> None:
    vm = SimVmDef("app-7", [("disk0", 128 * MiB, 96 * MiB)], rate_ops=200)
    site = Site(tmp_path, shm_dir, [vm], request.addfinalizer,
                daemon_extra="max_inflight = \"1MiB\"\nread_ahead = 1\n").start()
    mid = site.call("CreateMigration", cpb.CreateMigrationRequest(
        vms=["app-7"], destination=site.destination, throttle_bytes_per_s=256 << 10, start=True)).id
    ring = shm_dir / "app-7" / "disk0.ring"
    with RingConsumer(ring) as c:
        assert c.counters()["throttle_bps"] == 256 << 10
        site.wait_state(mid, cpb.MIGRATION_STATE_CONVERGED, 120)
        deadline = time.monotonic() + 5
        while c.counters()["throttle_bps"] != 0:
            assert time.monotonic() < deadline, "throttle not lifted after convergence"
            time.sleep(0.05)
    m = site.migration(mid)
    assert m.throttle_bytes_per_s == 256 << 10


def test_workload_on_its_own_captures_writes_and_closes_on_sigterm(tmp_path: Path, shm_dir: Path) -> None:
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(8 * MiB)
    ring = shm_dir / "disk.ring"
    create_ring(ring, 8 * MiB, capacity=4 * MiB)
    status = tmp_path / "status.json"
    proc = subprocess.Popen([sys.executable, "-m", "liftshift.iofilter.guest", "--disk", str(image),
                             "--ring", str(ring), "--rate", "300", "--block-size", "8KiB", "--read-fraction", "0.25",
                             "--status", str(status)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not (status.exists() and json.loads(status.read_text())["ops"] >= 50):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    st = json.loads(status.read_text())
    assert not st["running"] and st["writes"] + st["reads"] == st["ops"] and st["reads"] > 0
    assert st["overflowed"] == 0
    with RingConsumer(ring) as c:
        recs = c.read(max_bytes=8 << 20)
    writes = [r for r in recs if r.flags & FLAG_WRITE]
    assert len(writes) == st["writes"] and all(r.length == 8192 for r in writes)
    assert recs[-1].flags & FLAG_CLOSE and st["close_seqs"] == [recs[-1].seq]
    replayed = bytearray(8 * MiB)
    for r in writes:
        replayed[r.offset : r.offset + r.length] = r.payload
    assert bytes(replayed) == image.read_bytes()


def test_bad_workload_arguments_are_refused(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(4096))
    got = subprocess.run([sys.executable, "-m", "liftshift.iofilter.guest", "--disk", str(image),
                          "--block-size", "1000"], capture_output=True, text=True, timeout=30, check=False)
    assert got.returncode == 2 and "multiple of 512" in got.stderr


def test_example_configs_load() -> None:
    cfg = config.load(DaemonConfig, REPO / "daemon/daemon.example.toml", "LIFTSHIFT_DAEMON_", environ={})
    assert cfg.sim.vm and cfg.sim.vm[0].disks
    sink = load_config(str(REPO / "sink/sink.example.toml"), environ={})
    assert sink.listen
    assert os.path.exists(REPO / "daemon/systemd/liftshift-daemon.service")


def test_forced_cutover_waits_for_the_sessions_with_the_sink(tmp_path: Path, shm_dir: Path,
                                                             request: pytest.FixtureRequest) -> None:
    """The destination VM is defined on the shadow vdisks, which exist at the sink once the
    replicators' sessions have opened them: a cutover forced before that -- here the sink went
    away before the migration started; a daemon restarted in the first moments of a cutover
    gets there too -- waits for the sessions (the source keeps running) instead of failing."""
    vm = SimVmDef("early-1", [("disk0", 16 * MiB, 4 * MiB)], rate_ops=50)
    site = Site(tmp_path, shm_dir, [vm], request.addfinalizer, boot_digest=True).start()
    mid = site.call("CreateMigration", cpb.CreateMigrationRequest(vms=["early-1"], destination=site.destination)).id
    assert site.sink is not None and site.sink.stop() == 0
    site.call("StartMigration", cpb.MigrationRef(migration_id=mid))
    fut = site.stub().Cutover.future(cpb.CutoverRequest(migration_id=mid, vm="early-1", force=True), timeout=120)
    site.wait_state(mid, cpb.MIGRATION_STATE_CUTTING_OVER, 30)
    time.sleep(1.0)
    assert site.migration(mid).vms[0].state == cpb.MIGRATION_STATE_CUTTING_OVER
    site.start_sink()
    (rep,) = fut.result().reports
    assert rep.forced and rep.identical and not rep.error, rep
    assert_identical_at_stop(site, mid, vm)


def test_cutover_interrupted_by_a_daemon_crash_finishes_after_restart(tmp_path: Path, shm_dir: Path,
                                                                      request: pytest.FixtureRequest) -> None:
    """kill -9 of the daemon during a (forced) cutover: the restarted daemon runs
    the cutover again from the top (every step is idempotent) and completes it."""
    vm = SimVmDef("crm-1", [("disk0", 128 * MiB, 96 * MiB)], rate_ops=100)
    site = Site(tmp_path, shm_dir, [vm], request.addfinalizer, boot_digest=True,
                daemon_extra="max_inflight = \"1MiB\"\nread_ahead = 1\n").start()
    mid = site.call("CreateMigration", cpb.CreateMigrationRequest(vms=["crm-1"], destination=site.destination,
                                                                  start=True)).id
    stub = site.stub()
    fut = stub.Cutover.future(cpb.CutoverRequest(migration_id=mid, vm="crm-1", force=True), timeout=120)
    site.wait_state(mid, cpb.MIGRATION_STATE_CUTTING_OVER, 30)
    assert site.daemon is not None
    # Somewhere in the cutover (the forced drain alone has tens of MiB of copy left).
    site.daemon.kill()
    fut.cancel()
    site.start_daemon()
    done = site.wait_state(mid, cpb.MIGRATION_STATE_COMPLETED, 120)
    assert "was cutting over when the daemon stopped" in site.daemon.log()
    rep = done.vms[0].cutover
    assert rep.identical and rep.forced and not rep.error, rep
    assert_identical_at_stop(site, mid, vm)
