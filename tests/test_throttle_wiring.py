"""Throttling wired into the daemon, without processes: the limiters' cheap path and refunds,
what is persisted and restored, guest caps through a migration's rings, and the CLI's parsing
and rendering.  The measured behaviour is in test_throttle_e2e.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from liftshift.ctl import throttle as ctl_throttle
from liftshift.ctl.main import build_parser
from liftshift.daemon.errors import InvalidArgument
from liftshift.daemon.guestcap import Cap, GuestCaps
from liftshift.daemon.lifecycle import State
from liftshift.daemon.migrations import MigrationRec, Migrations, VdiskRec, VmRec
from liftshift.daemon.settings import DaemonConfig, ThrottleConfig
from liftshift.daemon.state import StateStore
from liftshift.daemon.throttle import CHUNK, Limiters
from liftshift.daemon.throttling import Throttling
from liftshift.iofilter import RingConsumer, create_ring
from liftshift.v1 import control_pb2 as cpb

MB = 10**6
MiB = 1 << 20


# ---- limiters -----------------------------------------------------------------------------

async def test_try_take_is_the_cheap_path_and_takes_nothing_when_it_says_no() -> None:
    assert all(Limiters(0).try_take("m", 64 * CHUNK, live=False) for _ in range(100))  # unlimited: always
    lim = Limiters(8 * MB)  # burst 2 MiB, full
    lim.set_migration("m", 4 * MB)  # burst 2 MiB, full
    assert lim.try_take("m", CHUNK, live=False) and lim.try_take("m", CHUNK, live=False)
    assert not lim.try_take("m", CHUNK, live=False)  # the migration's bucket is empty
    assert not lim.try_take("other", CHUNK, live=False)  # so is the global one
    stats = {s.migration_id: s.stats for s in lim.limits()}
    assert stats[None].granted_bytes == stats["m"].granted_bytes == 2 * CHUNK  # the refusals took nothing
    lim.refund("m", CHUNK, live=False)  # a granted chunk that went stale
    assert lim.try_take("other", CHUNK, live=False)
    assert {s.migration_id: s.stats.granted_bytes for s in lim.limits()} == {None: 2 * CHUNK, "m": CHUNK}


async def test_a_take_cancelled_while_waiting_on_the_global_bucket_refunds_the_migrations() -> None:
    lim = Limiters(1 * MB)
    lim.set_migration("m", 100 * MB)
    await lim.take("x", 2 * CHUNK, live=False)  # empties the global bucket
    waiter = asyncio.create_task(lim.take("m", CHUNK, live=False))  # granted by "m", waits on global
    await asyncio.sleep(0.02)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    own = {s.migration_id: s.stats for s in lim.limits()}["m"]
    assert own.granted_bytes == 0 and own.waiting_background == 0


# ---- what is kept across restarts ---------------------------------------------------------------

def test_limits_set_by_hand_survive_a_restart_the_schedule_does_not(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "daemon.db")
    cfg = ThrottleConfig(rate="50MB/s", schedule=[{"days": "mon-fri", "start": "08:00", "end": "18:00",
                                                   "rate": "100MB/s"}])
    t = Throttling(cfg, store)
    t.set_global(20 * MB)
    t.set_migration("m-1", 8 * MB)
    t.set_migration("m-2", 9 * MB)
    t.set_migration("m-2", None)
    t.set_schedule(t.parse_schedule("-"))
    assert (t.scheduled.schedule.windows, t.scheduled.schedule.default_bps) == ((), 50 * MB)  # "-": windows go

    again = Throttling(cfg, store)
    assert again.scheduled.override_bps == 20 * MB and again.limiters.global_bucket.rate_bps == 20 * MB
    assert again.limiters.migration_ids() == ["m-1"]
    assert len(again.scheduled.schedule.windows) == 1  # the file's schedule is back
    again.set_global(None)
    assert Throttling(cfg, store).scheduled.override_bps is None

    again.reload(ThrottleConfig(rate="5MB/s"))  # SIGHUP: the file's [throttle] replaces the running one
    assert (again.scheduled.schedule.windows, again.scheduled.schedule.default_bps) == ((), 5 * MB)
    assert again.limiters.global_bucket.rate_bps == 5 * MB  # no override any more: the schedule's rate

    again.active = lambda mid: mid != "m-1"
    again.sweep()  # m-1 finished
    assert again.limiters.migration_ids() == [] and Throttling(cfg, store).limiters.migration_ids() == []


def test_a_cli_schedule_keeps_the_rate_outside_its_windows_unless_it_names_one(tmp_path: Path) -> None:
    t = Throttling(ThrottleConfig(rate="50MB/s"), StateStore(tmp_path / "daemon.db"))
    assert t.parse_schedule("mon 08:00-09:00 1MB/s").default_bps == 50 * MB
    assert t.parse_schedule("mon 08:00-09:00 1MB/s; default 7MB/s").default_bps == 7 * MB
    with pytest.raises(InvalidArgument, match=r"^schedule\[0\]: 'mon 8-9 1MB/s' is not a window"):
        t.parse_schedule("mon 8-9 1MB/s")


# ---- guest caps through a migration's rings ------------------------------------------------------

class _Holder:
    """What GuestCaps and Migrations use of a replicator: its ring consumer."""

    def __init__(self, ring: Path) -> None:
        self.consumer = RingConsumer(ring)


def test_a_manual_cap_is_split_over_the_disks_wins_over_converging_and_persists(tmp_path: Path) -> None:
    rings = []
    for name in ("disk0", "disk1"):
        create_ring(tmp_path / f"{name}.ring", 16 * MiB, capacity=1 * MiB)
        rings.append(tmp_path / f"{name}.ring")
    store = StateStore(tmp_path / "daemon.db")
    holders = {f"m-1.web-1.disk{i}": _Holder(r) for i, r in enumerate(rings)}
    migrations = Migrations(DaemonConfig(state_dir=tmp_path), store, None, holders)  # type: ignore[arg-type]
    m = MigrationRec(id="m-1", name="m-1", destination="sink:1", auto_cutover=False, threshold=0,
                     throttle=6 * MB, created=0.0, updated=0.0,
                     vms=[VmRec(vm="web-1", state=State.SYNCING, disks=[
                         VdiskRec(name=f"disk{i}", vdisk_id=f"m-1.web-1.disk{i}", size=16 * MiB, image="",
                                  ring=str(r)) for i, r in enumerate(rings)])])
    migrations.recs["m-1"] = m
    caps = GuestCaps(store, migrations)
    migrations.guest_cap = caps.per_disk

    def words() -> list[tuple[int, int]]:
        return [(h.consumer.counters()["throttle_bps"], h.consumer.counters()["throttle_iops"])
                for h in holders.values()]

    migrations.rethrottle("web-1")  # syncing: the migration's --throttle, per disk
    assert words() == [(6 * MB, 0)] * 2
    (st,) = caps.report()
    assert (st.vm, st.bytes_per_s, st.source, st.held) == ("web-1", 12 * MB, "converging", True)

    caps.set("web-1", Cap(5 * MB, 101))
    assert words() == [(2_500_000, 51)] * 2  # the VM's cap over two disks, rounded up
    (st,) = caps.report()
    assert (st.bytes_per_s, st.iops, st.source) == (5 * MB, 101, "manual")
    assert GuestCaps(store).manual == {"web-1": Cap(5 * MB, 101)}  # kept in daemon.db

    m.vms[0].state = State.CONVERGED
    migrations.rethrottle("web-1")  # converged lifts the converging throttle, not the manual cap
    assert words() == [(2_500_000, 51)] * 2

    caps.set("web-1", Cap(0, 0))  # zeros remove it
    assert words() == [(0, 0)] * 2 and caps.report() == [] and GuestCaps(store).manual == {}


class _FakeSeeds:
    """What GuestCaps uses of Seeds: the seed tracking a VM and its trackers' ring consumers."""

    def __init__(self) -> None:
        self.recs: dict[str, object] = {}
        self.trackers: dict[str, dict[str, _Holder]] = {}

    def track(self, seed_id: str, vm: str, rings: list[Path]) -> None:
        self.recs[seed_id] = type("Rec", (), {"id": seed_id, "vm": vm})()
        self.trackers[seed_id] = {r.stem: _Holder(r) for r in rings}

    def tracking(self, vm: str) -> object | None:
        return next((r for r in self.recs.values() if r.vm == vm), None)  # type: ignore[attr-defined]


