"""The async client library (liftshift.ctl.Client) against the fake Control service."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest
from ctlfake import FakeControl, GiB, MiB, event, run_to_completion, serve

from liftshift.ctl import Client
from liftshift.daemon.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LiftshiftError,
    NotFound,
    Unavailable,
)
from liftshift.daemon.lifecycle import IllegalTransition
from liftshift.v1 import control_pb2 as cpb


@pytest.fixture
async def fake_addr() -> AsyncIterator[tuple[FakeControl, str]]:
    fake = FakeControl()
    async with serve(fake) as addr:
        yield fake, addr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_inventory_and_replications(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    fake.replications = [cpb.VdiskReplication(vdisk_id="web-1-disk0", sink="s:1", size_bytes=GiB)]
    async with Client(addr) as c:
        vms = await c.list_vms()
        reps = await c.list_replications()
    assert [vm.name for vm in vms.vms] == [vm.name for vm in fake.vms]
    assert vms.vms[0].disks[0].capture_attached
    assert [r.vdisk_id for r in reps.vdisks] == ["web-1-disk0"]


async def test_migration_lifecycle(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    async with Client(addr) as c:
        m = await c.create_migration(["web-1", "db-1"], "sink:50052", name="wave 1", auto_cutover=True,
                                     converge_threshold_bytes=64 * MiB, throttle_bytes_per_s=100_000_000)
        assert m.state == cpb.MIGRATION_STATE_CREATED
        assert [vm.vm for vm in m.vms] == ["web-1", "db-1"]
        sent = fake.requests[-1][1]
        assert (sent.name, list(sent.vms), sent.destination, sent.auto_cutover, sent.converge_threshold_bytes,
                sent.throttle_bytes_per_s, sent.start, sent.type) == \
            ("wave 1", ["web-1", "db-1"], "sink:50052", True, 64 * MiB, 100_000_000, False, cpb.MIGRATION_TYPE_LIVE)
        assert (await c.start(m.id)).state == cpb.MIGRATION_STATE_SYNCING
        assert (await c.pause(m.id)).state == cpb.MIGRATION_STATE_PAUSED
        assert (await c.resume(m.id)).state == cpb.MIGRATION_STATE_SYNCING
        assert (await c.get_migration(m.id)).id == m.id
        assert [x.id for x in (await c.list_migrations()).migrations] == [m.id]
        assert (await c.abort(m.id)).state == cpb.MIGRATION_STATE_ABORTED
        assert (await c.list_migrations()).migrations == []
        assert [x.id for x in (await c.list_migrations(all=True)).migrations] == [m.id]
    assert [name for name, _ in fake.requests] == [
        "CreateMigration", "StartMigration", "PauseMigration", "ResumeMigration", "GetMigration",
        "ListMigrations", "AbortMigration", "ListMigrations", "ListMigrations"]


async def test_create_with_start(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    async with Client(addr) as c:
        m = await c.create_migration(["web-1"], "sink:50052", start=True)
    assert fake.requests[-1][1].start is True
    assert m.state == cpb.MIGRATION_STATE_SYNCING


async def test_typed_errors_keep_class_and_hint(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    async with Client(addr) as c:
        with pytest.raises(NotFound) as nf:
            await c.get_migration("m-nope")
        assert nf.value.message == "no migration 'm-nope'"
        assert nf.value.hint == "list them with `liftshift migrate list --all`"

        with pytest.raises(NotFound) as vm:
            await c.create_migration(["ghost"], "sink:50052")
        assert "cold-1" in (vm.value.hint or "")

        with pytest.raises(InvalidArgument):
            await c.create_migration(["web-1"], "no-port")

        m = await c.create_migration(["web-1"], "sink:50052")
        with pytest.raises(AlreadyExists) as ae:
            await c.create_migration(["web-1"], "sink:50052")
        assert m.id in ae.value.message

        # The state machine's own refusal, rebuilt as the same class.
        with pytest.raises(IllegalTransition) as it:
            await c.pause(m.id)
        assert isinstance(it.value, FailedPrecondition)
        assert it.value.message == "cannot pause a migration that is created"
        assert it.value.hint == "only a syncing or converged migration can be paused"

        fake.fail["ListVms"] = Unavailable("vCenter does not answer", hint="check vcenter.example")
        with pytest.raises(Unavailable) as un:
            await c.list_vms()
        assert (un.value.message, un.value.hint) == ("vCenter does not answer", "check vcenter.example")


async def test_unreachable_daemon_is_unavailable_naming_the_address() -> None:
    addr = f"127.0.0.1:{free_port()}"
    async with Client(addr, timeout=5) as c:
        for call in (c.list_vms(), c.get_migration("m-1"), c.cutover(vm="web-1")):
            with pytest.raises(Unavailable) as e:
                await call
            assert addr in e.value.message
            assert e.value.hint and addr in e.value.hint
        with pytest.raises(Unavailable):
            async for _ in c.watch("m-1"):
                pass


async def test_deadline_is_unavailable_but_cutover_has_none(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    async with Client(addr, timeout=0.3) as c:
        m = await c.create_migration(["web-1"], "sink:50052", start=True)
        fake.delay["GetMigration"] = 0.6
        with pytest.raises(Unavailable) as e:
            await c.get_migration(m.id)
        assert "did not answer within 0.3 s" in e.value.message and addr in (e.value.hint or "")
        # A cutover takes longer than the client's timeout and is still answered.
        fake.delay["Cutover"] = 0.6
        t0 = time.monotonic()
        resp = await c.cutover(vm="web-1", force=True)
        assert time.monotonic() - t0 >= 0.6
        assert resp.reports[0].identical
        # ... unless the caller gives it one.
        with pytest.raises(Unavailable):
            await c.cutover(vm="db-1", force=True, timeout=0.2)


async def test_cutover_variants_and_the_requests_they_send(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    async with Client(addr) as c:
        m = await c.create_migration(["web-1", "db-1"], "sink:50052", start=True)
        with pytest.raises(IllegalTransition) as e:
            await c.cutover(vm="web-1")  # syncing, not forced
        assert e.value.hint == "wait until it has converged, or force the cutover"
        resp = await c.cutover(vm="web-1", force=True)
        req = fake.requests[-1][1]
        assert (req.migration_id, req.WhichOneof("what"), req.vm, req.force) == ("", "vm", "web-1", True)
        assert [r.vm for r in resp.reports] == ["web-1"] and resp.reports[0].forced

        m2 = await c.create_migration(["cold-1"], "sink:50052", start=True)
        resp = await c.cutover(m2.id, auto=True)
        assert fake.requests[-1][1].WhichOneof("what") == "auto" and resp.migration.auto_cutover
        assert resp.reports == []
        resp = await c.cutover(m2.id, group=True, force=True)
        assert fake.requests[-1][1].WhichOneof("what") == "group"
        assert resp.migration.state == cpb.MIGRATION_STATE_COMPLETED
        assert m.id != m2.id

        with pytest.raises(InvalidArgument):
            await c.cutover(m.id)  # none of vm/group/auto
        with pytest.raises(InvalidArgument):
            await c.cutover(m.id, group=True, auto=True)


async def test_rollback_and_attach_filter(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr

    def differs(vm: str, force: bool) -> cpb.CutoverReport:
        return cpb.CutoverReport(vm=vm, identical=False, error="differs")

    fake.cutover_report = differs
    async with Client(addr) as c:
        m = await c.create_migration(["web-1"], "sink:50052", start=True)
        with pytest.raises(IllegalTransition) as e:
            await c.rollback(m.id)
        assert e.value.message == "cannot rollback a migration that is syncing" and e.value.hint
        await c.cutover(vm="web-1", force=True)
        rolled = await c.rollback(m.id, vm="web-1")
        req = fake.requests[-1][1]
        assert (fake.requests[-1][0], req.migration_id, req.vm) == ("RollbackMigration", m.id, "web-1")
        assert rolled.vms[0].state == cpb.MIGRATION_STATE_ROLLED_BACK

        vm = await c.attach_filter("cold-1")
        assert fake.requests[-1] == ("AttachFilter", cpb.AttachFilterRequest(vm="cold-1"))
        assert vm.name == "cold-1" and [d.capture_policy for d in vm.disks] == [fake.policy_id]
        with pytest.raises(FailedPrecondition) as fp:
            await c.attach_filter("web-1")
        assert fp.value.message == "platform sim has no IO filter policy to attach" and fp.value.hint


async def test_verify(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    fake.replications = [cpb.VdiskReplication(vdisk_id="v1")]
    async with Client(addr) as c:
        r = await c.verify_vdisk("v1", max_rounds=5)
        assert r.identical and r.vdisk_id == "v1"
        assert fake.requests[-1][1].max_rounds == 5
        with pytest.raises(NotFound) as e:
            await c.verify_vdisk("v2")
        assert e.value.hint == "known: v1"


async def test_watch_streams_until_completed(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    fake.watch_script = run_to_completion(0.2, every=0.02)
    async with Client(addr) as c:
        m = await c.create_migration(["web-1"], "sink:50052", start=True)
        events = [ev async for ev in c.watch(m.id, interval_ms=100)]
    assert fake.requests[-1][1].interval_ms == 100
    kinds = [ev.kind for ev in events]
    assert kinds[0] == cpb.EVENT_KIND_PROGRESS
    assert cpb.EVENT_KIND_CUTOVER_STEP in kinds
    assert events[-1].migration.state == cpb.MIGRATION_STATE_COMPLETED
    done = [ev.migration.vms[0].vdisks[0].background_done_bytes for ev in events if ev.kind == 1]
    assert done == sorted(done) and done[-1] > done[0]


async def test_watch_unknown_migration_is_not_found(fake_addr: tuple[FakeControl, str]) -> None:
    _, addr = fake_addr
    async with Client(addr) as c:
        with pytest.raises(NotFound):
            async for _ in c.watch("m-nope"):
                pass


async def test_leaving_a_watch_early_cancels_the_stream(fake_addr: tuple[FakeControl, str]) -> None:
    fake, addr = fake_addr
    ended = asyncio.Event()

    async def forever(request: cpb.WatchRequest, f: FakeControl) -> AsyncIterator[cpb.MigrationEvent]:
        try:
            while True:
                yield event(f.migrations[request.migration_id], cpb.EVENT_KIND_PROGRESS)
                await asyncio.sleep(0.01)
        finally:
            ended.set()

    fake.watch_script = forever
    async with Client(addr) as c:
        m = await c.create_migration(["web-1"], "sink:50052")
        stream = c.watch(m.id)
        async for _ in stream:
            break
        await stream.aclose()  # type: ignore[attr-defined]
        await asyncio.wait_for(ended.wait(), 5)


async def test_client_outside_async_with_says_how_to_use_it() -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await Client("127.0.0.1:1").list_vms()


def test_errors_are_liftshift_errors() -> None:
    # What callers catch: one base class.
    assert issubclass(Unavailable, LiftshiftError) and issubclass(IllegalTransition, LiftshiftError)
