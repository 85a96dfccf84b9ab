"""The migration monitor names a tick that does not end in time, with where it waits, and goes on."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest

from liftshift.daemon import migrations
from liftshift.daemon.migrations import Migrations


async def test_a_stuck_tick_is_named_in_the_log_and_the_loop_goes_on(monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(migrations, "TICK_WARN_S", 0.2)
    release = asyncio.Event()
    ticks: list[int] = []
    fake = SimpleNamespace(_stopping=False, cfg=SimpleNamespace(progress_interval_ms=10))

    async def waits_for_a_lock_someone_holds() -> None:
        await release.wait()

    async def tick() -> None:
        ticks.append(len(ticks))
        if len(ticks) == 1:
            await waits_for_a_lock_someone_holds()
        elif len(ticks) == 3:
            fake._stopping = True

    fake.tick = tick
    caplog.set_level(logging.WARNING, logger="liftshift.daemon.migrations")
    loop = asyncio.ensure_future(Migrations.run(fake))  # type: ignore[arg-type]
    await asyncio.sleep(0.5)
    assert ticks == [0]  # the first tick is still waiting: no second one overlaps it
    warned = [r.getMessage() for r in caplog.records if "a tick has run for" in r.getMessage()]
    assert len(warned) == 1 and "waits_for_a_lock_someone_holds" in warned[0], warned
    release.set()
    await asyncio.wait_for(loop, 5)
    assert ticks == [0, 1, 2]


async def test_a_cancelled_error_from_inside_a_tick_does_not_end_the_monitor(caplog: pytest.LogCaptureFixture) -> None:
    """grpc.aio ends a call with CancelledError when its channel is closed (a
    replicator paused under a preverification): the monitor logs it and goes on;
    cancelling the monitor itself still ends it."""
    ticks: list[int] = []
    fake = SimpleNamespace(_stopping=False, cfg=SimpleNamespace(progress_interval_ms=10))

    async def tick() -> None:
        ticks.append(len(ticks))
        if len(ticks) == 1:
            raise asyncio.CancelledError()

    fake.tick = tick
    caplog.set_level(logging.ERROR, logger="liftshift.daemon.migrations")
    loop = asyncio.ensure_future(Migrations.run(fake))  # type: ignore[arg-type]
    deadline = asyncio.get_running_loop().time() + 5
    while len(ticks) < 3:
        assert asyncio.get_running_loop().time() < deadline, ticks
        await asyncio.sleep(0.01)
    assert not loop.done()
    assert any("a tick was cancelled from inside" in r.getMessage() for r in caplog.records)
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop
