"""Throttling against reality: real daemons, real rings, measured rates.

* A global limit set with ``liftshift throttle set --rate`` holds the
  migration's shipping rate within 10 % of it; ``--clear`` lifts it.
* A migration's own limit binds that migration only, under the global one.
* A guest write cap (``throttle set --vm``) holds a VM that writes far faster
  to within 10 % of the cap, wins over the converging throttle, survives a
  daemon restart, and goes when removed.
* A schedule boundary switches the rate (in-process, with the daemon's own
  Throttling / VdiskReplicator against a real sink and a clock that starts
  just before the boundary).
* Refusals name the field and change nothing.

Rates are measured over windows of a few seconds from the daemon's own
counters (bytes shipped) or the ring's producer counters (bytes written).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from e2e import Pair
from simsite import SimVmDef, Site

from liftshift.daemon.errors import FailedPrecondition, InvalidArgument, NotFound
from liftshift.daemon.settings import DaemonConfig, ReplicateSpec, ThrottleConfig
from liftshift.daemon.sim import create_image
from liftshift.daemon.state import StateStore
from liftshift.daemon.throttling import Throttling
from liftshift.daemon.vdisk import VdiskReplicator
from liftshift.iofilter import create_ring
from liftshift.iofilter.ring import Mapped
from liftshift.v1 import control_pb2 as cpb

MiB = 1 << 20
MB = 10**6


def cli(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "liftshift.ctl", "--address", site.address, *args],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "COLUMNS": "200"})


def shipped(site: Site, mid: str) -> int:
    """Bytes the migration has shipped: background chunks and live records."""
    m = site.migration(mid)
    return sum(d.chunk_bytes_sent + d.live_bytes for vm in m.vms for d in vm.vdisks)


def rate_of(sample: Callable[[], int], seconds: float) -> float:
    """Bytes/s of a growing counter over ``seconds``."""
    t0, n0 = time.monotonic(), sample()
    time.sleep(seconds)
    return (sample() - n0) / (time.monotonic() - t0)


def throttle(site: Site) -> cpb.ThrottleStatus:
    st = site.call("GetThrottle", cpb.GetThrottleRequest())
    assert isinstance(st, cpb.ThrottleStatus)
    return st


def create_migration(site: Site, vm: str, start: bool = True, throttle_bps: int = 0) -> str:
    m = site.call("CreateMigration", cpb.CreateMigrationRequest(vms=[vm], destination=site.destination, start=start,
                                                                throttle_bytes_per_s=throttle_bps))
    assert isinstance(m, cpb.Migration)
    if start:
        site.wait_state(m.id, cpb.MIGRATION_STATE_SYNCING)
    return m.id


def test_global_rate_limit_holds_the_rate_and_clear_lifts_it(tmp_path, shm_dir, request) -> None:
    vm = SimVmDef("big-1", [("disk0", 512 * MiB, 512 * MiB)], rate_ops=10, block_size=4096)
    site = Site(tmp_path, shm_dir, [vm], request.addfinalizer).start()
    r = cli(site, "throttle", "set", "--rate", "20MB/s")
    assert r.returncode == 0, r
    assert "global" in r.stdout and "20 MB/s" in r.stdout and "manual" in r.stdout, r.stdout
    mid = create_migration(site, "big-1")
    time.sleep(1.0)  # past the first burst
    limited = rate_of(lambda: shipped(site, mid), 3.0)
    st = throttle(site)
    assert st.limits[0].source == "manual" and st.limits[0].binding, st
    shown = cli(site, "status")
    assert "Throttle: replication (manual) 20 MB/s binding" in shown.stdout, shown.stdout
    r = cli(site, "throttle", "set", "--clear")
    assert r.returncode == 0 and "unlimited" in r.stdout, r
    time.sleep(0.3)
    unlimited = rate_of(lambda: shipped(site, mid), 1.5)
    print(f"limit 20 MB/s: achieved {limited / MB:.2f} MB/s; after --clear {unlimited / MB:.1f} MB/s")
    assert abs(limited - 20 * MB) <= 0.10 * 20 * MB, limited
    assert unlimited > 2.5 * limited, (limited, unlimited)
    site.call("AbortMigration", cpb.MigrationRef(migration_id=mid))


def settings(st: cpb.ThrottleStatus) -> tuple[object, ...]:
    """What a request can change (not what moves by itself: binding, throttled time)."""
    return (tuple((x.migration_id, x.rate_bytes_per_s, x.effective_bytes_per_s, x.source) for x in st.limits),
            st.schedule, tuple((g.vm, g.bytes_per_s, g.iops, g.source) for g in st.guests))


def test_migration_limit_binds_under_the_global_one_and_refusals_change_nothing(tmp_path, shm_dir,
                                                                                request) -> None:
    vms = [SimVmDef("slow-1", [("disk0", 96 * MiB, 96 * MiB)], rate_ops=20),
           SimVmDef("fast-1", [("disk0", 192 * MiB, 192 * MiB)], rate_ops=10)]
    site = Site(tmp_path, shm_dir, vms, request.addfinalizer).start()
    assert cli(site, "throttle", "set", "--rate", "30MB/s").returncode == 0
    slow = create_migration(site, "slow-1", start=False)
    r = cli(site, "throttle", "set", "--migration", slow, "--rate", "8MB/s")
    assert r.returncode == 0 and slow in r.stdout, r
    site.call("StartMigration", cpb.MigrationRef(migration_id=slow))
    fast = create_migration(site, "fast-1")
    time.sleep(1.0)
    t0, a0, b0 = time.monotonic(), shipped(site, slow), shipped(site, fast)
    time.sleep(3.0)
    dt = time.monotonic() - t0
    a, b = (shipped(site, slow) - a0) / dt, (shipped(site, fast) - b0) / dt
    print(f"migration limit 8 MB/s: achieved {a / MB:.2f} MB/s; global 30 MB/s: both together {(a + b) / MB:.2f}")
    assert abs(a - 8 * MB) <= 0.10 * 8 * MB, a
    assert abs(a + b - 30 * MB) <= 0.10 * 30 * MB, (a, b)
    st = throttle(site)
    (own,) = [x for x in st.limits if x.migration_id == slow]
    assert (own.rate_bytes_per_s, own.effective_bytes_per_s, own.source, own.binding) == (8 * MB, 8 * MB,
                                                                                          "migration", True)

    # Refusals: typed errors naming the field; nothing changes.
    before = settings(st)
    for req, error, field in (
            (cpb.SetThrottleRequest(migration_id="m-nope", rate_bytes_per_s=MB), NotFound, "migration_id"),
            (cpb.SetThrottleRequest(schedule="mon-fri 25:00-18:00 1MB/s"), InvalidArgument, "schedule[0].start"),
            (cpb.SetThrottleRequest(schedule="mon-fri 08:00-18:00 fast", rate_bytes_per_s=MB), InvalidArgument,
             "schedule[0].rate"),
            (cpb.SetThrottleRequest(schedule="mon 08:00-12:00 1MB/s; mon 11:00-13:00 2MB/s"), InvalidArgument,
             "schedule[1]"),
            (cpb.SetThrottleRequest(migration_id=slow, schedule="mon 08:00-12:00 1MB/s"), InvalidArgument,
             "schedule"),
            (cpb.SetThrottleRequest(vm="slow-1", migration_id=slow, guest_bytes_per_s=MB), InvalidArgument,
             "migration_id"),
            (cpb.SetThrottleRequest(vm="slow-1", rate_bytes_per_s=MB, guest_bytes_per_s=MB), InvalidArgument,
             "rate_bytes_per_s"),
            (cpb.SetThrottleRequest(guest_iops=100), InvalidArgument, "vm"),
            (cpb.SetThrottleRequest(vm="ghost", guest_iops=100), NotFound, "vm"),
            (cpb.SetThrottleRequest(clear=True, rate_bytes_per_s=MB), InvalidArgument, "clear")):
        with pytest.raises(error) as got:
            site.call("SetThrottle", req)
        assert got.value.message.startswith(field + ":"), (req, got.value.message)
        assert settings(throttle(site)) == before, req
    r = cli(site, "throttle", "set", "--schedule", "mon-fri 08:00-18:00 1XB/s")
    assert r.returncode == 3 and "schedule[0].rate: '1XB/s' is not a rate" in r.stderr, r
    r = cli(site, "throttle", "set", "--migration", "m-nope", "--rate", "1MB/s")
    assert r.returncode == 3 and "migration_id: no migration 'm-nope'" in r.stderr, r
    assert settings(throttle(site)) == before

    # The schedule is replaced live; the rate set by hand still wins over it.
    r = cli(site, "throttle", "set", "--schedule", "mon-fri 08:00-18:00 100MB/s; sat,sun 00:00-24:00 1GB/s")
    assert r.returncode == 0, r
    assert ("Schedule: mon-fri 08:00-18:00 100MB/s; sat,sun 00:00-24:00 1GB/s (not in force: a rate set by hand "
            "overrides it until --clear)") in r.stdout, r.stdout
    st = throttle(site)
    assert (st.limits[0].rate_bytes_per_s, st.limits[0].source, st.next_change_at) == (30 * MB, "manual", 0.0)
    st = site.call("SetThrottle", cpb.SetThrottleRequest(schedule="-"))
    assert isinstance(st, cpb.ThrottleStatus) and st.schedule == "" and st.limits[0].rate_bytes_per_s == 30 * MB

    # A finished migration's limit goes, and a limit cannot be set on it.
    site.call("AbortMigration", cpb.MigrationRef(migration_id=slow))
    deadline = time.monotonic() + 5
    while any(x.migration_id == slow for x in throttle(site).limits):
        assert time.monotonic() < deadline, throttle(site)
        time.sleep(0.1)
    with pytest.raises(FailedPrecondition, match="migration_id: migration .* is aborted"):
        site.call("SetThrottle", cpb.SetThrottleRequest(migration_id=slow, rate_bytes_per_s=MB))
    site.call("AbortMigration", cpb.MigrationRef(migration_id=fast))


def ring_counter(site: Site, vm: str, name: str) -> Callable[[], int]:
    """A producer counter (``bytes``, ``writes``) of the VM's ring, read through its mapping."""
    path = site.shm / vm / "disk0.ring"

    def read() -> int:
        m = Mapped(path, writable=False)
        try:
            return m.get(name)
        finally:
            m.close()

    return read


