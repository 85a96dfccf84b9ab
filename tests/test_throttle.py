"""Replication throttling: the pure bucket with a fake clock, the asyncio bucket on a real loop,
the per-migration limiters, the weekly schedule, and the glue that applies it."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from datetime import time as dtime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liftshift.daemon.errors import InvalidArgument
from liftshift.daemon.throttle import (
    BINDING_WINDOW_S,
    CHUNK,
    Bucket,
    Limiters,
    Schedule,
    ScheduledLimit,
    TokenBucket,
    Window,
    default_burst,
    parse_rate_value,
)

MB = 1_000_000
MON = datetime(2024, 1, 1)  # a Monday


def day(offset: int, hh: int = 0, mm: int = 0, ss: int = 0, us: int = 0) -> datetime:
    """MON + offset days at hh:mm:ss.us (offset 4 = Friday, 5 = Saturday, 6 = Sunday)."""
    return MON + timedelta(days=offset, hours=hh, minutes=mm, seconds=ss, microseconds=us)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# ------------------------------------------------------------------------------------ pure bucket


def test_default_burst_is_an_eighth_of_a_second_but_at_least_two_chunks() -> None:
    assert default_burst(80 * MB) == 10 * MB
    assert default_burst(1 * MB) == 2 * CHUNK
    assert default_burst(0) == 2 * CHUNK
    assert Bucket(80 * MB).burst == 10 * MB


def test_bucket_starts_full_then_waits_exactly_for_the_deficit() -> None:
    b: Bucket[str] = Bucket(8 * MB, now=0.0)  # burst 2 MiB (8 MB / 8 = 1 MB < 2 MiB)
    assert b.burst == 2 * CHUNK
    assert b.try_take(CHUNK, live=False, now=0.0)
    assert b.try_take(CHUNK, live=False, now=0.0)
    assert not b.try_take(CHUNK, live=False, now=0.0)
    b.enqueue("x", CHUNK, live=False, now=0.0)
    granted, next_at = b.poll(0.0)
    assert granted == []
    assert next_at == pytest.approx(CHUNK / (8 * MB), abs=1e-6)
    assert b.poll(next_at / 2) == ([], pytest.approx(next_at, abs=1e-6))
    assert b.poll(next_at)[0] == ["x"]
    assert b.granted_bytes == 3 * CHUNK


def test_live_waiters_are_served_before_queued_background_ones() -> None:
    b: Bucket[str] = Bucket(1 * MB, burst=CHUNK, now=0.0)
    assert b.try_take(CHUNK, live=False, now=0.0)  # saturate
    b.enqueue("bg1", CHUNK, live=False, now=0.0)
    b.enqueue("bg2", CHUNK, live=False, now=0.0)
    b.enqueue("live1", CHUNK, live=True, now=0.1)
    b.enqueue("live2", CHUNK, live=True, now=0.2)
    order: list[str] = []
    t = 0.2
    while True:
        granted, next_at = b.poll(t)
        order += granted
        if next_at is None:
            break
        t = next_at
    assert order == ["live1", "live2", "bg1", "bg2"]


def test_no_background_grant_while_a_live_waiter_waits_even_when_background_is_small() -> None:
    b: Bucket[str] = Bucket(1 * MB, burst=CHUNK, now=0.0)
    assert b.try_take(CHUNK, live=True, now=0.0)
    b.enqueue("live", CHUNK, live=True, now=0.0)
    # 1 KiB would fit after a millisecond, but the live waiter needs a whole chunk first.
    assert not b.try_take(1024, live=False, now=0.01)
    b.enqueue("bg", 1024, live=False, now=0.01)
    assert b.poll(0.5)[0] == []
    assert b.poll(1.1)[0] == ["live"]
    assert b.poll(1.2)[0] == ["bg"]


def test_background_is_served_when_no_live_waits() -> None:
    b: Bucket[str] = Bucket(1 * MB, burst=CHUNK, now=0.0)
    assert b.try_take(CHUNK, live=True, now=0.0)
    b.enqueue("bg", CHUNK, live=False, now=0.0)
    granted, next_at = b.poll(0.0)
    assert granted == [] and next_at == pytest.approx(CHUNK / MB)
    assert b.poll(next_at)[0] == ["bg"]
    assert b.granted_live_bytes == CHUNK and b.granted_bytes == 2 * CHUNK


def test_oversize_request_goes_into_debt_instead_of_deadlocking() -> None:
    b: Bucket[str] = Bucket(1 * MB, burst=CHUNK, now=0.0)
    assert b.try_take(CHUNK // 2, live=False, now=0.0)
    # 10 MiB can never fit a 1 MiB bucket: it is served once the bucket is full.
    b.enqueue("big", 10 * CHUNK, live=False, now=0.0)
    granted, next_at = b.poll(0.0)
    assert granted == [] and next_at == pytest.approx(CHUNK / 2 / MB, abs=1e-6)
    assert b.poll(next_at)[0] == ["big"]
    # The debt (9 MiB) plus the next chunk must be earned before the next grant.
    b.enqueue("next", CHUNK, live=False, now=next_at)
    _, after = b.poll(next_at)
    assert after is not None
    assert after - next_at == pytest.approx(10 * CHUNK / MB, abs=1e-6)


def test_set_rate_to_unlimited_grants_every_waiter_at_the_next_poll() -> None:
    b: Bucket[str] = Bucket(1 * MB, burst=CHUNK, now=0.0)
    assert b.try_take(CHUNK, live=False, now=0.0)
    for name, live in (("a", False), ("b", True), ("c", False)):
        b.enqueue(name, CHUNK, live=live, now=0.0)
    b.set_rate(0, now=0.0)
    assert b.poll(0.0) == (["b", "a", "c"], None)
    # Back to a limit: starts with a full bucket, no debt kept from the unlimited spell.
    b.set_rate(1 * MB, now=0.0)
    assert b.try_take(CHUNK, live=False, now=0.0)


def test_cancel_of_the_live_head_lets_background_through() -> None:
    b: Bucket[str] = Bucket(1 * MB, burst=CHUNK, now=0.0)
    assert b.try_take(CHUNK, live=False, now=0.0)
    b.enqueue("live", CHUNK, live=True, now=0.0)
    b.enqueue("bg", CHUNK // 2, live=False, now=0.0)
    assert b.poll(0.6)[0] == []  # the live waiter needs 1 MiB, 0.6 MB is there
    assert b.cancel("live")
    assert not b.cancel("live")
    assert b.poll(0.6)[0] == ["bg"]


def test_refund_returns_tokens_and_counts() -> None:
    b: Bucket[str] = Bucket(1 * MB, burst=CHUNK, now=0.0)
    assert b.try_take(CHUNK, live=True, now=0.0)
    b.refund(CHUNK, live=True)
    assert (b.granted_bytes, b.granted_live_bytes) == (0, 0)
    assert b.try_take(CHUNK, live=True, now=0.0)


def test_binding_and_waited_seconds() -> None:
    b: Bucket[str] = Bucket(1 * MB, burst=CHUNK, now=0.0)
    assert not b.binding(0.0)
    assert b.try_take(CHUNK, live=False, now=0.0)
    assert not b.binding(0.0)  # served at once: the limit did not hold anyone back
    b.enqueue("w", CHUNK, live=False, now=0.0)
    assert b.binding(0.5)
    assert b.stats(0.5).waited_s == pytest.approx(0.5)
    assert b.stats(0.5).waiting_background == 1
    assert b.poll(1.1)[0] == ["w"]
    assert b.binding(1.1 + BINDING_WINDOW_S)
    assert not b.binding(1.2 + BINDING_WINDOW_S)
    s = b.stats(5.0)
    assert s.waited_s == pytest.approx(1.1)
    assert (s.rate_bps, s.burst, s.granted_bytes, s.waiting_background, s.binding) == (MB, CHUNK, 2 * CHUNK, 0, False)


def test_negative_rates_and_sizes_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="rate -1"):
        Bucket(-1)
    b: Bucket[str] = Bucket(MB)
    with pytest.raises(InvalidArgument, match="rate -5"):
        b.set_rate(-5, now=0.0)
    with pytest.raises(ValueError):
        b.try_take(-1, live=False, now=0.0)
    with pytest.raises(InvalidArgument, match="burst"):
        Bucket(MB, burst=0)


# ------------------------------------------------------------------------------------ asyncio bucket


async def _drain(bucket: TokenBucket) -> None:
    await bucket.take(bucket.burst, live=False)  # a full bucket: served at once, leaves it empty


async def test_achieved_rate_is_within_ten_percent_of_the_limit() -> None:
    limit = 20 * MB
    bucket = TokenBucket(limit)
    await _drain(bucket)
    sent = 0
    start = time.monotonic()
    while time.monotonic() - start < 1.0:
        await bucket.take(CHUNK, live=False)
        sent += CHUNK
    elapsed = time.monotonic() - start
    achieved = sent / elapsed
    assert abs(achieved - limit) / limit < 0.10, f"achieved {achieved / MB:.2f} MB/s against {limit / MB} MB/s"
    assert bucket.binding()
    assert bucket.stats().granted_bytes == sent + bucket.burst


async def test_unlimited_bucket_never_waits() -> None:
    bucket = TokenBucket(0)
    start = time.monotonic()
    for _ in range(1000):
        await bucket.take(64 * CHUNK, live=False)
    assert time.monotonic() - start < 0.5
    assert bucket.stats().granted_bytes == 64000 * CHUNK
    assert not bucket.binding()


async def test_live_takes_overtake_queued_background_ones_on_a_real_loop() -> None:
    bucket = TokenBucket(20 * MB, burst=CHUNK)  # one chunk every ~52 ms
    await _drain(bucket)
    done: list[str] = []

    async def take(name: str, live: bool) -> None:
        await bucket.take(CHUNK, live=live)
        done.append(name)

    bg = [asyncio.create_task(take(f"bg{i}", False)) for i in range(3)]
    await asyncio.sleep(0)  # the background takes are queued first
    live = [asyncio.create_task(take(f"live{i}", True)) for i in range(2)]
    await asyncio.wait_for(asyncio.gather(*bg, *live), 2.0)
    assert done == ["live0", "live1", "bg0", "bg1", "bg2"]


async def test_background_is_not_starved_once_live_traffic_stops() -> None:
    bucket = TokenBucket(50 * MB, burst=CHUNK)  # ~21 ms per chunk
    await _drain(bucket)
    live_done: list[float] = []

    async def live_producer() -> None:
        for _ in range(5):
            await bucket.take(CHUNK, live=True)
            live_done.append(time.monotonic())

    producer = asyncio.create_task(live_producer())
    await asyncio.sleep(0)
    await asyncio.wait_for(bucket.take(CHUNK, live=False), 2.0)
    bg_done = time.monotonic()
    await producer
    assert len(live_done) == 5
    # It waited while the live producer kept a take queued, then got the very next chunk.
    assert bg_done >= live_done[-1]
    assert bg_done - live_done[-1] < CHUNK / (50 * MB) + 0.1


async def test_set_rate_unlimited_releases_waiters_at_once() -> None:
    bucket = TokenBucket(1 * MB, burst=CHUNK)  # 5 queued chunks would take 5 s
    await _drain(bucket)
    waiters = [asyncio.create_task(bucket.take(CHUNK, live=i % 2 == 0)) for i in range(5)]
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiters)
    assert bucket.stats().waiting_live + bucket.stats().waiting_background == 5
    start = time.monotonic()
    bucket.set_rate(0)
    await asyncio.wait_for(asyncio.gather(*waiters), 1.0)
    assert time.monotonic() - start < 0.1  # not the ~5 s the old rate would take
    assert bucket.rate_bps == 0


async def test_raising_the_rate_wakes_a_waiter_early() -> None:
    bucket = TokenBucket(1 * MB, burst=CHUNK)
    await _drain(bucket)
    waiter = asyncio.create_task(bucket.take(CHUNK, live=False))  # ~1 s at 1 MB/s
    await asyncio.sleep(0.02)
    start = time.monotonic()
    bucket.set_rate(100 * MB)  # the chunk's remainder now takes ~10 ms; burst stays 1 MiB (100 MB / 8 > 1 MiB)
    await asyncio.wait_for(waiter, 1.0)
    assert time.monotonic() - start < 0.3


async def test_oversize_request_is_served_and_its_debt_is_honoured() -> None:
    bucket = TokenBucket(50 * MB, burst=CHUNK)
    start = time.monotonic()
    await asyncio.wait_for(bucket.take(16 * CHUNK, live=False), 1.0)  # full bucket: served at once, in debt
    assert time.monotonic() - start < 0.05
    await asyncio.wait_for(bucket.take(CHUNK, live=False), 2.0)
    waited = time.monotonic() - start
    expected = 16 * CHUNK / (50 * MB)  # 15 MiB of debt + 1 MiB for the chunk
    assert expected * 0.9 < waited < expected + 0.2


async def test_cancelled_waiter_leaves_the_queue_and_unblocks_others() -> None:
    bucket = TokenBucket(2 * MB, burst=CHUNK)
    await _drain(bucket)
    live = asyncio.create_task(bucket.take(CHUNK, live=True))  # would need ~0.5 s
    await asyncio.sleep(0)
    bg = asyncio.create_task(bucket.take(1000, live=False))
    await asyncio.sleep(0.02)
    assert not bg.done()
    live.cancel()
    await asyncio.wait_for(bg, 0.5)  # 1000 bytes at 2 MB/s: were already earned
    assert bucket.stats().waiting_live == 0
    assert bucket.stats().granted_live_bytes == 0


# ------------------------------------------------------------------------------------ limiters


async def test_limiters_take_from_the_migration_and_the_global_bucket() -> None:
    lim = Limiters(0)
    lim.set_migration("m1", 50 * MB)
    await lim.take("m1", CHUNK, live=True)
    await lim.take("m2", 2 * CHUNK, live=False)  # no own limit: global only
    by_id = {s.migration_id: s for s in lim.limits()}
    assert set(by_id) == {None, "m1"}
    assert by_id[None].stats.granted_bytes == 3 * CHUNK
    assert by_id["m1"].stats.granted_bytes == CHUNK
    assert by_id["m1"].stats.granted_live_bytes == CHUNK


async def test_a_migration_limit_binds_only_that_migration() -> None:
    lim = Limiters(0)
    lim.set_migration("slow", 10 * MB)  # burst 2 MiB: the third chunk waits ~0.1 s
    start = time.monotonic()
    for _ in range(3):
        await lim.take("fast", CHUNK, live=False)
    fast = time.monotonic() - start
    start = time.monotonic()
    for _ in range(4):
        await lim.take("slow", CHUNK, live=False)
    slow = time.monotonic() - start
    assert fast < 0.05
    expected = 2 * CHUNK / (10 * MB)  # the first two chunks came out of the full bucket
    assert expected * 0.9 < slow < expected + 0.2
    by_id = {s.migration_id: s for s in lim.limits()}
    assert by_id["slow"].binding and not by_id[None].binding


async def test_global_limit_is_shared_and_effective_limit_is_the_lower() -> None:
    lim = Limiters(100 * MB)
    lim.set_migration("a", 10 * MB)
    lim.set_migration("b", 500 * MB)
    lim.set_migration("c", 0)
    eff = {s.migration_id: (s.rate_bps, s.effective_bps) for s in lim.limits()}
    assert eff == {None: (100 * MB, 100 * MB), "a": (10 * MB, 10 * MB), "b": (500 * MB, 100 * MB),
                   "c": (0, 100 * MB)}
    lim.set_global(0)
    assert {s.migration_id: s.effective_bps for s in lim.limits()}["b"] == 500 * MB
    lim.set_migration("b", 1 * MB)
    assert {s.migration_id: s.rate_bps for s in lim.limits()}["b"] == 1 * MB


async def test_drop_migration_releases_its_waiters() -> None:
    lim = Limiters(0)
    lim.set_migration("m", 1 * MB)
    await lim.take("m", 2 * CHUNK, live=False)  # empties its bucket
    waiter = asyncio.create_task(lim.take("m", CHUNK, live=False))  # would take ~1 s
    await asyncio.sleep(0.02)
    assert not waiter.done()
    lim.drop_migration("m")
    await asyncio.wait_for(waiter, 0.2)
    assert [s.migration_id for s in lim.limits()] == [None]
    lim.drop_migration("m")  # dropping twice is harmless


# ------------------------------------------------------------------------------------ schedule

OFFICE = Schedule.parse([
    {"days": "mon-fri", "start": "08:00", "end": "18:00", "rate": "100MB/s"},
    {"days": "sat,sun", "start": "00:00", "end": "24:00", "rate": "1GB/s"},
])
NIGHTS = Schedule.parse([
    {"days": "mon-thu", "start": "22:00", "end": "06:00", "rate": 500 * MB},
    {"days": "sun", "start": "20:00", "end": "02:00", "rate": "unlimited"},  # crosses the week boundary
], default_bps=50 * MB)


@pytest.mark.parametrize(("when", "rate"), [
    (day(0, 7, 59, 59, 999_999), 0),
    (day(0, 8), 100 * MB),
    (day(2, 12, 30), 100 * MB),
    (day(4, 17, 59, 59), 100 * MB),
    (day(4, 18), 0),
    (day(4, 23, 59), 0),
    (day(5, 0), 1000 * MB),
    (day(6, 23, 59, 59), 1000 * MB),
    (day(7, 0), 0),  # Monday again, before 08:00
])
def test_office_hours_rate_at(when: datetime, rate: int) -> None:
    assert OFFICE.rate_at(when) == rate


@pytest.mark.parametrize(("when", "rate"), [
    (day(0, 21, 59), 50 * MB),
    (day(0, 22), 500 * MB),
    (day(1, 5, 59), 500 * MB),  # Monday's window, still in force on Tuesday morning
    (day(1, 6), 50 * MB),
    (day(3, 23), 500 * MB),  # Thursday night
    (day(4, 3), 500 * MB),  # ... into Friday morning
    (day(4, 23), 50 * MB),  # Friday night: no window starts on Friday
    (day(0, 1), 0),  # Monday 01:00: inside Sunday's unlimited 20:00-02:00 window
    (day(0, 2), 50 * MB),
])
def test_midnight_crossing_rate_at(when: datetime, rate: int) -> None:
    assert NIGHTS.rate_at(when) == rate


def test_week_wrapping_window_covers_sunday_night_and_monday_morning() -> None:
    assert NIGHTS.rate_at(day(6, 19, 59)) == 50 * MB
    assert NIGHTS.rate_at(day(6, 20)) == 0
    assert NIGHTS.rate_at(day(7, 1, 59)) == 0
    assert NIGHTS.rate_at(day(7, 2)) == 50 * MB
    assert NIGHTS.window_at(day(7, 1)) == NIGHTS.windows[1]


def test_local_wall_clock_of_an_aware_datetime_is_used() -> None:
    tz = timezone(timedelta(hours=9))
    assert OFFICE.rate_at(datetime(2024, 1, 1, 8, 30, tzinfo=tz)) == 100 * MB
    assert OFFICE.rate_at(datetime(2024, 1, 1, 7, 30, tzinfo=tz)) == 0
    nxt = OFFICE.next_change(datetime(2024, 1, 1, 7, 30, tzinfo=tz))
    assert nxt == datetime(2024, 1, 1, 8, 0, tzinfo=tz)


@pytest.mark.parametrize(("when", "change"), [
    (day(0, 7), day(0, 8)),
    (day(0, 7, 59, 59, 500_000), day(0, 8)),
    (day(0, 8), day(0, 18)),
    (day(0, 12), day(0, 18)),
    (day(0, 18), day(1, 8)),
    (day(4, 12), day(4, 18)),
    (day(4, 18), day(5, 0)),
    (day(5, 9), day(7, 0)),  # the weekend is one window-to-window stretch: Sat 00:00 to Mon 00:00
    (day(6, 23, 59), day(7, 0)),
])
def test_office_next_change(when: datetime, change: datetime) -> None:
    assert OFFICE.next_change(when) == change


def test_next_change_of_midnight_crossing_windows() -> None:
    assert NIGHTS.next_change(day(0, 12)) == day(0, 22)
    assert NIGHTS.next_change(day(0, 23)) == day(1, 6)
    assert NIGHTS.next_change(day(3, 23)) == day(4, 6)
    assert NIGHTS.next_change(day(4, 6)) == day(6, 20)  # Friday and Saturday nights are at the default
    assert NIGHTS.next_change(day(6, 21)) == day(7, 2)  # across the week boundary
    assert NIGHTS.next_change(day(7, 2)) == day(7, 22)


def test_next_change_skips_boundaries_that_do_not_change_the_rate() -> None:
    s = Schedule.parse_spec("mon-fri 08:00-12:00 10MB/s; mon-fri 12:00-18:00 10MB/s")
    assert s.next_change(day(0, 9)) == day(0, 18)
    # Windows at the default rate change nothing either.
    s = Schedule.parse_spec("mon 08:00-18:00 5MB/s", default_bps=5 * MB)
    assert s.next_change(day(0, 9)) is None


def test_constant_schedules_never_change() -> None:
    assert Schedule().next_change(day(0)) is None
    assert Schedule().rate_at(day(3, 4)) == 0
    always = Schedule.parse([{"days": "daily", "start": "00:00", "end": "24:00", "rate": "1MB/s"}])
    assert always.rate_at(day(6, 23, 59)) == MB
    assert always.next_change(day(2)) is None


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2024, 12, 31)))
def test_next_change_is_the_first_instant_with_another_rate(when: datetime) -> None:
    for s in (OFFICE, NIGHTS):
        nxt = s.next_change(when)
        assert nxt is not None and when < nxt <= when + timedelta(days=7)
        assert s.rate_at(nxt) != s.rate_at(when)
        assert s.rate_at(nxt - timedelta(microseconds=1)) == s.rate_at(when)
        # No change hides in between: sample the stretch.
        for k in range(1, 50):
            assert s.rate_at(when + (nxt - when) * k / 50) == s.rate_at(when)


@pytest.mark.parametrize(("days", "expected"), [
    ("mon-fri", {0, 1, 2, 3, 4}),
    ("sat,sun", {5, 6}),
    ("daily", set(range(7))),
    ("*", set(range(7))),
    ("fri-mon", {4, 5, 6, 0}),
    ("Monday, wed , FRI", {0, 2, 4}),
    (["sat", "sun"], {5, 6}),
])
def test_day_sets(days: object, expected: set[int]) -> None:
    s = Schedule.parse([{"days": days, "start": "01:00", "end": "02:00", "rate": 1}])
    assert s.windows[0].days == frozenset(expected)


def test_days_default_to_daily_and_toml_times_are_accepted() -> None:
    s = Schedule.parse([{"start": dtime(8, 0), "end": dtime(9, 30), "rate": "1MiB/s"}])
    assert s.windows[0] == Window(frozenset(range(7)), 8 * 60, 9 * 60 + 30, CHUNK)


def test_spec_round_trips() -> None:
    text = "mon-fri 08:00-18:00 100MB/s; sat,sun 10:00-16:00 1GiB/s; fri 22:00-06:00 unlimited; default 5MB/s"
    s = Schedule.parse_spec(text)
    assert s.default_bps == 5 * MB
    assert [w.rate_bps for w in s.windows] == [100 * MB, 1 << 30, 0]
    assert s.spec() == text
    assert Schedule.parse_spec(s.spec()).windows == s.windows
    assert Schedule.parse_spec("08:00-09:00 1234/s").windows[0].describe() == "daily 08:00-09:00 1234/s"


def test_adjacent_windows_do_not_overlap() -> None:
    s = Schedule.parse_spec("08:00-12:00 1MB/s; 12:00-18:00 2MB/s; mon 18:00-08:00 3MB/s")
    assert s.rate_at(day(0, 12)) == 2 * MB
    assert s.rate_at(day(1, 7)) == 3 * MB


@pytest.mark.parametrize(("spec", "message"), [
    ("mon-fri 08:00-18:00 1MB/s; fri 17:00-20:00 2MB/s",
     "schedule[1]: 'fri 17:00-20:00 2MB/s' overlaps schedule[0] 'mon-fri 08:00-18:00 1MB/s' on fri at 17:00"),
    ("sun 22:00-06:00 1MB/s; mon 05:00-07:00 2MB/s", "schedule[1]: 'mon 05:00-07:00 2MB/s' overlaps schedule[0]"
                                                    " 'sun 22:00-06:00 1MB/s' on mon at 05:00"),
    ("daily 00:00-24:00 1MB/s; sat 10:00-11:00 2MB/s", "schedule[1]: 'sat 10:00-11:00 2MB/s' overlaps schedule[0]"),
    ("mon 08:00-09:00 1MB/s; mon 08:00-09:00 1MB/s", "schedule[1]: 'mon 08:00-09:00 1MB/s' overlaps schedule[0]"),
])
def test_overlapping_windows_are_rejected(spec: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        Schedule.parse_spec(spec)
    assert e.value.message.startswith(message)


def _window(**kw: object) -> dict[str, object]:
    return {"days": "mon-fri", "start": "08:00", "end": "18:00", "rate": "100MB/s"} | kw


GOOD = _window(days="sat,sun")


@pytest.mark.parametrize(("items", "message"), [
    ([GOOD, _window(start="25:00")], "throttle.schedule[1].start: '25:00' is not a time of day HH:MM"),
    ([_window(end="12:60")], "throttle.schedule[0].end: '12:60' is not a time of day HH:MM"),
    ([_window(start="24:00")], "throttle.schedule[0].start: '24:00' is not a time of day HH:MM"),
    ([_window(end="24:01")], "throttle.schedule[0].end: '24:01' is not a time of day HH:MM"),
    ([_window(start="8")], "throttle.schedule[0].start: '8' is not a time of day HH:MM"),
    ([_window(start=800)], "throttle.schedule[0].start: 800 is not a time of day HH:MM"),
    ([_window(end=dtime(8, 0, 30))], "throttle.schedule[0].end: datetime.time(8, 0, 30) is not a time of day"),
    ([_window(start="08:00", end="08:00")], "throttle.schedule[0]: start and end are both 08:00"),
    ([GOOD, GOOD, _window(days="mon-fry")], "throttle.schedule[2].days: 'mon-fry' is not a set of days"),
    ([_window(days="")], "throttle.schedule[0].days: '' is not a set of days"),
    ([_window(days=5)], "throttle.schedule[0].days: 5 is not a set of days"),
    ([_window(days="weekdays")], "throttle.schedule[0].days: 'weekdays' is not a set of days"),
    ([_window(rate="-5MB/s")], "throttle.schedule[0].rate: '-5MB/s' is not a rate"),
    ([_window(rate=-1)], "throttle.schedule[0].rate: -1 is not a rate"),
    ([_window(rate="fast")], "throttle.schedule[0].rate: 'fast' is not a rate"),
    ([_window(rate="0.5")], "throttle.schedule[0].rate: '0.5' is not a rate"),
    ([_window(rate=True)], "throttle.schedule[0].rate: True is not a rate"),
    ([_window(rate=float("nan"))], "throttle.schedule[0].rate: nan is not a rate"),
    ([_window(rates="1MB/s")], "throttle.schedule[0].rates: unknown key"),
    ([{"days": "mon", "end": "09:00", "rate": 1}], "throttle.schedule[0].start: missing"),
    ([{"days": "mon", "start": "08:00", "end": "09:00"}], "throttle.schedule[0].rate: missing"),
    ([GOOD, "mon 08:00-09:00 1MB/s"], "throttle.schedule[1]: expected a table"),
    (_window(), "throttle.schedule: expected a list of tables, got dict"),
])
def test_invalid_schedule_items_name_the_field(items: object, message: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        Schedule.parse(items)
    assert e.value.message.startswith(message), e.value.message


def test_field_prefix_is_the_callers() -> None:
    with pytest.raises(InvalidArgument, match=r"^throttle\.weekly\[0\]\.start: '99:00'"):
        Schedule.parse([_window(start="99:00")], field="throttle.weekly")


@pytest.mark.parametrize(("spec", "message"), [
    ("mon-fri 08:00 100MB/s", "schedule[0]: 'mon-fri 08:00 100MB/s' is not a window"),
    ("mon-fri 08:00-18:00", "schedule[0]: 'mon-fri 08:00-18:00' is not a window"),
    ("08:00-09:00 1MB/s; mon-fri 08:00-25:00 1MB/s", "schedule[1].end: '25:00' is not a time of day HH:MM"),
    ("xyz 08:00-09:00 1MB/s", "schedule[0].days: 'xyz' is not a set of days"),
    ("08:00-09:00 lots", "schedule[0].rate: 'lots' is not a rate"),
    ("08:00-09:00 1MB/s; default fast", "schedule.default: 'fast' is not a rate"),
])
def test_invalid_specs_name_the_window(spec: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        Schedule.parse_spec(spec)
    assert e.value.message.startswith(message), e.value.message


@pytest.mark.parametrize(("value", "bps"), [
    ("100MB/s", 100 * MB), ("50MiB/s", 50 * CHUNK), ("1G", 1 << 30), ("0", 0), ("unlimited", 0), ("Off", 0),
    (0, 0), (12345, 12345), (2.5e6, 2_500_000),
])
def test_rate_values(value: object, bps: int) -> None:
    assert parse_rate_value(value, "x") == bps


def test_schedule_default_must_be_a_rate() -> None:
    with pytest.raises(InvalidArgument):
        Schedule([], default_bps=-1)


# ------------------------------------------------------------------------------------ scheduled limit


class FakeNow:
    """Local wall-clock time that the test sets by hand."""

    def __init__(self, when: datetime) -> None:
        self.when = when

    def __call__(self) -> datetime:
        return self.when


async def test_schedule_boundary_switches_the_global_rate() -> None:
    now = FakeNow(day(0, 7, 59))
    lim = Limiters()
    sched = ScheduledLimit(lim, OFFICE, now=now)
    assert lim.global_bucket.rate_bps == 0
    assert (sched.state.source, sched.state.next_change) == ("default", day(0, 8))
    assert sched.seconds_to_next() == 60.0  # capped at max_sleep_s
    now.when = day(0, 7, 59, 59, 900_000)
    assert sched.seconds_to_next() == pytest.approx(0.1)
    now.when = day(0, 8)
    state = sched.apply()
    assert lim.global_bucket.rate_bps == 100 * MB
    assert (state.source, state.window, state.next_change) == ("schedule", OFFICE.windows[0], day(0, 18))
    now.when = day(0, 18)
    assert sched.apply().rate_bps == 0 and lim.global_bucket.rate_bps == 0


async def test_manual_override_wins_until_cleared() -> None:
    now = FakeNow(day(0, 9))
    lim = Limiters()
    sched = ScheduledLimit(lim, OFFICE, now=now)
    assert lim.global_bucket.rate_bps == 100 * MB
    state = sched.override(5 * MB)
    assert (state.rate_bps, state.source, state.next_change) == (5 * MB, "manual", None)
    assert sched.override_bps == 5 * MB
    now.when = day(0, 19)  # the schedule would lift the limit now
    assert sched.apply().rate_bps == 5 * MB and lim.global_bucket.rate_bps == 5 * MB
    assert sched.override(None).source == "default"
    assert lim.global_bucket.rate_bps == 0
    with pytest.raises(InvalidArgument):
        sched.override(-1)


async def test_run_follows_an_injected_clock_across_a_boundary_and_releases_waiters() -> None:
    # Wall-clock time that runs with the real clock from Monday 07:59:59.85.
    t0 = time.monotonic()

    def now() -> datetime:
        return day(0, 7, 59, 59, 850_000) + timedelta(seconds=time.monotonic() - t0)

    lim = Limiters()
    sched = ScheduledLimit(lim, Schedule.parse_spec("mon 06:00-08:00 1MB/s"), now=now)
    assert lim.global_bucket.rate_bps == MB
    await lim.take("m", 2 * CHUNK, live=False)  # empties the bucket
    waiter = asyncio.create_task(lim.take("m", CHUNK, live=False))  # ~1 s at 1 MB/s
    task = asyncio.create_task(sched.run())
    try:
        await asyncio.wait_for(waiter, 0.6)  # released when the window ends at 08:00, ~0.15 s from now
        assert lim.global_bucket.rate_bps == 0
        assert now() >= day(0, 8)
        assert sched.state.source == "default"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_rearms_when_the_schedule_is_replaced() -> None:
    t0 = time.monotonic()

    def now() -> datetime:
        return day(0, 7, 59, 59, 800_000) + timedelta(seconds=time.monotonic() - t0)

    lim = Limiters()
    sched = ScheduledLimit(lim, Schedule(), now=now)  # nothing scheduled: the loop sleeps max_sleep_s (60 s)
    task = asyncio.create_task(sched.run())
    try:
        await asyncio.sleep(0.02)
        sched.set_schedule(Schedule.parse_spec("mon 08:00-09:00 7MB/s"))
        assert lim.global_bucket.rate_bps == 0  # not 08:00 yet
        deadline = time.monotonic() + 1.0
        while lim.global_bucket.rate_bps != 7 * MB and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert lim.global_bucket.rate_bps == 7 * MB
        assert now() >= day(0, 8)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
