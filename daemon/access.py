"""Who may reach each liftshift server, and with which role.

Design note
-----------
Both daemons listen with mutual TLS by default: the server presents its
certificate, and every client must present one chaining to the configured
CA (or, on top of that, a bearer token).  Which role a method needs is
decided here, once per service, so the daemons and their docs agree:

* the source daemon's Control service: *viewer* reads (lists, status,
  statistics, the audit log), *operator* acts on migrations (create, start,
  pause, cutover, throttle, seeds, estimates); anything not listed needs
  *admin* (configuration, certificates);
* the sink: the source daemon's client certificate is an *operator*
  (replication, seed import, destination VMs); listing shadows is *viewer*.

Plain text is possible only with an explicit ``insecure`` setting, only on a
loopback address, and it is logged as a warning at start; every caller is
then the admin ``insecure-loopback``.  The mechanics (certificate checks,
tokens, the interceptor, which logs every refusal) live in
:mod:`liftshift.daemon.security`.

The Control service ends TLS in its own front (:mod:`.tlsfront`), so that a
handshake refused there (a certificate from another CA, an expired one) is
audited like any refused call, and a caller without a certificate can be
admitted by a token or refused with UNAUTHENTICATED.  The sink keeps gRPC's
TLS (its traffic is the replication stream): a daemon it does not trust is
refused in the handshake, logged by gRPC's core.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from . import channels
from .errors import LiftshiftError
from .security import (
    AuthInterceptor,
    Identity,
    Role,
    TokenStore,
    check_insecure_listen,
    load_channel_credentials,
    load_server_credentials,
)
from .tlsfront import Callers, TlsFront, server_context

log = logging.getLogger("liftshift.access")

OnRefused = Callable[[Identity | None, str, str, grpc.StatusCode, str], Awaitable[None] | None]

_C = "/liftshift.v1.Control/"
CONTROL_ROLES: Mapping[str, Role] = {
    **{_C + m: Role.VIEWER for m in ("ListReplications", "ListVms", "ListMigrations", "GetMigration", "Watch",
                                     "GetEstimate", "ListSeeds", "GetStats", "GetThrottle", "ListAudit",
                                     "VerifyAudit")},
    **{_C + m: Role.OPERATOR for m in ("VerifyVdisk", "CreateMigration", "StartMigration", "PauseMigration",
                                       "ResumeMigration", "AbortMigration", "Cutover", "RollbackMigration",
                                       "AttachFilter", "StartEstimate", "StopEstimate", "ExportSeed", "DropSeed",
                                       "SetThrottle")},
}
SINK_ROLES: Mapping[str, Role] = {
    "/liftshift.v1.Replication/ListVdisks": Role.VIEWER,
    "/liftshift.v1.Replication/*": Role.OPERATOR,
    "/liftshift.v1.Destination/ListVms": Role.VIEWER,
    "/liftshift.v1.Destination/GetVm": Role.VIEWER,
    "/liftshift.v1.Destination/*": Role.OPERATOR,
}


@dataclass
class Access:
    """How one server listens and admits callers."""

    server_credentials: grpc.ServerCredentials | None  # None: plain text (insecure loopback, or behind front)
    interceptor: AuthInterceptor
    front: TlsFront | None = None  # TLS ended in Python (see .tlsfront)

    async def listen(self, server: grpc.aio.Server, address: str) -> int:
        """Make ``server`` reachable on ``address`` (before ``server.start()``); the bound port."""
        if self.front is None:
            return add_port(server, address, self.server_credentials)
        backend = add_port(server, "127.0.0.1:0", None)
        port = await self.front.start(address, backend)
        log.info("TLS on %s ends in the daemon (audited handshakes); gRPC serves behind it on back end "
                 "127.0.0.1:%d, which admits only the front's connections", address, backend)
        return port

    async def close(self) -> None:
        """Stop the front, if any (the gRPC server is stopped by its owner)."""
        if self.front is not None:
            await self.front.close()


def server_access(what: str, listen: str, roles: Mapping[str, Role], *, insecure: bool, cert: Path | None,
                  key: Path | None, ca: Path | None, tokens_file: Path | None,
                  on_refused: OnRefused | None = None, front: bool = False) -> Access:
    """Credentials and interceptor for a server listening on ``listen``.

    With ``front`` (and TLS, on a ``HOST:PORT`` address) TLS ends in a
    :class:`~.tlsfront.TlsFront` whose refused handshakes reach
    ``on_refused`` too.  Raises ConfigError for plain text on a non-loopback address, a missing or
    bad certificate, key, CA or token file (naming it)."""
    if insecure:
        check_insecure_listen(listen)
        log.warning("%s listens in PLAIN TEXT on %s (insecure = true): anyone who can connect to it is admin; "
                    "use it only for demos and tests", what, listen)
        return Access(None, AuthInterceptor(roles, insecure=True, on_refused=on_refused))
    assert cert is not None and key is not None and ca is not None  # the configuration checks require them
    creds = load_server_credentials(cert, key, ca, require_client_cert=True)  # checks the files, naming them
    tokens = TokenStore.load(tokens_file) if tokens_file is not None else None
    if front and not listen.startswith(("unix:", "unix-abstract:")):
        callers = Callers()
        return Access(None, AuthInterceptor(roles, tokens=tokens, on_refused=on_refused, callers=callers),
                      TlsFront(server_context(cert, key, ca), callers, on_refused=on_refused))
    return Access(creds, AuthInterceptor(roles, tokens=tokens, on_refused=on_refused))


def client_credentials(*, insecure: bool, ca: Path | None, cert: Path | None, key: Path | None) -> None:
    """Set how this daemon dials other liftshift servers (see :mod:`liftshift.daemon.channels`)."""
    if insecure:
        channels.configure(None)
        return
    channels.configure(load_channel_credentials(ca, cert, key))


def add_port(server: grpc.aio.Server, address: str, creds: grpc.ServerCredentials | None) -> int:
    """Listen on ``address`` (TLS with ``creds``, else plain text); the bound port."""
    port = server.add_secure_port(address, creds) if creds is not None else server.add_insecure_port(address)
    if port == 0:
        raise LiftshiftError(f"cannot listen on {address}")
    return port
