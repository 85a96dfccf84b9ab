"""Migrations of VMs: what the Control service drives.

Design note
-----------
A migration moves one VM or a group to one destination sink.  Every VM of
it goes through the state machine of :mod:`liftshift.daemon.lifecycle`
(only :func:`~liftshift.daemon.lifecycle.transition` changes a state); the
migration's own state is the summary of its VMs'.  Records are persisted in
the daemon's SQLite file after every change, so a restarted daemon picks
each migration up where it stood: syncing and converged VMs resume
replication from what the sink holds, a cutover that was interrupted runs
again (every step is idempotent), paused ones stay paused.

A command is checked completely before anything changes: a request that is
refused changes no state.  Commands run one at a time (one lock); the long
part of a cutover runs in its own task, outside the lock, so status and
other migrations keep being served.

The monitor loop (:meth:`Migrations.run`) schedules, the methods do the
work: every ``progress_interval_ms`` it samples bandwidth, moves VMs
between syncing and converged, starts automatic cutovers (one VM of a
migration at a time), verifies chunks ahead of cutover for converged VMs,
and publishes a progress event for watchers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from liftshift.iofilter import RingConsumer
from liftshift.v1 import control_pb2 as cpb

from . import cutover
from .errors import FailedPrecondition, InvalidArgument, LiftshiftError, NotFound
from .lifecycle import FINAL, TRANSITIONS, Event, IllegalTransition, State, allowed, summarize, transition
from .platform import Platform, Power, ShadowDisk
from .settings import DaemonConfig, ReplicateSpec
from .state import StateStore
from .throttle import Limiters
from .vdisk import VdiskReplicator
from .verifymap import VerifyMap

if TYPE_CHECKING:
    from .seed import SeedRec, Seeds

log = logging.getLogger("liftshift.daemon.migrations")

# Verification granularity: a 4 KiB guest write re-opens this much for hashing.
VERIFY_CHUNK = 256 << 10
_NOT_ID = re.compile(r"[^A-Za-z0-9_-]")


def _id_part(name: str) -> str:
    """A VM or disk name as part of a vdisk id (vCenter names may hold spaces and dots)."""
    return _NOT_ID.sub("_", name)[:48] or "_"


_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$")
_DIVERGE_FACTOR = 4  # a converged VM falls back to syncing when its backlog exceeds this x the threshold
_STATE_PB = {State.CREATED: cpb.MIGRATION_STATE_CREATED, State.SYNCING: cpb.MIGRATION_STATE_SYNCING,
             State.CONVERGED: cpb.MIGRATION_STATE_CONVERGED, State.PAUSED: cpb.MIGRATION_STATE_PAUSED,
             State.CUTTING_OVER: cpb.MIGRATION_STATE_CUTTING_OVER, State.COMPLETED: cpb.MIGRATION_STATE_COMPLETED,
             State.FAILED: cpb.MIGRATION_STATE_FAILED, State.ABORTED: cpb.MIGRATION_STATE_ABORTED,
             State.ROLLED_BACK: cpb.MIGRATION_STATE_ROLLED_BACK}
_REPL_PB = {"copying": cpb.REPLICATION_STATE_COPYING, "converged": cpb.REPLICATION_STATE_CONVERGED,
            "closed": cpb.REPLICATION_STATE_CLOSED}


@dataclass
class VdiskRec:
    """One disk of a migrating VM."""

    name: str
    vdisk_id: str
    size: int
    image: str
    ring: str
    # Seeded migration: the shadow is bound at the sink at this ring sequence
    # (-1 until the seed has been handed over).
    seed_id: str = ""
    seed_base_seq: int = -1


@dataclass
class VmRec:
    """One VM of a migration."""

    vm: str
    state: State
    disks: list[VdiskRec]
    error: str = ""
    report: dict[str, object] | None = None
    seed_id: str = ""  # seeded migration: the seed this VM starts from


@dataclass
class MigrationRec:
    """A migration as persisted."""

    id: str
    name: str
    destination: str
    auto_cutover: bool
    threshold: int
    throttle: int
    created: float
    updated: float
    vms: list[VmRec] = field(default_factory=list)
    type: str = "live"  # or "seeded"

    @property
    def state(self) -> State:
        return summarize([v.state for v in self.vms])

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> MigrationRec:
        d = json.loads(text)
        vms = [VmRec(vm=v["vm"], state=State(v["state"]), disks=[VdiskRec(**x) for x in v["disks"]],
                     error=v.get("error", ""), report=v.get("report"), seed_id=v.get("seed_id", ""))
               for v in d.pop("vms")]
        return cls(**d, vms=vms)


@dataclass
class _Rate:
    t: float = 0.0
    shipped: int = 0
    bps: float = 0.0


#: A monitor tick running longer than this (or ten intervals) is named in the log.
TICK_WARN_S = 5.0


def _await_chain(task: asyncio.Future[Any]) -> list[Any]:
    """The frames of a pending task's coroutine and of every coroutine it awaits, outermost first."""
    frames = []
    coro: Any = task.get_coro() if isinstance(task, asyncio.Task) else None
    while coro is not None and getattr(coro, "cr_frame", None) is not None:
        frames.append(coro.cr_frame)
        coro = getattr(coro, "cr_await", None)
    return frames