def test_a_manual_cap_reaches_rings_a_seed_tracks_also_when_tracking_starts_later(tmp_path: Path) -> None:
    ring = tmp_path / "disk0.ring"
    create_ring(ring, 16 * MiB, capacity=1 * MiB)
    store = StateStore(tmp_path / "daemon.db")
    seeds = _FakeSeeds()
    caps = GuestCaps(store, None, seeds)  # type: ignore[arg-type]
    caps.set("db-1", Cap(3 * MB, 0))  # nobody holds the rings yet: kept, reported as not held
    (st,) = caps.report()
    assert (st.source, st.held, st.throttled_s) == ("manual", False, 0.0)
    seeds.track("s-1", "db-1", [ring])  # an export starts tracking
    caps.sample()  # the loop brings seed-held rings up to date
    holder = seeds.trackers["s-1"]["disk0"]
    assert (holder.consumer.counters()["throttle_bps"], caps.report()[0].held) == (3 * MB, True)
    caps.set("db-1", None)
    assert holder.consumer.counters()["throttle_bps"] == 0


# ---- the CLI ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args, complaint", [
    (["throttle", "set"], "say what to change"),
    (["throttle", "set", "--rate=-5MB/s"], "argument --rate: '-5MB/s' is not a rate"),
    (["throttle", "set", "--rate", "1MB/s", "--clear"], "not allowed with argument --rate"),
    (["throttle", "set", "--vm", "web-1", "--rate", "1MB/s"], "--rate is a replication limit"),
    (["throttle", "set", "--vm", "web-1"], "--vm needs --guest-rate and/or --guest-iops"),
    (["throttle", "set", "--guest-iops", "5"], "need --vm VM"),
    (["throttle", "set", "--vm", "web-1", "--guest-iops", "many"], "'many' is not a whole number"),
    (["throttle", "set", "--migration", "m-1", "--schedule", "mon 08:00-09:00 1MB/s"], "--schedule is global"),
])
def test_throttle_usage_errors(args: list[str], complaint: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit) as exit_:
        ns = parser.parse_args(args)
        ns.validate(ns)
    assert exit_.value.code == 2
    assert complaint in capsys.readouterr().err


