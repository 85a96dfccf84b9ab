"""The async client of the source daemon's Control service.

Provider orchestration embeds this; the ``liftshift`` CLI is a thin shell
around it.  Use it as an async context manager::

    async with Client("127.0.0.1:50051") as c:
        m = await c.create_migration(["web-1"], "sink.example:50052", start=True)
        async for event in c.watch(m.id):
            ...

Every method returns the protobuf message the daemon answered (see
``proto/liftshift/v1/control.proto``) and raises the daemon's typed
:class:`~liftshift.daemon.errors.LiftshiftError` (same class and hint as the
server raised), never a raw :class:`grpc.RpcError`.  A daemon that cannot be
reached, or does not answer before the deadline, raises
:class:`~liftshift.daemon.errors.Unavailable` with a hint naming the address.

Short calls get ``timeout`` seconds; the long ones (a cutover of VMs, a
verify, a watch) have no deadline unless given one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

import grpc

from liftshift.daemon import lifecycle
from liftshift.daemon.errors import ERROR_KEY, InvalidArgument, LiftshiftError, Unavailable, from_rpc_error
from liftshift.v1 import control_pb2 as cpb
from liftshift.v1 import control_pb2_grpc

from .credentials import Credentials

DEFAULT_ADDRESS = "127.0.0.1:50051"
# Answers (a ListMigrations of many VMs) may be large; the daemon's own limit
# applies to what it sends.
MAX_MESSAGE = 64 << 20

_UNSET: Any = object()
# from_rpc_error rebuilds only error classes that have been imported: the
# state machine's refusal (IllegalTransition) lives in lifecycle.
IllegalTransition = lifecycle.IllegalTransition


class Client:
    """Async client of one daemon's Control service (see the module note)."""

    def __init__(self, address: str = DEFAULT_ADDRESS, timeout: float | None = 30.0,
                 credentials: Credentials | None = None) -> None:
        self.address = address
        self.timeout = timeout
        # Default: what the environment and ~/.config/liftshift provide (see .credentials).
        self.credentials = credentials if credentials is not None else Credentials.resolve()
        self._channel: grpc.aio.Channel | None = None
        self._stub: control_pb2_grpc.ControlStub | None = None

    async def __aenter__(self) -> Client:
        self._channel = self.credentials.channel(self.address, MAX_MESSAGE)
        self._stub = control_pb2_grpc.ControlStub(self._channel)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel (``async with`` does this on exit)."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None

    @property
    def stub(self) -> control_pb2_grpc.ControlStub:
        if self._stub is None:
            raise RuntimeError("use the Client as `async with Client(...) as c:`")
        return self._stub

    # ---- error handling ---------------------------------------------------

    def _error(self, err: grpc.RpcError, timeout: float | None) -> LiftshiftError:
        """The typed error for ``err``; transport failures name the address."""
        code = err.code() if hasattr(err, "code") else None
        md = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
        from_server = any(key == ERROR_KEY for key, _ in md or ())
        if not from_server and code == grpc.StatusCode.UNAVAILABLE:
            # "failed to connect to all addresses; last error: ...: Connection refused"
            details = (err.details() if hasattr(err, "details") else "") or "unavailable"
            why = details.rsplit(": ", 1)[-1].strip(" []")
            return Unavailable(f"cannot reach the liftshift daemon at {self.address} ({why})",
                               hint=f"check that liftshift-daemon is running and listening on {self.address}; "
                                    f"{self.credentials.hint()}")
        if not from_server and code == grpc.StatusCode.CANCELLED:
            # Our own cancellations raise asyncio.CancelledError: this one is
            # the daemon going away mid-call (shutting down).
            return Unavailable(f"the liftshift daemon at {self.address} cancelled the call (shutting down?)",
                               hint=f"check that liftshift-daemon is running and listening on {self.address}")
        if not from_server and code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return Unavailable(f"the liftshift daemon at {self.address} did not answer within {timeout:g} s",
                               hint=f"check the daemon at {self.address}, or allow a longer timeout")
        return from_rpc_error(err)

    async def _call(self, method: Any, request: Any, timeout: float | None = _UNSET) -> Any:
        t = self.timeout if timeout is _UNSET else timeout
        try:
            return await method(request, timeout=t)
        except grpc.RpcError as e:
            raise self._error(e, t) from None

    # ---- inventory and replication ----------------------------------------

    async def list_vms(self) -> cpb.ListVmsResponse:
        """VMs the platform knows, with their disks and migration."""
        return await self._call(self.stub.ListVms, cpb.ListVmsRequest())

    async def attach_filter(self, vm: str) -> cpb.Vm:
        """vsphere: assign the liftshift capture storage policy to every disk of ``vm``.

        The policy is created if missing; do this before creating a migration
        of the VM.  Returns the VM with its disks (``capture_policy`` set).
        Refused (FailedPrecondition) on a platform without an IO filter
        (sim) and for a disk that cannot be captured (independent-
        nonpersistent, physical RDM), naming the disk.
        """
        return await self._call(self.stub.AttachFilter, cpb.AttachFilterRequest(vm=vm))

    # ---- seeds ---------------------------------------------------------------

    async def export_seed(self, vm: str, directory: str) -> cpb.Seed:
        """Start exporting ``vm``'s disks into ``directory`` (a path on the daemon's host)."""
        return await self._call(self.stub.ExportSeed, cpb.ExportSeedRequest(vm=vm, directory=directory))

    async def list_seeds(self, seed_id: str = "") -> list[cpb.Seed]:
        """Every seed, or the one called ``seed_id``."""
        resp = await self._call(self.stub.ListSeeds, cpb.SeedRef(seed_id=seed_id))
        return list(resp.seeds)

    async def drop_seed(self, seed_id: str) -> cpb.Seed:
        """Stop tracking a seed's VM (its files stay)."""
        return await self._call(self.stub.DropSeed, cpb.SeedRef(seed_id=seed_id))

    # ---- estimator -----------------------------------------------------------

    async def start_estimate(self, vms: Sequence[str], destination: str, *, window_s: float = 0.0,
                             interval_s: float = 0.0, probe_bytes: int = 0, probe_seconds: float = 0.0,
                             bandwidth_bps: float = 0.0) -> cpb.Estimate:
        """Observe ``vms`` (nothing is shipped) and measure the bandwidth to ``destination``.

        Defaults (0): a 24 h window, 10 s samples, a probe of at most 256 MiB
        and 10 s, run before this returns; ``bandwidth_bps`` skips the probe.
        """
        req = cpb.StartEstimateRequest(vms=list(vms), destination=destination, window_seconds=window_s,
                                       interval_seconds=interval_s, probe_bytes=probe_bytes,
                                       probe_seconds=probe_seconds, bandwidth_bytes_per_s=bandwidth_bps)
        return await self._call(self.stub.StartEstimate, req, timeout=None)

    async def stop_estimate(self, estimate_id: str = "") -> cpb.Estimate:
        """End an observation early (its samples stay); "" = the latest."""
        return await self._call(self.stub.StopEstimate, cpb.EstimateRef(estimate_id=estimate_id))

    async def get_estimate(self, estimate_id: str = "") -> cpb.EstimateReport:
        """The prediction from what has been observed so far ("" = the latest estimate)."""
        return await self._call(self.stub.GetEstimate, cpb.EstimateRef(estimate_id=estimate_id))

    async def list_replications(self) -> cpb.ListReplicationsResponse:
        """Replication state of every vdisk the daemon ships."""
        return await self._call(self.stub.ListReplications, cpb.ListReplicationsRequest())

    async def verify_vdisk(self, vdisk_id: str, max_rounds: int = 3, *,
                           timeout: float | None = None) -> cpb.VerifyVdiskResponse:
        """Compare source and shadow chunk by chunk, repairing what differs (no deadline by default)."""
        return await self._call(self.stub.VerifyVdisk,
                                cpb.VerifyVdiskRequest(vdisk_id=vdisk_id, max_rounds=max_rounds), timeout)

    # ---- audit ---------------------------------------------------------------

    async def list_audit(self, since: float = 0.0, vm: str = "") -> list[cpb.AuditEntry]:
        """Audit log entries logged at or after ``since`` (Unix time; 0: all) that touched ``vm`` ("": any)."""
        resp = await self._call(self.stub.ListAudit, cpb.ListAuditRequest(since=since, vm=vm))
        return list(resp.entries)

    async def verify_audit(self, *, timeout: float | None = None) -> cpb.VerifyAuditResponse:
        """Have the daemon check its audit log's hash chain (reads the whole log: no deadline by default)."""
        return await self._call(self.stub.VerifyAudit, cpb.VerifyAuditRequest(), timeout)

    # ---- statistics ----------------------------------------------------------

    async def get_stats(self, since: float = 0.0, until: float = 0.0, *, scope: str = "", key: str = "",
                        metrics: Sequence[str] = (), resolution: str = "") -> cpb.StatsResponse:
        """Statistics rows stamped in ``[since, until)`` (Unix times; 0: an hour ago / now), oldest first.

        ``scope`` ("vdisk", "vm", "migration", "global") and ``key`` (vdisk id,
        VM name, migration id) narrow them ("" = all); ``metrics`` names from
        ``liftshift.daemon.stats.METRICS`` (empty = all); ``resolution`` "1s",
        "1m" or "auto" (default: 1 s rows within the last hour, else minute
        rows).  ``liftshift.daemon.control_stats.row_from_pb`` turns a row
        into a ``liftshift.daemon.stats.Row`` (for ``to_csv``, the charts).
        """
        req = cpb.StatsRequest(since=since, until=until, scope=scope, key=key, metrics=list(metrics),
                               resolution=resolution)
        return await self._call(self.stub.GetStats, req)

    # ---- migrations --------------------------------------------------------

    async def create_migration(self, vms: Sequence[str], destination: str, *, name: str = "",
                               auto_cutover: bool = False, converge_threshold_bytes: int = 0,
                               throttle_bytes_per_s: int = 0, start: bool = False,
                               seeded: bool = False) -> cpb.Migration:
        """Define a migration of ``vms`` to the sink at ``destination`` (host:port): live, or
        ``seeded`` from each VM's exported and imported seed."""
        req = cpb.CreateMigrationRequest(name=name, vms=list(vms), destination=destination,
                                         type=cpb.MIGRATION_TYPE_SEEDED if seeded else cpb.MIGRATION_TYPE_LIVE,
                                         auto_cutover=auto_cutover,
                                         converge_threshold_bytes=converge_threshold_bytes,
                                         throttle_bytes_per_s=throttle_bytes_per_s, start=start)
        return await self._call(self.stub.CreateMigration, req)

    async def start(self, migration_id: str) -> cpb.Migration:
        """Start a created migration."""
        return await self._call(self.stub.StartMigration, cpb.MigrationRef(migration_id=migration_id))

    async def pause(self, migration_id: str) -> cpb.Migration:
        """Stop shipping; the guest keeps running and its writes go on being captured."""
        return await self._call(self.stub.PauseMigration, cpb.MigrationRef(migration_id=migration_id))

    async def resume(self, migration_id: str) -> cpb.Migration:
        """Resume a paused migration, or retry a failed one."""
        return await self._call(self.stub.ResumeMigration, cpb.MigrationRef(migration_id=migration_id))

    async def abort(self, migration_id: str) -> cpb.Migration:
        """Stop for good; the source VMs keep running untouched."""
        return await self._call(self.stub.AbortMigration, cpb.MigrationRef(migration_id=migration_id))

    async def rollback(self, migration_id: str, vm: str = "") -> cpb.Migration:
        """After a failed cutover: remove the destination VM and power the source VM on again.

        ``vm`` names one VM of the migration; "" rolls back every VM whose
        cutover failed.  The destination VM is removed (its shadow vdisks are
        kept) and the VM ends ``MIGRATION_STATE_ROLLED_BACK``.  Refused
        (:class:`IllegalTransition`) when no such VM has a failed cutover.
        """
        return await self._call(self.stub.RollbackMigration,
                                cpb.RollbackRequest(migration_id=migration_id, vm=vm))

    async def list_migrations(self, all: bool = False) -> cpb.ListMigrationsResponse:
        """Unfinished migrations (``all``: completed, aborted and rolled-back ones too)."""
        return await self._call(self.stub.ListMigrations, cpb.ListMigrationsRequest(all=all))

    async def get_migration(self, migration_id: str) -> cpb.Migration:
        """One migration with per-VM and per-vdisk progress."""
        return await self._call(self.stub.GetMigration, cpb.MigrationRef(migration_id=migration_id))

    async def watch(self, migration_id: str = "", interval_ms: int = 500) -> AsyncIterator[cpb.MigrationEvent]:
        """Events as they happen ("" : every migration).

        With an id the stream ends once that migration is completed, aborted
        or rolled back; leaving the ``async for`` early cancels the stream.
        """
        call = self.stub.Watch(cpb.WatchRequest(migration_id=migration_id, interval_ms=interval_ms))
        try:
            async for event in call:
                yield event
        except grpc.RpcError as e:
            raise self._error(e, None) from None
        finally:
            call.cancel()

    async def cutover(self, migration_id: str = "", *, vm: str | None = None, group: bool = False,
                      auto: bool = False, force: bool = False, timeout: float | None = None) -> cpb.CutoverResponse:
        """Cut over one VM (``vm``), every VM of a migration (``group``) or turn on ``auto`` cutover.

        Exactly one of the three.  For one VM the migration id may be "": the
        daemon finds the VM's unfinished migration.  Cutting VMs over takes
        as long as it takes, so there is no deadline unless ``timeout`` is
        given; ``auto`` only flips a switch and uses the client's timeout.
        """
        if (vm is not None) + group + auto != 1:
            raise InvalidArgument("cutover needs exactly one of vm=..., group=True or auto=True")
        if vm is not None:
            req = cpb.CutoverRequest(migration_id=migration_id, vm=vm, force=force)
        elif group:
            req = cpb.CutoverRequest(migration_id=migration_id, group=True, force=force)
        else:
            req = cpb.CutoverRequest(migration_id=migration_id, auto=True, force=force)
            timeout = self.timeout if timeout is None else timeout
        return await self._call(self.stub.Cutover, req, timeout)


    # ---- throttling ----------------------------------------------------------

    async def get_throttle(self) -> cpb.ThrottleStatus:
        """Replication rate limits (global first, then per migration), the schedule, and guest caps."""
        return await self._call(self.stub.GetThrottle, cpb.GetThrottleRequest())

    async def set_throttle(self, *, rate_bps: int | None = None, clear: bool = False, migration_id: str = "",
                           schedule: str = "") -> cpb.ThrottleStatus:
        """Change a replication rate limit; returns the status after the change.

        Global (``migration_id`` ""): ``rate_bps`` overrides the schedule by hand
        (0 = unlimited) until ``clear``; ``schedule`` replaces the schedule in the
        running daemon ("mon-fri 08:00-18:00 100MB/s; ...", "-" removes it).  With
        ``migration_id``: that migration's own limit (0 or ``clear``: none).
        """
        if rate_bps is not None and rate_bps < 0:
            raise InvalidArgument(f"rate_bytes_per_s: {rate_bps} is negative", hint="0 means unlimited")
        if rate_bps is None and not (clear or schedule):
            raise InvalidArgument("say what to change: a rate, clear, or a schedule")
        if rate_bps == 0 and schedule and not migration_id:
            # In one request a rate of 0 next to a schedule means "no rate given".
            await self._call(self.stub.SetThrottle, cpb.SetThrottleRequest(schedule=schedule))
            schedule = ""
        req = cpb.SetThrottleRequest(migration_id=migration_id, rate_bytes_per_s=rate_bps or 0, clear=clear,
                                     schedule=schedule)
        return await self._call(self.stub.SetThrottle, req)

    async def set_guest_cap(self, vm: str, *, bytes_per_s: int = 0, iops: int = 0) -> cpb.ThrottleStatus:
        """Cap ``vm``'s guest writes (over all its disks; 0 = no cap on that); both 0 removes the cap.

        The cap is kept across daemon restarts, wins over a migration's converging
        throttle, and is in force whenever a migration or a seed holds the VM's rings.
        """
        for field, value in (("guest_bytes_per_s", bytes_per_s), ("guest_iops", iops)):
            if value < 0:
                raise InvalidArgument(f"{field}: {value} is negative", hint="0 means no cap")
        return await self._call(self.stub.SetThrottle,
                                cpb.SetThrottleRequest(vm=vm, guest_bytes_per_s=bytes_per_s, guest_iops=iops))
