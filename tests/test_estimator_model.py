"""The estimator's model on synthetic sample series with known answers (pure, in memory).

The series use a 1 MB chunk so rates come out round.  Tolerances: where the
model's answer is a closed form (steady, saturated or linear curves) the only
error is the fixed-point bisection (~1e-15 relative) and float sums, so
``rel=1e-6``; where a range or a comparison is asserted, the test says why.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from liftshift.daemon.estimator_model import (
    FRAME_BYTES,
    Assumptions,
    DiskObservation,
    Link,
    Sample,
    VmObservation,
    estimate_group,
    estimate_vm,
)

MB = 1_000_000
CHUNK = MB
HUGE = 100 * 10**12  # a disk so big that random writes never hit the same chunk twice
HOUR, DAY = 3600.0, 86400.0
A = Assumptions()


def random_writes(rates: list[float], dt: float = 60.0) -> tuple[Sample, ...]:
    """Chunk-sized random writes over a huge disk: every chunk written is new (new == dirty)."""
    out = []
    for i, r in enumerate(rates):
        n = int(r * dt) // CHUNK
        out.append(Sample(t=(i + 1) * dt, seconds=dt, write_bytes=n * CHUNK, write_ops=n, new_chunks=n,
                          dirty_chunks=n))
    return tuple(out)


def steady(rate: float, window: float, dt: float = 60.0) -> tuple[Sample, ...]:
    return random_writes([rate] * int(window / dt), dt)


def hot_set(rate: float, set_bytes: int, window: float, dt: float = 60.0) -> tuple[Sample, ...]:
    """Writes at ``rate`` always into the same ``set_bytes``: all of it dirty in every interval, new only once."""
    n, k = int(window / dt), set_bytes // CHUNK
    return tuple(Sample(t=(i + 1) * dt, seconds=dt, write_bytes=int(rate * dt), write_ops=int(rate * dt) // CHUNK,
                        new_chunks=k if i == 0 else 0, dirty_chunks=k) for i in range(n))


def vm(samples: tuple[Sample, ...], allocated: int, name: str = "vm1", size: int = HUGE) -> VmObservation:
    return VmObservation(name, (DiskObservation("disk0", size, allocated, CHUNK, samples),))


def scaled(samples: tuple[Sample, ...], f: float) -> tuple[Sample, ...]:
    return tuple(replace(s, write_bytes=round(s.write_bytes * f), write_ops=round(s.write_ops * f),
                         new_chunks=round(s.new_chunks * f), dirty_chunks=round(s.dirty_chunks * f)) for s in samples)


def downtime(backlog: float, bw: float, distinct_bps: float, a: Assumptions = A, rtt: float = 0.001) -> float:
    drain = backlog / bw + rtt
    return a.stop_s + drain + distinct_bps * (a.stop_s + drain) / a.verify_bps + a.power_on_s


# 1 ---------------------------------------------------------------------------------------


def test_steady_random_writes_copy_on_what_live_writes_leave() -> None:
    e = estimate_vm(vm(steady(10 * MB, HOUR), allocated=6 * 10**9), Link(100 * MB), A)
    assert e.write_bps == pytest.approx(10 * MB) and e.write_iops == pytest.approx(10)
    assert e.distinct_dirty_bps == pytest.approx(10 * MB, rel=1e-6)  # random over a huge disk: no rewrites
    assert e.background_s == pytest.approx(6e9 / 90e6, rel=1e-6)
    assert e.converges and e.verdict == "converges" and e.throttle_to_converge_bps is None
    assert e.total_s == e.converge_s == pytest.approx(6e9 / 90e6, rel=1e-6)  # no catch-up: nothing piles up
    # converged: 1 MiB frames queue on 90 MB/s of spare link; Little's law gives the backlog
    lag = FRAME_BYTES / 90e6
    assert e.steady_lag_s == pytest.approx(lag + 0.001, rel=1e-6) and e.steady_lag_s < 0.02
    assert e.cutover_downtime_s == pytest.approx(downtime(10 * MB * lag, 100 * MB, 10 * MB), rel=1e-6)
    assert e.total_low_s <= e.total_s <= e.total_high_s


# 2 ---------------------------------------------------------------------------------------


def test_hot_working_set_within_the_threshold_converges_although_raw_writes_exceed_the_link() -> None:
    e = estimate_vm(vm(hot_set(50 * MB, 32 * MB, 2 * HOUR), allocated=4 * 10**9), Link(40 * MB), A)
    assert e.write_bps == pytest.approx(50 * MB)
    assert e.converges, e.verdict
    # the hot set ships once over the whole migration: H = (A + set) / B
    assert e.total_s == pytest.approx((4e9 + 32e6) / 40e6, rel=1e-6)
    assert e.distinct_dirty_bps == pytest.approx(32e6 / e.total_s, rel=1e-6) and e.distinct_dirty_bps < MB
    # converged: the bitmap holds the set; it drains in 32 MB / 40 MB/s
    assert e.steady_lag_s == pytest.approx(0.8 + 0.001, rel=1e-6)
    assert e.cutover_downtime_s == pytest.approx(A.stop_s + 0.801 + 32e6 / A.verify_bps + A.power_on_s, rel=1e-6)
    # sneakernet replays the set, not 50 MB/s for three days
    assert e.sneakernet.replay_bytes == pytest.approx(32 * MB, rel=1e-6)


def test_hot_set_bigger_than_the_threshold_and_faster_than_the_link_does_not_converge() -> None:
    obs = vm(hot_set(50 * MB, 256 * MB, 2 * HOUR), allocated=4 * 10**9)
    e = estimate_vm(obs, Link(40 * MB), A)
    # a 64 MiB backlog drains in 1.7 s, during which 50 MB/s of writes dirty 84 MB of the set
    assert not e.converges and e.total_s == math.inf
    assert "50.0 MB/s" in e.verdict and "40.0 MB/s" in e.verdict and "256 MB" in e.verdict
    assert e.throttle_to_converge_bps == pytest.approx(32 * MB)
    big = Assumptions(converge_threshold=512 << 20)
    e = estimate_vm(obs, Link(40 * MB), big)
    assert e.converges and e.total_s == pytest.approx((4e9 + 256e6) / 40e6, rel=1e-6)
    assert e.sneakernet.replay_bytes == pytest.approx(256 * MB, rel=1e-6)  # not 50 MB/s x 3 days = 13 TB


# 3 ---------------------------------------------------------------------------------------


def test_growing_working_set_replays_linearly_with_shipping_time() -> None:
    # 2 MB/s of new chunks plus 3 MB/s of rewrites of a hot 180 MB
    samples = tuple(Sample(t=(i + 1) * 60.0, seconds=60.0, write_bytes=300 * MB, write_ops=300, new_chunks=120,
                           dirty_chunks=120 + 180) for i in range(6 * 60))
    obs = vm(samples, allocated=10**11)
    two = estimate_vm(obs, Link(100 * MB), replace(A, ship_days=2)).sneakernet
    four = estimate_vm(obs, Link(100 * MB), replace(A, ship_days=4)).sneakernet
    assert two.replay_bytes == pytest.approx(2 * MB * two.ship_s, rel=1e-6)
    assert four.replay_bytes - two.replay_bytes == pytest.approx(2 * MB * 2 * DAY, rel=1e-6)
    assert four.replay_s > two.replay_s


# 4 ---------------------------------------------------------------------------------------


def daily(day_first: bool, dt: float = 300.0) -> tuple[Sample, ...]:
    half = int(DAY / 2 / dt)
    day, night = [20 * MB] * half, [2 * MB] * half
    return random_writes(day + night if day_first else night + day, dt)


def test_full_day_window_uses_the_daily_average_whatever_hour_it_started() -> None:
    link = Link(100 * MB)
    for day_first in (True, False):
        e = estimate_vm(vm(daily(day_first), allocated=6 * 10**9), link, A)
        assert e.write_bps == pytest.approx(11 * MB)
        assert e.distinct_dirty_bps == pytest.approx(11 * MB, rel=1e-6)
        assert e.total_s == pytest.approx(6e9 / 89e6, rel=1e-6)


def test_one_hour_of_the_same_process_plans_for_what_it_saw_with_a_wider_range() -> None:
    link = Link(100 * MB)
    full = estimate_vm(vm(daily(True), allocated=6 * 10**9), link, A)
    hour = estimate_vm(vm(daily(True)[:12], allocated=6 * 10**9), link, A)  # the first hour: daytime
    assert hour.distinct_dirty_bps == pytest.approx(20 * MB, rel=1e-6)
    assert hour.total_s == pytest.approx(6e9 / 80e6, rel=1e-6)
    # 24 h: u = 0.1 + CV(9/11) / sqrt(24) = 0.267; 1 h: u = 0.1 sqrt(24) = 0.49
    assert full.uncertainty == pytest.approx(0.1 + 9 / 11 / math.sqrt(24), rel=1e-6)
    assert hour.uncertainty == pytest.approx(0.1 * math.sqrt(24), rel=1e-6)
    width = {k: (e.total_high_s - e.total_low_s) / e.total_s for k, e in (("full", full), ("hour", hour))}
    assert width["full"] < width["hour"]


def test_short_window_takes_its_busiest_stretch() -> None:
    # 2 h: 90 min at 10 MB/s, then 30 min at 40 MB/s; the busiest min(1 h, W/4) = 30 min is 40 MB/s
    samples = random_writes([10 * MB] * 90 + [40 * MB] * 30)
    e = estimate_vm(vm(samples, allocated=6 * 10**9), Link(100 * MB), A)
    assert e.write_bps == pytest.approx(17.5 * MB)
    assert e.distinct_dirty_bps == pytest.approx(40 * MB, rel=1e-6)
    assert e.live_bps == pytest.approx(40 * MB, rel=1e-6)
    # the same two hours taken as a full cycle: the average
    e = estimate_vm(vm(samples, allocated=6 * 10**9), Link(100 * MB), replace(A, good_window_s=2 * HOUR))
    assert e.distinct_dirty_bps == pytest.approx(17.5 * MB, rel=1e-6)


# 5 ---------------------------------------------------------------------------------------


def test_distinct_dirty_rate_above_the_link_does_not_converge_and_the_throttle_fixes_it() -> None:
    samples = steady(120 * MB, HOUR)
    link = Link(100 * MB)
    e = estimate_vm(vm(samples, allocated=6 * 10**9), link, A)
    assert not e.converges and e.total_s == math.inf and e.total_high_s == math.inf and e.steady_lag_s == math.inf
    assert e.verdict == "NOT CONVERGING: distinct dirty rate 120.0 MB/s at or above usable bandwidth 100.0 MB/s"
    cap = e.throttle_to_converge_bps
    assert cap is not None and cap < link.bandwidth_bps
    capped = estimate_vm(vm(scaled(samples, cap / e.write_bps), allocated=6 * 10**9), link, A)
    assert capped.converges and capped.write_bps == pytest.approx(cap)
    assert capped.total_s == pytest.approx(6e9 / (100e6 - cap), rel=1e-6)


def test_share_of_the_link_is_the_bandwidth_the_model_sees() -> None:
    obs = vm(steady(10 * MB, HOUR), allocated=6 * 10**9)
    half = estimate_vm(obs, Link(200 * MB), A, share=0.5)
    assert half.total_s == pytest.approx(estimate_vm(obs, Link(100 * MB), A).total_s, rel=1e-9)


# 6 ---------------------------------------------------------------------------------------


def test_group_packs_waves_under_the_cap_and_picks_the_faster_schedule() -> None:
    rates = {"a": 40 * MB, "b": 25 * MB, "c": 20 * MB}
    obs = [vm(steady(r, HOUR), allocated=30 * 10**9, name=n) for n, r in rates.items()]
    link = Link(100 * MB)
    g = estimate_group(obs, link, A)
    assert [e.name for e in g.vms] == ["a", "b", "c"]
    assert g.waves == [["a", "b"], ["c"]]  # biggest first; c would take the first wave to 85 %
    for wave in g.waves:
        assert len(wave) == 1 or sum(rates[n] for n in wave) <= 0.7 * link.bandwidth_bps
    down = {e.name: e.cutover_downtime_s for e in g.vms}
    # all at once: 15 MB/s spare, 5 MB/s each on top of its live load; cutovers one after another
    assert g.all_at_once_s == pytest.approx(30e9 / 5e6 + sum(down.values()), rel=1e-3)
    # waves: 35 MB/s spare split in two, then c with 80 MB/s spare
    assert g.waves_s == pytest.approx(30e9 / 17.5e6 + 30e9 / 80e6 + sum(down.values()), rel=1e-3)
    assert g.recommended == "waves" and g.network_total_s == g.waves_s < g.all_at_once_s
    assert g.faster == "network" and g.sneakernet_total_s > g.network_total_s
    # rel=1e-3: per-batch cutovers drain on that batch's share, a few ms from the alone-on-the-link figure


def test_group_that_fits_one_wave_goes_all_at_once() -> None:
    obs = [vm(steady(10 * MB, HOUR), allocated=10**10, name=n) for n in ("x", "y", "z")]
    g = estimate_group(obs, Link(100 * MB), A)
    assert g.waves == [["x", "y", "z"]] and g.waves_s == g.all_at_once_s
    assert g.recommended == "all at once"
    assert math.isfinite(g.all_at_once_s) and g.all_at_once_s > 3 * 10**10 / 100e6


# 7 ---------------------------------------------------------------------------------------


def test_confidence_range_contains_the_estimate_and_narrows_with_the_window() -> None:
    link = Link(100 * MB)
    widths = []
    for window in (HOUR, 6 * HOUR, DAY):
        e = estimate_vm(vm(steady(30 * MB, window), allocated=6 * 10**9), link, A)
        assert e.total_s == pytest.approx(6e9 / 70e6, rel=1e-6)  # same process, same point estimate
        assert e.total_low_s < e.total_s < e.total_high_s
        assert e.downtime_low_s < e.cutover_downtime_s < e.downtime_high_s
        widths.append((e.total_high_s - e.total_low_s, e.downtime_high_s - e.downtime_low_s))
    assert widths[0][0] > widths[1][0] > widths[2][0]
    assert widths[0][1] > widths[1][1] > widths[2][1]


def test_confidence_range_is_wider_when_intervals_vary() -> None:
    link = Link(100 * MB)
    calm = estimate_vm(vm(steady(30 * MB, DAY), allocated=6 * 10**9), link, A)
    noisy = estimate_vm(vm(random_writes([10 * MB, 50 * MB] * int(DAY / 120)), allocated=6 * 10**9), link, A)
    assert noisy.total_s == pytest.approx(calm.total_s, rel=1e-6)  # full day: both average 30 MB/s
    assert calm.uncertainty == pytest.approx(0.1)
    assert noisy.uncertainty == pytest.approx(0.1 + (20 / 30) / math.sqrt(24), rel=1e-6)
    assert noisy.total_high_s - noisy.total_low_s > calm.total_high_s - calm.total_low_s


# 8 ---------------------------------------------------------------------------------------


def test_sneakernet_wins_for_a_huge_disk_over_a_slow_link() -> None:
    e = estimate_vm(vm(steady(1 * MB, DAY), allocated=100 * 10**12, size=200 * 10**12), Link(100 * MB), A)
    s = e.sneakernet
    assert s.ship_s == pytest.approx(3 * DAY + 2 * 100e12 / 500e6)
    assert s.replay_bytes == pytest.approx(1 * MB * s.ship_s, rel=1e-6)
    assert s.network_total_s == e.total_s == pytest.approx(100e12 / 99e6, rel=1e-6)
    assert s.total_s == pytest.approx(s.ship_s + s.replay_s) and s.total_s < s.network_total_s
    assert s.faster == "sneakernet"


def test_network_wins_for_a_small_disk() -> None:
    e = estimate_vm(vm(steady(1 * MB, DAY), allocated=10 * 10**9), Link(100 * MB), A)
    assert e.sneakernet.faster == "network" and e.total_s < 200 < e.sneakernet.total_s


# edges -----------------------------------------------------------------------------------


def test_no_samples_yet_means_no_writes_and_the_widest_range() -> None:
    e = estimate_vm(vm((), allocated=10**9), Link(100 * MB), A)
    assert e.window_s == 0 and e.write_bps == 0 and e.converges
    assert e.total_s == pytest.approx(10.0) and e.uncertainty == 1.0
    g = estimate_group([], Link(100 * MB), A)
    assert g.vms == () and g.waves == [] and g.all_at_once_s == 0


def test_saturation_caps_the_working_set_at_the_disk() -> None:
    # 10 MB/s of new chunks on a 20 GB disk: three days can dirty at most the whole disk
    e = estimate_vm(vm(steady(10 * MB, HOUR), allocated=10**10, size=20 * 10**9), Link(100 * MB), A)
    assert e.sneakernet.replay_bytes == 20 * 10**9
