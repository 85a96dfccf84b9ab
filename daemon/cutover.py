"""Cutover of one VM, and the verification it rests on (DESIGN.md invariant 5).

Design note
-----------
The steps, each timed, each announced as an event:

1. once every vdisk has a session with the sink (its shadow exists
   there), define the VM at the destination, and verify the chunks still
   pending one last time (both before the stop: not downtime);
2. **stop** the source VM through the platform; its rings end with CLOSE;
3. **drain**: wait until every vdisk's CLOSE barrier is durable at the sink
   and nothing is left to read or ship;
4. **verify**: compare by XXH3-128 every chunk that is not already proven
   identical (:mod:`liftshift.daemon.verifymap`: chunks verified while the
   VM ran and not written since are not read again, so the downtime does
   not grow with disk size); re-send mismatching chunks and compare again;
5. **power on** the VM at the destination.

Downtime is measured from the stop to the power-on.  The source VM and its
disks are left untouched, so a failed cutover can be rolled back by powering
the source on again.

:func:`preverify` is what runs ahead of cutover, a few chunks at a time, for
converged VMs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from .errors import FailedPrecondition, LiftshiftError
from .platform import Platform, ShadowDisk
from .vdisk import VdiskReplicator
from .verifymap import VerifyMap

MAX_ROUNDS = 3
PRE_STOP_CHUNKS = 8192  # at most this many pending chunks are verified just before the stop
PRE_STOP_ROUNDS = 5  # rounds of that, each over what the guest wrote during the previous one
_HASH_BATCH = 4096  # chunks per HashRanges call


@dataclass
class VerifyResult:
    """Outcome of verifying one vdisk at cutover."""

    identical: bool
    hashed: int  # chunks hashed now
    preverified: int  # chunks proven earlier and not written since
    repaired: int


async def _compare(r: VdiskReplicator, vmap: VerifyMap, chunks: list[int]) -> list[int]:
    """Hash ``chunks`` on both sides; confirm the equal ones; return the others."""
    bad: list[int] = []
    for i in range(0, len(chunks), _HASH_BATCH):
        part = chunks[i : i + _HASH_BATCH]
        gens = dict(zip(part, vmap.begin(part), strict=True))
        mismatched = {off // vmap.chunk for off, _ in await r.mismatched(vmap.runs(part), vmap.chunk)}
        for c in part:
            if c in mismatched or not vmap.confirm(c, gens[c]):
                bad.append(c)
    return bad


async def preverify(r: VdiskReplicator, vmap: VerifyMap, max_chunks: int, quiet_s: float = 0.0) -> int:
    """Verify up to ``max_chunks`` unverified chunks while the VM runs (re-written
    ones once quiet for ``quiet_s``); returns how many were proven."""
    chunks = vmap.next_unverified(max_chunks, quiet_s)
    if not chunks:
        return 0
    bad = await _compare(r, vmap, chunks)
    return len(chunks) - len(bad)


async def verify_before_stopping(r: VdiskReplicator, vmap: VerifyMap) -> int:
    """Rounds of verification while the VM still runs, so that what is left for
    the downtime is only what the guest writes during the last round: each round
    proves what is pending, the next one what was written meanwhile, until
    nothing is left, a round no longer halves what is left (the guest rewrites
    as fast as it is proven) or PRE_STOP_ROUNDS.  Returns the rounds run."""
    left = vmap.pending_count()
    rounds = 0
    while 0 < left <= PRE_STOP_CHUNKS and rounds < PRE_STOP_ROUNDS:
        rounds += 1
        try:
            await preverify(r, vmap, left)
        except (LiftshiftError, grpc.RpcError):
            break  # the cutover's own verification covers these chunks
        now_left = vmap.pending_count()
        if now_left > left // 2:
            break
        left = now_left
    return rounds


async def wait_connected(replicators: list[VdiskReplicator], timeout: float) -> None:
    """Until every vdisk has a session with the sink: its shadow exists there (OpenVdisk)."""
    deadline = time.monotonic() + timeout
    while not all(r.stats.connected for r in replicators):
        if time.monotonic() > deadline:
            late = [r.spec.vdisk_id for r in replicators if not r.stats.connected]
            errors = "; ".join(f"{r.spec.vdisk_id}: {r.stats.last_error}" for r in replicators if r.stats.last_error)
            raise FailedPrecondition(f"vdisks {', '.join(late)} have no session with the sink after {timeout:.0f}s"
                                     + (f" ({errors})" if errors else ""),
                                     hint="check the sink and the link, then retry the cutover")
        await asyncio.sleep(0.01)


async def wait_closed_and_drained(replicators: list[VdiskReplicator], timeout: float) -> None:
    """Until every vdisk's CLOSE barrier is durable and nothing is left to ship."""
    deadline = time.monotonic() + timeout
    while not all(r.stats.closed and r.drained() for r in replicators):
        if time.monotonic() > deadline:
            late = [r.spec.vdisk_id for r in replicators if not (r.stats.closed and r.drained())]
            errors = "; ".join(f"{r.spec.vdisk_id}: {r.stats.last_error}" for r in replicators if r.stats.last_error)
            raise FailedPrecondition(f"vdisks {', '.join(late)} did not drain within {timeout:.0f}s"
                                     + (f" ({errors})" if errors else ""),
                                     hint="check the sink and the link, then retry the cutover (the source VM "
                                          "stays stopped)")
        await asyncio.sleep(0.001)  # in the downtime: poll tightly, it lasts milliseconds


