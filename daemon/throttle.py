"""Replication throttling: token buckets, a time-of-day schedule, and the glue.

Goal: an operator caps how much bandwidth replication takes -- for the whole
daemon and per migration, by hand or by a weekly schedule ("100 MB/s on
weekdays 08:00-18:00, unlimited otherwise") -- without live traffic (guest
writes that must reach the sink for a migration to converge) queueing behind
the background copy.

Plan.

* **A pure core and a thin adapter.**  :class:`Bucket` is the token bucket
  as plain state: callers pass ``now`` and opaque tickets, it answers which
  tickets are granted and when to ask again.  :class:`TokenBucket` wraps it
  for asyncio with one future per waiter and at most one timer.  The core's
  decisions (priority, debt, rate changes) are thus tested without a loop.
* **Burst and debt.**  The bucket holds at most ``burst`` bytes: by default
  1/8 s of the rate, but at least two 1 MiB chunks (:data:`CHUNK`): one to
  take and one refilling meanwhile, so a sender that comes back a little late
  for its next chunk (a busy loop, a slow read) loses no tokens to a bucket
  already full -- with a burst of exactly one chunk, every late return is
  lost rate.  A request
  is granted once the bucket holds ``min(nbytes, burst)``; the whole request
  is then subtracted, so a request larger than the burst is served when the
  bucket is full and leaves it in debt that later requests wait out.  The
  long-run rate stays exact and nothing deadlocks on a large request.
* **Priority.**  Two FIFO queues.  While a live waiter waits, no background
  waiter is granted anything, and a background request never overtakes a
  queued waiter.  Background starves only while live traffic saturates the
  limit, which is the point: live data is what migrations converge on.
* **Binding.**  A limit is *binding* while someone waits for it or someone
  waited in the last :data:`BINDING_WINDOW_S` seconds; status shows this so
  an operator can tell "slow because throttled" from "slow because the link".
* **Schedule.**  Windows name days, a start and an end in local wall-clock
  time, and a rate; outside every window the default rate applies.  A window
  whose end is not after its start crosses midnight and belongs to the day it
  starts on (``fri 22:00-06:00`` runs Friday night into Saturday morning).
  Overlapping windows are rejected rather than resolved by order: a schedule
  whose meaning depends on list order is a surprise waiting to happen.
* **The loop schedules; a method does the work.**  :meth:`ScheduledLimit.apply`
  reads ``now()`` and sets the global rate; :meth:`ScheduledLimit.run` only
  sleeps until the next change (at most ``max_sleep_s``, so clock jumps,
  suspends and DST shifts are caught) or until the override changes.

Warnings.

* A take cancelled while it waits (the stream goes down, or a background
  chunk gives way to live records) gives back what it was already granted,
  in the migration's bucket as well as the global one.
* With a :class:`ScheduledLimit` running, change the global rate through its
  :meth:`~ScheduledLimit.override`; :meth:`Limiters.set_global` would be
  undone at the next schedule evaluation.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as dtime
from typing import Any, Generic, TypeVar

from liftshift.ctl.units import parse_rate

from .errors import InvalidArgument

CHUNK = 1 << 20  # the replication chunk: the smallest burst is two, so one always fits while one refills
BINDING_WINDOW_S = 1.0  # a limit that made someone wait this recently is "binding"
_MIN_TIMER_S = 0.001  # uvloop timers have millisecond resolution: never arm a shorter one
_EPS = 0.5  # bytes of slack when comparing tokens: float rounding must not leave a waiter short by 1e-9

T = TypeVar("T")


def default_burst(rate_bps: int) -> int:
    """The burst for ``rate_bps``: 1/8 s of it, but at least two :data:`CHUNK` (see the module note)."""
    return max(rate_bps // 8, 2 * CHUNK)


def _check_rate(bps: int) -> int:
    if isinstance(bps, bool) or not isinstance(bps, int) or bps < 0:
        raise InvalidArgument(f"rate {bps!r} is not a non-negative whole number of bytes/s",
                              hint="0 means unlimited")
    return bps


@dataclass(frozen=True)
class BucketStats:
    """What a bucket has done, for status and metrics."""

    rate_bps: int  # 0 = unlimited
    burst: int  # bytes the bucket holds at most
    granted_bytes: int  # all bytes granted so far
    granted_live_bytes: int  # of which live traffic
    waited_s: float  # seconds waiters spent waiting, summed (including those waiting now)
    waiting_live: int  # live takes waiting now
    waiting_background: int  # background takes waiting now
    binding: bool  # someone waits, or waited in the last BINDING_WINDOW_S


class _Waiter(Generic[T]):
    __slots__ = ("ticket", "nbytes", "live", "since")

    def __init__(self, ticket: T, nbytes: int, live: bool, since: float) -> None:
        self.ticket, self.nbytes, self.live, self.since = ticket, nbytes, live, since


class Bucket(Generic[T]):
    """The token bucket as plain state: no clock, no asyncio, no I/O.

    Every method that depends on time takes ``now`` (seconds, monotonic).
    Waiters are opaque tickets; :meth:`poll` says which are granted, in
    order, and when to poll next.
    """

    def __init__(self, rate_bps: int = 0, *, burst: int | None = None, now: float = 0.0) -> None:
        if burst is not None and burst < 1:
            raise InvalidArgument(f"burst {burst!r} is not a positive number of bytes")
        self._fixed_burst = burst
        self.rate_bps = 0
        self.burst = burst or CHUNK
        self._tokens = float(self.burst)
        self._stamp = now
        self._live: deque[_Waiter[T]] = deque()
        self._background: deque[_Waiter[T]] = deque()
        self.granted_bytes = 0
        self.granted_live_bytes = 0
        self._waited_s = 0.0
        self._last_wait = -math.inf
        self.set_rate(rate_bps, now)  # from "unlimited": starts full

    def _refill(self, now: float) -> None:
        if now > self._stamp:  # a clock that steps back refills nothing, rather than draining
            if self.rate_bps:
                self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate_bps)
            self._stamp = now
        if not self.rate_bps:
            self._tokens = float(self.burst)  # unlimited forgives debt: a later limit starts full

    def _need(self, nbytes: int) -> float:
        # What must be in the bucket before nbytes are granted (<= burst, so oversize requests go into debt).
        return 0.0 if not self.rate_bps else float(min(nbytes, self.burst))

    def _grant(self, nbytes: int, live: bool, now: float, since: float | None) -> None:
        if self.rate_bps:
            self._tokens -= nbytes
        self.granted_bytes += nbytes
        if live:
            self.granted_live_bytes += nbytes
        if since is not None:  # it was queued: it waited, if only behind another waiter
            self._waited_s += max(0.0, now - since)
            self._last_wait = now

    def try_take(self, nbytes: int, *, live: bool, now: float) -> bool:
        """Grant ``nbytes`` at once if nobody of equal or higher priority waits and the bucket allows it."""
        if nbytes < 0:
            raise ValueError(f"cannot take {nbytes} bytes")
        self._refill(now)
        ahead = self._live if live else (self._live or self._background)
        if ahead or self._tokens + _EPS < self._need(nbytes):
            return False
        self._grant(nbytes, live, now, None)
        return True

    def enqueue(self, ticket: T, nbytes: int, *, live: bool, now: float) -> None:
        """Queue ``ticket`` for ``nbytes`` behind the waiters of its class (call :meth:`poll` next)."""
        if nbytes < 0:
            raise ValueError(f"cannot take {nbytes} bytes")
        (self._live if live else self._background).append(_Waiter(ticket, nbytes, live, now))

    def cancel(self, ticket: T) -> bool:
        """Forget a queued ticket; False if it is not queued (already granted, or unknown)."""
        for q in (self._live, self._background):
            for w in q:
                if w.ticket is ticket:
                    q.remove(w)
                    return True
        return False

    def refund(self, nbytes: int, *, live: bool) -> None:
        """Give back bytes granted to a taker that then did not use them."""
        self._tokens = min(float(self.burst), self._tokens + nbytes)
        self.granted_bytes -= nbytes
        if live:
            self.granted_live_bytes -= nbytes

    def poll(self, now: float) -> tuple[list[T], float | None]:
        """Grant what can be granted: (tickets granted, in order; when to poll next, or None if nobody waits)."""
        self._refill(now)
        granted: list[T] = []
        while q := self._live or self._background:  # live first: background only while no live waits
            w = q[0]
            need = self._need(w.nbytes)
            if self._tokens + _EPS < need:  # a timer armed for (need - tokens) / rate finds enough
                return granted, now + (need - self._tokens) / self.rate_bps
            q.popleft()
            self._grant(w.nbytes, w.live, now, w.since)
            granted.append(w.ticket)
        return granted, None

    def set_rate(self, rate_bps: int, now: float) -> None:
        """Change the rate (0 = unlimited) from ``now`` on; call :meth:`poll` next to release waiters."""
        _check_rate(rate_bps)
        self._refill(now)  # bytes earned so far are earned at the old rate
        was_unlimited = not self.rate_bps
        self.rate_bps = rate_bps
        self.burst = self._fixed_burst or default_burst(rate_bps)
        # Leaving unlimited starts full (no debt was kept meanwhile); otherwise keep what was earned.
        self._tokens = float(self.burst) if was_unlimited else min(self._tokens, float(self.burst))

    def binding(self, now: float) -> bool:
        """True while someone waits, or if someone waited in the last :data:`BINDING_WINDOW_S` seconds."""
        return bool(self._live or self._background) or now - self._last_wait <= BINDING_WINDOW_S

    def stats(self, now: float) -> BucketStats:
        """A snapshot of rate, totals and waiters."""
        waiting = sum(max(0.0, now - w.since) for q in (self._live, self._background) for w in q)
        return BucketStats(rate_bps=self.rate_bps, burst=self.burst, granted_bytes=self.granted_bytes,
                           granted_live_bytes=self.granted_live_bytes, waited_s=self._waited_s + waiting,
                           waiting_live=len(self._live), waiting_background=len(self._background),
                           binding=self.binding(now))


class TokenBucket:
    """An asyncio rate limiter in bytes/s (0 = unlimited) with live-over-background priority.

    A thin adapter around :class:`Bucket`: one future per waiter, at most one
    timer, armed for when the head waiter can be served.
    """

    def __init__(self, rate_bps: int = 0, *, burst: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._core: Bucket[asyncio.Future[None]] = Bucket(rate_bps, burst=burst, now=clock())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def rate_bps(self) -> int:
        """The current rate in bytes/s; 0 = unlimited."""
        return self._core.rate_bps

    @property
    def burst(self) -> int:
        """The most bytes granted without waiting after a quiet spell."""
        return self._core.burst

    def try_take(self, nbytes: int, *, live: bool) -> bool:
        """Grant ``nbytes`` now if :meth:`take` would not wait (no waiter ahead, enough tokens)."""
        return self._core.try_take(nbytes, live=live, now=self._clock())

    def refund(self, nbytes: int, *, live: bool) -> None:
        """Give back bytes granted to a taker that then did not use them."""
        self._core.refund(nbytes, live=live)
        self._pump()

    async def take(self, nbytes: int, *, live: bool) -> None:
        """Wait until ``nbytes`` may be sent; live takes are served before background ones."""
        core = self._core
        if core.try_take(nbytes, live=live, now=self._clock()):
            return
        self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = self._loop.create_future()
        core.enqueue(fut, nbytes, live=live, now=self._clock())
        self._pump()  # the new waiter may be the head now (a live one jumps the background queue)
        try:
            await fut
        except asyncio.CancelledError:
            if not core.cancel(fut):  # granted just before the cancel arrived: the bytes were not sent
                core.refund(nbytes, live=live)
            self._pump()  # a cancelled head may have been holding others back
            raise

    def set_rate(self, rate_bps: int) -> None:
        """Change the rate at once (0 = unlimited), waking waiters the new rate lets through."""
        self._core.set_rate(rate_bps, self._clock())
        self._pump()

    def binding(self) -> bool:
        """True while someone waits, or waited in the last :data:`BINDING_WINDOW_S` seconds."""
        return self._core.binding(self._clock())

    def stats(self) -> BucketStats:
        """Rate, totals and waiters, now."""
        return self._core.stats(self._clock())

    def _pump(self) -> None:
        granted, next_at = self._core.poll(self._clock())
        for fut in granted:
            if not fut.done():  # a cancelled one refunds itself in take()
                fut.set_result(None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if next_at is not None and self._loop is not None:
            delay = max(next_at - self._clock(), _MIN_TIMER_S)
            self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._pump()


@dataclass(frozen=True)
class LimitStatus:
    """One limit as status shows it."""

    migration_id: str | None  # None for the global limit
    rate_bps: int  # this limit's own rate; 0 = unlimited
    effective_bps: int  # what caps this traffic: the lower of its own and the global rate; 0 = unlimited
    binding: bool
    stats: BucketStats


def _lower(a: int, b: int) -> int:
    return min(a, b) if a and b else a or b


class Limiters:
    """The global bucket plus one bucket per migration that has its own limit.

    A take waits on the migration's bucket, then on the global one.  No
    bucket is held while waiting on another -- tokens only ever refill with
    time -- so any order is deadlock-free; this one keeps a migration that is
    over its own limit from queueing in the global bucket ahead of others.
    """

    def __init__(self, global_bps: int = 0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.global_bucket = TokenBucket(global_bps, clock=clock)
        self._migrations: dict[str, TokenBucket] = {}

    async def take(self, migration_id: str, nbytes: int, *, live: bool) -> None:
        """Wait until ``nbytes`` of ``migration_id`` may be sent under its own limit and the global one."""
        bucket = self._migrations.get(migration_id)
        if bucket is not None:
            await bucket.take(nbytes, live=live)
        try:
            await self.global_bucket.take(nbytes, live=live)
        except asyncio.CancelledError:
            if bucket is not None and self._migrations.get(migration_id) is bucket:
                bucket.refund(nbytes, live=live)  # granted there, never sent
            raise

    def try_take(self, migration_id: str, nbytes: int, *, live: bool) -> bool:
        """Grant ``nbytes`` at once if neither bucket would make the taker wait (the cheap path:
        always true while both are unlimited and nobody waits); False takes nothing."""
        bucket = self._migrations.get(migration_id)
        if bucket is not None and not bucket.try_take(nbytes, live=live):
            return False
        if self.global_bucket.try_take(nbytes, live=live):
            return True
        if bucket is not None:
            bucket.refund(nbytes, live=live)
        return False

    def refund(self, migration_id: str, nbytes: int, *, live: bool) -> None:
        """Give back bytes granted by :meth:`take` or :meth:`try_take` that were then not sent
        (a background chunk found stale after its grant)."""
        bucket = self._migrations.get(migration_id)
        if bucket is not None:
            bucket.refund(nbytes, live=live)
        self.global_bucket.refund(nbytes, live=live)

    def migration_ids(self) -> list[str]:
        """The migrations that have a limit of their own."""
        return sorted(self._migrations)

    def set_global(self, rate_bps: int) -> None:
        """Set the daemon-wide rate (0 = unlimited)."""
        self.global_bucket.set_rate(rate_bps)

    def set_migration(self, migration_id: str, rate_bps: int) -> None:
        """Set one migration's own rate (0 = unlimited; its traffic is still counted)."""
        bucket = self._migrations.get(migration_id)
        if bucket is None:
            self._migrations[migration_id] = TokenBucket(rate_bps, clock=self._clock)
        else:
            bucket.set_rate(rate_bps)

    def drop_migration(self, migration_id: str) -> None:
        """Forget a migration's limit, first releasing anyone still waiting on it."""
        bucket = self._migrations.pop(migration_id, None)
        if bucket is not None:
            bucket.set_rate(0)

    def limits(self) -> list[LimitStatus]:
        """The global limit first, then each migration's, by id."""
        g = self.global_bucket.stats()
        out = [LimitStatus(None, g.rate_bps, g.rate_bps, g.binding, g)]
        for mid in sorted(self._migrations):
            s = self._migrations[mid].stats()
            out.append(LimitStatus(mid, s.rate_bps, _lower(s.rate_bps, g.rate_bps), s.binding, s))
        return out


