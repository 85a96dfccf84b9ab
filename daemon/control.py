"""The source daemon's Control service (what the CLI calls).

This issue's part of it: the replication state of every vdisk, and the
verification routine (compare by XXH3-128 per chunk, re-send what differs,
compare again) that tests use now and cutover uses later.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from liftshift.v1 import control_pb2 as cpb
from liftshift.v1 import control_pb2_grpc

from .errors import FailedPrecondition, InvalidArgument, NotFound
from .vdisk import VdiskReplicator

_STATES = {"copying": cpb.REPLICATION_STATE_COPYING, "converged": cpb.REPLICATION_STATE_CONVERGED,
           "closed": cpb.REPLICATION_STATE_CLOSED}
VERIFY_CHUNK = 1 << 20
VERIFY_BATCH = 4096  # chunks hashed per HashRanges call


def describe(r: VdiskReplicator) -> cpb.VdiskReplication:
    """The status message of one vdisk."""
    p = r.core.progress
    lags = r.stats.lag_samples_ns
    return cpb.VdiskReplication(
        vdisk_id=r.spec.vdisk_id, sink=r.spec.sink, state=_STATES[r.state()], connected=r.stats.connected,
        size_bytes=r.size, background_total_bytes=p.background_total, background_done_bytes=p.background_done,
        live_bytes=p.live_bytes, live_records=p.live_records, dirty_bytes=r.core.dirty_bytes,
        lag_seconds=r.lag_seconds(), shipped_seq=r.core.shipped_seq, durable_seq=r.core.durable_seq,
        resent_bytes=p.resent_bytes, discarded_chunks=p.discarded_chunks, reconnects=r.stats.reconnects,
        ring_overflows=r.consumer.counters()["overflows"], last_error=r.stats.last_error,
        chunk_bytes_sent=p.chunk_bytes_sent, lag_p50_seconds=lags.quantile(0.5), lag_p99_seconds=lags.quantile(0.99),
        lag_samples=len(lags))


async def verify(r: VdiskReplicator, max_rounds: int = 3) -> cpb.VerifyVdiskResponse:
    """Compare every chunk; re-send mismatches until identical or out of rounds."""
    t0 = time.monotonic()
    if not r.stats.closed:
        raise FailedPrecondition(f"vdisk {r.spec.vdisk_id} is still being written (no CLOSE yet)",
                                 hint="verify after the source VM has stopped")
    await wait_drained(r)
    ranges = [(off, min(VERIFY_CHUNK * VERIFY_BATCH, r.size - off))
              for off in range(0, r.size, VERIFY_CHUNK * VERIFY_BATCH)]
    compared = mismatched = repaired = 0
    rounds = 0
    bad: list[tuple[int, int]] = []
    while rounds < max_rounds:
        rounds += 1
        bad = []
        for off, n in ranges:
            bad.extend(await r.hashes_match(off, n, VERIFY_CHUNK))
            if rounds == 1:
                compared += (n + VERIFY_CHUNK - 1) // VERIFY_CHUNK
        if not bad:
            break
        mismatched += len(bad) if rounds == 1 else 0
        r.repair(bad)
        repaired += len(bad)
        await wait_drained(r)
        ranges = bad
    return cpb.VerifyVdiskResponse(vdisk_id=r.spec.vdisk_id, identical=not bad, chunks_compared=compared,
                                   chunks_mismatched=mismatched, chunks_repaired=repaired, rounds=rounds,
                                   seconds=time.monotonic() - t0)


async def wait_drained(r: VdiskReplicator, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not r.drained():
        if time.monotonic() > deadline:
            raise FailedPrecondition(f"vdisk {r.spec.vdisk_id} did not drain within {timeout:.0f}s")
        await asyncio.sleep(0.02)


class ControlServicer(control_pb2_grpc.ControlServicer):
    """Control RPCs over the daemon's replicators."""

    def __init__(self, replicators: dict[str, VdiskReplicator]) -> None:
        self.replicators = replicators

    def _get(self, vdisk_id: str) -> VdiskReplicator:
        if not vdisk_id:
            raise InvalidArgument("vdisk_id is required")
        r = self.replicators.get(vdisk_id)
        if r is None:
            raise NotFound(f"no vdisk {vdisk_id!r} is replicated by this daemon",
                           hint=f"known: {', '.join(sorted(self.replicators)) or 'none'}")
        return r

    async def ListReplications(self, request: cpb.ListReplicationsRequest,
                               context: grpc.aio.ServicerContext) -> cpb.ListReplicationsResponse:
        return cpb.ListReplicationsResponse(vdisks=[describe(r) for r in self.replicators.values()])

    async def VerifyVdisk(self, request: cpb.VerifyVdiskRequest,
                          context: grpc.aio.ServicerContext) -> cpb.VerifyVdiskResponse:
        return await verify(self._get(request.vdisk_id), request.max_rounds or 3)