async def verify_at_cutover(r: VdiskReplicator, vmap: VerifyMap, timeout: float) -> VerifyResult:
    """Prove the stopped, drained vdisk identical; re-send what differs."""
    pending = vmap.pending()
    pre = vmap.chunks - len(pending)
    hashed = len(pending)
    bad = await _compare(r, vmap, pending)
    repaired = 0
    rounds = 1
    while bad and rounds < MAX_ROUNDS:
        rounds += 1
        r.repair(vmap.runs(bad))
        repaired += len(bad)
        await wait_closed_and_drained([r], timeout)
        hashed += len(bad)
        bad = await _compare(r, vmap, bad)
    return VerifyResult(identical=not bad, hashed=hashed, preverified=pre, repaired=repaired)


@dataclass
class CutoverTimes:
    """What a cutover measured (seconds) and counted."""

    stop: float = 0.0
    drain: float = 0.0
    verify: float = 0.0
    power_on: float = 0.0
    downtime: float = 0.0
    hashed: int = 0
    preverified: int = 0
    repaired: int = 0
    residual_bytes: int = 0
    identical: bool = False


def _shipped(replicators: list[VdiskReplicator]) -> int:
    return sum(r.core.progress.live_bytes + r.core.progress.chunk_bytes_sent for r in replicators)


async def cut_over(vm: str, destination: str, migration_id: str, platform: Platform,
                   disks: list[tuple[ShadowDisk, VdiskReplicator, VerifyMap]], *, drain_timeout: float,
                   step: Callable[[str], Awaitable[None]], verify_before_stop: bool = True) -> CutoverTimes:
    """Run the cutover of one VM; raises a LiftshiftError (with the times so far in ``.times``) on failure."""
    t = CutoverTimes()
    reps = [r for _, r, _ in disks]
    # The destination VM is defined on the shadow vdisks, which exist at the sink once each
    # replicator's session has opened its vdisk there: a cutover forced right after the
    # migration started, or run again by a daemon restarted before that, must wait for it.
    await wait_connected(reps, drain_timeout)
    await platform.create_destination(vm, destination, migration_id, [d for d, _, _ in disks])
    for _, r, vmap in disks if verify_before_stop else []:
        await verify_before_stopping(r, vmap)
    shipped0 = _shipped(reps)
    t0 = time.monotonic()
    try:
        await step("stopping the source VM")
        await platform.stop_source(vm)
        t1 = time.monotonic()
        t.stop = t1 - t0
        await step("draining the last writes")
        await wait_closed_and_drained(reps, drain_timeout)
        t2 = time.monotonic()
        t.drain = t2 - t1
        t.residual_bytes = _shipped(reps) - shipped0
        await step("verifying every chunk by XXH3-128")
        results = [await verify_at_cutover(r, vmap, drain_timeout) for _, r, vmap in disks]
        t3 = time.monotonic()
        t.verify = t3 - t2
        t.hashed = sum(x.hashed for x in results)
        t.preverified = sum(x.preverified for x in results)
        t.repaired = sum(x.repaired for x in results)
        t.identical = all(x.identical for x in results)
        if not t.identical:
            bad = [d.vdisk_id for (d, _, _), x in zip(disks, results, strict=True) if not x.identical]
            raise LiftshiftError(f"shadow vdisks {', '.join(bad)} still differ from the source after "
                                 f"{MAX_ROUNDS} rounds of repair", hint="the destination VM was not powered on; "
                                 "check the sink's disk, then retry the cutover")
        await step("powering on at the destination")
        await platform.power_on_destination(vm, destination)
        t.power_on = time.monotonic() - t3
        t.downtime = time.monotonic() - t0
        return t
    except LiftshiftError as e:
        e.times = t  # type: ignore[attr-defined]
        raise
