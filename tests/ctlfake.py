"""A hand-written fake of the source daemon's Control service, for ctl tests.

It keeps canned state (VMs, migrations, replications) and applies the real
migration state machine (``liftshift.daemon.lifecycle``), so refusals carry
the daemon's own typed errors and hints.  What a test wants to script is a
plain field: ``watch_script`` (the events a Watch streams), ``cutover_report``
(the report a VM's cutover produces), ``verify_result``, ``policy_id`` (what
AttachFilter puts on a vsphere VM's disks), ``fail`` (an error to raise from
a method).  Every request is recorded in ``requests``.

It is served with the daemon's ``make_server`` (the real error interceptor)
on 127.0.0.1, port 0, in the test's event loop (:func:`serve`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc

from liftshift.daemon.errors import AlreadyExists, FailedPrecondition, InvalidArgument, LiftshiftError, NotFound
from liftshift.daemon.lifecycle import FINAL, Event, IllegalTransition, State, allowed, summarize, transition
from liftshift.daemon.service import make_server
from liftshift.v1 import common_pb2, control_pb2_grpc
from liftshift.v1 import control_pb2 as cpb

MiB = 1 << 20
GiB = 1 << 30


def proto_state(s: State) -> int:
    return int(cpb.MigrationState.Value("MIGRATION_STATE_" + s.value.upper().replace("-", "_")))


def lifecycle_state(v: int) -> State:
    return State(cpb.MigrationState.Name(v).removeprefix("MIGRATION_STATE_").lower().replace("_", "-"))


# What an operator can ask for (lifecycle.allowed also lists the daemon's own events).
OPERATOR_EVENTS = {Event.START, Event.PAUSE, Event.RESUME, Event.CUTOVER, Event.FORCE_CUTOVER, Event.RETRY,
                   Event.ABORT, Event.ROLLBACK}
# A VM in one of these states stays there whatever happens to its migration.
VM_FINAL = {proto_state(s) for s in FINAL}


def operator_actions(s: State) -> list[str]:
    return [e.value for e in allowed(s) if e in OPERATOR_EVENTS]


def default_vms() -> list[cpb.Vm]:
    on, off = common_pb2.POWER_STATE_POWERED_ON, common_pb2.POWER_STATE_POWERED_OFF
    return [
        cpb.Vm(name="web-1", platform="sim", power_state=on, disks=[
            cpb.VmDisk(name="disk0", size_bytes=4 * GiB, allocated_bytes=1536 * MiB, capture_attached=True),
            cpb.VmDisk(name="disk1", size_bytes=512 * MiB, allocated_bytes=64 * MiB, capture_attached=True)]),
        cpb.Vm(name="db-1", platform="qemu", power_state=on, disks=[
            cpb.VmDisk(name="root", size_bytes=8 * GiB, allocated_bytes=3 * GiB, capture_attached=True)]),
        cpb.Vm(name="cold-1", platform="vsphere", power_state=off, disks=[
            cpb.VmDisk(name="hd0", size_bytes=GiB, allocated_bytes=0, capture_attached=False)]),
    ]


def identical_report(vm: str, force: bool = False) -> cpb.CutoverReport:
    return cpb.CutoverReport(vm=vm, identical=True, downtime_seconds=2.5, stop_seconds=0.4, drain_seconds=0.6,
                             verify_seconds=1.2, power_on_seconds=0.3, chunks_verified=17, chunks_preverified=4079,
                             chunks_repaired=0, residual_bytes=3 * MiB, forced=force)


WatchScript = Callable[[cpb.WatchRequest, "FakeControl"], AsyncIterator[cpb.MigrationEvent]]


class FakeControl(control_pb2_grpc.ControlServicer):
    """Canned Control state plus scriptable fields (see the module note)."""

    def __init__(self) -> None:
        self.vms: list[cpb.Vm] = default_vms()
        self.migrations: dict[str, cpb.Migration] = {}
        self.replications: list[cpb.VdiskReplication] = []
        self.requests: list[tuple[str, Any]] = []
        # Method name -> error it raises instead of answering.
        self.fail: dict[str, LiftshiftError] = {}
        self.watch_script: WatchScript | None = None
        self.cutover_report: Callable[[str, bool], cpb.CutoverReport] = identical_report
        self.verify_result: Callable[[cpb.VerifyVdiskRequest], cpb.VerifyVdiskResponse] = (
            lambda r: cpb.VerifyVdiskResponse(vdisk_id=r.vdisk_id, identical=True, chunks_compared=4096,
                                              rounds=1, seconds=0.8))
        self.policy_id = "aa6d5a82-1c88-45da-85d3-3d74b91a5bad"
        # Method name -> seconds it takes before answering (deadline tests).
        self.delay: dict[str, float] = {}
        self._next = 1

    async def _record(self, method: str, request: Any) -> None:
        self.requests.append((method, request))
        if method in self.delay:
            await asyncio.sleep(self.delay[method])
        if method in self.fail:
            raise self.fail[method]

    def _get(self, mid: str) -> cpb.Migration:
        m = self.migrations.get(mid)
        if m is None:
            raise NotFound(f"no migration {mid!r}", hint="list them with `liftshift migrate list --all`")
        return m

    def _set_state(self, m: cpb.Migration, event: Event) -> None:
        new = transition(lifecycle_state(m.state), event)
        m.state = proto_state(new)
        for vm in m.vms:
            if vm.state not in VM_FINAL:
                vm.state = m.state
        self._settle(m, new)

    def _settle(self, m: cpb.Migration, new: State) -> None:
        """``m`` is in state ``new`` now: what can be asked of it, and whether its VMs are free."""
        del m.allowed[:]
        m.allowed.extend(operator_actions(new))
        m.updated_at = time.time()
        if new in FINAL:  # its VMs are free for another migration
            for vm in self.vms:
                if vm.migration_id == m.id:
                    vm.migration_id = ""

    # ---- RPCs ------------------------------------------------------------------

    async def ListReplications(self, request: cpb.ListReplicationsRequest, context: Any) -> Any:
        await self._record("ListReplications", request)
        return cpb.ListReplicationsResponse(vdisks=self.replications)

    async def VerifyVdisk(self, request: cpb.VerifyVdiskRequest, context: Any) -> Any:
        await self._record("VerifyVdisk", request)
        if request.vdisk_id not in {r.vdisk_id for r in self.replications}:
            raise NotFound(f"no vdisk {request.vdisk_id!r} is replicated by this daemon",
                           hint=f"known: {', '.join(r.vdisk_id for r in self.replications) or 'none'}")
        return self.verify_result(request)

    async def ListVms(self, request: cpb.ListVmsRequest, context: Any) -> Any:
        await self._record("ListVms", request)
        return cpb.ListVmsResponse(vms=self.vms)

    async def CreateMigration(self, request: cpb.CreateMigrationRequest, context: Any) -> Any:
        await self._record("CreateMigration", request)
        if not request.vms:
            raise InvalidArgument("a migration needs at least one VM")
        if not request.destination or ":" not in request.destination:
            raise InvalidArgument(f"destination {request.destination!r} is not host:port")
        known = {vm.name: vm for vm in self.vms}
        for name in request.vms:
            if name not in known:
                raise NotFound(f"no VM {name!r}", hint=f"known VMs: {', '.join(sorted(known))}")
            if known[name].migration_id:
                raise AlreadyExists(f"VM {name!r} is already in migration {known[name].migration_id}",
                                    hint="abort that migration first")
        mid = f"m-{self._next:04d}"
        self._next += 1
        m = cpb.Migration(id=mid, name=request.name or mid, type=cpb.MIGRATION_TYPE_LIVE,
                          destination=request.destination, state=cpb.MIGRATION_STATE_CREATED,
                          auto_cutover=request.auto_cutover, converge_threshold_bytes=request.converge_threshold_bytes,
                          throttle_bytes_per_s=request.throttle_bytes_per_s, created_at=time.time(),
                          updated_at=time.time(), allowed=operator_actions(State.CREATED))
        for name in request.vms:
            known[name].migration_id = mid
            m.vms.add(vm=name, state=cpb.MIGRATION_STATE_CREATED, eta_seconds=-1, vdisks=[
                cpb.VdiskProgress(name=d.name, vdisk_id=f"{name}-{d.name}", size_bytes=d.size_bytes,
                                  background_total_bytes=d.allocated_bytes, eta_seconds=-1)
                for d in known[name].disks])
        self.migrations[mid] = m
        if request.start:
            self._set_state(m, Event.START)
        return m

    async def _act(self, name: str, request: cpb.MigrationRef, event: Event) -> cpb.Migration:
        await self._record(name, request)
        m = self._get(request.migration_id)
        self._set_state(m, event)
        return m

    async def StartMigration(self, request: cpb.MigrationRef, context: Any) -> Any:
        return await self._act("StartMigration", request, Event.START)

    async def PauseMigration(self, request: cpb.MigrationRef, context: Any) -> Any:
        return await self._act("PauseMigration", request, Event.PAUSE)

    async def ResumeMigration(self, request: cpb.MigrationRef, context: Any) -> Any:
        return await self._act("ResumeMigration", request, Event.RESUME)

    async def AbortMigration(self, request: cpb.MigrationRef, context: Any) -> Any:
        return await self._act("AbortMigration", request, Event.ABORT)

    async def ListMigrations(self, request: cpb.ListMigrationsRequest, context: Any) -> Any:
        await self._record("ListMigrations", request)
        return cpb.ListMigrationsResponse(migrations=[
            m for m in self.migrations.values() if request.all or lifecycle_state(m.state) not in FINAL])

    async def GetMigration(self, request: cpb.MigrationRef, context: Any) -> Any:
        await self._record("GetMigration", request)
        return self._get(request.migration_id)

    async def Watch(self, request: cpb.WatchRequest, context: Any) -> AsyncIterator[cpb.MigrationEvent]:
        await self._record("Watch", request)
        if request.migration_id:
            self._get(request.migration_id)
        if self.watch_script is not None:
            async for ev in self.watch_script(request, self):
                yield ev

    async def Cutover(self, request: cpb.CutoverRequest, context: Any) -> Any:
        await self._record("Cutover", request)
        what = request.WhichOneof("what")
        if what == "vm":
            owner = next((vm.migration_id for vm in self.vms if vm.name == request.vm), None)
            if owner is None:
                raise NotFound(f"no VM {request.vm!r}")
            mid = request.migration_id or owner
            if not mid:
                raise InvalidArgument(f"VM {request.vm!r} is in no unfinished migration")
            names = [request.vm]
        else:
            mid = request.migration_id
            names = []
        m = self._get(mid)
        if what == "auto":
            m.auto_cutover = True
            return cpb.CutoverResponse(migration=m)
        names = names or [vm.vm for vm in m.vms if vm.state != cpb.MIGRATION_STATE_COMPLETED]
        self._set_state(m, Event.FORCE_CUTOVER if request.force else Event.CUTOVER)
        reports = [self.cutover_report(name, request.force) for name in names]
        for vm in m.vms:
            for r in reports:
                if r.vm == vm.vm:
                    vm.cutover.CopyFrom(r)
                    vm.state = cpb.MIGRATION_STATE_COMPLETED if r.identical else cpb.MIGRATION_STATE_FAILED
        self._set_state(m, Event.COMPLETED if all(r.identical for r in reports) else Event.FAILED)
        return cpb.CutoverResponse(migration=m, reports=reports)

    async def RollbackMigration(self, request: cpb.RollbackRequest, context: Any) -> Any:
        await self._record("RollbackMigration", request)
        m = self._get(request.migration_id)
        if request.vm:
            todo = [vm for vm in m.vms if vm.vm == request.vm]
            if not todo:
                raise NotFound(f"VM {request.vm!r} is not in migration {m.id}")
        else:
            todo = [vm for vm in m.vms if vm.state == cpb.MIGRATION_STATE_FAILED]
            if not todo:
                raise IllegalTransition(lifecycle_state(m.state), Event.ROLLBACK)
        for vm in todo:
            transition(lifecycle_state(vm.state), Event.ROLLBACK)
        for vm in todo:
            vm.state = cpb.MIGRATION_STATE_ROLLED_BACK
            vm.error = ""
        new = summarize([lifecycle_state(vm.state) for vm in m.vms])
        m.state = proto_state(new)
        self._settle(m, new)
        return m

    async def AttachFilter(self, request: cpb.AttachFilterRequest, context: Any) -> Any:
        await self._record("AttachFilter", request)
        vm = next((vm for vm in self.vms if vm.name == request.vm), None)
        if vm is None:
            raise NotFound(f"no VM {request.vm!r}")
        if vm.platform != "vsphere":
            raise FailedPrecondition(f"platform {vm.platform} has no IO filter policy to attach",
                                     hint="attach-filter is for the vsphere platform; sim VMs are captured when "
                                          "a migration starts")
        for d in vm.disks:
            d.capture_policy = self.policy_id
        return vm

    # ---- helpers for tests -------------------------------------------------------

    def progress(self, mid: str, fraction: float, live: int = 0, bandwidth: float = 50 * MiB) -> cpb.Migration:
        """Set every vdisk of ``mid`` to ``fraction`` of its background copy."""
        m = self.migrations[mid]
        for vm in m.vms:
            for d in vm.vdisks:
                d.background_done_bytes = int(d.background_total_bytes * fraction)
                d.live_bytes = live
                d.live_records = live // 4096
                d.connected = True
                d.state = cpb.REPLICATION_STATE_CONVERGED if fraction >= 1 else cpb.REPLICATION_STATE_COPYING
                d.backlog_bytes = d.background_total_bytes - d.background_done_bytes
                d.bandwidth_bytes_per_s = bandwidth
                d.eta_seconds = d.backlog_bytes / bandwidth
                d.lag_seconds = 0.05
            vm.backlog_bytes = sum(d.backlog_bytes for d in vm.vdisks)
            vm.eta_seconds = max(d.eta_seconds for d in vm.vdisks)
        m.bandwidth_bytes_per_s = bandwidth * len(m.vms)
        return m


def event(m: cpb.Migration, kind: int, vm: str = "", message: str = "") -> cpb.MigrationEvent:
    """An event carrying a snapshot of ``m``."""
    snapshot = cpb.Migration()
    snapshot.CopyFrom(m)
    return cpb.MigrationEvent(time=time.time(), migration_id=m.id, vm=vm, kind=kind, state=m.state,
                              message=message, migration=snapshot)


def run_to_completion(seconds: float, every: float = 0.05, end_stream: bool = True) -> WatchScript:
    """A Watch script: progress for ``seconds``, converge, cut over, complete.

    With ``end_stream=False`` the fake keeps streaming progress after the
    migration completed (the client must stop on its own).
    """
    async def script(request: cpb.WatchRequest, fake: FakeControl) -> AsyncIterator[cpb.MigrationEvent]:
        m = fake.migrations[request.migration_id]
        steps = max(1, int(seconds / every))
        for i in range(steps):
            yield event(fake.progress(m.id, i / steps, live=i * MiB), cpb.EVENT_KIND_PROGRESS)
            await asyncio.sleep(every)
        fake.progress(m.id, 1.0)
        fake._set_state(m, Event.CONVERGED)
        yield event(m, cpb.EVENT_KIND_STATE_CHANGED, message="backlog under the threshold")
        fake._set_state(m, Event.CUTOVER)
        for vm in m.vms:
            for step in ("stopping", "draining", "verifying", "powering on"):
                yield event(m, cpb.EVENT_KIND_CUTOVER_STEP, vm=vm.vm, message=step)
            vm.cutover.CopyFrom(identical_report(vm.vm))
            vm.state = cpb.MIGRATION_STATE_COMPLETED
        fake._set_state(m, Event.COMPLETED)
        yield event(m, cpb.EVENT_KIND_STATE_CHANGED, message="every VM runs at the destination")
        while not end_stream:
            await asyncio.sleep(every)
            yield event(m, cpb.EVENT_KIND_PROGRESS)

    return script


@asynccontextmanager
async def serve(fake: FakeControl, port: int = 0) -> AsyncIterator[str]:
    """Serve ``fake`` on 127.0.0.1 (port 0: any free one); yields its address."""
    server: grpc.aio.Server = make_server(16 << 20)
    control_pb2_grpc.add_ControlServicer_to_server(fake, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)