def test_limits_are_shown_in_the_unit_they_were_given_in() -> None:
    assert [ctl_throttle.fmt_limit(b) for b in (0, 20 * MB, 50 * MiB, 3 * 10**9, 1500, 1234567)] == [
        "unlimited", "20 MB/s", "50 MiB/s", "3 GB/s", "1.46 KiB/s", "1.18 MiB/s"]


def test_status_line_names_what_limits_and_whether_it_binds() -> None:
    st = cpb.ThrottleStatus(limits=[cpb.RateLimit(rate_bytes_per_s=0, source="default")])
    assert ctl_throttle.summary(st) is None  # nothing limited: no line
    st = cpb.ThrottleStatus(
        limits=[cpb.RateLimit(rate_bytes_per_s=20 * MB, effective_bytes_per_s=20 * MB, source="schedule",
                              binding=True),
                cpb.RateLimit(migration_id="m-1", rate_bytes_per_s=8 * MB, source="migration")],
        guests=[cpb.GuestCap(vm="web-1", bytes_per_s=4 * MB, iops=500, source="manual", binding=True)])
    assert ctl_throttle.summary(st) == ("Throttle: replication (schedule) 20 MB/s binding; migration m-1 8 MB/s; "
                                        "guest web-1 4 MB/s 500 IOPS (manual) binding")
