"""The verification map (no I/O): a chunk it calls verified is identical once drained.

The model: each chunk of the source has a version; a guest write bumps it
(the source changes at once, the shadow only when the write is shipped and
applied); verification reads the two sides at arbitrary moments, with
ships and applies interleaved.  After the source stops and everything is
shipped and applied, every chunk the map still calls verified must hold the
same version on both sides -- even when some shipped writes are lost on the
way (a sink that acknowledges but never applies them: what verification is
there to catch).
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from liftshift.daemon.verifymap import VerifyMap

CHUNKS = 3
CHUNK = 1 << 20

# An action: ("write", c) guest writes chunk c; ("ship", i) ships the i-th
# unshipped write; ("apply", i) applies the i-th shipped write at the sink;
# ("verify", c, order) verifies chunk c with the sides read in some order
# and other actions happening in between (ships at the steps below).
simple = st.one_of(
    st.tuples(st.just("write"), st.integers(0, CHUNKS - 1)),
    st.tuples(st.just("ship"), st.integers(0, 5)),
    st.tuples(st.just("lose"), st.integers(0, 5)),
    st.tuples(st.just("apply"), st.integers(0, 5)),
)
actions = st.lists(
    st.one_of(simple, st.tuples(st.just("verify"), st.integers(0, CHUNKS - 1), st.booleans(),
                                st.lists(simple, max_size=4))),
    max_size=60,
)


@settings(max_examples=1000, deadline=None)
@given(actions)
# A write reaches the source and is shipped (then lost) between the two reads.
@example([("verify", 0, True, [("write", 0), ("lose", 0)])])
def test_verified_chunks_are_identical_after_drain(script: list[tuple]) -> None:
    vmap = VerifyMap(CHUNKS * CHUNK, CHUNK)
    source = [0] * CHUNKS
    shadow = [0] * CHUNKS
    unshipped: list[tuple[int, int]] = []  # (chunk, version) written to the source, not shipped
    shipped: list[tuple[int, int]] = []  # shipped, not yet applied (applied in order)

    def ship(i: int) -> None:
        if unshipped:
            # Records ship in ring order: only the oldest can go.
            c, ver = unshipped.pop(0)
            vmap.touched(c * CHUNK, 4096)
            shipped.append((c, ver))

    def apply(i: int) -> None:
        if shipped:
            c, ver = shipped.pop(0)
            shadow[c] = ver

    def do(act: tuple) -> None:
        if act[0] == "write":
            c = act[1]
            source[c] += 1
            unshipped.append((c, source[c]))
        elif act[0] == "ship":
            ship(act[1])
        elif act[0] == "apply":
            apply(act[1])
        elif act[0] == "lose":
            if unshipped:
                c, _ = unshipped.pop(0)
                vmap.touched(c * CHUNK, 4096)  # shipped, never applied

    for act in script:
        if act[0] != "verify":
            do(act)
            continue
        # Verification reads one side, other things happen, then the other side.
        _, c, source_first, between = act
        (g0,) = vmap.begin([c])
        first = source[c] if source_first else shadow[c]
        for a in between:
            do(a)
        second = shadow[c] if source_first else source[c]
        if first == second:
            vmap.confirm(c, g0)
    # The source stops; cutover drains everything.
    while unshipped:
        ship(0)
    while shipped:
        apply(0)
    for c in range(CHUNKS):
        if vmap.is_verified(c):
            assert source[c] == shadow[c], f"chunk {c} called verified but differs"
    pending = set(vmap.pending())
    assert pending == {c for c in range(CHUNKS) if not vmap.is_verified(c)}


def test_rewritten_chunks_are_reverified_first() -> None:
    vmap = VerifyMap(100 * CHUNK, CHUNK)
    for c in vmap.next_unverified(100):
        vmap.confirm(c, vmap.begin([c])[0])
    assert vmap.pending() == []
    vmap.touched(57 * CHUNK + 10, 10)
    vmap.touched(3 * CHUNK, 2 * CHUNK)  # spans chunks 3 and 4
    assert vmap.pending() == [3, 4, 57]
    first = vmap.next_unverified(2)
    assert first == [57, 3]
    for c, g in zip(first, vmap.begin(first), strict=True):
        assert vmap.confirm(c, g)
    assert vmap.next_unverified(5) == [4]
    # A touch between begin and confirm voids the verification.
    (g,) = vmap.begin([4])
    vmap.touched(4 * CHUNK, 1)
    assert not vmap.confirm(4, g)
    assert vmap.pending() == [4]


def test_runs_merge_adjacent_chunks_and_clip_the_tail() -> None:
    vmap = VerifyMap(5 * CHUNK + 4096, CHUNK)
    assert vmap.chunks == 6
    assert vmap.runs([5, 0, 1, 3]) == [(0, 2 * CHUNK), (3 * CHUNK, CHUNK), (5 * CHUNK, 4096)]


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 40), st.lists(st.tuples(st.integers(0, 39), st.booleans()), max_size=40),
       st.integers(1, 12))
def test_next_unverified_hands_out_every_pending_chunk(n: int, ops: list[tuple[int, bool]], limit: int) -> None:
    """Never-verified chunks first, then re-written ones; verifying what is handed
    out proves every pending chunk within a bounded number of calls."""
    vmap = VerifyMap(n * CHUNK, CHUNK)
    for c, verify in ops:
        c %= n
        if verify:
            vmap.confirm(c, vmap.begin([c])[0])
        else:
            vmap.touched(c * CHUNK, 1)
    pending = set(vmap.pending())
    assert vmap.verified_count() == n - len(pending) and vmap.pending_count() == len(pending)
    never = {c for c in pending if c not in vmap._recent}
    seen: set[int] = set()
    for _ in range(-(-len(pending) // limit)):
        got = vmap.next_unverified(limit)
        assert len(got) == len(set(got)) == min(limit, len(pending - seen))
        assert set(got) <= pending - seen
        if never - seen:  # the first pass comes first
            assert set(got) <= never or never <= seen | set(got)
        for c, g in zip(got, vmap.begin(got), strict=True):
            assert vmap.confirm(c, g)
        seen |= set(got)
    assert seen == pending and vmap.pending() == []


def test_a_rewritten_chunk_waits_until_the_guest_leaves_it_alone() -> None:
    vmap = VerifyMap(10 * CHUNK, CHUNK)
    for c in vmap.next_unverified(10):
        vmap.confirm(c, vmap.begin([c])[0])
    assert vmap.first_pass_done()
    vmap.touched(2 * CHUNK, 1, now=100.0)
    vmap.touched(7 * CHUNK, 1, now=100.5)
    vmap.touched(5 * CHUNK, 1, now=101.0)
    assert vmap.next_unverified(10, quiet_s=1.0, now=101.2) == [2]
    assert vmap.next_unverified(10, quiet_s=1.0, now=101.6) == [2, 7]
    vmap.touched(2 * CHUNK, 1, now=101.7)  # written again: back to the end of the line
    assert vmap.next_unverified(10, quiet_s=1.0, now=102.1) == [7, 5]
    assert vmap.next_unverified(10, quiet_s=1.0, now=103.0) == [7, 5, 2]
    assert vmap.next_unverified(2, quiet_s=0.0, now=101.7) == [7, 5]  # quiet 0: everything, oldest first
    (g,) = vmap.begin([7])
    assert vmap.confirm(7, g)
    assert vmap.next_unverified(10, quiet_s=1.0, now=103.0) == [5, 2]
    assert vmap.pending() == [2, 5]


def test_never_verified_chunks_come_before_rewritten_ones() -> None:
    vmap = VerifyMap(6 * CHUNK, CHUNK)
    for c in (0, 1, 2):
        vmap.confirm(c, vmap.begin([c])[0])
    vmap.touched(1 * CHUNK, 1, now=1.0)
    assert vmap.next_unverified(2, now=50.0) == [3, 4]
    assert vmap.next_unverified(2, now=50.0) == [5, 3]  # round-robin over the first pass
    for c in (3, 4, 5):
        vmap.confirm(c, vmap.begin([c])[0])
    assert vmap.first_pass_done()
    assert vmap.next_unverified(2, now=50.0) == [1]
