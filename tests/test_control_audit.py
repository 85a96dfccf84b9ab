"""The audit interceptor, the refusal callback and the audit RPCs, on an in-process gRPC server.

A hand-written fake Control servicer stands behind the real interceptor
stack ``[AuthInterceptor, ErrorInterceptor, AuditInterceptor]``; the client
is the real :class:`~liftshift.ctl.client.Client`, so errors arrive typed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from liftshift.ctl.client import Client
from liftshift.daemon.audit import AuditCorrupt, AuditLog, AuditWriteFailed, read_entries
from liftshift.daemon.control_audit import AUDITED, READ_ONLY, AuditInterceptor, AuditRpcs, audit_refusal, check_log
from liftshift.daemon.errors import ErrorInterceptor, LiftshiftError, NotFound, Unauthenticated, Unavailable
from liftshift.daemon.lifecycle import Event, IllegalTransition, State
from liftshift.daemon.security import AuthInterceptor, Identity, Role
from liftshift.v1 import control_pb2 as cpb
from liftshift.v1 import control_pb2_grpc

MIGRATIONS = {"m-1": ["web-1", "db-1"]}


def vms_of_migration(mid: str) -> list[str]:
    if mid not in MIGRATIONS:
        raise NotFound(f"no migration {mid!r}")
    return MIGRATIONS[mid]


class FakeControl(AuditRpcs, control_pb2_grpc.ControlServicer):
    """Records which handlers ran; each behaves as its name in the test says."""

    def __init__(self, audit: Any = None) -> None:
        self.audit = audit
        self.ran: list[str] = []

    async def CreateMigration(self, request: cpb.CreateMigrationRequest, context: Any) -> cpb.Migration:
        self.ran.append("CreateMigration")
        return cpb.Migration(id="m-1", name=request.name)

    async def StartMigration(self, request: cpb.MigrationRef, context: Any) -> cpb.Migration:
        self.ran.append("StartMigration")
        vms_of_migration(request.migration_id)
        return cpb.Migration(id=request.migration_id)

    async def PauseMigration(self, request: cpb.MigrationRef, context: Any) -> cpb.Migration:
        self.ran.append("PauseMigration")
        raise IllegalTransition(State.PAUSED, Event.PAUSE)

    async def AbortMigration(self, request: cpb.MigrationRef, context: Any) -> cpb.Migration:
        self.ran.append("AbortMigration")
        await asyncio.sleep(30)  # the client gives up first
        return cpb.Migration(id=request.migration_id)

    async def AttachFilter(self, request: cpb.AttachFilterRequest, context: Any) -> cpb.Vm:
        self.ran.append("AttachFilter")
        raise RuntimeError("boom")

    async def GetMigration(self, request: cpb.MigrationRef, context: Any) -> cpb.Migration:
        self.ran.append("GetMigration")
        return cpb.Migration(id=request.migration_id)

    async def Watch(self, request: cpb.WatchRequest, context: Any) -> AsyncIterator[cpb.MigrationEvent]:
        self.ran.append("Watch")
        for i in range(2):
            yield cpb.MigrationEvent(migration_id=request.migration_id, message=f"event {i}")


@asynccontextmanager
async def serve(fake: FakeControl, interceptors: Iterable[grpc.aio.ServerInterceptor]) -> AsyncIterator[Client]:
    server = grpc.aio.server(interceptors=list(interceptors))
    control_pb2_grpc.add_ControlServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with Client(f"127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        await server.stop(0)


def stack(log: Any, **kw: Any) -> list[grpc.aio.ServerInterceptor]:
    """The daemon's order without authentication: errors outside, audit inside."""
    return [ErrorInterceptor(), AuditInterceptor(log, resolvers={"migration_id": vms_of_migration}, **kw)]


def test_the_audited_methods_are_the_control_methods_that_change_something() -> None:
    assert AUDITED == {"CreateMigration", "StartMigration", "PauseMigration", "ResumeMigration", "AbortMigration",
                       "Cutover", "RollbackMigration", "AttachFilter", "StartEstimate", "StopEstimate", "ExportSeed",
                       "DropSeed", "SetThrottle", "VerifyVdisk"}
    methods = {m.name for m in cpb.DESCRIPTOR.services_by_name["Control"].methods}
    assert READ_ONLY <= methods, READ_ONLY - methods  # no typo leaves a method audited by mistake