# ---------------------------------------------------------------------------------------------- schedule

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_MIN = 24 * 60
_WEEK_MIN = 7 * _DAY_MIN
_US_PER_MIN = 60_000_000
_WEEK_US = _WEEK_MIN * _US_PER_MIN
_TIME = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*$")
_KEYS = ("days", "start", "end", "rate")


def parse_rate_value(value: object, field: str) -> int:
    """Bytes/s from a TOML or CLI value: ``"100MB/s"``, ``"50MiB/s"``, an integer, or ``0``/``"unlimited"``
    for no limit.  Anything else raises :class:`InvalidArgument` naming ``field``."""
    if isinstance(value, str) and value.strip().lower() in ("unlimited", "none", "off"):
        return 0
    if isinstance(value, bool):
        pass  # True is an int to Python, not a rate to anyone
    elif isinstance(value, int) and value >= 0:
        return value
    elif isinstance(value, float) and math.isfinite(value) and (value == 0 or value >= 1):
        return int(value)
    elif isinstance(value, str):
        try:
            bps = parse_rate(value)
        except ValueError:
            pass
        else:
            # "0.5" would round to 0 = unlimited: the opposite of what was asked.
            if bps or not re.search(r"[1-9]", value):
                return bps
    raise InvalidArgument(f"{field}: {value!r} is not a rate", hint="e.g. 100MB/s, 50MiB/s, or 0/unlimited for none")


