"""The ``liftshift`` CLI against the fake Control service.

What it prints and the exit code of each outcome are checked through the
CLI's ``main()`` in this process (:func:`cli`; a process start costs ~0.9 s,
and this file makes over a hundred calls).  Everything a process adds is
checked with the real thing: the installed ``liftshift`` script and
``python -m liftshift.ctl`` (help, the environment, exit codes of an
unreachable or slow daemon) and, with :func:`start_cli`, Ctrl-C, terminals
and a watch outliving a daemon restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pty
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ctlfake import FakeControl, GiB, MiB, event, identical_report, run_to_completion, serve

from liftshift.ctl.main import main
from liftshift.daemon import errors
from liftshift.daemon.lifecycle import Event
from liftshift.v1 import common_pb2
from liftshift.v1 import control_pb2 as cpb

SCRIPT = Path(sys.executable).parent / "liftshift"


@dataclass
class Run:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def error(self) -> dict[str, str]:
        return dict(json.loads(self.err)["error"])


async def cli(*args: str, address: str | None = None, env: dict[str, str] | None = None,
              timeout: float = 60, real: bool = False, module: bool = False) -> Run:
    """Run ``liftshift [--address A] ARGS`` with stdout and stderr captured (not a terminal), in
    this environment without its ``LIFTSHIFT_*`` variables plus ``env``.

    By default the CLI's ``main()`` runs in this process, in a worker thread (its own event
    loop; this thread's loop serves the fake).  With ``real`` it is the installed ``liftshift``
    script in a subprocess, with ``module`` ``python -m liftshift.ctl``."""
    argv = [*(["--address", address] if address is not None else []), *args]
    if not (real or module):
        return await asyncio.wait_for(asyncio.to_thread(_main_in_process, argv, env or {}), timeout)
    cmd = [sys.executable, "-m", "liftshift.ctl"] if module or not SCRIPT.exists() else [str(SCRIPT)]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LIFTSHIFT_")}
    full_env.update(env or {})
    proc = await asyncio.create_subprocess_exec(*cmd, *argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=full_env)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def _main_in_process(argv: list[str], env: dict[str, str]) -> Run:
    """``main(argv)`` as the script runs it: its return value, or SystemExit's code (usage errors)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("LIFTSHIFT_") or k in env}
    out, err = io.StringIO(), io.StringIO()
    try:
        for k in saved:
            del os.environ[k]
        os.environ.update(env)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
    finally:
        for k in env:
            os.environ.pop(k, None)
        os.environ.update(saved)
    return Run(rc, out.getvalue(), err.getvalue())


@pytest.fixture
async def fake_addr() -> AsyncIterator[tuple[FakeControl, str]]:
    fake = FakeControl()
    async with serve(fake) as addr:
        yield fake, addr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rows(text: str, first: str) -> list[list[str]]:
    """Table rows (cells split on the box rules) whose first cell is ``first``."""
    found = []
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if cells and cells[0] == first:
            found.append(cells)
    return found


# ---- help, usage, global options ---------------------------------------------------

async def test_help_documents_commands_and_exit_codes() -> None:
    for r in (await cli("--help", real=True), await cli("--help", module=True)):
        assert r.rc == 0
        for word in ("inventory", "migrate", "status", "cutover", "verify", "replications", "vsphere",
                     "LIFTSHIFT_ADDRESS"):
            assert word in r.out
        assert re.search(r"^\s+3\s+refused", r.out, re.M) and re.search(r"^\s+4\s+the daemon is unreachable",
                                                                            r.out, re.M)


