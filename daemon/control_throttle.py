"""The Control service's throttling RPCs: SetThrottle and GetThrottle.

A mixin of :class:`~liftshift.daemon.control.ControlServicer`: the request is
checked completely -- fields that do not go together, rates, the schedule
text, that the migration or VM exists -- before anything changes, so a
refused request changes nothing.  Errors name the request field.

One request changes one thing:

* ``vm`` set: that VM's guest write cap (``guest_bytes_per_s`` /
  ``guest_iops``, both 0 or ``clear``: remove it) -- see
  :mod:`liftshift.daemon.guestcap`;
* ``migration_id`` set: that migration's own replication rate limit
  (0 or ``clear``: none of its own);
* neither: the global limit.  ``clear`` hands it back to the schedule;
  ``schedule`` replaces the schedule ("-" removes its windows);
  ``rate_bytes_per_s`` overrides the schedule by hand -- also when it is 0
  (unlimited) unless a schedule is given in the same request, which then is
  all that request changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from liftshift.v1 import control_pb2 as cpb

from .errors import FailedPrecondition, InvalidArgument, NotFound
from .guestcap import Cap, GuestCaps
from .lifecycle import FINAL
from .throttle import Schedule
from .throttling import Throttling

if TYPE_CHECKING:
    from .migrations import Migrations
    from .platform import Platform
    from .vdisk import VdiskReplicator


class ThrottleRpcs:
    """SetThrottle and GetThrottle over the daemon's :class:`Throttling` and :class:`GuestCaps`."""

    throttling: Throttling | None
    guest_caps: GuestCaps | None
    platform: Platform | None
    migrations: Migrations | None
    replicators: dict[str, VdiskReplicator]

    async def SetThrottle(self, request: cpb.SetThrottleRequest,
                          context: grpc.aio.ServicerContext) -> cpb.ThrottleStatus:
        t = self._throttling()
        if request.vm:
            await self._set_guest_cap(request)
        elif request.guest_bytes_per_s or request.guest_iops:
            field = "guest_bytes_per_s" if request.guest_bytes_per_s else "guest_iops"
            raise InvalidArgument(f"vm: {field} caps a VM's writes: say which VM")
        elif request.clear and request.rate_bytes_per_s:
            raise InvalidArgument("clear: give a rate or clear it, not both")
        elif request.migration_id:
            if request.schedule:
                raise InvalidArgument("schedule: the schedule is global; leave migration_id empty")
            self._check_migration(request.migration_id)
            t.set_migration(request.migration_id, None if request.clear else request.rate_bytes_per_s)
        else:
            schedule = t.parse_schedule(request.schedule) if request.schedule else None  # InvalidArgument
            if schedule is not None:
                t.set_schedule(schedule)
            if request.clear:
                t.set_global(None)
            elif schedule is None or request.rate_bytes_per_s:
                t.set_global(request.rate_bytes_per_s)
        return self._throttle_status()

    async def GetThrottle(self, request: cpb.GetThrottleRequest,
                          context: grpc.aio.ServicerContext) -> cpb.ThrottleStatus:
        return self._throttle_status()

    # -- checks -------------------------------------------------------------------

    def _throttling(self) -> Throttling:
        if self.throttling is None:
            raise FailedPrecondition("this daemon has no throttling")
        return self.throttling

    def _check_migration(self, mid: str) -> None:
        m = self.migrations.recs.get(mid) if self.migrations is not None else None
        if m is None and not any(r.spec.migration_id == mid for r in self.replicators.values()):
            raise NotFound(f"migration_id: no migration {mid!r}", hint="`liftshift migrate list` shows them")
        if m is not None and m.state in FINAL:
            raise FailedPrecondition(f"migration_id: migration {mid} is {m.state}: nothing of it is shipped "
                                     "any more")

    async def _set_guest_cap(self, request: cpb.SetThrottleRequest) -> None:
        for field in ("migration_id", "rate_bytes_per_s", "schedule"):
            if getattr(request, field):
                raise InvalidArgument(f"{field}: a VM's guest write cap (vm) and a replication rate limit are "
                                      "set by separate requests")
        if request.clear and (request.guest_bytes_per_s or request.guest_iops):
            raise InvalidArgument("clear: give a guest cap or clear it, not both")
        caps = self.guest_caps
        if caps is None or self.platform is None:
            raise FailedPrecondition("this daemon runs no platform: there are no VMs to cap")
        cap = None if request.clear else Cap(request.guest_bytes_per_s, request.guest_iops)
        removing = cap is None or not (cap.bytes_per_s or cap.iops)
        if not (removing and request.vm in caps.manual):  # a VM gone from the inventory may still lose its cap
            try:
                await self.platform.vm(request.vm)
            except NotFound:
                raise NotFound(f"vm: no VM {request.vm!r} on platform {self.platform.name}",
                               hint="`liftshift inventory` lists them") from None
        caps.set(request.vm, cap)

    # -- the answer -----------------------------------------------------------------

    def _throttle_status(self) -> cpb.ThrottleStatus:
        t = self._throttling()
        sched: Schedule = t.scheduled.schedule
        out = cpb.ThrottleStatus(schedule=sched.spec(), next_change_at=t.next_change_at())
        for lim in t.limits():
            out.limits.add(migration_id=lim.migration_id or "", rate_bytes_per_s=lim.rate_bps,
                           effective_bytes_per_s=lim.effective_bps, binding=lim.binding,
                           source=t.scheduled.state.source if lim.migration_id is None else "migration")
        for c in self.guest_caps.report() if self.guest_caps is not None else []:
            out.guests.add(vm=c.vm, bytes_per_s=c.bytes_per_s, iops=c.iops, source=c.source,
                           throttled_seconds=c.throttled_s, binding=c.binding)
        return out
