"""vSphere client layer, part 1: configuration of one side, the session, tasks.

Design note
-----------
This is the client layer the ``vsphere`` platform is built on, not the
platform itself.  One :class:`VsphereSession` per side (source vCenter,
destination vCenter) holds one pyvmomi connection.  pyvmomi is blocking, so
every operation is a plain function run in a worker thread by
:meth:`VsphereSession.run`; the event loop never waits on vCenter.

``run`` is also where the session's rules live, once:

* **Re-login.** A call that fails with ``vim.fault.NotAuthenticated`` (the
  session expired or was terminated from outside) logs in again on the same
  stub (object references stay valid) and runs the operation once more.  The
  operation is re-run as a whole, so operations are written to be repeatable
  (they check the state before changing it).  A generation counter makes
  concurrent failures log in once.
* **Errors.** Every vim fault becomes a :class:`VsphereFault` that carries the
  fault's class and fields verbatim and builds its message from them (the
  simulator's ``msg`` is only the Go type name); connection failures become
  :class:`~liftshift.daemon.errors.Unavailable`.

Tasks are awaited with :meth:`VsphereSession.wait_task_sync` (inside an
operation) by polling ``task.info`` until a deadline; the timeout error names
the task.  PBM (storage policies) shares the vim session: see :meth:`pbm`.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import SoapStubAdapter, VmomiSupport, pbm, vim, vmodl

from .errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LiftshiftError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from .settings import VsphereSide

log = logging.getLogger("liftshift.daemon.vsphere")

T = TypeVar("T")


class VsphereFault(LiftshiftError):
    """A vSphere call or task failed with a vim fault; ``fault`` is its class
    (``vim.fault.FileNotFound``) and ``fields`` its data, verbatim."""

    def __init__(self, message: str, *, fault: str, fields: dict[str, Any], task: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.fault = fault
        self.fields = fields
        self.task = task
        self.code = _code_of(fault)


class TaskTimedOut(Unavailable):
    """A vSphere task did not finish within its timeout (it may still finish)."""


class UntrustedCertificate(FailedPrecondition):
    """The vCenter's TLS certificate is not trusted (``ca_file`` / ``insecure``)."""


_CODES: tuple[tuple[tuple[str, ...], type[LiftshiftError]], ...] = (
    (("NotAuthenticated", "InvalidLogin"), Unauthenticated),
    (("NoPermission",), PermissionDenied),
    (("FileNotFound", "ManagedObjectNotFound", "NotFound", "InvalidDatastorePath"), NotFound),
    (("FileAlreadyExists", "DuplicateName", "AlreadyExists"), AlreadyExists),
    (("InvalidArgument", "InvalidRequest", "InvalidDatastore", "InvalidDeviceSpec", "InvalidName"), InvalidArgument),
    (("InvalidPowerState", "InvalidState", "TaskInProgress", "ToolsUnavailable", "NotSupported"), FailedPrecondition),
)


def _code_of(fault: str) -> Any:
    short = fault.rsplit(".", 1)[-1]
    for names, cls in _CODES:
        if short in names:
            return cls.code
    return LiftshiftError.code