@pytest.mark.parametrize("args, complaint", [
    ([], "required"),
    (["migrate"], "required"),
    (["migrate", "create", "web-1"], "--dest"),
    (["migrate", "create", "web-1", "--dest", "s:1", "--throttle", "fast"], "'fast' is not a rate"),
    (["migrate", "create", "web-1", "--dest", "s:1", "--converge-threshold", "12XB"], "'12XB' is not a size"),
    (["cutover"], "exactly one of VM, --group MIGRATION or --auto MIGRATION"),
    (["cutover", "web-1", "--group", "m-1"], "exactly one of"),
    (["cutover", "--auto", "m-1", "--force"], "--force does not apply to --auto"),
    (["--timeout", "0", "inventory"], "not a positive number of seconds"),
    (["verify", "v1", "--max-rounds", "0"], "not a positive whole number"),
    (["status", "--watch", "--interval", "-5"], "'-5' is not a positive number of milliseconds"),
    (["migrate", "rollback"], "required: MIGRATION"),
    (["vsphere"], "required"),
    (["vsphere", "attach-filter"], "required: VM"),
])
async def test_usage_errors_exit_2_without_calling_the_daemon(args: list[str], complaint: str,
                                                              fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    r = await cli(*args, address=addr)
    assert r.rc == 2, r
    assert complaint in r.err
    assert fake.requests == []


async def test_address_from_env_and_global_options_after_the_command(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    r = await cli("inventory", env={"LIFTSHIFT_ADDRESS": addr}, real=True)
    assert r.rc == 0 and "web-1" in r.out
    r = await cli("inventory", "--json", "--address", addr, real=True)
    assert r.rc == 0 and [vm["name"] for vm in r.json()["vms"]] == ["web-1", "db-1", "cold-1"]
    assert [name for name, _ in fake.requests] == ["ListVms", "ListVms"]


# ---- inventory ---------------------------------------------------------------------

async def test_inventory_lists_vms_and_disks(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    fake.vms[0].migration_id = "m-0042"
    r = await cli("inventory", address=addr)
    assert r.rc == 0, r
    web = rows(r.out, "web-1")
    # A vSphere VM is listed: every disk has a POLICY cell ("-": none).
    assert web == [["web-1", "sim", "powered-on", "m-0042", "disk0", "4.00 GiB", "1.50 GiB", "yes", "-"]]
    # web-1's second disk is on the next row, under the same VM.
    assert ["", "", "", "", "disk1", "512.0 MiB", "64.0 MiB", "yes", "-"] in rows(r.out, "")
    assert rows(r.out, "cold-1") == [["cold-1", "vsphere", "powered-off", "-", "hd0", "1.00 GiB", "0 B", "no",
                                      "-"]]
    fake.vms[2].disks[0].capture_policy = fake.policy_id
    r = await cli("inventory", address=addr)
    assert rows(r.out, "VM")[0][-1] == "POLICY"
    assert rows(r.out, "cold-1")[0][-1] == fake.policy_id


async def test_inventory_without_vsphere_vms_has_no_policy_column(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    fake.vms = [vm for vm in fake.vms if vm.platform != "vsphere"]
    r = await cli("inventory", address=addr)
    assert r.rc == 0, r
    assert rows(r.out, "VM") == [["VM", "PLATFORM", "POWER", "MIGRATION", "DISK", "SIZE", "ALLOCATED", "CAPTURE"]]
    assert rows(r.out, "web-1") == [["web-1", "sim", "powered-on", "-", "disk0", "4.00 GiB", "1.50 GiB", "yes"]]
    assert "POLICY" not in r.out


async def test_inventory_of_named_vms_shows_everything_known(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    cold = fake.vms[2]
    cold.host, cold.guest_os, cold.num_cpu, cold.memory_mb, cold.firmware = "esx-07", "Ubuntu 22.04", 4, 8192, "efi"
    cold.nics.add(label="Network adapter 1", kind="vmxnet3", network="VM Network")
    d = cold.disks[0]
    d.backing_file, d.datastore, d.controller = "[ds1] cold-1/cold-1.vmdk", "ds1", "SCSI controller 0 (pvscsi) 0:0"
    r = await cli("inventory", "cold-1", "web-1", address=addr)
    assert r.rc == 0, r
    for text in ("esx-07", "Ubuntu 22.04", "8.00 GiB", "Network adapter 1 (vmxnet3) on VM Network",
                 "[ds1] cold-1/cold-1.vmdk", "SCSI controller 0 (pvscsi) 0:0", "web-1", "disk1"):
        assert text in r.out, (text, r.out)
    assert "db-1" not in r.out
    j = await cli("--json", "inventory", "cold-1", address=addr)
    (vm,) = j.json()["vms"]
    assert (vm["num_cpu"], vm["disks"][0]["datastore"], vm["nics"][0]["network"]) == (4, "ds1", "VM Network")
    missing = await cli("inventory", "ghost", address=addr)
    assert missing.rc == 3 and "no VM 'ghost'" in missing.err and "cold-1" in missing.err, missing


async def test_inventory_json_has_every_field(fake_addr: tuple[FakeControl, str]) -> None:
    _, addr = fake_addr
    r = await cli("--json", "inventory", address=addr)
    assert r.rc == 0 and r.err == ""
    cold = r.json()["vms"][2]
    assert cold["name"] == "cold-1" and cold["power_state"] == "POWER_STATE_POWERED_OFF"
    assert cold["migration_id"] == ""  # fields without presence are printed too
    disk = cold["disks"][0]
    assert disk["capture_attached"] is False and int(disk["size_bytes"]) == GiB and int(disk["allocated_bytes"]) == 0
    assert disk["capture_policy"] == ""


# ---- migrate -----------------------------------------------------------------------

async def test_migrate_create_parses_sizes_and_prints_the_id(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    r = await cli("migrate", "create", "web-1", "db-1", "--dest", "sink:50052", "--name", "wave 1",
                  "--auto-cutover", "--converge-threshold", "64MiB", "--throttle", "100MB/s", "--start", address=addr)
    assert r.rc == 0, r
    (mid,) = fake.migrations
    req = fake.requests[-1][1]
    assert (list(req.vms), req.destination, req.name, req.auto_cutover, req.converge_threshold_bytes,
            req.throttle_bytes_per_s, req.start) == (["web-1", "db-1"], "sink:50052", "wave 1", True, 64 * MiB,
                                                      100_000_000, True)
    assert f"Created migration {mid} of 2 VM(s) to sink:50052: syncing" in r.out
    assert re.search(r"converge at\s+64.0 MiB", r.out) and re.search(r"VMs\s+web-1, db-1", r.out)
    assert re.search(r"throttle\s+95.4 MiB/s", r.out)  # 100 MB/s, shown in IEC units
    r = await cli("--json", "migrate", "create", "cold-1", "--dest", "sink:50052", address=addr)
    m = r.json()
    assert r.rc == 0 and m["id"] in fake.migrations and m["id"] != mid
    assert m["state"] == "MIGRATION_STATE_CREATED" and m["auto_cutover"] is False
    assert [vm["vm"] for vm in m["vms"]] == ["cold-1"] and m["allowed"] == ["start", "abort"]


async def test_migrate_actions_change_state_and_refusals_exit_3(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    r = await cli("migrate", "create", "web-1", "--dest", "sink:50052", address=addr)
    (mid,) = fake.migrations
    r = await cli("migrate", "pause", mid, address=addr)
    assert r.rc == 3 and r.out == ""
    assert r.err.splitlines() == ["liftshift: cannot pause a migration that is created",
                                  "  hint: only a syncing or converged migration can be paused"]
    for action, state in (("start", "syncing"), ("pause", "paused"), ("resume", "syncing"), ("abort", "aborted")):
        r = await cli("migrate", action, mid, address=addr)
        assert r.rc == 0, r
        assert f"migration {mid}: {state}" in r.out
        assert fake.migrations[mid].state == cpb.MigrationState.Value(f"MIGRATION_STATE_{state.upper()}")
    r = await cli("--json", "migrate", "abort", mid, address=addr)
    assert r.rc == 3 and r.out == ""
    assert r.error() == {"type": "IllegalTransition", "message": "cannot abort a migration that is aborted",
                   "hint": "a completed or aborted migration cannot be aborted; a cutting-over one must finish or "
                           "fail first"}


async def test_migrate_list_and_show(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    r = await cli("migrate", "list", address=addr)
    assert r.rc == 0 and "No unfinished migrations" in r.out
    await cli("migrate", "create", "web-1", "--dest", "sink:50052", "--start", address=addr)
    await cli("migrate", "create", "db-1", "--dest", "sink:50053", address=addr)
    a, b = fake.migrations
    fake.progress(a, 0.25)
    await cli("migrate", "abort", b, address=addr)

    r = await cli("migrate", "list", address=addr)
    assert [row[:4] for row in rows(r.out, a)] == [[a, a, "syncing", "sink:50052"]]
    assert rows(r.out, a)[0][5] == "400.0 MiB / 1.56 GiB (25%)" and rows(r.out, b) == []
    r = await cli("migrate", "list", "--all", address=addr)
    assert rows(r.out, b)[0][2] == "aborted"
    r = await cli("--json", "migrate", "list", "--all", address=addr)
    assert [m["id"] for m in r.json()["migrations"]] == [a, b]

    r = await cli("migrate", "show", a, address=addr)
    assert r.rc == 0, r
    assert re.search(r"allowed now\s+pause, force-cutover, abort", r.out)
    assert re.search(r"^\s+disk0\s+web-1-disk0\s+copying\s+384.0 MiB / 1.50 GiB \(25%\)\s", r.out, re.M)
    assert re.search(r"^\s+web-1\s+syncing\s+400.0 MiB / 1.56 GiB \(25%\)\s", r.out, re.M)
    assert "Cutover reports" not in r.out and "web-1/disk0:" not in r.out
    disk0 = fake.migrations[a].vms[0].vdisks[0]
    disk0.resent_bytes, disk0.last_error = MiB, "sink restarted"
    r = await cli("migrate", "show", a, address=addr)
    assert "web-1/disk0: size 4.00 GiB, re-sent 1.00 MiB, last error: sink restarted" in r.out

    await cli("cutover", "web-1", "--force", address=addr)
    r = await cli("migrate", "show", a, address=addr)
    assert "Cutover reports" in r.out and rows(r.out, "identical") == [["identical", "yes"]]
    r = await cli("--json", "migrate", "show", a, address=addr)
    assert r.json()["vms"][0]["cutover"]["identical"] is True

    r = await cli("migrate", "show", "m-nope", address=addr)
    assert r.rc == 3 and r.err.splitlines() == ["liftshift: no migration 'm-nope'",
                                                "  hint: list them with `liftshift migrate list --all`"]


def not_identical(vm: str, force: bool) -> cpb.CutoverReport:
    r = identical_report(vm, force)
    r.identical, r.error = False, "2 chunks still differ after 3 rounds"
    return r


async def test_migrate_rollback_prints_the_rolled_back_vms(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    fake.cutover_report = not_identical
    await cli("migrate", "create", "web-1", "--dest", "sink:50052", "--start", address=addr)
    (mid,) = fake.migrations
    r = await cli("cutover", "web-1", "--force", address=addr)
    assert r.rc == 1, r
    r = await cli("migrate", "rollback", mid, address=addr)
    assert r.rc == 0, r
    assert (fake.requests[-1][0], fake.requests[-1][1].migration_id, fake.requests[-1][1].vm) == (
        "RollbackMigration", mid, "")
    lines = r.out.splitlines()
    assert lines[0] == f"Rolled back migration {mid}: rolled-back"
    assert lines[1] == "VM web-1: rolled back — destination VM removed, source VM powered on"
    assert r.err == ""


async def test_migrate_rollback_one_vm_and_json(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    fake.cutover_report = not_identical
    await cli("migrate", "create", "web-1", "db-1", "--dest", "sink:50052", "--start", address=addr)
    (mid,) = fake.migrations
    await cli("cutover", "--group", mid, "--force", address=addr)
    r = await cli("migrate", "rollback", mid, "--vm", "db-1", address=addr)
    assert r.rc == 0, r
    assert fake.requests[-1][1].vm == "db-1"
    assert [line for line in r.out.splitlines() if line.startswith("VM ")] == [
        "VM db-1: rolled back — destination VM removed, source VM powered on"]
    assert re.search(r"^Allowed now: .*rollback", r.out, re.M)  # web-1 is still failed
    r = await cli("--json", "migrate", "rollback", mid, address=addr)
    assert r.rc == 0, r
    m = r.json()
    assert m["id"] == mid and m["state"] == "MIGRATION_STATE_ROLLED_BACK"
    assert [(vm["vm"], vm["state"]) for vm in m["vms"]] == [("web-1", "MIGRATION_STATE_ROLLED_BACK"),
                                                           ("db-1", "MIGRATION_STATE_ROLLED_BACK")]


async def test_migrate_rollback_refused_prints_the_error_and_hint(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    await cli("migrate", "create", "web-1", "--dest", "sink:50052", "--start", address=addr)
    (mid,) = fake.migrations
    r = await cli("migrate", "rollback", mid, address=addr)
    assert r.rc == 3 and r.out == ""
    assert r.err.splitlines() == [
        "liftshift: cannot rollback a migration that is syncing",
        "  hint: only a VM whose cutover failed can be rolled back (abort stops a migration before cutover)"]
    r = await cli("--json", "migrate", "rollback", mid, "--vm", "web-1", address=addr)
    assert r.rc == 3 and r.out == ""
    assert r.error()["type"] == "IllegalTransition"
    assert r.error()["message"] == "cannot rollback a migration that is syncing"


# ---- vsphere -----------------------------------------------------------------------

def vsphere_vm(name: str, *disks: str) -> cpb.Vm:
    return cpb.Vm(name=name, platform="vsphere", power_state=common_pb2.POWER_STATE_POWERED_ON, disks=[
        cpb.VmDisk(name=d, size_bytes=(i + 1) * GiB, allocated_bytes=GiB // 2) for i, d in enumerate(disks)])


async def test_vsphere_attach_filter_prints_each_disks_policy(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    fake.vms.append(vsphere_vm("app-2", "Hard disk 1", "Hard disk 2"))
    r = await cli("vsphere", "attach-filter", "cold-1", "app-2", address=addr)
    assert r.rc == 0, r
    assert [(name, req.vm) for name, req in fake.requests] == [("AttachFilter", "cold-1"), ("AttachFilter", "app-2")]
    assert "Capture policy on every disk of VM cold-1:" in r.out
    assert "Capture policy on every disk of VM app-2:" in r.out
    assert rows(r.out, "DISK") == [["DISK", "SIZE", "POLICY"]] * 2
    assert rows(r.out, "hd0") == [["hd0", "1.00 GiB", fake.policy_id]]
    assert rows(r.out, "Hard disk 2") == [["Hard disk 2", "2.00 GiB", fake.policy_id]]
    r = await cli("--json", "vsphere", "attach-filter", "app-2", address=addr)
    assert r.rc == 0, r
    (vm,) = r.json()["vms"]
    assert vm["name"] == "app-2" and vm["platform"] == "vsphere"
    assert [(d["name"], d["capture_policy"]) for d in vm["disks"]] == [("Hard disk 1", fake.policy_id),
                                                                      ("Hard disk 2", fake.policy_id)]


async def test_vsphere_attach_filter_refused_on_sim(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    r = await cli("vsphere", "attach-filter", "web-1", address=addr)
    assert r.rc == 3 and r.out == ""
    assert r.err.splitlines() == [
        "liftshift: platform sim has no IO filter policy to attach",
        "  hint: attach-filter is for the vsphere platform; sim VMs are captured when a migration starts"]
    r = await cli("--json", "vsphere", "attach-filter", "web-1", address=addr)
    assert r.rc == 3 and r.out == ""
    assert r.error()["type"] == "FailedPrecondition"


async def test_vsphere_attach_filter_stops_at_the_first_refusal(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    fake.vms.append(vsphere_vm("app-2", "Hard disk 1"))
    r = await cli("vsphere", "attach-filter", "cold-1", "web-1", "app-2", address=addr)
    assert r.rc == 3
    assert rows(r.out, "hd0") == [["hd0", "1.00 GiB", fake.policy_id]] and "app-2" not in r.out
    assert r.err.splitlines()[0] == "liftshift: platform sim has no IO filter policy to attach"
    assert [req.vm for _, req in fake.requests] == ["cold-1", "web-1"]
    # With --json the VMs done before the refusal are still printed.
    r = await cli("--json", "vsphere", "attach-filter", "cold-1", "web-1", address=addr)
    assert r.rc == 3
    assert [vm["name"] for vm in r.json()["vms"]] == ["cold-1"]
    assert r.error()["message"] == "platform sim has no IO filter policy to attach"


# ---- status ------------------------------------------------------------------------

async def test_status_snapshot(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    r = await cli("status", address=addr)
    assert r.rc == 0 and "No unfinished migrations" in r.out
    await cli("migrate", "create", "web-1", "db-1", "--dest", "sink:50052", "--start", address=addr)
    (mid,) = fake.migrations
    fake.progress(mid, 0.5, live=5 * MiB)
    for args in (["status"], ["status", mid]):
        r = await cli(*args, address=addr)
        assert r.rc == 0, r
        lines = {line.split()[0]: line for line in r.out.splitlines()[1:]}
        assert set(lines) == {mid, "web-1", "disk0", "disk1", "db-1", "root"}
        assert "2.28 GiB / 4.56 GiB (50%)" in lines[mid] and "syncing" in lines[mid]
        assert "768.0 MiB / 1.50 GiB (50%)" in lines["disk0"] and "copying" in lines["disk0"]
        assert "10.0 MiB" in lines["web-1"]  # live bytes of its two disks
    r = await cli("--json", "status", mid, address=addr)
    assert r.json()["id"] == mid
    r = await cli("--json", "status", address=addr)
    assert [m["id"] for m in r.json()["migrations"]] == [mid]


async def test_status_watch_plain_lines_until_completed(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    fake.watch_script = run_to_completion(3.0, every=0.05)
    await cli("migrate", "create", "web-1", "db-1", "--dest", "sink:50052", "--start", address=addr)
    (mid,) = fake.migrations
    r = await cli("status", mid, "--watch", address=addr, timeout=30)
    assert r.rc == 0, r
    lines = r.out.splitlines()
    fields = [line.split(maxsplit=4) for line in lines]  # time, migration, vm, kind, rest
    assert all(f[1] == mid for f in fields)
    progress = [f for f in fields if f[3] == "progress"]
    # 60 progress events in 3 s, printed at most every 2 s per VM.
    for vm in ("web-1", "db-1"):
        assert 1 <= sum(f[2] == vm for f in progress) <= 2
    assert progress[0][4].startswith("syncing copied 0 B / ")
    steps = [(f[2], f[4]) for f in fields if f[3] == "cutover-step"]
    assert steps == [(vm, f"cutting-over: {s}") for vm in ("web-1", "db-1")
                     for s in ("stopping", "draining", "verifying", "powering on")]
    assert lines[-1].split(maxsplit=3)[3] == "state-changed completed: every VM runs at the destination"
    assert fields[-1][2] == "-"


async def test_status_watch_stops_by_itself_when_the_migration_completes(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    fake.watch_script = run_to_completion(0.3, every=0.05, end_stream=False)
    await cli("migrate", "create", "web-1", "--dest", "sink:50052", "--start", address=addr)
    (mid,) = fake.migrations
    r = await cli("--json", "status", mid, "--watch", address=addr, timeout=20)
    assert r.rc == 0, r
    events = [json.loads(line) for line in r.out.splitlines()]
    assert {e["kind"] for e in events} == {"EVENT_KIND_PROGRESS", "EVENT_KIND_STATE_CHANGED",
                                           "EVENT_KIND_CUTOVER_STEP"}
    assert events[-1]["migration"]["state"] == "MIGRATION_STATE_COMPLETED"
    assert all(e["migration_id"] == mid and "time" in e and "migration" in e for e in events)
    # Already completed: one line in the watch's form, no stream.
    r = await cli("status", mid, "--watch", address=addr)
    assert r.rc == 0 and fake.requests[-1][0] == "GetMigration"
    assert r.out.splitlines()[0].split(maxsplit=1)[1] == f"{mid} - state-changed completed: already completed"
    r = await cli("--json", "status", mid, "--watch", address=addr)
    (line,) = r.out.splitlines()
    assert r.rc == 0 and json.loads(line)["migration"]["state"] == "MIGRATION_STATE_COMPLETED"


async def test_status_watch_of_an_aborted_migration_fails(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr

    async def abort_midway(request: cpb.WatchRequest, f: FakeControl) -> AsyncIterator[cpb.MigrationEvent]:
        m = f.migrations[request.migration_id]
        yield event(f.progress(m.id, 0.1), cpb.EVENT_KIND_PROGRESS)
        yield event(m, cpb.EVENT_KIND_ERROR, vm="web-1", message="sink unreachable")
        f._set_state(m, Event.ABORT)
        yield event(m, cpb.EVENT_KIND_STATE_CHANGED, message="aborted by operator")

    fake.watch_script = abort_midway
    await cli("migrate", "create", "web-1", "--dest", "sink:50052", "--start", address=addr)
    (mid,) = fake.migrations
    r = await cli("status", mid, "--watch", address=addr)
    assert r.rc == 1
    assert [line.split(maxsplit=3)[3] for line in r.out.splitlines()][1:] == [
        "error syncing: sink unreachable", "state-changed aborted: aborted by operator"]
    assert r.err.strip() == f"liftshift: migration {mid} was aborted"


async def test_status_watch_ends_failing_when_the_migration_is_rolled_back(
        fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr

    async def fail_then_roll_back(request: cpb.WatchRequest, f: FakeControl) -> AsyncIterator[cpb.MigrationEvent]:
        m = f.migrations[request.migration_id]
        yield event(f.progress(m.id, 0.5), cpb.EVENT_KIND_PROGRESS)
        f._set_state(m, Event.FORCE_CUTOVER)
        f._set_state(m, Event.FAILED)
        yield event(m, cpb.EVENT_KIND_STATE_CHANGED, vm="web-1", message="cutover failed")
        await f.RollbackMigration(cpb.RollbackRequest(migration_id=m.id), None)
        yield event(m, cpb.EVENT_KIND_STATE_CHANGED, vm="web-1", message="rolled back")
        while True:  # the CLI stops on its own
            await asyncio.sleep(0.05)
            yield event(m, cpb.EVENT_KIND_PROGRESS)

    fake.watch_script = fail_then_roll_back
    await cli("migrate", "create", "web-1", "--dest", "sink:50052", "--start", address=addr)
    (mid,) = fake.migrations
    r = await cli("status", mid, "--watch", address=addr, timeout=20)
    assert r.rc == 1, r
    assert r.out.splitlines()[-1].split(maxsplit=3)[3] == "state-changed rolled-back: rolled back"
    assert r.err.strip() == f"liftshift: migration {mid} was rolled back: its source VMs run again"
    # Already rolled back: one line in the watch's form, no stream.
    r = await cli("--json", "status", mid, "--watch", address=addr)
    (line,) = r.out.splitlines()
    assert r.rc == 1 and fake.requests[-1][0] == "GetMigration"
    assert json.loads(line)["message"] == "already rolled-back"
    assert r.error() == {"type": "RolledBack", "message": f"migration {mid} was rolled back: its source VMs run "
                                                          "again", "hint": ""}


async def test_status_watch_unknown_migration_exits_3(fake_addr: tuple[FakeControl, str]) -> None:
    _, addr = fake_addr
    r = await cli("status", "m-nope", "--watch", address=addr)
    assert r.rc == 3 and "no migration 'm-nope'" in r.err


# ---- cutover -----------------------------------------------------------------------

async def test_cutover_one_vm_prints_its_report(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    await cli("migrate", "create", "web-1", "--dest", "sink:50052", "--start", address=addr)
    (mid,) = fake.migrations
    r = await cli("cutover", "web-1", address=addr)
    assert r.rc == 3 and r.err.splitlines() == ["liftshift: cannot cutover a migration that is syncing",
                                                "  hint: wait until it has converged, or force the cutover"]
    fake.progress(mid, 1.0)
    fake._set_state(fake.migrations[mid], Event.CONVERGED)
    r = await cli("cutover", "web-1", address=addr)
    assert r.rc == 0, r
    req = fake.requests[-1][1]
    assert (req.migration_id, req.vm, req.force) == ("", "web-1", False)
    expect = identical_report("web-1")
    table = {cells[0]: cells[1] for cells in (rows(r.out, k)[0] for k in (
        "identical", "downtime", "stop", "drain", "verify", "power-on", "chunks verified", "chunks preverified",
        "chunks repaired", "residual", "forced"))}
    assert table == {"identical": "yes", "downtime": "2.50 s", "stop": "0.40 s", "drain": "0.60 s",
                     "verify": "1.20 s", "power-on": "0.30 s", "chunks verified": str(expect.chunks_verified),
                     "chunks preverified": str(expect.chunks_preverified), "chunks repaired": "0",
                     "residual": "3.00 MiB", "forced": "no"}
    assert f"Migration {mid}: completed" in r.out


async def test_cutover_group_json_and_a_failed_proof_exits_1(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr

    def db_differs(vm: str, force: bool) -> cpb.CutoverReport:
        r = identical_report(vm, force)
        if vm == "db-1":
            r.identical = False
            r.chunks_repaired = 3
            r.error = "3 chunks still differ after 3 rounds"
        return r

    fake.cutover_report = db_differs
    await cli("migrate", "create", "web-1", "db-1", "--dest", "sink:50052", "--start", address=addr)
    (mid,) = fake.migrations
    r = await cli("cutover", "--group", mid, "--force", address=addr)
    assert r.rc == 1, r
    req = fake.requests[-1][1]
    assert (req.migration_id, req.WhichOneof("what"), req.force) == (mid, "group", True)
    assert rows(r.out, "identical") == [["identical", "yes", "no"]]
    assert rows(r.out, "forced") == [["forced", "yes", "yes"]]
    assert rows(r.out, "error")[0][2] == "3 chunks still differ after 3 rounds"
    assert r.err.splitlines()[0] == "liftshift: cutover of db-1 failed: 3 chunks still differ after 3 rounds"

    fake.migrations.clear()
    for vm in fake.vms:
        vm.migration_id = ""
    await cli("migrate", "create", "web-1", "--dest", "sink:50052", "--start", address=addr)
    (mid,) = fake.migrations
    r = await cli("--json", "cutover", "--group", mid, "--force", address=addr)
    assert r.rc == 0, r
    resp = r.json()
    assert resp["migration"]["id"] == mid and resp["migration"]["state"] == "MIGRATION_STATE_COMPLETED"
    (rep,) = resp["reports"]
    assert rep["vm"] == "web-1" and rep["identical"] is True and rep["downtime_seconds"] == 2.5
    assert set(rep) >= {"stop_seconds", "drain_seconds", "verify_seconds", "power_on_seconds", "chunks_verified",
                        "chunks_preverified", "chunks_repaired", "residual_bytes", "forced", "error"}


async def test_cutover_auto(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    await cli("migrate", "create", "web-1", "--dest", "sink:50052", "--start", address=addr)
    (mid,) = fake.migrations
    r = await cli("cutover", "--auto", mid, address=addr)
    assert r.rc == 0, r
    assert fake.migrations[mid].auto_cutover and fake.requests[-1][1].WhichOneof("what") == "auto"
    assert f"Automatic cutover is on for migration {mid}" in r.out
    assert f"liftshift status {mid} --watch" in r.out


# ---- replications and verify -------------------------------------------------------

async def test_replications_and_verify(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    fake.replications = [cpb.VdiskReplication(vdisk_id="v1", sink="sink:50052", state=cpb.REPLICATION_STATE_COPYING,
                                              connected=True, background_total_bytes=GiB,
                                              background_done_bytes=GiB // 4, live_bytes=3 * MiB, live_records=7,
                                              ring_overflows=2)]
    r = await cli("replications", address=addr)
    (row,) = rows(r.out, "v1")
    assert row[:5] == ["v1", "sink:50052", "copying", "yes", "256.0 MiB / 1.00 GiB (25%)"]
    assert row[5] == "3.00 MiB (7 writes)" and row[10] == "2"
    r = await cli("--json", "replications", address=addr)
    assert r.json()["vdisks"][0]["ring_overflows"] == "2"  # uint64: a string in proto3 JSON

    r = await cli("verify", "v1", "--max-rounds", "5", address=addr)
    assert r.rc == 0 and "vdisk v1: identical" in r.out and "4096 chunks compared" in r.out
    assert fake.requests[-1][1].max_rounds == 5
    fake.verify_result = lambda req: cpb.VerifyVdiskResponse(vdisk_id=req.vdisk_id, identical=False,
                                                             chunks_compared=10, chunks_mismatched=2, rounds=3)
    r = await cli("verify", "v1", address=addr)
    assert r.rc == 1 and "vdisk v1: NOT identical" in r.out
    assert r.err.startswith("liftshift: vdisk v1 is not identical to its shadow after 3 round(s)")
    r = await cli("--json", "verify", "v9", address=addr)
    assert r.rc == 3 and r.error() == {"type": "NotFound", "message": "no vdisk 'v9' is replicated by this daemon",
                                       "hint": "known: v1"}


# ---- exit codes --------------------------------------------------------------------

@pytest.mark.parametrize("error, rc", [
    (errors.InvalidArgument("bad"), 3),
    (errors.NotFound("missing"), 3),
    (errors.AlreadyExists("twice"), 3),
    (errors.FailedPrecondition("not now"), 3),
    (errors.OutOfRange("too far"), 3),
    (errors.PermissionDenied("no"), 3),
    (errors.Unavailable("vCenter does not answer"), 4),
    (errors.TooLarge("too big"), 1),
    (errors.LiftshiftError("internal trouble"), 1),
])
async def test_exit_code_per_error_type(error: errors.LiftshiftError, rc: int,
                                        fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    error.hint = f"do something about {error.message}"
    fake.fail["ListVms"] = error
    r = await cli("inventory", address=addr)
    assert r.rc == rc
    assert r.out == ""
    assert r.err.splitlines() == [f"liftshift: {error.message}", f"  hint: do something about {error.message}"]
    r = await cli("--json", "inventory", address=addr)
    assert r.rc == rc
    assert r.error() == {"type": type(error).__name__, "message": error.message,
                         "hint": f"do something about {error.message}"}


async def test_unreachable_daemon_exits_4_naming_the_address() -> None:
    addr = f"127.0.0.1:{free_port()}"
    r = await cli("migrate", "list", address=addr, real=True)
    assert r.rc == 4 and r.out == ""
    first, hint = r.err.splitlines()
    assert first.startswith(f"liftshift: cannot reach the liftshift daemon at {addr}")
    assert hint.startswith(f"  hint: check that liftshift-daemon is running and listening on {addr}; ")
    assert "TLS" in hint  # which credentials were used (here: none found), for a failed handshake
    r = await cli("--json", "status", "--watch", address=addr, real=True)
    assert r.rc == 4 and r.error()["type"] == "Unavailable" and addr in r.error()["hint"]


async def test_a_slow_daemon_exits_4_after_the_timeout(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    fake.delay["ListVms"] = 3
    r = await cli("--timeout", "0.5", "inventory", address=addr, real=True)
    assert r.rc == 4
    assert r.err.splitlines()[0] == f"liftshift: the liftshift daemon at {addr} did not answer within 0.5 s"


# ---- terminals and Ctrl-C ----------------------------------------------------------

async def forever(request: cpb.WatchRequest, f: FakeControl) -> AsyncIterator[cpb.MigrationEvent]:
    """A Watch that streams progress until the client goes away."""
    while True:
        for m in f.migrations.values():
            if m.id == request.migration_id or not request.migration_id:
                yield event(f.progress(m.id, 0.3), cpb.EVENT_KIND_PROGRESS)
        await asyncio.sleep(0.05)


async def start_cli(*args: str, address: str, stdout: Any, env: dict[str, str] | None = None,
                    ) -> asyncio.subprocess.Process:
    """Start ``liftshift`` without waiting for it (stdout as given, stderr a pipe)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LIFTSHIFT_")}
    full_env.update(env or {})
    return await asyncio.create_subprocess_exec(str(SCRIPT), "--address", address, *args, stdout=stdout,
                                                stderr=asyncio.subprocess.PIPE, env=full_env)


async def wait_for_request(fake: FakeControl, method: str) -> None:
    for _ in range(200):
        if any(name == method for name, _ in fake.requests):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the CLI never called {method}")


async def test_ctrl_c_ends_a_watch_quietly_and_interrupts_a_cutover_with_a_hint(
        fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    fake.watch_script = forever
    await cli("migrate", "create", "web-1", "--dest", "sink:50052", "--start", address=addr)
    proc = await start_cli("status", "--watch", address=addr, stdout=asyncio.subprocess.PIPE)
    await wait_for_request(fake, "Watch")
    await asyncio.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0 and err == b""
    assert b" web-1 progress syncing copied " in out

    fake.delay["Cutover"] = 30
    proc = await start_cli("cutover", "web-1", "--force", address=addr, stdout=asyncio.subprocess.PIPE)
    await wait_for_request(fake, "Cutover")
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 130
    assert err.decode().splitlines() == [
        "liftshift: interrupted",
        "  hint: the daemon finishes the cutover on its own: follow it with `liftshift status --watch`"]


async def test_status_watch_on_a_terminal_draws_progress_bars(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    fake.watch_script = run_to_completion(1.0, every=0.05)
    await cli("migrate", "create", "web-1", "--dest", "sink:50052", "--start", address=addr)
    (mid,) = fake.migrations
    master, slave = pty.openpty()
    try:
        proc = await start_cli("status", mid, "--watch", address=addr, stdout=slave,
                               env={"COLUMNS": "160", "TERM": "xterm-256color"})
        os.close(slave)
        reader = asyncio.create_task(asyncio.to_thread(read_all, master))
        rc = await asyncio.wait_for(proc.wait(), 30)
        screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", (await reader).decode(errors="replace"))
    finally:
        os.close(master)
    assert rc == 0, screen
    assert f"Watching migration {mid}" in screen
    assert "━" in screen  # rich's progress bars
    assert re.search(r"disk0\s+converged\s+━+\s+1.50 GiB / 1.50 GiB \(100%\)", screen)
    assert f"{mid} web-1 cutover-step cutting-over: verifying" in screen
    assert re.search(rf"{mid}\s+completed", screen)


def read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


# ---- a watch outlives a daemon restart -----------------------------------------------

async def test_status_watch_reconnects_after_a_daemon_restart() -> None:
    fake, port = FakeControl(), free_port()
    addr = f"127.0.0.1:{port}"
    fake.watch_script = forever
    async with serve(fake, port):
        await cli("migrate", "create", "web-1", "--dest", "sink:50052", "--start", address=addr)
        (mid,) = fake.migrations
        proc = await start_cli("status", mid, "--watch", address=addr, stdout=asyncio.subprocess.PIPE)
        await wait_for_request(fake, "Watch")
        await asyncio.sleep(0.3)
    # The daemon is gone for a while, then back and the migration goes on.
    await asyncio.sleep(1.0)
    assert proc.returncode is None
    fake.watch_script = run_to_completion(0.3, every=0.05)
    async with serve(fake, port):
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    notices = err.decode().splitlines()
    assert notices[0].startswith("liftshift: ") and notices[0].endswith("; reconnecting for up to 60 s")
    assert notices[1:] == [f"liftshift: reconnected to the daemon at {addr}"]
    assert out.decode().splitlines()[-1].endswith("state-changed completed: every VM runs at the destination")


async def test_status_watch_of_a_migration_that_finished_while_the_daemon_was_away() -> None:
    fake, port = FakeControl(), free_port()
    addr = f"127.0.0.1:{port}"
    fake.watch_script = forever
    async with serve(fake, port):
        await cli("migrate", "create", "web-1", "--dest", "sink:50052", "--start", address=addr)
        (mid,) = fake.migrations
        proc = await start_cli("--json", "status", mid, "--watch", address=addr, stdout=asyncio.subprocess.PIPE)
        await wait_for_request(fake, "Watch")
        await asyncio.sleep(0.3)
    fake._set_state(fake.migrations[mid], Event.ABORT)
    async with serve(fake, port):
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1  # it was aborted
    last = json.loads(out.decode().splitlines()[-1])
    assert last["kind"] == "EVENT_KIND_STATE_CHANGED" and last["message"] == "already aborted"
    lines = [json.loads(line) for line in err.decode().splitlines()]
    assert "reconnecting" in lines[0]["notice"]
    assert lines[-1] == {"error": {"type": "Aborted", "message": f"migration {mid} was aborted", "hint": ""}}
