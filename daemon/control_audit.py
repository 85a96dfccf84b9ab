"""The audit log on the Control service: every change recorded as it is made.

Goal: every Control call that changes something leaves exactly one entry in
the audit log (:mod:`.audit`) -- who, from where, what was asked, which
VMs, what came of it -- and no call takes effect while the log is known to
be unable to record it.

Plan.

* **What is audited.**  Every method of the Control service *except* the
  read-only ones in :data:`READ_ONLY` (List*, Get*, Watch, ListAudit,
  VerifyAudit): a method added to the service later is audited unless
  someone decides that it only reads.  Today that is :data:`AUDITED`:
  CreateMigration, StartMigration, PauseMigration, ResumeMigration,
  AbortMigration, Cutover, RollbackMigration, AttachFilter, StartEstimate,
  StopEstimate, ExportSeed, DropSeed, SetThrottle, VerifyVdisk (which
  re-sends chunks that differ).  Calls refused by authentication or
  authorisation are recorded too, whatever the method, reads included
  (:func:`audit_refusal`, the AuthInterceptor's ``on_refused``), and so are
  handshakes the TLS front refuses (action ``TlsHandshake``): a denied
  attempt is what an auditor looks for first.
* **The entry.**  ``who`` is the name of :data:`~.security.current_identity`
  ("anonymous" when no auth interceptor ran), ``peer`` the caller's address
  (:data:`~.security.current_peer`: behind the TLS front, the client's, not
  the front's),
  ``action`` the method name, ``params`` the request as proto3 JSON with the
  .proto field names (default values left out, 64-bit integers as strings)
  through :func:`~.audit.redact`; ``vms`` the request's ``vms``/``vm``, or
  else the VMs behind its ``migration_id``/``estimate_id``/``seed_id`` as the
  injected resolvers say, looked up *before* the action runs; ``result``
  "ok" or :func:`~.audit.result_of` the exception the handler raised.
* **When it is written: after the action, before the answer.**  One entry
  carries both the request and its outcome (one fsync per action, in a
  worker thread: ``append`` blocks).  Before the action runs, the log's
  :attr:`~.audit.AuditLog.refusal` is checked, so a log found corrupt at
  start or after a failed write refuses the action before it does anything
  (AuditCorrupt / AuditWriteFailed; nothing changed).  The price of writing
  after: if the action's own entry fails to write, the action *has* taken
  effect -- the caller gets AuditWriteFailed saying so instead of the answer,
  and the log refuses every later action until the disk is fixed and the
  daemon restarted.  An action in flight when the daemon is killed is not
  recorded; a call the client cancels is recorded as "Cancelled: ...".  A
  write-ahead entry would close both gaps but needs a second entry for the
  outcome.  ``time`` is when the action finished; a stream (none is audited
  today) is recorded when it ends, after its messages went out.
* **Where it sits.**  Innermost on the server: ``[AuthInterceptor,
  ErrorInterceptor, AuditInterceptor]``, so it reads the identity the auth
  interceptor set outside it and sees the handler's raw exception, which
  its own errors (AuditCorrupt, AuditWriteFailed) join on the way out to
  ErrorInterceptor's status mapping.
* **A damaged log at start** (:func:`check_log`).  Opening checks only the
  log's tail; the daemon then verifies the whole chain.  A log that is not
  intact does *not* stop the daemon -- running migrations keep replicating,
  reads and ListAudit/VerifyAudit keep working so the damage can be looked
  at -- but every audited action is refused with AuditCorrupt naming the
  first bad entry, until the operator moves audit.log and audit.head aside
  and restarts.  Refusing to start would stop replication (rings fill,
  guests get throttled) over a bookkeeping problem.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from liftshift.v1 import control_pb2 as cpb

from .audit import AuditCorrupt, AuditEntry, AuditLog, AuditWriteFailed, VerifyResult, redact, result_of
from .errors import ConfigError, FailedPrecondition, InvalidArgument, LiftshiftError
from .security import Identity, OnRefused, current_identity, current_peer

if TYPE_CHECKING:
    from .estimator import Estimates
    from .migrations import Migrations
    from .seed import Seeds

log = logging.getLogger("liftshift.audit")

CONTROL_SERVICE = "liftshift.v1.Control"

#: Control methods that change nothing: not audited (every other one is).
READ_ONLY = frozenset({"ListReplications", "ListVms", "ListMigrations", "GetMigration", "Watch", "GetEstimate",
                       "ListSeeds", "GetStats", "GetThrottle", "ListAudit", "VerifyAudit"})

#: The Control methods that are audited.
AUDITED = frozenset(m.name for m in cpb.DESCRIPTOR.services_by_name["Control"].methods) - READ_ONLY

#: Request field -> the VMs behind that id (raises for an unknown id).
Resolver = Callable[[str], Iterable[str]]

# The classes AuthInterceptor refuses with, by the status code on_refused hears.
_REFUSED_AS = {grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
               grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied"}


@dataclass(frozen=True)
class _Pending:
    """What is known of an action before it runs."""

    action: str
    who: str
    peer: str
    params: dict[str, Any]
    vms: tuple[str, ...]


def who_is(identity: Identity | None) -> str:
    """The audit log's ``who`` for a caller."""
    return identity.name if identity is not None else "anonymous"