def ring_words(site: Site, vm: str) -> tuple[int, int]:
    m = Mapped(site.shm / vm / "disk0.ring", writable=False)
    try:
        return m.get("throttle_bps"), m.get("throttle_iops")
    finally:
        m.close()


def wait_words(site: Site, vm: str, want: tuple[int, int], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while ring_words(site, vm) != want:
        assert time.monotonic() < deadline, (ring_words(site, vm), want)
        time.sleep(0.05)


def test_guest_cap_holds_a_fast_writer_wins_over_converging_and_survives_a_restart(tmp_path, shm_dir,
                                                                                  request) -> None:
    # ~26 MB/s of 64 KiB writes, far above the caps; a big disk under a global limit keeps it syncing,
    # so the migration's converging throttle (12 MB/s) is in force throughout.
    vm = SimVmDef("busy-1", [("disk0", 384 * MiB, 384 * MiB)], rate_ops=400, block_size=64 << 10)
    site = Site(tmp_path, shm_dir, [vm], request.addfinalizer).start()
    site.call("SetThrottle", cpb.SetThrottleRequest(rate_bytes_per_s=40 * MB))
    mid = create_migration(site, "busy-1", throttle_bps=12 * MB)
    written = ring_counter(site, "busy-1", "bytes")
    time.sleep(0.5)
    converging = rate_of(written, 2.0)
    (cap,) = throttle(site).guests
    assert (cap.vm, cap.bytes_per_s, cap.source) == ("busy-1", 12 * MB, "converging"), cap

    r = cli(site, "throttle", "set", "--vm", "busy-1", "--guest-rate", "4MB/s")
    assert r.returncode == 0 and "busy-1" in r.stdout and "manual" in r.stdout, r
    time.sleep(0.5)
    capped = rate_of(written, 3.0)
    (cap,) = throttle(site).guests
    print(f"guest: converging cap 12 MB/s: wrote {converging / MB:.2f} MB/s; manual cap 4 MB/s: wrote "
          f"{capped / MB:.2f} MB/s, held back {cap.throttled_seconds:.1f} s so far")
    # The Python stand-in producer does not make up for oversleeping under load, so a busy
    # machine writes somewhat below a cap of 12 MB/s (a 64 KiB write every 5 ms); never above it.
    assert 4.4 * MB < converging <= 1.1 * 12 * MB, converging
    assert abs(capped - 4 * MB) <= 0.10 * 4 * MB, capped
    assert (cap.bytes_per_s, cap.iops, cap.source, cap.binding) == (4 * MB, 0, "manual", True), cap
    assert cap.throttled_seconds > 1.0, cap
    assert "guest busy-1 4 MB/s (manual) binding" in cli(site, "status").stdout

    # The cap is the daemon's, not the ring's: rings found without it after a restart get it again.
    assert site.daemon is not None
    site.daemon.stop()
    ring = Mapped(site.shm / "busy-1" / "disk0.ring")
    ring.set("throttle_bps", 0)
    ring.close()
    site.start_daemon()
    wait_words(site, "busy-1", (4 * MB, 0))
    assert site.migration(mid).vms[0].state == cpb.MIGRATION_STATE_SYNCING
    (cap,) = throttle(site).guests
    assert (cap.bytes_per_s, cap.source) == (4 * MB, "manual"), cap

    # An IOPS cap: 50 writes/s.
    site.call("SetThrottle", cpb.SetThrottleRequest(vm="busy-1", guest_iops=50))
    wait_words(site, "busy-1", (0, 50))
    time.sleep(0.3)
    iops = rate_of(ring_counter(site, "busy-1", "writes"), 3.0)
    print(f"guest: IOPS cap 50: {iops:.1f} writes/s")
    assert abs(iops - 50) <= 5, iops

    # Removed: the converging throttle is back while the VM syncs.
    r = cli(site, "throttle", "set", "--vm", "busy-1", "--guest-rate", "0", "--guest-iops", "0")
    assert r.returncode == 0, r
    # The VM may flip between syncing and converged at any moment: state and caps are
    # read together until they agree (the converging cap is on exactly while it syncs).
    deadline = time.monotonic() + 20
    while True:
        syncing = site.migration(mid).vms[0].state == cpb.MIGRATION_STATE_SYNCING
        sources = [g.source for g in throttle(site).guests]
        words = ring_words(site, "busy-1")
        if (sources == (["converging"] if syncing else []) and words == (12 * MB if syncing else 0, 0)
                and (site.migration(mid).vms[0].state == cpb.MIGRATION_STATE_SYNCING) == syncing):
            break
        assert time.monotonic() < deadline, (syncing, sources, words)
        time.sleep(0.05)
    site.call("AbortMigration", cpb.MigrationRef(migration_id=mid))


async def test_a_schedule_boundary_switches_the_rate_of_a_running_replication(tmp_path, request) -> None:
    """The daemon's Throttling and VdiskReplicator in this process, against a real sink, with a
    wall clock that starts at Monday 07:59:57 and runs at the real rate: at 08:00 the window
    "mon 08:00-09:00 30MB/s" takes over from the rate outside it (10 MB/s)."""
    pair = Pair(tmp_path, 160 * MiB, request.addfinalizer)
    create_image(pair.source, pair.size, pair.size, seed=7)  # every chunk data: nothing is skipped as a hole
    create_ring(pair.ring, pair.size, capacity=pair.ring_capacity)
    pair.start_sink()
    t0 = time.monotonic()
    start = datetime(2024, 1, 1, 7, 59, 57)  # a Monday

    def now() -> datetime:
        return start + timedelta(seconds=time.monotonic() - t0)

    cfg = DaemonConfig(state_dir=tmp_path / "state")
    store = StateStore(cfg.state_dir / "daemon.db")
    throttling = Throttling(ThrottleConfig(rate="10MB/s", schedule=[
        {"days": "mon", "start": "08:00", "end": "09:00", "rate": "30MB/s"}]), store, now=now)
    throttling.start()
    spec = ReplicateSpec(vdisk_id=pair.vdisk_id, ring=pair.ring, source=pair.source,
                         sink=f"127.0.0.1:{pair.sink_port}", migration_id="m-sched")
    r = VdiskReplicator(spec, cfg, store)
    r.limiters = throttling.limiters
    r.start()

    def sent() -> int:
        return r.core.progress.chunk_bytes_sent + r.core.progress.live_bytes

    async def rate_between(a: float, b: float) -> float:
        await asyncio.sleep(max(0.0, t0 + a - time.monotonic()))
        n0, ta = sent(), time.monotonic()
        await asyncio.sleep(t0 + b - ta)
        return (sent() - n0) / (time.monotonic() - ta)

    try:
        before = await rate_between(0.5, 2.9)
        assert throttling.scheduled.state.source == "default"
        after = await rate_between(3.4, 6.4)
        state = throttling.scheduled.state
        print(f"schedule: before 08:00 {before / MB:.2f} MB/s (limit 10), after {after / MB:.2f} MB/s (limit 30)")
        assert (state.source, state.rate_bps) == ("schedule", 30 * MB)
        assert abs(before - 10 * MB) <= 0.10 * 10 * MB, before
        assert abs(after - 30 * MB) <= 0.10 * 30 * MB, after
    finally:
        await r.stop()
        await throttling.stop()
        store.close()