def _parse_day(text: str, field: str, whole: str) -> int:
    t = text.strip().lower()
    if t in DAY_NAMES:
        return DAY_NAMES.index(t)
    if t in _FULL_DAY_NAMES:
        return _FULL_DAY_NAMES.index(t)
    raise InvalidArgument(f"{field}: {whole!r} is not a set of days ({text.strip()!r} is not a day)",
                          hint="e.g. mon-fri, sat,sun, daily")


def _parse_days(value: object, field: str) -> frozenset[int]:
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = ",".join(value)
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"{field}: {value!r} is not a set of days", hint="e.g. mon-fri, sat,sun, daily")
    if value.strip().lower() in ("daily", "*"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in value.split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            i, j = _parse_day(a, field, value), _parse_day(b, field, value)
            days.update((i + k) % 7 for k in range((j - i) % 7 + 1))  # fri-mon wraps over the weekend
        else:
            days.add(_parse_day(part, field, value))
    return frozenset(days)


def _parse_time(value: object, field: str, *, end: bool) -> int:
    if isinstance(value, dtime) and not (value.second or value.microsecond):
        return value.hour * 60 + value.minute  # TOML's unquoted local time, start = 08:00:00
    m = _TIME.match(value) if isinstance(value, str) else None
    if m:
        minutes = int(m.group(1)) * 60 + int(m.group(2))
        if (int(m.group(1)) < 24 and int(m.group(2)) < 60) or (end and minutes == _DAY_MIN):
            return minutes
    hint = "00:00 to 23:59" + (", or 24:00 for the end of the day" if end else "")
    raise InvalidArgument(f"{field}: {value!r} is not a time of day HH:MM", hint=hint)


def _fmt_time(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _fmt_days(days: frozenset[int]) -> str:
    if len(days) == 7:
        return "daily"
    runs: list[str] = []
    ds = sorted(days)
    i = 0
    while i < len(ds):
        j = i
        while j + 1 < len(ds) and ds[j + 1] == ds[j] + 1:
            j += 1
        sep = "-" if j - i >= 2 else ","  # mon-fri, but sat,sun
        runs.append(DAY_NAMES[ds[i]] if i == j else f"{DAY_NAMES[ds[i]]}{sep}{DAY_NAMES[ds[j]]}")
        i = j + 1
    return ",".join(runs)


def _fmt_spec_rate(bps: int) -> str:
    # Exact, so that parse_spec(schedule.spec()) gives the same schedule back.
    if not bps:
        return "unlimited"
    for unit, factor in (("TiB", 1 << 40), ("TB", 10**12), ("GiB", 1 << 30), ("GB", 10**9), ("MiB", 1 << 20),
                         ("MB", 10**6), ("KiB", 1 << 10), ("KB", 10**3)):
        if bps % factor == 0:
            return f"{bps // factor}{unit}/s"
    return f"{bps}/s"


@dataclass(frozen=True)
class Window:
    """Days, a start and an end in local wall-clock time, and the rate in force meanwhile."""

    days: frozenset[int]  # 0 = Monday ... 6 = Sunday: the days the window *starts* on
    start: int  # minutes after midnight, 0..1439
    end: int  # minutes after midnight, 1..1440; not after start = crosses midnight into the next day
    rate_bps: int  # 0 = unlimited

    def spans(self) -> list[tuple[int, int]]:
        """The minutes of the week ``[a, b)`` this window covers (a span past Sunday midnight is split)."""
        out: list[tuple[int, int]] = []
        for d in sorted(self.days):
            a = d * _DAY_MIN + self.start
            b = d * _DAY_MIN + self.end + (0 if self.end > self.start else _DAY_MIN)
            out.extend([(a, _WEEK_MIN), (0, b - _WEEK_MIN)] if b > _WEEK_MIN else [(a, b)])
        return out

    def describe(self) -> str:
        """``mon-fri 08:00-18:00 100MB/s`` (what :meth:`Schedule.parse_spec` reads)."""
        return f"{_fmt_days(self.days)} {_fmt_time(self.start)}-{_fmt_time(self.end)} {_fmt_spec_rate(self.rate_bps)}"


def _week_us(dt: datetime) -> int:
    return ((dt.weekday() * _DAY_MIN + dt.hour * 60 + dt.minute) * 60 + dt.second) * 1_000_000 + dt.microsecond


class Schedule:
    """A weekly throttle schedule: non-overlapping windows, and a default rate outside them (0 = unlimited)."""

    def __init__(self, windows: Sequence[Window] = (), default_bps: int = 0, *,
                 field: str = "throttle.schedule") -> None:
        self.windows = tuple(windows)
        self.default_bps = _check_rate(default_bps)
        seen: list[tuple[int, int, int]] = []  # (first minute, end minute, index) of the windows so far
        for j, w in enumerate(self.windows):
            if w.start == w.end:
                raise InvalidArgument(f"{field}[{j}]: start and end are both {_fmt_time(w.start)}",
                                      hint="a window needs a length; 00:00-24:00 is the whole day")
            for a, b in w.spans():
                for c, d, i in seen:
                    if a < d and c < b:
                        at = max(a, c)
                        raise InvalidArgument(
                            f"{field}[{j}]: {w.describe()!r} overlaps {field}[{i}] {self.windows[i].describe()!r} "
                            f"on {DAY_NAMES[at // _DAY_MIN]} at {_fmt_time(at % _DAY_MIN)}",
                            hint="windows must not overlap; split or shorten one")
            seen.extend((a, b, j) for a, b in w.spans())
        self._spans = [(a * _US_PER_MIN, b * _US_PER_MIN, self.windows[i]) for a, b, i in seen]

    @classmethod
    def parse(cls, items: object, field: str = "throttle.schedule", default_bps: int = 0) -> Schedule:
        """A schedule from a list of tables as loaded from TOML, e.g.
        ``[{days = "mon-fri", start = "08:00", end = "18:00", rate = "100MB/s"}]``.

        ``days`` is optional (daily); errors name the item and key, e.g. ``throttle.schedule[1].start``.
        """
        if not isinstance(items, list):
            raise InvalidArgument(f"{field}: expected a list of tables, got {type(items).__name__}")
        windows = []
        for i, item in enumerate(items):
            at = f"{field}[{i}]"
            if not isinstance(item, Mapping):
                raise InvalidArgument(f"{at}: expected a table with {', '.join(_KEYS)}, got {type(item).__name__}")
            unknown = sorted(set(item) - set(_KEYS))
            if unknown:
                raise InvalidArgument(f"{at}.{unknown[0]}: unknown key", hint=f"the keys are {', '.join(_KEYS)}")
            for key in ("start", "end", "rate"):
                if key not in item:
                    raise InvalidArgument(f"{at}.{key}: missing")
            windows.append(Window(days=_parse_days(item.get("days", "daily"), f"{at}.days"),
                                  start=_parse_time(item["start"], f"{at}.start", end=False),
                                  end=_parse_time(item["end"], f"{at}.end", end=True),
                                  rate_bps=parse_rate_value(item["rate"], f"{at}.rate")))
        return cls(windows, default_bps, field=field)

    @classmethod
    def parse_spec(cls, text: str, field: str = "schedule", default_bps: int = 0) -> Schedule:
        """A schedule from the CLI form ``"mon-fri 08:00-18:00 100MB/s; sat,sun 10:00-16:00 1GB/s"``.

        Windows are separated by ``;``; the days may be left out (daily); ``default RATE`` as one of the
        entries sets the rate outside every window.
        """
        items: list[dict[str, Any]] = []
        default: object = default_bps
        for n, part in enumerate(p.strip() for p in text.split(";")):
            words = part.split()
            if len(words) == 2 and words[0].lower() == "default":
                default = words[1]
                continue
            if len(words) not in (2, 3) or words[-2].count("-") != 1 or ":" not in words[-2]:
                raise InvalidArgument(f"{field}[{n}]: {part!r} is not a window",
                                      hint="DAYS HH:MM-HH:MM RATE, e.g. 'mon-fri 08:00-18:00 100MB/s'")
            start, end = words[-2].split("-")
            item = {"start": start, "end": end, "rate": words[-1]}
            if len(words) == 3:
                item["days"] = words[0]
            items.append(item)
        default_bps = parse_rate_value(default, f"{field}.default")
        return cls.parse(items, field, default_bps)

    def spec(self) -> str:
        """The schedule in the form :meth:`parse_spec` reads."""
        parts = [w.describe() for w in self.windows]
        if self.default_bps:
            parts.append(f"default {_fmt_spec_rate(self.default_bps)}")
        return "; ".join(parts)

    def window_at(self, dt: datetime) -> Window | None:
        """The window in force at ``dt`` (its local wall-clock time), or None."""
        return self._window_at_us(_week_us(dt))

    def _window_at_us(self, t: int) -> Window | None:
        return next((w for a, b, w in self._spans if a <= t < b), None)

    def rate_at(self, dt: datetime) -> int:
        """The rate in force at ``dt`` in bytes/s; 0 = unlimited."""
        w = self.window_at(dt)
        return self.default_bps if w is None else w.rate_bps

    def next_change(self, dt: datetime) -> datetime | None:
        """The first time after ``dt`` at which the rate differs from the rate at ``dt``; None if it never does.

        Computed in wall-clock time: across a DST shift it is off by the shift, which
        :class:`ScheduledLimit` absorbs by re-checking at least every ``max_sleep_s``.
        """
        t = _week_us(dt)
        cur = self.rate_at(dt)
        bounds = sorted({a for a, _, _ in self._spans} | {b % _WEEK_US for _, b, _ in self._spans})
        for week in (0, _WEEK_US):
            for b in bounds:
                x = b + week
                if t < x <= t + _WEEK_US:
                    w = self._window_at_us(x % _WEEK_US)
                    if (self.default_bps if w is None else w.rate_bps) != cur:
                        return dt + timedelta(microseconds=x - t)
        return None


# ---------------------------------------------------------------------------------------------- glue


@dataclass(frozen=True)
class ThrottleState:
    """The global rate in force and why."""

    rate_bps: int  # 0 = unlimited
    source: str  # "manual" (an override), "schedule" (inside a window) or "default" (outside every window)
    window: Window | None  # the window in force, for "schedule"
    next_change: datetime | None  # when the schedule next changes the rate; None under an override or if never


class ScheduledLimit:
    """Applies a :class:`Schedule` to the global bucket of a :class:`Limiters`, unless overridden by hand.

    ``now`` returns local wall-clock time (``datetime.now`` by default); tests pass their own.
    """

    def __init__(self, limiters: Limiters, schedule: Schedule | None = None, *,
                 now: Callable[[], datetime] = datetime.now, max_sleep_s: float = 60.0) -> None:
        self.limiters = limiters
        self.schedule = schedule or Schedule()
        self._now = now
        self.max_sleep_s = max_sleep_s
        self._override: int | None = None
        self._changed = asyncio.Event()
        self.state = self.apply()

    @property
    def override_bps(self) -> int | None:
        """The manual rate in force instead of the schedule; None when the schedule rules."""
        return self._override

    def apply(self) -> ThrottleState:
        """Evaluate the override or schedule now and set the global rate accordingly."""
        now = self._now()
        if self._override is not None:
            state = ThrottleState(self._override, "manual", None, None)
        else:
            w = self.schedule.window_at(now)
            state = ThrottleState(self.schedule.rate_at(now), "default" if w is None else "schedule", w,
                                  self.schedule.next_change(now))
        if state.rate_bps != self.limiters.global_bucket.rate_bps:
            self.limiters.set_global(state.rate_bps)
        self.state = state
        return state

    def override(self, rate_bps: int | None) -> ThrottleState:
        """Set the global rate by hand until cleared with None (then the schedule rules again)."""
        self._override = None if rate_bps is None else _check_rate(rate_bps)
        self._changed.set()  # the loop recomputes its sleep
        return self.apply()

    def set_schedule(self, schedule: Schedule) -> ThrottleState:
        """Replace the schedule (e.g. on reload) and apply it now."""
        self.schedule = schedule
        self._changed.set()
        return self.apply()

    def seconds_to_next(self) -> float:
        """How long :meth:`run` sleeps: until the next change, at most ``max_sleep_s``, at least 10 ms."""
        nxt = self.state.next_change
        if nxt is None:
            return self.max_sleep_s
        return min(self.max_sleep_s, max(0.01, (nxt - self._now()).total_seconds()))

    async def run(self) -> None:
        """Apply the schedule at every change until cancelled."""
        while True:
            self._changed.clear()
            self.apply()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.seconds_to_next()):
                    await self._changed.wait()