def params_of(request: Any) -> dict[str, Any]:
    """A request as the audit log's ``params``: proto3 JSON, .proto field names, secrets removed."""
    if not isinstance(request, Message):
        return {}  # a request stream: nothing read yet
    return dict(redact(json_format.MessageToDict(request, preserving_proto_field_name=True)))


class AuditInterceptor(grpc.aio.ServerInterceptor):
    """Records every audited call of ``service`` in ``log`` (see the module note).

    ``resolvers`` map a request field holding an id (``migration_id``) to a
    function returning the VMs behind it, for requests that name no VM.
    ``read_only`` are the method names not audited.
    """

    def __init__(self, log: AuditLog, *, resolvers: Mapping[str, Resolver] | None = None,
                 service: str = CONTROL_SERVICE, read_only: Iterable[str] = READ_ONLY) -> None:
        self.log = log
        self.resolvers = dict(resolvers or {})
        self.prefix = f"/{service}/"
        self.read_only = frozenset(read_only)

    def action_of(self, method: str) -> str | None:
        """The action name of a full method name, None when it is not audited."""
        if not method.startswith(self.prefix):
            return None
        name = method[len(self.prefix):]
        return None if name in self.read_only else name

    def vms_of(self, request: Any) -> tuple[str, ...]:
        """The VMs a request names, or those behind the first id field a resolver knows."""
        if not isinstance(request, Message):
            return ()
        fields = request.DESCRIPTOR.fields_by_name
        named = [*(request.vms if "vms" in fields else ()), *([request.vm] if "vm" in fields and request.vm else [])]
        if named:
            return tuple(dict.fromkeys(named))
        for field, resolve in self.resolvers.items():
            if field in fields:
                try:
                    return tuple(dict.fromkeys(resolve(getattr(request, field))))
                except LiftshiftError:
                    return ()  # an unknown id: the action will say so
        return ()

    def _begin(self, action: str, request: Any, context: grpc.aio.ServicerContext) -> _Pending:
        refusal = self.log.refusal
        if refusal is not None:  # known unable to record: refuse before acting
            cls = AuditCorrupt if isinstance(refusal, AuditCorrupt) else AuditWriteFailed
            raise cls(f"{action} refused, nothing done: {refusal.message}", hint=refusal.hint) from refusal
        return _Pending(action, who_is(current_identity.get()),
                        current_peer.get() or context.peer() or "", params_of(request),
                        self.vms_of(request))

    async def _record(self, p: _Pending, exc: BaseException | None) -> None:
        """Append the entry durably; a failure fails the call (AuditWriteFailed)."""
        result = result_of(exc)
        try:
            await asyncio.to_thread(self.log.append, p.who, p.peer, p.action, p.params, p.vms, result)
        except Exception as err:
            why = err.message if isinstance(err, LiftshiftError) else f"{type(err).__name__}: {err}"
            done = "was carried out" if exc is None else f"failed ({result})"
            log.error("%s by %s from %s %s but could not be recorded in the audit log: %s", p.action, p.who,
                      p.peer, done, why)
            raise AuditWriteFailed(
                f"{p.action} {done}, but it could not be recorded in the audit log: {why}",
                hint="every further action is refused until the audit log can be written again and the "
                     "daemon restarted" + (f"; {err.hint}" if isinstance(err, LiftshiftError) and err.hint else ""),
            ) from err

    async def _record_cancelled(self, p: _Pending) -> None:
        """The caller went away mid-action: record that, without a caller to tell if it fails."""
        try:
            await asyncio.shield(asyncio.to_thread(
                self.log.append, p.who, p.peer, p.action, p.params, p.vms,
                "Cancelled: the call was cancelled before it finished (what it started may carry on)"))
        except (Exception, asyncio.CancelledError):
            log.exception("cancelled %s by %s from %s could not be recorded in the audit log",
                          p.action, p.who, p.peer)

    def _wrap_unary(self, fn: Callable[..., Any], action: str) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            p = self._begin(action, request, context)
            try:
                result = fn(request, context)
                if inspect.isawaitable(result):
                    result = await result
            except asyncio.CancelledError:
                await self._record_cancelled(p)
                raise
            except Exception as exc:
                await self._record(p, exc)
                raise
            await self._record(p, None)
            return result

        return wrapper

    def _wrap_stream(self, fn: Callable[..., Any], action: str) -> Callable[..., AsyncIterator[Any]]:
        @functools.wraps(fn)
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            p = self._begin(action, request, context)
            items = fn(request, context)
            try:
                if inspect.isawaitable(items):
                    await items  # a coroutine streaming with context.write()
                else:
                    async for item in items:
                        yield item
            except (asyncio.CancelledError, GeneratorExit):
                await self._record_cancelled(p)
                raise
            except Exception as exc:
                await self._record(p, exc)
                raise
            finally:
                aclose = getattr(items, "aclose", None)
                if aclose is not None:
                    await aclose()  # the handler's own finally blocks run now
            await self._record(p, None)

        return wrapper

    async def intercept_service(self, continuation: Callable[..., Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        action = self.action_of(details.method)
        if handler is None or action is None:
            return handler
        des, ser = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(self._wrap_unary(handler.unary_unary, action), des, ser)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(self._wrap_unary(handler.stream_unary, action), des, ser)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(self._wrap_stream(handler.unary_stream, action), des, ser)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(self._wrap_stream(handler.stream_stream, action), des, ser)
        # A kind of handler this cannot wrap would go unrecorded: fail closed (UNIMPLEMENTED).
        log.error("%s: cannot audit handler %r; refusing the method", details.method, handler)
        return None


def audit_refusal(log: AuditLog, service: str = CONTROL_SERVICE) -> OnRefused:
    """The AuthInterceptor's ``on_refused``: record each refused call (its request is never read)."""
    prefix = f"/{service}/"

    async def on_refused(identity: Identity | None, peer: str, method: str, code: grpc.StatusCode,
                         reason: str) -> None:
        action = method[len(prefix):] if method.startswith(prefix) else method
        result = f"{_REFUSED_AS.get(code, code.name)}: {reason}"
        await asyncio.to_thread(log.append, who_is(identity), peer, action, {}, [], result)

    return on_refused


def daemon_resolvers(migrations: Migrations, estimates: Estimates, seeds: Seeds) -> dict[str, Resolver]:
    """How the source daemon finds the VMs behind the ids its requests carry."""
    return {"migration_id": lambda mid: [v.vm for v in migrations.get(mid).vms],
            "estimate_id": lambda eid: list(estimates.get(eid).vms),  # "" is the latest estimate
            "seed_id": lambda sid: [seeds.get(sid).vm]}


def open_log(state_dir: Path) -> AuditLog:
    """The daemon's audit log, ``<state_dir>/audit.log``; AuditInUse when another daemon has it open."""
    path = Path(state_dir) / "audit.log"
    try:
        return AuditLog(path)
    except OSError as e:
        raise ConfigError(f"cannot open the audit log {path}: {e.strerror or e}",
                          hint="check state_dir: the daemon must be able to create and write files there") from e


def check_log(audit: AuditLog) -> VerifyResult:
    """Verify the whole log at start; when it is not intact every audited action is refused (logged here)."""
    t0 = time.monotonic()
    result = audit.check()
    if result.ok:
        log.info("audit log %s: %s (%.2f s)", audit.path, result, time.monotonic() - t0)
    else:
        log.error("audit log %s is not intact: %s -- every action that changes something is refused "
                  "(reads, `liftshift audit list` and `audit verify` still work); to start a new log, move "
                  "audit.log and audit.head aside (keep them as evidence) and restart the daemon",
                  audit.path, result.reason)
    return result


def entry_pb(e: AuditEntry) -> cpb.AuditEntry:
    return cpb.AuditEntry(seq=e.seq, time=e.time, who=e.who, peer=e.peer, action=e.action,
                          params_json=json.dumps(e.params, ensure_ascii=False), vms=e.vms, result=e.result,
                          prev=e.prev, hash=e.hash)


class AuditRpcs:
    """ListAudit and VerifyAudit, for the Control servicer (``self.audit`` is the log or None)."""

    audit: AuditLog | None = None

    def _audit_log(self) -> AuditLog:
        if self.audit is None:
            raise FailedPrecondition("this daemon keeps no audit log")
        return self.audit

    async def ListAudit(self, request: cpb.ListAuditRequest,
                        context: grpc.aio.ServicerContext) -> cpb.ListAuditResponse:
        audit = self._audit_log()
        if not request.since >= 0:
            raise InvalidArgument(f"since must be a Unix time >= 0, not {request.since}")
        entries = await asyncio.to_thread(audit.entries, request.since or None, request.vm or None)
        return cpb.ListAuditResponse(entries=[entry_pb(e) for e in entries])

    async def VerifyAudit(self, request: cpb.VerifyAuditRequest,
                          context: grpc.aio.ServicerContext) -> cpb.VerifyAuditResponse:
        r = await asyncio.to_thread(self._audit_log().verify)
        return cpb.VerifyAuditResponse(ok=r.ok, entries=r.count, first_bad_seq=r.first_bad_seq or 0, reason=str(r))