async def test_each_change_is_one_durable_entry_and_reads_are_not_logged(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    fake = FakeControl()
    with AuditLog(path) as log:
        fake.audit = log
        async with serve(fake, stack(log)) as c:
            def logged() -> list[Any]:
                return read_entries(path)  # read at once: the entry is on disk when the answer arrives

            await c.create_migration(["web-1"], "sink:50052", name="nightly", auto_cutover=True)
            assert [e.action for e in logged()] == ["CreateMigration"]
            await c.start("m-1")
            await c.get_migration("m-1")  # read-only: not logged
            with pytest.raises(IllegalTransition):
                await c.pause("m-1")
            with pytest.raises(NotFound):
                await c.start("m-404")
            with pytest.raises(LiftshiftError, match="internal error: RuntimeError: boom"):
                await c.attach_filter("cold-1")
            entries = logged()
    assert fake.ran == ["CreateMigration", "StartMigration", "GetMigration", "PauseMigration", "StartMigration",
                        "AttachFilter"]
    got = [(e.seq, e.who, e.action, e.params, e.vms, e.result) for e in entries]
    assert got == [
        (1, "anonymous", "CreateMigration",
         {"name": "nightly", "vms": ["web-1"], "destination": "sink:50052", "type": "MIGRATION_TYPE_LIVE",
          "auto_cutover": True}, ("web-1",), "ok"),
        (2, "anonymous", "StartMigration", {"migration_id": "m-1"}, ("web-1", "db-1"), "ok"),
        (3, "anonymous", "PauseMigration", {"migration_id": "m-1"}, ("web-1", "db-1"),
         "IllegalTransition: cannot pause a migration that is paused"),
        (4, "anonymous", "StartMigration", {"migration_id": "m-404"}, (), "NotFound: no migration 'm-404'"),
        (5, "anonymous", "AttachFilter", {"vm": "cold-1"}, ("cold-1",), "RuntimeError: boom"),
    ]
    assert all(e.peer.startswith("ipv4:127.0.0.1:") for e in entries)


async def test_list_and_verify_rpcs(tmp_path: Path) -> None:
    now = [1000.0]
    with AuditLog(tmp_path / "audit.log", clock=lambda: now[0]) as log:
        for i, vms in enumerate((["web-1"], ["db-1"], ["web-1", "db-1"])):
            now[0] = 1000.0 + 100 * i
            log.append("alice", "ipv4:10.0.0.1:1", "StartMigration", {"n": i, "password": "x"}, vms, "ok")
        async with serve(FakeControl(log), stack(log)) as c:
            everything = await c.list_audit()
            assert [e.seq for e in everything] == [1, 2, 3]
            assert everything[0].params_json == '{"n": 0}' and everything[2].vms == ["web-1", "db-1"]
            assert [e.seq for e in await c.list_audit(since=1100)] == [2, 3]
            assert [e.seq for e in await c.list_audit(vm="web-1")] == [1, 3]
            assert [e.seq for e in await c.list_audit(since=1150, vm="db-1")] == [3]
            v = await c.verify_audit()
            assert (v.ok, v.entries, v.first_bad_seq, v.reason) == (True, 3, 0, "ok: 3 entries, chain intact")
    with AuditLog(tmp_path / "other.log") as log:
        async with serve(FakeControl(None), stack(log)) as c:
            with pytest.raises(LiftshiftError, match="keeps no audit log"):
                await c.verify_audit()


def _tampered_log(tmp_path: Path) -> Path:
    """A log of three entries whose second one had a byte altered."""
    path = tmp_path / "audit.log"
    with AuditLog(path) as log:
        for i in range(3):
            log.append("alice", "local", "StartMigration", {"migration_id": f"m-{i}"}, ["web-1"], "ok")
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"m-1"', b'"m-7"')
    path.write_bytes(b"".join(lines))
    return path


async def test_a_log_damaged_before_its_tail_refuses_every_action_before_it_runs(tmp_path: Path) -> None:
    path = _tampered_log(tmp_path)
    fake = FakeControl()
    with AuditLog(path) as log:
        assert log.refusal is None  # opening checks the tail only
        result = check_log(log)
        assert not result.ok and result.first_bad_seq == 2
        fake.audit = log
        async with serve(fake, stack(log)) as c:
            with pytest.raises(AuditCorrupt) as err:
                await c.start("m-1")
            assert "StartMigration refused, nothing done" in err.value.message
            assert "entry 2: hash does not match its content (edited)" in err.value.message
            assert "move audit.log and audit.head aside" in (err.value.hint or "")
            assert (await c.get_migration("m-1")).id == "m-1"  # reads still work
            v = await c.verify_audit()
            assert (v.ok, v.entries, v.first_bad_seq) == (False, 1, 2)
            assert len(await c.list_audit()) == 3
    assert fake.ran == ["GetMigration"]
    assert path.read_bytes().count(b"\n") == 3  # nothing appended


class BrokenDisk:
    """An audit log whose disk fails on the first append, as AuditLog behaves then."""

    def __init__(self) -> None:
        self.refusal: LiftshiftError | None = None

    def append(self, *args: Any) -> None:
        self.refusal = AuditWriteFailed("cannot write audit log /x/audit.log: [Errno 28] No space left on device",
                                        hint="free space or fix the disk, then restart the daemon")
        raise self.refusal


async def test_an_entry_that_cannot_be_written_fails_the_action_and_every_later_one(tmp_path: Path) -> None:
    fake = FakeControl()
    async with serve(fake, stack(BrokenDisk())) as c:
        with pytest.raises(AuditWriteFailed) as err:
            await c.start("m-1")
        assert err.value.message == ("StartMigration was carried out, but it could not be recorded in the audit log: "
                                     "cannot write audit log /x/audit.log: [Errno 28] No space left on device")
        assert "every further action is refused" in (err.value.hint or "")
        with pytest.raises(AuditWriteFailed, match="PauseMigration refused, nothing done"):
            await c.pause("m-1")
    assert fake.ran == ["StartMigration"]  # the second never ran


async def test_a_cancelled_call_is_recorded_as_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path) as log:
        async with serve(FakeControl(log), stack(log)) as c:
            with pytest.raises(Unavailable):
                await c._call(c.stub.AbortMigration, cpb.MigrationRef(migration_id="m-1"), timeout=0.3)
            deadline = time.monotonic() + 10
            while not read_entries(path):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
    [e] = read_entries(path)
    assert (e.action, e.vms) == ("AbortMigration", ("web-1", "db-1"))
    assert e.result.startswith("Cancelled: the call was cancelled before it finished")


