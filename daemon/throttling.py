"""The daemon's replication rate limits: what ``liftshift throttle`` changes.

Design note
-----------
One :class:`~liftshift.daemon.throttle.Limiters` per daemon: every
replicator takes its frames' bytes from it (live frames first, see
:mod:`liftshift.daemon.vdisk`).  The global rate comes from the schedule in
``[throttle]`` (``rate`` outside the windows) unless a rate was set by hand;
a migration may have a rate of its own on top.

What a person sets by hand survives a restart: the global override and each
migration's rate are stored in daemon.db and applied again at start-up, until
cleared.  The schedule is configuration: ``throttle set --schedule`` replaces
it in the running daemon only, and a restart or SIGHUP brings back the
file's.  A migration's own limit is dropped once the migration is completed,
aborted or rolled back (checked every :data:`SWEEP_S`).

Every change is checked completely before anything is applied (see
:meth:`Throttling.check_rate`), so a refused request changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime

from .errors import InvalidArgument
from .settings import ThrottleConfig
from .state import StateStore
from .throttle import Limiters, LimitStatus, Schedule, ScheduledLimit, ThrottleState, parse_rate_value

log = logging.getLogger("liftshift.daemon.throttling")

SWEEP_S = 1.0  # how often limits of finished migrations are dropped
_GLOBAL_KEY = "rate"
_MIGRATION_PREFIX = "migration/"


def schedule_of(cfg: ThrottleConfig) -> Schedule:
    """The configured schedule, ``throttle.rate`` outside its windows (validated at load already)."""
    return Schedule.parse(cfg.schedule, field="throttle.schedule",
                          default_bps=parse_rate_value(cfg.rate, "throttle.rate"))


class Throttling:
    """The limiters, the schedule that drives the global rate, and the limits set by hand."""

    def __init__(self, cfg: ThrottleConfig, store: StateStore, *, now: Callable[[], datetime] = datetime.now,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.limiters = Limiters(clock=clock)
        self.scheduled = ScheduledLimit(self.limiters, schedule_of(cfg), now=now)
        self._now = now
        # Set by the daemon: whether a migration id names one that is not finished.
        self.active: Callable[[str], bool] = lambda mid: True
        self._task: asyncio.Task[None] | None = None
        saved = store.load_throttles(_GLOBAL_KEY)
        if _GLOBAL_KEY in saved:
            self.scheduled.override(int(json.loads(saved[_GLOBAL_KEY])["rate_bps"]))
        for key, body in store.load_throttles(_MIGRATION_PREFIX).items():
            self.limiters.set_migration(key.removeprefix(_MIGRATION_PREFIX), int(json.loads(body)["rate_bps"]))

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Start following the schedule (and dropping limits of finished migrations)."""
        self.sweep()  # limits of migrations that finished while the daemon was down
        state = self.scheduled.apply()
        log.info("replication rate limit: %s", describe_state(state))
        self._task = asyncio.create_task(self._run(), name="throttling")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        sweeper = asyncio.create_task(self._sweep_loop(), name="throttling-sweep")
        try:
            await self.scheduled.run()
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                self.sweep()
            except Exception:  # the loop must outlive a broken lookup
                log.exception("dropping limits of finished migrations")

    def sweep(self) -> None:
        """Drop the limits of migrations that are finished (or gone)."""
        for mid in self.limiters.migration_ids():
            if not self.active(mid):
                self.set_migration(mid, None)
                log.info("migration %s finished: its replication rate limit is dropped", mid)

    def reload(self, cfg: ThrottleConfig) -> None:
        """SIGHUP: the configured schedule (and rate outside it) replace the running one."""
        state = self.scheduled.set_schedule(schedule_of(cfg))
        log.info("reloaded [throttle]: %s", describe_state(state))

    # -- changes (checked by the caller first) ----------------------------------

    def set_global(self, rate_bps: int | None) -> ThrottleState:
        """A global rate by hand (0 = unlimited, whatever the schedule says), or None: the schedule again."""
        self.store.save_throttle(_GLOBAL_KEY, None if rate_bps is None else json.dumps({"rate_bps": rate_bps}))
        state = self.scheduled.override(rate_bps)
        log.info("replication rate limit set by hand: %s", describe_state(state))
        return state

    def set_migration(self, mid: str, rate_bps: int | None) -> None:
        """A migration's own rate (None or 0: none of its own)."""
        key = _MIGRATION_PREFIX + mid
        if rate_bps:
            self.store.save_throttle(key, json.dumps({"rate_bps": rate_bps}))
            self.limiters.set_migration(mid, rate_bps)
        else:
            self.store.save_throttle(key, None)
            self.limiters.drop_migration(mid)

    def set_schedule(self, schedule: Schedule) -> ThrottleState:
        """Replace the schedule in the running daemon (the file's comes back at restart or SIGHUP)."""
        state = self.scheduled.set_schedule(schedule)
        log.info("replication schedule replaced: %r; %s", schedule.spec() or "(none)", describe_state(state))
        return state

    def parse_schedule(self, text: str) -> Schedule:
        """The CLI form of a schedule; ``-`` removes every window.  Without a ``default RATE`` entry the
        rate outside the windows stays what it is."""
        default = self.scheduled.schedule.default_bps
        if text.strip() == "-":
            return Schedule((), default)
        return Schedule.parse_spec(text, field="schedule", default_bps=default)

    # -- reporting ----------------------------------------------------------------

    def limits(self) -> list[LimitStatus]:
        return self.limiters.limits()

    def next_change_at(self) -> float:
        """Unix time of the schedule's next change of the global rate (0: none, or overridden)."""
        nxt = self.scheduled.state.next_change
        if nxt is None:
            return 0.0
        # Through the injected clock (tests run it with an offset), to the second: the two clocks are
        # read microseconds apart, and 17:59:59.99998 would show as 17:59.
        return float(round(time.time() + (nxt - self._now()).total_seconds()))


def describe_state(state: ThrottleState) -> str:
    rate = "unlimited" if not state.rate_bps else f"{state.rate_bps} bytes/s"
    if state.source == "manual":
        return f"{rate}, set by hand"
    why = f"window {state.window.describe()!r}" if state.window is not None else "outside every window"
    return f"{rate} ({why})"


def check_rate(value: int, field: str) -> int:
    """A rate from a request: a whole number of bytes/s, not negative (0 = unlimited)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"{field}: {value!r} is not a rate in bytes/s", hint="0 means unlimited")
    return value