def _plain(value: Any) -> Any:
    """A fault field as plain data: managed objects as their ``type:moid``."""
    if isinstance(value, VmomiSupport.ManagedObject):
        return f"{VmomiSupport.GetVmodlName(type(value))}:{value._moId}"
    if isinstance(value, VmomiSupport.DataObject):
        return {p.name: _plain(getattr(value, p.name)) for p in value._GetPropertyList()
                if p.name not in ("dynamicType", "dynamicProperty") and getattr(value, p.name) is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def fault_error(exc: vmodl.MethodFault, doing: str, *, task: str | None = None) -> VsphereFault:
    """A vim fault as a VsphereFault whose message says what failed and why."""
    kind = _fault_path(exc)
    fields = _plain(exc)  # every field, as vCenter sent it
    msg = (getattr(exc, "msg", None) or "").strip()
    details = [f"{k}={v!r}" for k, v in fields.items()
               if k not in ("msg", "faultCause", "faultMessage") and v not in ([], {}, "")]
    texts = [str(m.message) for m in (exc.faultMessage or []) if getattr(m, "message", None)]
    if msg and not msg.startswith("*types."):  # the simulator's msg is only the Go type name
        texts.insert(0, msg)
    if exc.faultCause is not None:
        texts.append(f"caused by {_fault_path(exc.faultCause)}")
    where = f" (task {task})" if task else ""
    text = f"{doing}{where}: {kind}" + (f" {', '.join(details)}" if details else "") + \
        (f": {'; '.join(texts)}" if texts else "")
    return VsphereFault(text, fault=kind, fields=fields, task=task)


def _fault_path(exc: vmodl.MethodFault) -> str:
    """``vim.fault.FileNotFound`` / ``vmodl.fault.ManagedObjectNotFound``."""
    return str(VmomiSupport.GetVmodlName(type(exc)))


def _connection_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError | http.client.HTTPException) and not isinstance(exc, ssl.SSLCertVerificationError)


