"""Migrations end to end: real daemon, real sink, sim VMs under load, the real CLI.

What is checked is bytes: the destination guest hashes its disks before its
first write (``boot_digest``), and that must equal the source image, which
nobody writes after the source VM stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from simsite import MiB, SimVmDef, Site, assert_identical_at_stop

from liftshift.daemon.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from liftshift.daemon.lifecycle import IllegalTransition
from liftshift.v1 import control_pb2 as cpb


def cli(site: Site, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the real `liftshift` CLI (installed beside this interpreter) against the site's daemon."""
    exe = Path(sys.executable).parent / "liftshift"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "liftshift.ctl"]
    return subprocess.run([*cmd, "--address", site.address, *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def vms_under_load(n: int, size: int = 24 * MiB, fill: int = 8 * MiB) -> list[SimVmDef]:
    out = [SimVmDef(f"vm-{i}", [("disk0", size, fill)], rate_ops=150, working_set=size // 2) for i in range(n)]
    out[0].disks.append(("disk1", size // 2, fill // 2))
    return out


def test_group_with_automatic_cutover_one_after_another(tmp_path: Path, shm_dir: Path,
                                                        request: pytest.FixtureRequest) -> None:
    vms = vms_under_load(3)
    site = Site(tmp_path, shm_dir, vms, request.addfinalizer, boot_digest=True).start()
    inv = json.loads(cli(site, "--json", "inventory").stdout)
    assert sorted(v["name"] for v in inv["vms"]) == ["vm-0", "vm-1", "vm-2"]
    assert all(v["power_state"] == "POWER_STATE_POWERED_ON" for v in inv["vms"])

    created = cli(site, "--json", "migrate", "create", "vm-0", "vm-1", "vm-2", "--dest", site.destination,
                  "--auto-cutover")
    assert created.returncode == 0, created.stderr
    mid = json.loads(created.stdout)["id"]
    # Watch from before the start, so every state change is seen.
    exe = Path(sys.executable).parent / "liftshift"
    watch = subprocess.Popen([str(exe), "--address", site.address, "--json", "status", mid, "--watch",
                              "--interval", "200"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    request.addfinalizer(watch.kill)
    assert watch.stdout is not None
    first = json.loads(watch.stdout.readline())  # the snapshot a watch starts with: it is subscribed
    assert first["migration"]["state"] == "MIGRATION_STATE_CREATED"
    started = cli(site, "migrate", "start", mid)
    assert started.returncode == 0, started.stderr
    out, err = watch.communicate(timeout=180)
    assert watch.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    changes = [(e["vm"], e["state"]) for e in events if e["kind"] == "EVENT_KIND_STATE_CHANGED" and e["vm"]]
    steps = [(e["vm"], e["message"]) for e in events if e["kind"] == "EVENT_KIND_CUTOVER_STEP"]
    for v in ("vm-0", "vm-1", "vm-2"):
        mine = [s.removeprefix("MIGRATION_STATE_") for vm, s in changes if vm == v]
        # Each VM: syncing -> converged (maybe back and forth) -> cutting-over -> completed.
        assert mine[0] == "SYNCING" and mine[-2:] == ["CUTTING_OVER", "COMPLETED"], (v, mine)
        assert "CONVERGED" in mine
        assert [m for vm, m in steps if vm == v][:1] == ["stopping the source VM"]
    # One after another: a VM starts cutting over only after the previous one completed.
    order = [(vm, s) for vm, s in changes if s in ("MIGRATION_STATE_CUTTING_OVER", "MIGRATION_STATE_COMPLETED")]
    for (vm_a, s_a), (vm_b, s_b) in zip(order[::2], order[1::2], strict=True):
        assert vm_a == vm_b and s_a.endswith("CUTTING_OVER") and s_b.endswith("COMPLETED"), order

    show = json.loads(cli(site, "--json", "migrate", "show", mid).stdout)
    assert show["state"] == "MIGRATION_STATE_COMPLETED"
    for v in show["vms"]:
        rep = v["cutover"]
        assert rep["identical"] and rep["downtime_seconds"] > 0, rep
        assert rep["downtime_seconds"] >= rep["stop_seconds"] + rep["drain_seconds"] + rep["verify_seconds"]
    for vm in vms:
        assert_identical_at_stop(site, mid, vm)
    inv = json.loads(cli(site, "--json", "inventory").stdout)
    # The sources stay as they were (stopped, disks kept) for rollback.
    assert all(v["power_state"] == "POWER_STATE_POWERED_OFF" for v in inv["vms"])
    assert all(not v.get("migration_id") for v in inv["vms"])


def _vm(m: cpb.Migration, name: str) -> cpb.VmMigration:
    return next(v for v in m.vms if v.vm == name)


@pytest.mark.parametrize("how", ["sigterm", "kill-9"])
def test_daemon_restart_mid_migration_resumes_and_completes(how: str, tmp_path: Path, shm_dir: Path,
                                                            request: pytest.FixtureRequest) -> None:
    vm = SimVmDef("big-1", [("disk0", 256 * MiB, 160 * MiB)], rate_ops=200, working_set=64 * MiB)
    # Background copy throttled by small credits so the restart lands mid-copy.
    site = Site(tmp_path, shm_dir, [vm], request.addfinalizer, boot_digest=True,
                daemon_extra="max_inflight = \"1MiB\"\nread_ahead = 1\n").start()
    m = site.call("CreateMigration", cpb.CreateMigrationRequest(vms=["big-1"], destination=site.destination,
                                                                start=True))
    mid = m.id
    guest = site.guest_pid("big-1")
    deadline = time.monotonic() + 60
    while True:
        p = site.migration(mid).vms[0].vdisks[0]
        if p.background_total_bytes and p.background_done_bytes >= p.background_total_bytes // 4:
            break
        assert time.monotonic() < deadline, p
        time.sleep(0.02)
    assert p.background_done_bytes < p.background_total_bytes, "copy finished before the restart"
    assert site.daemon is not None
    if how == "sigterm":
        assert site.daemon.stop() == 0
    else:
        site.daemon.kill()
    site.start_daemon()
    again = site.migration(mid)
    assert _vm(again, "big-1").state in (cpb.MIGRATION_STATE_SYNCING, cpb.MIGRATION_STATE_CONVERGED)
    # The VM kept running through the daemon's restart, like a real VM.
    assert site.guest_pid("big-1") == guest and os.path.exists(f"/proc/{guest}")
    site.wait_state(mid, cpb.MIGRATION_STATE_CONVERGED, 120)
    done = site.call("Cutover", cpb.CutoverRequest(migration_id=mid, vm="big-1"), timeout=120)
    assert isinstance(done, cpb.CutoverResponse)
    (rep,) = done.reports
    assert rep.identical and not rep.error
    assert done.migration.state == cpb.MIGRATION_STATE_COMPLETED
    assert_identical_at_stop(site, mid, vm)
    vd = done.migration.vms[0].vdisks[0]
    assert vd.resent_bytes < vd.size_bytes // 10, f"restart re-sent {vd.resent_bytes} bytes"


def test_pause_resume_abort(tmp_path: Path, shm_dir: Path, request: pytest.FixtureRequest) -> None:
    vm = SimVmDef("app-1", [("disk0", 128 * MiB, 96 * MiB)], rate_ops=100)
    site = Site(tmp_path, shm_dir, [vm], request.addfinalizer,
                daemon_extra="max_inflight = \"1MiB\"\nread_ahead = 1\n").start()
    mid = site.call("CreateMigration", cpb.CreateMigrationRequest(vms=["app-1"], destination=site.destination,
                                                                  start=True)).id
    paused = site.call("PauseMigration", cpb.MigrationRef(migration_id=mid))
    assert paused.state == cpb.MIGRATION_STATE_PAUSED and "resume" in paused.allowed
    before = site.migration(mid).vms[0].vdisks[0]
    time.sleep(0.6)
    after = site.migration(mid).vms[0].vdisks[0]
    assert after.background_done_bytes == before.background_done_bytes and not after.connected
    with pytest.raises(IllegalTransition, match="cannot pause a migration that is paused"):
        site.call("PauseMigration", cpb.MigrationRef(migration_id=mid))
    resumed = site.call("ResumeMigration", cpb.MigrationRef(migration_id=mid))
    assert resumed.state == cpb.MIGRATION_STATE_SYNCING
    site.wait_state(mid, cpb.MIGRATION_STATE_CONVERGED, 120)
    aborted = site.call("AbortMigration", cpb.MigrationRef(migration_id=mid))
    assert aborted.state == cpb.MIGRATION_STATE_ABORTED and list(aborted.allowed) == []
    inv = site.call("ListVms", cpb.ListVmsRequest())
    (info,) = inv.vms
    # The source VM keeps running, capture detached, free for another migration.
    assert info.power_state == 1 and not info.migration_id and not any(d.capture_attached for d in info.disks)
    with pytest.raises(IllegalTransition, match="cannot resume a migration that is aborted"):
        site.call("ResumeMigration", cpb.MigrationRef(migration_id=mid))
    again = site.call("CreateMigration", cpb.CreateMigrationRequest(vms=["app-1"], destination=site.destination))
    assert again.id != mid and again.state == cpb.MIGRATION_STATE_CREATED


def test_bad_requests_are_refused_and_change_nothing(tmp_path: Path, shm_dir: Path,
                                                     request: pytest.FixtureRequest) -> None:
    vms = [SimVmDef("a-1", [("disk0", 64 * MiB, 48 * MiB)], rate_ops=50),
           SimVmDef("b-1", [("disk0", 8 * MiB, 1 * MiB)], rate_ops=50)]
    site = Site(tmp_path, shm_dir, vms, request.addfinalizer,
                daemon_extra="max_inflight = \"1MiB\"\nread_ahead = 1\n").start()

    def snapshot() -> list[tuple[str, int, tuple[int, ...]]]:
        ms = site.call("ListMigrations", cpb.ListMigrationsRequest(all=True)).migrations
        return sorted((m.id, m.state, tuple(v.state for v in m.vms)) for m in ms)

    with pytest.raises(NotFound, match="no VM 'ghost'"):
        site.call("CreateMigration", cpb.CreateMigrationRequest(vms=["a-1", "ghost"], destination=site.destination))
    assert snapshot() == []
    with pytest.raises(Unavailable, match="does not answer"):
        site.call("CreateMigration", cpb.CreateMigrationRequest(vms=["a-1"], destination="127.0.0.1:9"))
    with pytest.raises(InvalidArgument, match="not host:port"):
        site.call("CreateMigration", cpb.CreateMigrationRequest(vms=["a-1"], destination="sink"))
    with pytest.raises(InvalidArgument, match="listed twice"):
        site.call("CreateMigration", cpb.CreateMigrationRequest(vms=["a-1", "a-1"], destination=site.destination))
    assert snapshot() == []
    mid = site.call("CreateMigration", cpb.CreateMigrationRequest(vms=["a-1"], destination=site.destination)).id
    with pytest.raises(FailedPrecondition, match=f"already in migration {mid}"):
        site.call("CreateMigration", cpb.CreateMigrationRequest(vms=["b-1", "a-1"], destination=site.destination))
    with pytest.raises(NotFound, match="no migration 'm-nope'"):
        site.call("StartMigration", cpb.MigrationRef(migration_id="m-nope"))
    with pytest.raises(IllegalTransition, match="cannot cutover a migration that is created"):
        site.call("Cutover", cpb.CutoverRequest(migration_id=mid, vm="a-1"))
    state = snapshot()
    site.call("StartMigration", cpb.MigrationRef(migration_id=mid))
    with pytest.raises(IllegalTransition, match="cannot start a migration that is syncing"):
        site.call("StartMigration", cpb.MigrationRef(migration_id=mid))
    state = snapshot()
    # Cutover before convergence: refused, nothing stopped.
    with pytest.raises(FailedPrecondition, match="has not converged") as e:
        site.call("Cutover", cpb.CutoverRequest(migration_id=mid, vm="a-1"))
    assert "force" in (e.value.hint or "")
    with pytest.raises(FailedPrecondition, match="has not converged"):
        site.call("Cutover", cpb.CutoverRequest(migration_id=mid, group=True))
    assert snapshot() == state
    assert site.call("ListVms", cpb.ListVmsRequest()).vms[0].power_state == 1
    # The CLI shows a refusal as one line plus a hint, exit status 3.
    out = cli(site, "cutover", "a-1")
    assert out.returncode == 3 and out.stderr.startswith("liftshift: ") and "hint:" in out.stderr, out
    # Nothing was cut over; under load the copy may have converged meanwhile, which is not the refusal's doing.
    after = snapshot()
    assert [(m, vms) for m, _, vms in after] in ([(m, vms) for m, _, vms in state],
                                                  [(m, (cpb.MIGRATION_STATE_CONVERGED,)) for m, _, _ in state]), after
    assert site.call("ListVms", cpb.ListVmsRequest()).vms[0].power_state == 1


def test_malformed_daemon_config_names_key_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "daemon.toml"
    cfg.write_text('[sim]\n[[sim.vm]]\nname = "bad/name"\n[[sim.vm.disks]]\nname = "d"\nsize = 4096\n')
    got = subprocess.run([sys.executable, "-m", "liftshift.daemon.main", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert got.returncode == 2
    assert str(cfg) in got.stderr and "sim.vm.name" in got.stderr and "bad/name" in got.stderr
