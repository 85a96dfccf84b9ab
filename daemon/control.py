"""The source daemon's Control service (what the CLI calls).

A thin adapter: inventory comes from the platform, migrations from
:class:`~liftshift.daemon.migrations.Migrations`; the low-level calls give
the replication state of every vdisk and the verification routine (compare
by XXH3-128 per chunk, re-send what differs, compare again).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from liftshift.v1 import common_pb2, control_pb2_grpc
from liftshift.v1 import control_pb2 as cpb

from . import seedfile
from .audit import AuditLog
from .control_audit import AuditRpcs
from .control_stats import StatsRpcs
from .control_throttle import ThrottleRpcs
from .errors import FailedPrecondition, InvalidArgument, NotFound
from .estimator import EstimateRec, Estimates
from .guestcap import GuestCaps
from .lifecycle import FINAL
from .migrations import Migrations
from .platform import Platform, Power, VmInfo
from .seed import SeedRec, Seeds
from .throttling import Throttling
from .vdisk import VdiskReplicator

_STATES = {"copying": cpb.REPLICATION_STATE_COPYING, "converged": cpb.REPLICATION_STATE_CONVERGED,
           "closed": cpb.REPLICATION_STATE_CLOSED}
_POWER = {Power.ON: common_pb2.POWER_STATE_POWERED_ON, Power.OFF: common_pb2.POWER_STATE_POWERED_OFF,
          Power.NOT_CREATED: common_pb2.POWER_STATE_NOT_CREATED}
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


class ControlServicer(AuditRpcs, StatsRpcs, ThrottleRpcs, control_pb2_grpc.ControlServicer):
    """Control RPCs over the daemon's replicators (audit log: :class:`AuditRpcs`; statistics: :class:`StatsRpcs`;
    throttling: :class:`ThrottleRpcs`)."""

    def __init__(self, replicators: dict[str, VdiskReplicator], platform: Platform | None = None,
                 migrations: Migrations | None = None, estimates: Estimates | None = None,
                 assumptions: Callable[[], Any] | None = None, seeds: Seeds | None = None,
                 audit: AuditLog | None = None, throttling: Throttling | None = None,
                 guest_caps: GuestCaps | None = None) -> None:
        self.replicators = replicators
        self.audit = audit
        self.throttling = throttling
        self.guest_caps = guest_caps
        self.seeds = seeds
        self.platform = platform
        self.migrations = migrations
        self.estimates = estimates
        self.assumptions = assumptions

    def _m(self) -> Migrations:
        if self.migrations is None or self.platform is None:
            raise FailedPrecondition("this daemon runs no platform")
        return self.migrations

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

    async def ListVms(self, request: cpb.ListVmsRequest, context: grpc.aio.ServicerContext) -> cpb.ListVmsResponse:
        self._m()  # refused when this daemon runs no platform
        assert self.platform is not None
        out = cpb.ListVmsResponse()
        for info in await self.platform.inventory():
            out.vms.append(self._vm_pb(info))
        return out

    def _vm_pb(self, info: VmInfo) -> cpb.Vm:
        m = self._m().migration_of(info.name)
        vm = cpb.Vm(name=info.name, platform=info.platform, power_state=_POWER[info.power],
                    migration_id=m.id if m else "", host=info.host, guest_os=info.guest_os, num_cpu=info.num_cpu,
                    memory_mb=info.memory_mb, firmware=info.firmware,
                    nics=[cpb.VmNic(label=n.label, kind=n.kind, network=n.network) for n in info.nics])
        for d in info.disks:
            vm.disks.add(name=d.name, size_bytes=d.size, allocated_bytes=d.allocated,
                         capture_attached=d.capture_attached, image=str(d.image), capture_policy=d.capture_policy,
                         backing_file=d.backing_file, datastore=d.datastore, controller=d.controller)
        return vm

    async def AttachFilter(self, request: cpb.AttachFilterRequest, context: grpc.aio.ServicerContext) -> cpb.Vm:
        attach = getattr(self.platform, "attach_filter", None)
        if attach is None:
            name = self.platform.name if self.platform is not None else "none"
            raise FailedPrecondition(f"platform {name} has no IO filter policy to attach",
                                     hint="attach-filter is for the vsphere platform; sim VMs are captured "
                                          "when a migration starts")
        if not request.vm:
            raise InvalidArgument("say which VM")
        return self._vm_pb(await attach(request.vm))

    # -- seeds -----------------------------------------------------------------

    def _s(self) -> Seeds:
        if self.seeds is None:
            raise FailedPrecondition("this daemon runs no platform")
        return self.seeds

    async def ExportSeed(self, request: cpb.ExportSeedRequest, context: grpc.aio.ServicerContext) -> cpb.Seed:
        s = self._s()
        return seed_pb(s, await s.export(request.vm, request.directory))

    async def ListSeeds(self, request: cpb.SeedRef, context: grpc.aio.ServicerContext) -> cpb.ListSeedsResponse:
        s = self._s()
        recs = [s.get(request.seed_id)] if request.seed_id else sorted(s.recs.values(), key=lambda r: r.created)
        return cpb.ListSeedsResponse(seeds=[seed_pb(s, r) for r in recs])

    async def DropSeed(self, request: cpb.SeedRef, context: grpc.aio.ServicerContext) -> cpb.Seed:
        s = self._s()
        if not request.seed_id:
            raise InvalidArgument("say which seed")
        return seed_pb(s, await s.drop(request.seed_id))

    # -- estimator -------------------------------------------------------------

    def _e(self) -> Estimates:
        if self.estimates is None:
            raise FailedPrecondition("this daemon runs no platform")
        return self.estimates

    async def StartEstimate(self, request: cpb.StartEstimateRequest,
                            context: grpc.aio.ServicerContext) -> cpb.Estimate:
        if not _ADDRESS.match(request.destination):
            raise InvalidArgument(f"destination {request.destination!r} is not host:port")
        for vm in request.vms:
            seed = self.seeds.tracking(vm) if self.seeds is not None else None
            if seed is not None:
                raise FailedPrecondition(f"VM {vm!r} has seed {seed.id} ({seed.state}) tracking its writes",
                                         hint="estimate it before exporting a seed, or drop the seed")
        rec = await self._e().start(list(request.vms), request.destination, request.window_seconds or 86400.0,
                                    request.interval_seconds or 10.0, request.probe_bytes or 256 << 20,
                                    request.probe_seconds or 10.0, request.bandwidth_bytes_per_s)
        return estimate_pb(rec)

    async def StopEstimate(self, request: cpb.EstimateRef, context: grpc.aio.ServicerContext) -> cpb.Estimate:
        e = self._e()
        return estimate_pb(await e.stop(e.get(request.estimate_id).id))

    async def GetEstimate(self, request: cpb.EstimateRef, context: grpc.aio.ServicerContext) -> cpb.EstimateReport:
        e = self._e()
        rec = e.get(request.estimate_id)
        assert self.assumptions is not None
        return report_pb(rec, e.report(rec, self.assumptions()))

    async def RollbackMigration(self, request: cpb.RollbackRequest,
                                context: grpc.aio.ServicerContext) -> cpb.Migration:
        mig = self._m()
        return mig.describe(await mig.rollback(request.migration_id, request.vm))

    async def CreateMigration(self, request: cpb.CreateMigrationRequest,
                              context: grpc.aio.ServicerContext) -> cpb.Migration:
        mig = self._m()
        return mig.describe(await mig.create(request))

    async def StartMigration(self, request: cpb.MigrationRef, context: grpc.aio.ServicerContext) -> cpb.Migration:
        mig = self._m()
        return mig.describe(await mig.start_migration(request.migration_id))

    async def PauseMigration(self, request: cpb.MigrationRef, context: grpc.aio.ServicerContext) -> cpb.Migration:
        mig = self._m()
        return mig.describe(await mig.pause(request.migration_id))

    async def ResumeMigration(self, request: cpb.MigrationRef, context: grpc.aio.ServicerContext) -> cpb.Migration:
        mig = self._m()
        return mig.describe(await mig.resume(request.migration_id))

    async def AbortMigration(self, request: cpb.MigrationRef, context: grpc.aio.ServicerContext) -> cpb.Migration:
        mig = self._m()
        return mig.describe(await mig.abort(request.migration_id))

    async def ListMigrations(self, request: cpb.ListMigrationsRequest,
                             context: grpc.aio.ServicerContext) -> cpb.ListMigrationsResponse:
        mig = self._m()
        recs = [m for m in mig.recs.values() if request.all or m.state not in FINAL]
        return cpb.ListMigrationsResponse(migrations=[mig.describe(m) for m in recs])

    async def GetMigration(self, request: cpb.MigrationRef, context: grpc.aio.ServicerContext) -> cpb.Migration:
        mig = self._m()
        return mig.describe(mig.get(request.migration_id))

    async def Watch(self, request: cpb.WatchRequest,
                    context: grpc.aio.ServicerContext) -> AsyncIterator[cpb.MigrationEvent]:
        mig = self._m()
        async for ev in mig.watch(request.migration_id, (request.interval_ms or 500) / 1000):
            yield ev

    async def Cutover(self, request: cpb.CutoverRequest, context: grpc.aio.ServicerContext) -> cpb.CutoverResponse:
        mig = self._m()
        m, reports = await mig.cutover(request)
        return cpb.CutoverResponse(migration=mig.describe(m), reports=reports)


# -- estimator reports ------------------------------------------------------------

_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$")


def seed_pb(seeds: Seeds, rec: SeedRec) -> cpb.Seed:
    out = cpb.Seed(id=rec.id, vm=rec.vm, directory=rec.directory, state=rec.state, created_at=rec.created,
                   exported_at=rec.exported_at, chunk_size=rec.chunk_size, error=rec.error,
                   migration_id=rec.migration_id)
    for d in rec.disks:
        out.disks.add(name=d.name, vdisk_id=d.vdisk_id, size_bytes=d.size,
                      exported_bytes=min(d.size, d.done_chunks * rec.chunk_size), data_bytes=d.data_bytes,
                      dirty_bytes=seeds.dirty_bytes(rec, d), tracked_seq=seeds.tracked_seq(rec, d),
                      file=seedfile.image_name(d.vdisk_id))
    return out


def estimate_pb(rec: EstimateRec) -> cpb.Estimate:
    return cpb.Estimate(id=rec.id, vms=rec.vms, destination=rec.destination, state=rec.state,
                        started_at=rec.started, window_seconds=rec.window_s, observed_seconds=rec.observed_s(),
                        interval_seconds=rec.interval_s, bandwidth_bytes_per_s=rec.bandwidth_bps)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 \
        else f"{seconds:.0f} s"


def _range(value: float, low: float, high: float) -> cpb.Range:
    return cpb.Range(estimate=value, low=low, high=high)


def _sneakernet(s: Any) -> cpb.Sneakernet:
    return cpb.Sneakernet(ship_seconds=s.ship_s, replay_bytes=int(s.replay_bytes), replay_seconds=s.replay_s,
                          total_seconds=s.total_s, network_total_seconds=s.network_total_s, faster=s.faster)


def report_pb(rec: EstimateRec, group: Any) -> cpb.EstimateReport:
    """The model's answer (:mod:`.estimator_model`) on the wire."""
    replay = sum(v.sneakernet.replay_bytes for v in group.vms)
    out = cpb.EstimateReport(estimate=estimate_pb(rec), all_at_once_seconds=group.all_at_once_s,
                             waves=[", ".join(w) for w in group.waves], waves_seconds=group.waves_s,
                             recommended=group.recommended,
                             sneakernet=cpb.Sneakernet(ship_seconds=group.sneakernet_ship_s, replay_bytes=int(replay),
                                                       replay_seconds=max(0.0, group.sneakernet_total_s
                                                                          - group.sneakernet_ship_s),
                                                       total_seconds=group.sneakernet_total_s,
                                                       network_total_seconds=group.network_total_s,
                                                       faster=group.faster))
    for v in group.vms:
        disks = rec.disks.get(v.name, [])
        out.vms.append(cpb.VmEstimate(
            vm=v.name, size_bytes=sum(d["size"] for d in disks), allocated_bytes=sum(d["allocated"] for d in disks),
            write_bytes_per_s=v.write_bps, write_iops=v.write_iops, distinct_dirty_bytes_per_s=v.distinct_dirty_bps,
            background_seconds=v.background_s, total_seconds=_range(v.total_s, v.total_low_s, v.total_high_s),
            steady_lag_seconds=v.steady_lag_s, converges=v.converges, verdict=v.verdict,
            throttle_to_converge_bytes_per_s=v.throttle_to_converge_bps or 0.0,
            cutover_downtime_seconds=_range(v.cutover_downtime_s, v.downtime_low_s, v.downtime_high_s),
            sneakernet=_sneakernet(v.sneakernet)))
    observed = rec.observed_s()
    if rec.state == "observing":
        out.notes.append(f"still observing: {_hours(observed)} of the {_hours(rec.window_s)} window so far")
    if observed < 86400:
        out.notes.append(f"the estimate rests on {_hours(observed)} of observation: 24 h (a full daily cycle) "
                         "gives a good estimate; the ranges narrow as the window grows")
    if not any(d for d in rec.disks.values()):
        out.notes.append("no samples yet")
    return out