async def test_a_streaming_method_is_recorded_when_its_stream_ends(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path) as log:
        async with serve(FakeControl(log), stack(log, read_only=READ_ONLY - {"Watch"})) as c:
            got = [ev.message async for ev in c.watch("m-1")]
            assert got == ["event 0", "event 1"]
    [e] = read_entries(path)
    assert (e.action, e.vms, e.result) == ("Watch", ("web-1", "db-1"), "ok")
    assert e.params == {"migration_id": "m-1", "interval_ms": 500}


async def test_with_authentication_refusals_are_recorded_once_and_callers_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    fake = FakeControl()
    with AuditLog(path) as log:
        fake.audit = log
        # Plaintext without credentials: every call is refused before any handler.
        auth = AuthInterceptor({"/liftshift.v1.Control/*": Role.OPERATOR}, on_refused=audit_refusal(log))
        async with serve(fake, [auth, *stack(log)]) as c:
            with pytest.raises(Unauthenticated):
                await c.start("m-1")
            with pytest.raises(Unauthenticated):
                await c.get_migration("m-1")  # a refused read is recorded too
        # Plaintext on loopback explicitly allowed: the caller is the admin "insecure-loopback".
        auth = AuthInterceptor({}, insecure=True, on_refused=audit_refusal(log))
        async with serve(fake, [auth, *stack(log)]) as c:
            await c.start("m-1")
        refused = audit_refusal(log)
        await refused(Identity("bob", Role.VIEWER, "token"), "ipv4:10.1.2.3:4", "/liftshift.v1.Control/Cutover",
                      grpc.StatusCode.PERMISSION_DENIED, "bob (viewer) may not call it")
    assert fake.ran == ["StartMigration"]
    got = [(e.who, e.action, e.vms, e.result) for e in read_entries(path)]
    assert got == [
        ("anonymous", "StartMigration", (), "Unauthenticated: no credentials: present a client certificate or an "
                                            "'authorization: Bearer' token"),
        ("anonymous", "GetMigration", (), "Unauthenticated: no credentials: present a client certificate or an "
                                          "'authorization: Bearer' token"),
        ("insecure-loopback", "StartMigration", ("web-1", "db-1"), "ok"),
        ("bob", "Cutover", (), "PermissionDenied: bob (viewer) may not call it"),
    ]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI, pointed at an address where nothing listens (these never call the daemon)."""
    return subprocess.run([sys.executable, "-m", "liftshift.ctl", "--address", "127.0.0.1:1", *args],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("args, rc, complaint", [
    (["audit", "list", "--since", "yesterday"], 2, "'yesterday' is neither a duration (90s, 15m, 6h, 3d) nor a date"),
    (["audit", "verify", "--no-head"], 2, "--head and --no-head go with --file"),
    (["audit", "verify", "--file", "/nonexistent/audit.log"], 3, "no audit log at /nonexistent/audit.log"),
])
def test_audit_cli_refuses_bad_arguments_without_the_daemon(args: list[str], rc: int, complaint: str) -> None:
    r = _cli(*args)
    assert (r.returncode, complaint in r.stderr) == (rc, True), r


def test_audit_verify_file_works_without_a_daemon(tmp_path: Path) -> None:
    path = _tampered_log(tmp_path)
    r = _cli("audit", "verify", "--file", str(path))
    assert r.returncode == 1, r
    assert r.stdout == ("FAILED: entry 2: hash does not match its content (edited)\n"
                        "  first bad entry: 2; 1 entry before it verified\n")
    # Without its head record only the chain is checked: the edit still shows.
    r = _cli("--json", "audit", "verify", "--file", str(path), "--no-head")
    assert r.returncode == 1 and json.loads(r.stdout)["first_bad_seq"] == 2, r
