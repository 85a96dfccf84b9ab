"""Verification rounds just before a cutover stops the VM (no I/O): each round
proves what is pending, the next what the guest wrote meanwhile, until nothing
is left or a round no longer halves it."""

from __future__ import annotations

from collections.abc import Callable

from liftshift.daemon import cutover
from liftshift.daemon.verifymap import VerifyMap

CHUNK = 256 << 10


class Guest:
    """Stands in for the replicator: every chunk matches, and while a round's
    hashes are computed the guest writes the chunks ``writes(round)`` names."""

    def __init__(self, vmap: VerifyMap, writes: Callable[[int], list[int]]) -> None:
        self.vmap, self.writes, self.calls, self.asked = vmap, writes, 0, []

    async def mismatched(self, ranges: list[tuple[int, int]], chunk: int) -> list[tuple[int, int]]:
        self.asked.append(sum(n for _, n in ranges) // chunk)
        for c in self.writes(self.calls):
            self.vmap.touched(c * chunk, 4096)
        self.calls += 1
        return []


def proven(n: int) -> VerifyMap:
    vmap = VerifyMap(n * CHUNK, CHUNK)
    for c in vmap.next_unverified(n):
        assert vmap.confirm(c, vmap.begin([c])[0])
    return vmap


async def test_rounds_shrink_what_is_left_for_the_downtime() -> None:
    vmap = proven(1000)
    for c in range(0, 800):  # the guest rewrote most of its hot set since the last proof
        vmap.touched(c * CHUNK, 4096)
    guest = Guest(vmap, lambda k: list(range(900, 900 + [60, 6, 0][k])))
    rounds = await cutover.verify_before_stopping(guest, vmap)  # type: ignore[arg-type]
    assert rounds == 3 and guest.asked == [800, 60, 6]
    assert vmap.pending() == []


async def test_rounds_stop_when_the_guest_rewrites_as_fast_as_they_prove() -> None:
    vmap = proven(100)
    for c in range(50):
        vmap.touched(c * CHUNK, 4096)
    guest = Guest(vmap, lambda k: list(range(40)))  # most of it written again during each round
    assert await cutover.verify_before_stopping(guest, vmap) == 1  # type: ignore[arg-type]
    assert vmap.pending_count() == 40  # left to the cutover's own verification


async def test_nothing_pending_means_no_round() -> None:
    vmap = proven(10)
    guest = Guest(vmap, lambda k: [])
    assert await cutover.verify_before_stopping(guest, vmap) == 0  # type: ignore[arg-type]
    assert guest.asked == []