class Migrations:
    """Every migration of this daemon, and the loop that moves them along."""

    def __init__(self, cfg: DaemonConfig, store: StateStore, platform: Platform,
                 replicators: dict[str, VdiskReplicator]) -> None:
        self.cfg = cfg
        self.store = store
        self.platform = platform
        self.replicators = replicators
        self.recs: dict[str, MigrationRec] = {}
        self.vmaps: dict[str, VerifyMap] = {}
        self.rates: dict[str, _Rate] = {}
        self.last_progress: dict[str, cpb.VdiskProgress] = {}
        self._lock = asyncio.Lock()
        self._cutovers: dict[tuple[str, str], asyncio.Task[cpb.CutoverReport]] = {}
        self._group_tasks: set[asyncio.Task[object]] = set()
        self.seeds: Seeds | None = None
        # Called with a VM's name before its capture is attached (the estimator lets go of its rings).
        self.before_capture: Callable[[str], Awaitable[None]] | None = None
        # Set by the daemon: the replication rate limits, and a VM's guest cap set by hand
        # ((bytes/s, IOPS) per disk, or None), which overrides the converging throttle.
        self.limiters: Limiters | None = None
        self.guest_cap: Callable[[str, int], tuple[int, int] | None] | None = None
        self._subs: set[asyncio.Queue[cpb.MigrationEvent]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_tick = 0.0  # monotonic time of the last tick (0: none yet)

    # -- start-up and shutdown ------------------------------------------------

    async def start(self) -> None:
        """Load every migration and resume the unfinished ones."""
        for body in self.store.load_migrations():
            m = MigrationRec.from_json(body)
            self.recs[m.id] = m
        for m in self.recs.values():
            for v in m.vms:
                if v.state in (State.SYNCING, State.CONVERGED, State.CUTTING_OVER):
                    try:
                        await self._start_vm(m, v)
                    except LiftshiftError as e:
                        self._fail(m, v, f"cannot resume: {e}")
                        continue
                    if v.state is State.CUTTING_OVER:
                        log.info("migration %s: VM %s was cutting over when the daemon stopped: running the "
                                 "cutover again", m.id, v.vm)
                        self._spawn_cutover(m, v, forced=bool(v.report and v.report.get("forced")))
            if m.state not in FINAL:
                log.info("migration %s (%s): %s", m.id, ", ".join(v.vm for v in m.vms), m.state)
        self._task = asyncio.create_task(self.run(), name="migrations")

    async def stop(self) -> None:
        """Stop the loop and every replicator; everything stays resumable."""
        self._stopping = True
        tasks = [t for t in [self._task, *self._cutovers.values(), *self._group_tasks] if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for m in self.recs.values():
            for v in m.vms:
                await self._stop_vm(v)
        for q in list(self._subs):
            q.put_nowait(cpb.MigrationEvent(kind=cpb.EVENT_KIND_ERROR, message="the daemon is shutting down"))

    # -- lookups -------------------------------------------------------------

    def get(self, mid: str) -> MigrationRec:
        if not mid:
            raise InvalidArgument("migration_id is required")
        m = self.recs.get(mid)
        if m is None:
            raise NotFound(f"no migration {mid!r}", hint="`liftshift migrate list --all` shows them")
        return m

    def migration_of(self, vm: str) -> MigrationRec | None:
        """The unfinished migration ``vm`` belongs to."""
        for m in self.recs.values():
            for v in m.vms:
                if v.vm == vm and v.state not in FINAL:
                    return m
        return None

    @staticmethod
    def _vm(m: MigrationRec, vm: str) -> VmRec:
        for v in m.vms:
            if v.vm == vm:
                return v
        raise NotFound(f"VM {vm!r} is not part of migration {m.id}",
                       hint=f"its VMs: {', '.join(v.vm for v in m.vms)}")

    # -- commands ------------------------------------------------------------

    async def create(self, req: cpb.CreateMigrationRequest) -> MigrationRec:
        """Check everything, then record a new migration (and start it if asked)."""
        if req.type not in (cpb.MIGRATION_TYPE_UNSPECIFIED, cpb.MIGRATION_TYPE_LIVE, cpb.MIGRATION_TYPE_SEEDED):
            raise InvalidArgument(f"migration type {req.type} is not known", hint="live or seeded")
        seeded = req.type == cpb.MIGRATION_TYPE_SEEDED
        names = list(req.vms)
        if not names:
            raise InvalidArgument("a migration needs at least one VM")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InvalidArgument(f"VM {dup[0]!r} is listed twice")
        if not _ADDRESS.match(req.destination):
            raise InvalidArgument(f"destination {req.destination!r} is not host:port")
        if len(req.name) > 128 or not req.name.isprintable():
            raise InvalidArgument("the migration name must be at most 128 printable characters")
        async with self._lock:
            infos = [await self.platform.vm(n) for n in names]  # NotFound for an unknown VM
            for n in names:
                await self.platform.preflight(n)  # e.g. vsphere: a disk without the capture policy
            for n in names:
                other = self.migration_of(n)
                if other is not None:
                    raise FailedPrecondition(f"VM {n!r} is already in migration {other.id} ({other.state})",
                                             hint=f"abort {other.id} first, or wait until it completes")
            await self._check_destination(req.destination)
            seeds = await self._check_seeds(names, req.destination, seeded)
            mid = "m-" + secrets.token_hex(4)
            while mid in self.recs:
                mid = "m-" + secrets.token_hex(4)
            now = time.time()
            m = MigrationRec(id=mid, name=req.name or mid, destination=req.destination,
                             auto_cutover=req.auto_cutover,
                             threshold=req.converge_threshold_bytes or self.cfg.converge_threshold,
                             throttle=req.throttle_bytes_per_s, created=now, updated=now,
                             type="seeded" if seeded else "live")
            for info in infos:
                seed = seeds.get(info.name)
                if seed is not None:
                    # The shadows are the ones the seed was imported into.
                    disks = [VdiskRec(name=d.name, vdisk_id=d.vdisk_id, size=d.size, image=d.image, ring=d.ring,
                                      seed_id=seed.id) for d in seed.disks]
                else:
                    disks = [VdiskRec(name=d.name, vdisk_id=f"{mid}.{_id_part(info.name)}.{_id_part(d.name)}",
                                      size=d.size, image=str(d.image), ring=str(d.ring)) for d in info.disks]
                m.vms.append(VmRec(vm=info.name, state=State.CREATED, disks=disks,
                                   seed_id=seed.id if seed is not None else ""))
            self.recs[mid] = m
            self._save(m)
            log.info("migration %s created: %s -> %s", mid, ", ".join(names), req.destination)
            self._emit(m, None, cpb.EVENT_KIND_STATE_CHANGED, f"created ({', '.join(names)})")
        if req.start:
            await self.start_migration(mid)
        return m

    async def _check_seeds(self, names: list[str], destination: str, seeded: bool) -> dict[str, SeedRec]:
        """Seeded: every VM has an exported seed, imported completely at the
        destination and not bound yet.  Live: no VM's writes are being
        tracked for a seed (two consumers of one ring would lose writes)."""
        out: dict[str, SeedRec] = {}
        seeds = self.seeds
        if not seeded:
            for n in names:
                rec = seeds.tracking(n) if seeds is not None else None
                if rec is not None:
                    raise FailedPrecondition(f"VM {n!r} has seed {rec.id} ({rec.state}) tracking its writes",
                                             hint=f"migrate it with --type seeded, or `liftshift seed drop {rec.id}`")
            return out
        if seeds is None:
            raise FailedPrecondition("this daemon has no seeds")
        for n in names:
            rec = seeds.tracking(n)
            if rec is None:
                raise FailedPrecondition(f"VM {n!r} has no seed", hint=f"`liftshift seed export {n} --to DIR`, ship "
                                         "DIR, `liftshift seed import DIR --sink ...` at the destination")
            if rec.state != "exported":
                raise FailedPrecondition(f"seed {rec.id} of VM {n!r} is still {rec.state}",
                                         hint="wait until `liftshift seed list` shows it exported")
            out[n] = rec
        shadows = {v.vdisk_id: v for v in await seeds.sink_vdisks(destination)}
        for n, rec in out.items():
            for d in rec.disks:
                got = shadows.get(d.vdisk_id)
                if got is None:
                    there = sorted({v.seed_id for v in shadows.values() if v.seed_id and not v.migration_id})
                    raise FailedPrecondition(
                        f"seed {rec.id} of VM {n!r} has not been imported at {destination} (no shadow {d.vdisk_id})",
                        hint=f"run `liftshift seed import DIR --sink {destination}` with that seed's directory"
                        + (f"; the sink holds seeds {', '.join(there)} of other exports" if there else ""))
                if got.migration_id:
                    raise FailedPrecondition(f"shadow {d.vdisk_id} at {destination} already belongs to migration "
                                             f"{got.migration_id}")
                if not got.seed_imported:
                    raise FailedPrecondition(f"the import of seed {rec.id} into {d.vdisk_id} at {destination} did "
                                             "not finish", hint="run `liftshift seed import` again")
        return out

    async def _check_destination(self, address: str) -> None:
        """The sink must answer before a migration is recorded against it."""
        try:
            await self.platform.destination_power("liftshift-probe", address)
        except LiftshiftError as e:
            if isinstance(e, NotFound):
                return
            raise type(e)(f"destination {address} does not answer: {e.message}",
                          hint=e.hint or "check the sink's address and that it runs") from None

    async def start_migration(self, mid: str) -> MigrationRec:
        async with self._lock:
            m = self.get(mid)
            todo = self._plan(m, Event.START)
            for v in todo:
                v.state = transition(v.state, Event.START)
                try:
                    await self._start_vm(m, v)
                except LiftshiftError as e:
                    self._fail(m, v, str(e))
                    continue
                self._emit(m, v, cpb.EVENT_KIND_STATE_CHANGED, "replication started")
            self._save(m)
            return m

    async def pause(self, mid: str) -> MigrationRec:
        async with self._lock:
            m = self.get(mid)
            for v in self._plan(m, Event.PAUSE):
                v.state = transition(v.state, Event.PAUSE)
                await self._stop_vm(v)
                self._emit(m, v, cpb.EVENT_KIND_STATE_CHANGED, "paused: guest writes keep being captured")
            self._save(m)
            return m

    async def resume(self, mid: str) -> MigrationRec:
        async with self._lock:
            m = self.get(mid)
            paused = [v for v in m.vms if v.state is State.PAUSED]
            failed = [v for v in m.vms if v.state is State.FAILED]
            if not paused and not failed:
                raise IllegalTransition(m.state, Event.RESUME)
            for v in paused + failed:
                v.state = transition(v.state, Event.RESUME if v.state is State.PAUSED else Event.RETRY)
                v.error = ""
                try:
                    await self._start_vm(m, v)
                except LiftshiftError as e:
                    self._fail(m, v, str(e))
                    continue
                self._emit(m, v, cpb.EVENT_KIND_STATE_CHANGED, "resumed")
            self._save(m)
            return m

    async def abort(self, mid: str) -> MigrationRec:
        async with self._lock:
            m = self.get(mid)
            busy = [v.vm for v in m.vms if v.state is State.CUTTING_OVER]
            if busy:
                raise IllegalTransition(State.CUTTING_OVER, Event.ABORT)
            for v in self._plan(m, Event.ABORT):
                v.state = transition(v.state, Event.ABORT)
                await self._stop_vm(v, lift_throttle=True)
                try:
                    info = await self.platform.vm(v.vm)
                    if info.power is Power.ON:
                        await self.platform.detach_capture(v.vm)
                except LiftshiftError as e:
                    log.warning("migration %s: VM %s: detaching capture failed: %s", m.id, v.vm, e)
                self._emit(m, v, cpb.EVENT_KIND_STATE_CHANGED, "aborted; the source VM keeps running")
            m.auto_cutover = False
            self._save(m)
            return m

    async def rollback(self, mid: str, vm: str = "") -> MigrationRec:
        """After a failed cutover: remove each destination VM (shadow vdisks kept) and
        power its source VM on again.  A VM whose rollback fails stays failed (retry it)."""
        async with self._lock:
            m = self.get(mid)
            todo = [self._vm(m, vm)] if vm else [v for v in m.vms if v.state is State.FAILED]
            if not todo:
                raise IllegalTransition(m.state, Event.ROLLBACK)
            for v in todo:
                transition(v.state, Event.ROLLBACK)  # every VM is checked before anything changes
            try:
                for v in todo:
                    await self._stop_vm(v, lift_throttle=True)
                    self._emit(m, v, cpb.EVENT_KIND_CUTOVER_STEP, "rollback: removing the destination VM")
                    removed = await self.platform.remove_destination(v.vm, m.destination, m.id)
                    self._emit(m, v, cpb.EVENT_KIND_CUTOVER_STEP, "rollback: powering the source VM on")
                    await self.platform.start_source(v.vm)
                    v.state = transition(v.state, Event.ROLLBACK)
                    v.error = ""
                    what = "destination VM removed" if removed else "no destination VM was defined"
                    self._emit(m, v, cpb.EVENT_KIND_STATE_CHANGED,
                               f"rolled back: {what} (shadow vdisks kept), source VM running")
                    log.info("migration %s: VM %s rolled back (%s)", m.id, v.vm, what)
            finally:
                m.auto_cutover = False
                self._save(m)
            return m

    def cutover_medians(self) -> tuple[float | None, float | None]:
        """Median stop and power-on seconds of this daemon's completed cutovers (None: none yet)."""
        reports = [v.report for m in self.recs.values() for v in m.vms
                   if v.state is State.COMPLETED and v.report and v.report.get("identical")]
        if not reports:
            return None, None

        def median(key: str) -> float:
            return statistics.median(float(r.get(key, 0.0) or 0.0) for r in reports if r)  # type: ignore[arg-type]

        return median("stop_seconds"), median("power_on_seconds")

    def _plan(self, m: MigrationRec, event: Event) -> list[VmRec]:
        """The VMs ``event`` applies to; IllegalTransition (nothing changed) when none."""
        todo = [v for v in m.vms if (v.state, event) in _ALLOWED]
        if not todo:
            raise IllegalTransition(m.state, event)
        return todo

    # -- cutover --------------------------------------------------------------

    async def cutover(self, req: cpb.CutoverRequest) -> tuple[MigrationRec, list[cpb.CutoverReport]]:
        what = req.WhichOneof("what")
        if what is None:
            raise InvalidArgument("say what to cut over: a VM, the group, or auto")
        if req.migration_id:
            m = self.get(req.migration_id)
        elif what == "vm":
            found = self.migration_of(req.vm)
            if found is None:
                raise NotFound(f"VM {req.vm!r} is in no unfinished migration")
            m = found
        else:
            raise InvalidArgument("migration_id is required for a group or automatic cutover")
        if what == "auto":
            async with self._lock:
                if m.state in FINAL:
                    raise IllegalTransition(m.state, Event.CUTOVER)
                m.auto_cutover = True
                self._save(m)
                self._emit(m, None, cpb.EVENT_KIND_STATE_CHANGED, "automatic cutover on")
            return m, []
        if what == "vm":
            v = self._vm(m, req.vm)
            async with self._lock:
                task = self._begin_cutover(m, v, req.force)
            return m, [await asyncio.shield(task)]
        # The group: every VM is checked first, so a refusal changes nothing.
        async with self._lock:
            todo = [v for v in m.vms if v.state not in FINAL]
            if not todo:
                raise IllegalTransition(m.state, Event.CUTOVER)
            for v in todo:
                self._check_cutover(v, req.force)
        group = asyncio.create_task(self._cut_over_group(m, todo, req.force))
        self._group_tasks.add(group)
        group.add_done_callback(self._group_tasks.discard)
        return m, await asyncio.shield(group)

    async def _cut_over_group(self, m: MigrationRec, vms: list[VmRec], force: bool) -> list[cpb.CutoverReport]:
        reports = []
        for v in vms:
            async with self._lock:
                if v.state in FINAL:
                    continue
                task = self._begin_cutover(m, v, force)
            rep = await task
            reports.append(rep)
            if rep.error:
                break  # one after another: stop at the first failure
        return reports

    def _check_cutover(self, v: VmRec, force: bool) -> Event:
        event = Event.FORCE_CUTOVER if force else Event.CUTOVER
        if (v.state, event) not in _ALLOWED:
            refused = IllegalTransition(v.state, event)
            if v.state is State.SYNCING:
                raise FailedPrecondition(f"VM {v.vm} has not converged yet (it is {v.state})", hint=refused.hint)
            raise refused
        return event

    def _begin_cutover(self, m: MigrationRec, v: VmRec, force: bool) -> asyncio.Task[cpb.CutoverReport]:
        """Transition to cutting-over and start the cutover task (caller holds the lock)."""
        running = self._cutovers.get((m.id, v.vm))
        if running is not None and not running.done():
            return running
        event = self._check_cutover(v, force)
        v.state = transition(v.state, event)
        v.report = {"forced": force}
        self._save(m)
        self._emit(m, v, cpb.EVENT_KIND_STATE_CHANGED, "cutover started" + (" (forced)" if force else ""))
        return self._spawn_cutover(m, v, force)

    def _spawn_cutover(self, m: MigrationRec, v: VmRec, forced: bool) -> asyncio.Task[cpb.CutoverReport]:
        task = asyncio.create_task(self._run_cutover(m, v, forced), name=f"cutover-{m.id}-{v.vm}")
        self._cutovers[(m.id, v.vm)] = task
        return task

    async def _run_cutover(self, m: MigrationRec, v: VmRec, forced: bool) -> cpb.CutoverReport:
        disks = []
        for d in v.disks:
            r = self.replicators.get(d.vdisk_id)
            if r is None:
                r = await self._start_replicator(m, d)
            r.consumer.set_control(throttle_bps=0, throttle_iops=0)
            disks.append((ShadowDisk(d.name, d.vdisk_id), r, self._vmap(d)))

        async def step(text: str) -> None:
            self._emit(m, v, cpb.EVENT_KIND_CUTOVER_STEP, text)

        report = cpb.CutoverReport(vm=v.vm, forced=forced)
        try:
            t = await cutover.cut_over(v.vm, m.destination, m.id, self.platform, disks,
                                       drain_timeout=self.cfg.cutover_drain_timeout_s, step=step,
                                       verify_before_stop=self.cfg.preverify_bytes_per_s > 0)
        except LiftshiftError as e:
            _fill(report, getattr(e, "times", None))
            report.error = str(e)
            async with self._lock:
                v.report = _report_dict(report)
                self._fail(m, v, f"cutover failed: {e}")
            return report
        _fill(report, t)
        async with self._lock:
            v.state = transition(v.state, Event.COMPLETED)
            v.report = _report_dict(report)
            v.error = ""
            for d in v.disks:
                self._snapshot(d)
            await self._stop_vm(v)
            self._save(m)
            self._emit(m, v, cpb.EVENT_KIND_STATE_CHANGED,
                       f"completed: identical, downtime {t.downtime:.3f}s (verified {t.hashed} chunks, "
                       f"{t.preverified} proven earlier)")
        log.info("migration %s: VM %s cut over, downtime %.3fs (stop %.3f drain %.3f verify %.3f power-on %.3f), "
                 "%d chunks hashed, %d preverified, %d repaired, %d residual bytes", m.id, v.vm, t.downtime, t.stop,
                 t.drain, t.verify, t.power_on, t.hashed, t.preverified, t.repaired, t.residual_bytes)
        return report

    # -- the loop ------------------------------------------------------------

    async def run(self) -> None:
        """Every interval: sample, converge / diverge, auto cutover, preverify, publish."""
        interval = self.cfg.progress_interval_ms / 1000
        while not self._stopping:
            tick = asyncio.ensure_future(self.tick())
            try:
                # A tick that does not end in time is named in the log, with where it waits
                # (convergence and automatic cutover wait for it), and then awaited further.
                late = max(TICK_WARN_S, 10 * interval)
                done, _ = await asyncio.wait({tick}, timeout=late)
                if not done:
                    where = "".join(f"\n  {f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}"
                                    for f in _await_chain(tick))
                    log.warning("migration monitor: a tick has run for %.1f s; it waits at:%s", late, where)
                await tick
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if me is None or me.cancelling():
                    tick.cancel()
                    raise
                # Not this loop being cancelled: something the tick awaited ended
                # with CancelledError (grpc.aio does so when a channel closes under a
                # call).  Letting it through ended the monitor with nothing in the log.
                log.error("migration monitor: a tick was cancelled from inside; going on", exc_info=True)
            except Exception:  # the loop must survive anything one migration does
                log.exception("migration monitor")
            await asyncio.sleep(interval)

    async def tick(self) -> None:
        now = time.monotonic()
        # A tick's preverification budget covers the time since the last tick, not one
        # interval: the loop sleeps an interval *after* its work, so a fixed budget per tick
        # verified at interval / (interval + work) of the configured rate (a 3 GiB demo VM
        # took 13.5 s instead of 6 s).  At most two intervals' worth, so a tick stays short.
        interval = self.cfg.progress_interval_ms / 1000
        since = min(now - self._last_tick, 2 * interval) if self._last_tick else interval
        self._last_tick = now
        budget = int(self.cfg.preverify_bytes_per_s * since) // VERIFY_CHUNK
        for m in list(self.recs.values()):
            if m.state in FINAL:
                continue
            for v in m.vms:
                self._sample(v, now)
            async with self._lock:
                for v in m.vms:
                    self._converge(m, v)
                if m.auto_cutover and not self._cutover_running(m):
                    ready = [v for v in m.vms if v.state is State.CONVERGED and self._verified_ahead(m, v)]
                    if ready:
                        self._begin_cutover(m, ready[0], False)
            await self._preverify(m, budget)
            self._emit(m, None, cpb.EVENT_KIND_PROGRESS, "")

    def _verified_ahead(self, m: MigrationRec, v: VmRec) -> bool:
        """Automatic cutover waits until every chunk has been proven identical
        once, so what is hashed at cutover is what the guest wrote lately,
        not the whole disk."""
        if self.cfg.preverify_bytes_per_s <= 0:
            return True
        return all(self._vmap(d).first_pass_done() for d in v.disks)

    def _cutover_running(self, m: MigrationRec) -> bool:
        return any(not t.done() for (mid, _), t in self._cutovers.items() if mid == m.id)

    def _sample(self, v: VmRec, now: float) -> None:
        for d in v.disks:
            r = self.replicators.get(d.vdisk_id)
            if r is None:
                continue
            p = r.core.progress
            shipped = p.live_bytes + p.chunk_bytes_sent
            rate = self.rates.setdefault(d.vdisk_id, _Rate(now, shipped))
            dt = now - rate.t
            if dt >= 0.2:
                inst = (shipped - rate.shipped) / dt
                rate.bps = inst if rate.bps == 0 else 0.6 * rate.bps + 0.4 * inst
                rate.t, rate.shipped = now, shipped
            self._snapshot(d)

    def _backlog(self, v: VmRec) -> tuple[int, bool]:
        """(bytes still to ship, background copy done) over the VM's disks."""
        total, done = 0, True
        for d in v.disks:
            r = self.replicators.get(d.vdisk_id)
            if r is None:
                return 0, False
            total += _backlog(r)
            done = done and r.core.copy_done() and r.stats.connected
        return total, done

    def _converge(self, m: MigrationRec, v: VmRec) -> None:
        if v.state not in (State.SYNCING, State.CONVERGED):
            return
        backlog, copied = self._backlog(v)
        if v.state is State.SYNCING and copied and backlog <= m.threshold:
            v.state = transition(v.state, Event.CONVERGED)
            self._throttle(m, v, 0)
            self._save(m)
            self._emit(m, v, cpb.EVENT_KIND_STATE_CHANGED, f"converged (backlog {backlog} bytes)")
        elif v.state is State.CONVERGED and (not copied or backlog > _DIVERGE_FACTOR * m.threshold):
            v.state = transition(v.state, Event.DIVERGED)
            self._throttle(m, v, m.throttle)
            self._save(m)
            self._emit(m, v, cpb.EVENT_KIND_STATE_CHANGED, f"diverged (backlog {backlog} bytes)")

    async def _preverify(self, m: MigrationRec, budget: int) -> None:
        """Verify up to ``budget`` chunks of each disk of the migration's converged VMs."""
        if budget <= 0:
            return
        for v in m.vms:
            if v.state is not State.CONVERGED:
                continue
            for d in v.disks:
                r = self.replicators.get(d.vdisk_id)
                if r is None or not r.stats.connected:
                    continue
                try:
                    await cutover.preverify(r, self._vmap(d), budget, self.cfg.preverify_quiet_s)
                except LiftshiftError as e:
                    log.debug("preverify %s: %s", d.vdisk_id, e)
                except Exception as e:  # a sink hiccup: try again next tick
                    log.debug("preverify %s: %s", d.vdisk_id, e)

    # -- replicators -------------------------------------------------------------

    def _vmap(self, d: VdiskRec) -> VerifyMap:
        vmap = self.vmaps.get(d.vdisk_id)
        if vmap is None:
            vmap = self.vmaps[d.vdisk_id] = VerifyMap(d.size, VERIFY_CHUNK)
        return vmap

    async def _start_vm(self, m: MigrationRec, v: VmRec) -> None:
        """Attach capture and start replicating every disk of ``v``."""
        if self.before_capture is not None:
            await self.before_capture(v.vm)
        if v.state is not State.CUTTING_OVER:
            info = await self.platform.attach_capture(v.vm)
            sizes = {d.name: d.size for d in info.disks}
            for d in v.disks:
                if sizes.get(d.name) != d.size:
                    raise FailedPrecondition(f"VM {v.vm}: disk {d.name} is now {sizes.get(d.name)} bytes, the "
                                             f"migration was created for {d.size}")
        if v.seed_id and any(d.seed_base_seq < 0 for d in v.disks):
            await self._hand_over_seed(m, v)
        for d in v.disks:
            if d.vdisk_id not in self.replicators:
                await self._start_replicator(m, d)
        self._throttle(m, v, m.throttle if v.state is State.SYNCING else 0)

    async def _hand_over_seed(self, m: MigrationRec, v: VmRec) -> None:
        """First start of a seeded VM: the seed's tracker gives way to the
        replicators, which start from what differs (see liftshift.daemon.seed)."""
        if self.seeds is None:
            raise FailedPrecondition("this daemon has no seeds")
        # The replicators' background chunk (VdiskReplicator: at least the ring's unit).
        units = []
        for d in v.disks:
            with RingConsumer(d.ring) as c:
                units.append(c.geometry.chunk_size)
        bg_chunk = max([self.cfg.chunk_size, *units])
        plans = await self.seeds.handover(v.seed_id, v.vm, m.destination, m.id, bg_chunk)
        for d in v.disks:
            plan = plans[d.name]
            self.store.save(d.vdisk_id, d.size, m.destination, False, plan.todo, plan.dirty, 0, 0)
            d.seed_base_seq = plan.base_seq
        self._save(m)
        log.info("migration %s: VM %s starts from seed %s", m.id, v.vm, v.seed_id)

    async def _start_replicator(self, m: MigrationRec, d: VdiskRec) -> VdiskReplicator:
        spec = ReplicateSpec(vdisk_id=d.vdisk_id, ring=Path(d.ring),
                             source=Path(d.image), sink=m.destination, migration_id=m.id)
        try:
            r = VdiskReplicator(spec, self.cfg, self.store)
        except (OSError, LiftshiftError) as e:
            raise FailedPrecondition(f"cannot replicate {d.vdisk_id}: {e}") from None
        r.verify_map = self._vmap(d)
        r.limiters = self.limiters
        if d.seed_id and d.seed_base_seq >= 0:
            r.seed = (d.seed_id, d.seed_base_seq)
        self.replicators[d.vdisk_id] = r
        r.start()
        return r

    async def _stop_vm(self, v: VmRec, lift_throttle: bool = False) -> None:
        for d in v.disks:
            r = self.replicators.pop(d.vdisk_id, None)
            if r is not None:
                self._snapshot(d, r)
                if lift_throttle:
                    r.consumer.set_control(throttle_bps=0, throttle_iops=0)
                await r.stop()

    def _throttle(self, m: MigrationRec, v: VmRec, bps: int) -> None:
        iops = 0
        cap = self.guest_cap(v.vm, len(v.disks)) if self.guest_cap is not None else None
        if cap is not None:
            bps, iops = cap  # set by hand (`liftshift throttle set --vm`): wins over the converging throttle
        for d in v.disks:
            r = self.replicators.get(d.vdisk_id)
            if r is not None:
                r.consumer.set_control(throttle_bps=bps, throttle_iops=iops)

    def rethrottle(self, vm: str) -> None:
        """Write ``vm``'s guest throttle into its rings again (its cap set by hand changed)."""
        m = self.migration_of(vm)
        if m is None:
            return
        for v in m.vms:
            if v.vm == vm and v.state in (State.SYNCING, State.CONVERGED):  # cutting over: caps are lifted
                self._throttle(m, v, m.throttle if v.state is State.SYNCING else 0)

    def _fail(self, m: MigrationRec, v: VmRec, why: str) -> None:
        v.state = transition(v.state, Event.FAILED) if (v.state, Event.FAILED) in _ALLOWED else State.FAILED
        v.error = why
        self._save(m)
        log.error("migration %s: VM %s failed: %s", m.id, v.vm, why)
        self._emit(m, v, cpb.EVENT_KIND_ERROR, why)

    # -- reporting -------------------------------------------------------------

    def _snapshot(self, d: VdiskRec, r: VdiskReplicator | None = None) -> None:
        r = r or self.replicators.get(d.vdisk_id)
        if r is None:
            return
        p = r.core.progress
        rate = self.rates.get(d.vdisk_id)
        bps = rate.bps if rate else 0.0
        backlog = _backlog(r)
        self.last_progress[d.vdisk_id] = cpb.VdiskProgress(
            name=d.name, vdisk_id=d.vdisk_id, size_bytes=d.size, state=_REPL_PB[r.state()],
            connected=r.stats.connected, background_total_bytes=p.background_total,
            background_done_bytes=p.background_done, live_bytes=p.live_bytes, live_records=p.live_records,
            dirty_bytes=r.core.dirty_bytes, backlog_bytes=backlog, lag_seconds=r.lag_seconds(),
            bandwidth_bytes_per_s=bps, eta_seconds=(backlog / bps if bps > 0 else (0.0 if backlog == 0 else -1.0)),
            resent_bytes=p.resent_bytes, ring_overflows=r.consumer.counters()["overflows"],
            chunk_bytes_sent=p.chunk_bytes_sent,
            last_error=r.stats.last_error, verified_bytes=min(d.size, self._vmap(d).verified_count() * VERIFY_CHUNK),
            verified_once=self._vmap(d).first_pass_done())

    def describe(self, m: MigrationRec) -> cpb.Migration:
        """The Migration message for ``m``."""
        mtype = cpb.MIGRATION_TYPE_SEEDED if m.type == "seeded" else cpb.MIGRATION_TYPE_LIVE
        out = cpb.Migration(id=m.id, name=m.name, type=mtype, destination=m.destination,
                            state=_STATE_PB[m.state], auto_cutover=m.auto_cutover,
                            converge_threshold_bytes=m.threshold, throttle_bytes_per_s=m.throttle,
                            created_at=m.created, updated_at=m.updated)
        bw = 0.0
        etas = []
        for v in m.vms:
            vm = out.vms.add(vm=v.vm, state=_STATE_PB[v.state], error=v.error)
            backlog = 0
            vm_eta = 0.0
            for d in v.disks:
                self._snapshot(d)  # fresh numbers for a vdisk being replicated
                p = self.last_progress.get(d.vdisk_id) or cpb.VdiskProgress(name=d.name, vdisk_id=d.vdisk_id,
                                                                              size_bytes=d.size, eta_seconds=-1)
                if d.vdisk_id not in self.replicators:  # last known numbers; nothing flows now
                    stale = cpb.VdiskProgress()
                    stale.CopyFrom(p)
                    stale.connected, stale.bandwidth_bytes_per_s = False, 0.0
                    p = stale
                vm.vdisks.append(p)
                backlog += p.backlog_bytes
                bw += p.bandwidth_bytes_per_s
                vm_eta = -1.0 if p.eta_seconds < 0 or vm_eta < 0 else max(vm_eta, p.eta_seconds)
            vm.backlog_bytes = backlog
            vm.eta_seconds = vm_eta if v.state not in FINAL else 0.0
            if v.report:
                vm.cutover.CopyFrom(_report_msg(v.vm, v.report))
            if v.state not in FINAL:
                etas.append(vm.eta_seconds)
        out.bandwidth_bytes_per_s = bw
        out.eta_seconds = -1.0 if any(e < 0 for e in etas) else max(etas, default=0.0)
        events = {e for v in m.vms for e in allowed(v.state)}
        out.allowed.extend(sorted(e.value for e in events if e not in (Event.CONVERGED, Event.DIVERGED,
                                                                        Event.COMPLETED, Event.FAILED)))
        return out

    # -- events --------------------------------------------------------------

    def _emit(self, m: MigrationRec, v: VmRec | None, kind: int, message: str) -> None:
        if kind != cpb.EVENT_KIND_PROGRESS:
            log.info("migration %s%s: %s", m.id, f" VM {v.vm}" if v else "", message)
        if not self._subs:
            return
        ev = cpb.MigrationEvent(time=time.time(), migration_id=m.id, vm=v.vm if v else "", kind=kind,
                                state=_STATE_PB[v.state if v else m.state], message=message,
                                migration=self.describe(m))
        for q in list(self._subs):
            if q.full():
                if kind == cpb.EVENT_KIND_PROGRESS:
                    continue  # a slow watcher misses progress, never state changes
                q.get_nowait()
            q.put_nowait(ev)

    async def watch(self, mid: str, interval: float = 0.5) -> AsyncIterator[cpb.MigrationEvent]:
        """Events of one migration (or all); ends when that migration is final.
        Progress events come at most every ``interval`` seconds per migration."""
        q: asyncio.Queue[cpb.MigrationEvent] = asyncio.Queue(maxsize=256)
        m = self.get(mid) if mid else None
        # Subscribed before the first snapshot goes out: nothing after it is missed.
        self._subs.add(q)
        last_progress: dict[str, float] = {}
        try:
            if m is not None:
                yield cpb.MigrationEvent(time=time.time(), migration_id=m.id, kind=cpb.EVENT_KIND_PROGRESS,
                                         state=_STATE_PB[m.state], migration=self.describe(m))
                if m.state in FINAL:
                    return
            while True:
                ev = await q.get()
                if not ev.migration_id:
                    yield ev  # the daemon is shutting down
                    return
                if mid and ev.migration_id != mid:
                    continue
                if ev.kind == cpb.EVENT_KIND_PROGRESS:
                    if ev.time - last_progress.get(ev.migration_id, 0.0) < interval * 0.9:
                        continue
                    last_progress[ev.migration_id] = ev.time
                yield ev
                if mid and ev.kind == cpb.EVENT_KIND_STATE_CHANGED and self.recs[mid].state in FINAL:
                    return
        finally:
            self._subs.discard(q)

    def _save(self, m: MigrationRec) -> None:
        m.updated = time.time()
        self.store.save_migration(m.id, m.to_json())


_ALLOWED = set(TRANSITIONS)


def _backlog(r: VdiskReplicator) -> int:
    p = r.core.progress
    return max(0, p.background_total - p.background_done) + r.core.dirty_bytes + r.consumer.pending_bytes()


def _fill(report: cpb.CutoverReport, t: cutover.CutoverTimes | None) -> None:
    if t is None:
        return
    report.identical = t.identical
    report.downtime_seconds = t.downtime
    report.stop_seconds = t.stop
    report.drain_seconds = t.drain
    report.verify_seconds = t.verify
    report.power_on_seconds = t.power_on
    report.chunks_verified = t.hashed
    report.chunks_preverified = t.preverified
    report.chunks_repaired = t.repaired
    report.residual_bytes = t.residual_bytes


def _report_dict(report: cpb.CutoverReport) -> dict[str, object]:
    return {f.name: getattr(report, f.name) for f in report.DESCRIPTOR.fields}


def _report_msg(vm: str, d: dict[str, object]) -> cpb.CutoverReport:
    known = {f.name for f in cpb.CutoverReport.DESCRIPTOR.fields}
    return cpb.CutoverReport(**{k: v for k, v in d.items() if k in known and k != "vm"}, vm=vm)  # type: ignore[arg-type]