class VsphereSession:
    """One logged-in connection to one vCenter (``name``: "source", "destination")."""

    def __init__(self, side: VsphereSide, name: str = "vsphere") -> None:
        side.validate()
        self.side = side
        self.name = name
        self.host, self.port = side.host_port()
        self._si: Any = None
        self._lock = threading.Lock()
        self._generation = 0
        self._pbm: Any = None
        self.logins = 0  # how many times this session logged in (first login included)

    @property
    def where(self) -> str:
        return f"{self.name} vCenter https://{self.host}:{self.port}"

    @property
    def si(self) -> Any:
        """The pyvmomi ServiceInstance (connect first)."""
        if self._si is None:
            raise FailedPrecondition(f"{self.where}: not connected")
        return self._si

    @property
    def content(self) -> Any:
        return self.si.content

    def ssl_context(self) -> ssl.SSLContext:
        if self.side.insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        return ssl.create_default_context(cafile=str(self.side.ca_file) if self.side.ca_file else None)

    # -- connecting ---------------------------------------------------------

    def connect_sync(self) -> None:
        if self._si is not None:
            return
        if self.side.insecure:
            log.warning("%s: TLS certificate verification is OFF (insecure = true): anyone on the path can "
                        "impersonate this vCenter and read its credentials", self.where)
        password = self.side.resolve_password()
        try:
            self._si = SmartConnect(host=self.host, port=self.port, user=self.side.user, pwd=password,
                                    sslContext=self.ssl_context(), httpConnectionTimeout=self.side.request_timeout_s)
        except vim.fault.InvalidLogin as e:
            raise Unauthenticated(f"{self.where} refused the login of user {self.side.user!r}: "
                                  f"{getattr(e, 'msg', None) or 'InvalidLogin'}",
                                  hint="check the user and the password (password / password_env / password_file)"
                                  ) from None
        except vim.fault.NoPermission as e:
            raise PermissionDenied(f"{self.where}: user {self.side.user!r} may not log in: "
                                   f"{e.privilegeId or getattr(e, 'msg', '')}") from None
        except ssl.SSLCertVerificationError as e:
            raise UntrustedCertificate(
                f"{self.where}: the certificate of {self.host} is not trusted: {e.verify_message or e}",
                hint="set ca_file to the PEM of the CA that signed the vCenter certificate "
                     "(or, for a lab only, insecure = true)") from None
        except vmodl.MethodFault as e:
            raise fault_error(e, f"logging in to {self.where}") from None
        except Exception as e:  # OSError, http.client errors, pyVim's "is down or is not a VIM server"
            raise Unavailable(f"cannot reach {self.where}: {type(e).__name__}: {e}",
                              hint="check url, that vCenter is up, and the network/firewall to it") from None
        self.logins += 1
        log.info("%s: logged in as %s (%s)", self.where, self.side.user, self._si.content.about.fullName)

    async def connect(self) -> None:
        """Log in (CA-verified TLS unless ``insecure``); typed errors for every failure."""
        await asyncio.to_thread(self.connect_sync)

    async def close(self) -> None:
        """Log out and drop the connection."""
        si, self._si, self._pbm = self._si, None, None
        if si is not None:
            try:
                await asyncio.to_thread(Disconnect, si)
            except Exception as e:  # a dead session or vCenter: nothing to release
                log.debug("%s: logout failed: %s", self.where, e)

    def _relogin(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return  # another thread logged in again already
            log.warning("%s: session is no longer valid (expired or terminated): logging in again", self.where)
            try:
                self.si.content.sessionManager.Login(userName=self.side.user, password=self.side.resolve_password())
            except vim.fault.InvalidLogin as e:
                raise Unauthenticated(f"{self.where}: logging in again as {self.side.user!r} failed: "
                                      f"{getattr(e, 'msg', '')}",
                                      hint="the password may have changed") from None
            self._generation += 1
            self._pbm = None
            self.logins += 1

    # -- running operations -------------------------------------------------

    def call_sync(self, fn: Callable[..., T], *args: Any, doing: str) -> T:
        """Run ``fn(*args)`` here (in a worker thread): re-login once on
        NotAuthenticated, vim faults as VsphereFault, lost connections as Unavailable."""
        generation = self._generation
        try:
            try:
                return fn(*args)
            except vim.fault.NotAuthenticated:
                self._relogin(generation)
                return fn(*args)
        except LiftshiftError:
            raise
        except vmodl.MethodFault as e:
            raise fault_error(e, f"{doing} on {self.where}") from None
        except Exception as e:
            if _connection_error(e):
                raise Unavailable(f"{doing}: lost the connection to {self.where}: {type(e).__name__}: {e}") from None
            raise

    async def run(self, fn: Callable[..., T], *args: Any, doing: str) -> T:
        """:meth:`call_sync` in a worker thread."""
        return await asyncio.to_thread(self.call_sync, fn, *args, doing=doing)

    def wait_task_sync(self, task: Any, what: str, timeout: float | None = None) -> Any:
        """Wait for ``task``; return its result.  A failed task raises VsphereFault
        (fault class and fields verbatim), a slow one TaskTimedOut naming it."""
        timeout = self.side.task_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            info = task.info
            if info.state == vim.TaskInfo.State.success:
                return info.result
            if info.state == vim.TaskInfo.State.error:
                raise fault_error(info.error, f"{what} on {self.where}", task=f"{task._moId} {info.descriptionId}")
            if time.monotonic() >= deadline:
                raise TaskTimedOut(f"{what} on {self.where}: vSphere task {task._moId} ({info.descriptionId}) "
                                   f"on {info.entityName} did not finish within {timeout:g} s (state {info.state}, "
                                   f"progress {info.progress if info.progress is not None else '?'}%)",
                                   hint="it may still finish: check the task in vCenter before retrying")
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)

    async def wait_task(self, task: Any, what: str, timeout: float | None = None) -> Any:
        """:meth:`wait_task_sync` in a worker thread."""
        return await self.run(self.wait_task_sync, task, what, timeout, doing=what)

    # -- PBM ----------------------------------------------------------------

    def pbm(self) -> Any:
        """The PBM (storage policy) service content, on this vim session.

        vCenter reads the session from the ``vcSessionCookie`` SOAP header;
        govmomi's simulator only from the HTTP cookie: both are sent.  Built
        again after a re-login (the cookie changed)."""
        with self._lock:
            if self._pbm is None:
                cookie = self.si._stub.cookie
                session_id = cookie.split(";")[0].split("=", 1)[1].strip('"')
                stub = SoapStubAdapter(host=self.host, port=self.port, path="/pbm",
                                       version=VmomiSupport.newestVersions.GetName("pbm"),
                                       sslContext=self.ssl_context(), requestContext={"vcSessionCookie": session_id},
                                       httpConnectionTimeout=self.side.request_timeout_s)
                stub.cookie = cookie
                self._pbm = pbm.ServiceInstance("ServiceInstance", stub).RetrieveContent()
            return self._pbm
