"""The audit log end to end: a sim migration driven through the real CLI, then tampering.

Every action that changes something leaves exactly one entry -- refused ones
too, with their error -- and nothing else does; ``liftshift audit verify``
passes.  Then, with the daemon stopped, three copies of the log are
tampered with (one byte altered, one entry deleted, two entries swapped):
``audit verify --file`` names the first bad entry of each, and a daemon
restarted on each tampered log comes up (running migrations keep going) but
refuses every audited action with AuditCorrupt naming that entry, changing
nothing.  Moving the log aside, as the error says, lets it act again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e import free_port
from procs import finish, python_module
from simsite import MiB, SimVmDef, Site

from liftshift.daemon.audit import AuditCorrupt
from liftshift.v1 import control_pb2 as cpb


def cli(site: Site, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real `liftshift` CLI against the site's daemon."""
    return finish(cli_start(site, *args), timeout)


def cli_start(site: Site, *args: str) -> subprocess.Popen[str]:
    """Start the real CLI (runs that do not depend on each other go side by side; see :func:`finish`)."""
    exe = Path(sys.executable).parent / "liftshift"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "liftshift.ctl"]
    return subprocess.Popen([*cmd, "--address", site.address, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, (r.args, r.stdout, r.stderr)
    return r.stdout


def tamper(lines: list[bytes], how: str) -> list[bytes]:
    out = list(lines)
    if how == "altered":  # one byte of entry 2 ("ok" -> "oK")
        assert out[1].count(b'"result":"ok"') == 1
        out[1] = out[1].replace(b'"result":"ok"', b'"result":"oK"')
    elif how == "deleted":  # entry 4's line removed
        del out[3]
    else:  # entries 2 and 3 swapped
        out[1], out[2] = out[2], out[1]
    return out


# (how, first bad entry, reason)
TAMPERED = [
    ("altered", 2, "entry 2: hash does not match its content (edited)"),
    ("deleted", 4, "entry 5 follows entry 3: entry 4 is missing (removed)"),
    ("swapped", 3, "entry 3 at line 2 comes before entry 2 at line 3: out of order (reordered)"),
]


def test_cli_actions_are_audited_and_a_tampered_log_is_named_and_refused(tmp_path: Path, shm_dir: Path,
                                                                         request: pytest.FixtureRequest) -> None:
    vms = [SimVmDef("web-1", [("disk0", 8 * MiB, 2 * MiB)], rate_ops=100, working_set=4 * MiB),
           SimVmDef("db-1", [("disk0", 8 * MiB, 2 * MiB)], rate_ops=50)]
    site = Site(tmp_path, shm_dir, vms, request.addfinalizer).start()
    t0 = time.time()
    mid = json.loads(ok(cli(site, "--json", "migrate", "create", "web-1", "--dest", site.destination,
                            "--name", "audited")))["id"]
    ok(cli(site, "migrate", "start", mid))
    ok(cli(site, "migrate", "pause", mid))
    refused = cli(site, "migrate", "pause", mid)
    assert refused.returncode == 3 and "cannot pause a migration that is paused" in refused.stderr, refused
    ok(cli(site, "migrate", "resume", mid))
    site.migration(mid)  # reads are not audited
    ok(cli(site, "cutover", "--auto", mid))  # each VM as soon as it converges
    site.wait_state(mid, cpb.MIGRATION_STATE_COMPLETED, timeout=90)

    # Reads, side by side (none of them is audited).
    reads = [cli_start(site, "--json", "audit", "list"), cli_start(site, "audit", "list"),
             cli_start(site, "--json", "audit", "list", "--vm", "web-1", "--since", "1h"),
             cli_start(site, "audit", "verify")]
    entries = json.loads(ok(finish(reads[0])))["entries"]
    got = [(e["seq"], e["action"], e["params"], e["vms"], e["result"]) for e in entries]
    assert got == [
        (1, "CreateMigration", {"name": "audited", "vms": ["web-1"], "destination": site.destination,
                                "type": "MIGRATION_TYPE_LIVE"}, ["web-1"], "ok"),
        (2, "StartMigration", {"migration_id": mid}, ["web-1"], "ok"),
        (3, "PauseMigration", {"migration_id": mid}, ["web-1"], "ok"),
        (4, "PauseMigration", {"migration_id": mid}, ["web-1"],
         "IllegalTransition: cannot pause a migration that is paused"),
        (5, "ResumeMigration", {"migration_id": mid}, ["web-1"], "ok"),
        (6, "Cutover", {"migration_id": mid, "auto": True}, ["web-1"], "ok"),
    ]
    # Who: one caller throughout ("anonymous" until authentication is on); where: the CLI on loopback.
    assert len({e["who"] for e in entries}) == 1 and entries[0]["who"]
    assert all(e["peer"].startswith("ipv4:127.0.0.1:") for e in entries)
    times = [e["time"] for e in entries]
    assert t0 <= times[0] and times == sorted(times) and times[-1] <= time.time()

    table = ok(finish(reads[1]))
    for e in entries:
        assert e["action"] in table and e["result"] in table
    assert "IllegalTransition" in table and mid not in table  # params only with --json
    assert len(json.loads(ok(finish(reads[2])))["entries"]) == 6
    assert ok(finish(reads[3])).strip() == "ok: 6 entries, chain intact"

    # A second daemon on the same state directory (another port) is refused at start.
    state = site.root / "daemon-state"
    log, head = state / "audit.log", state / "audit.head"
    second = site.root / "second.toml"
    second.write_text(site.daemon_config().read_text().replace(site.address, f"127.0.0.1:{free_port()}"))
    r = subprocess.run(python_module("liftshift.daemon.main", "--config", second), capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 1 and f"audit log {log} is open in another process" in r.stderr, r

    # -- the daemon stopped: verify offline, then tamper with three copies -------------------------
    assert site.daemon is not None and site.daemon.stop() == 0
    original = log.read_bytes()
    lines = original.splitlines(keepends=True)
    assert len(lines) == 6
    copies = {}
    for how, _, _ in TAMPERED:
        d = tmp_path / f"tampered-{how}"
        d.mkdir()
        shutil.copy(head, d / "audit.head")
        (d / "audit.log").write_bytes(b"".join(tamper(lines, how)))
        copies[how] = d
    # The offline verifications, side by side: the log as it is, then each tampered copy.
    intact = cli_start(site, "audit", "verify", "--file", str(log))
    checks = [cli_start(site, "--json", "audit", "verify", "--file", str(copies[how] / "audit.log"))
              for how, _, _ in TAMPERED]
    plain = cli_start(site, "audit", "verify", "--file", str(copies["altered"] / "audit.log"))
    assert ok(finish(intact)).strip() == "ok: 6 entries, chain intact"
    for (_, first_bad, reason), check in zip(TAMPERED, checks, strict=True):
        r = finish(check)
        assert r.returncode == 1, r
        v = json.loads(r.stdout)
        assert (v["ok"], v["first_bad_seq"], v["reason"]) == (False, first_bad, reason), v
    r = finish(plain)
    assert r.returncode == 1, r
    assert r.stdout == f"FAILED: {TAMPERED[0][2]}\n  first bad entry: 2; 1 entry before it verified\n"

    # -- a daemon restarted on a tampered log serves, but refuses to act ---------------------------
    for how, first_bad, reason in TAMPERED:
        shutil.copy(copies[how] / "audit.log", log)
        shutil.copy(copies[how] / "audit.head", head)
        tampered = log.read_bytes()
        daemon = site.start_daemon()
        assert f"audit log {log} is not intact: {reason}" in daemon.log()
        v = site.call("VerifyAudit", cpb.VerifyAuditRequest())
        assert isinstance(v, cpb.VerifyAuditResponse)
        assert (v.ok, v.first_bad_seq, v.reason) == (False, first_bad, reason)
        if how == "altered":
            r = cli(site, "audit", "verify")
            assert r.returncode == 1 and r.stdout.startswith(f"FAILED: {reason}\n"), r
        if how == "altered":
            r = cli(site, "--json", "migrate", "create", "db-1", "--dest", site.destination)
            assert r.returncode == 3, r
            err = json.loads(r.stderr)["error"]
            assert (err["type"], err["message"]) == ("AuditCorrupt", f"CreateMigration refused, nothing done: "
                                                                      f"audit log {log}: {reason}")
            assert "move audit.log and audit.head aside" in err["hint"]
        else:
            with pytest.raises(AuditCorrupt, match=re.escape(f"refused, nothing done: audit log {log}: {reason}")):
                site.call("CreateMigration", cpb.CreateMigrationRequest(vms=["db-1"], destination=site.destination))
        listed = site.call("ListMigrations", cpb.ListMigrationsRequest(all=True))
        assert isinstance(listed, cpb.ListMigrationsResponse)
        assert [m.id for m in listed.migrations] == [mid]  # nothing was done
        assert log.read_bytes() == tampered  # nor appended
        assert daemon.stop() == 0

    # -- moved aside, as the hint says: a new log, and actions are recorded again ------------------
    log.rename(state / "audit.log.tampered")
    head.rename(state / "audit.head.tampered")
    site.start_daemon()
    site.call("CreateMigration", cpb.CreateMigrationRequest(vms=["db-1"], destination=site.destination))
    listed_now = site.call("ListAudit", cpb.ListAuditRequest())
    assert isinstance(listed_now, cpb.ListAuditResponse)
    [e] = listed_now.entries
    assert (e.seq, e.action, list(e.vms), e.result) == (1, "CreateMigration", ["db-1"], "ok")
