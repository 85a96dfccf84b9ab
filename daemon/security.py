"""Who may call what: TLS material, roles, bearer tokens and the auth interceptor.

Design note
-----------
Goal: every gRPC call a liftshift daemon serves comes from a known
:class:`Identity` whose :class:`Role` is high enough for the method, or it is
refused -- UNAUTHENTICATED or PERMISSION_DENIED -- *before* its handler runs,
so a refused call changes nothing.  Handlers read :data:`current_identity`
to attribute what they do (the audit log's ``who``).

Plan.

* **Transport.**  :func:`load_server_credentials` and
  :func:`load_channel_credentials` read PEM files and check them with
  ``cryptography`` first (exists, readable, PEM, not expired, key matches
  certificate), so a bad file is a :class:`ConfigError` naming the file and
  the problem instead of gRPC's opaque handshake failure.  With
  ``require_client_cert=False`` the server does not ask for client
  certificates at all (gRPC's Python API has no "request but do not
  require"): callers then authenticate with bearer tokens.
* **Roles.**  viewer < operator < admin.  The caller passes the method ->
  role map (``{"/liftshift.v1.Control/Cutover": Role.OPERATOR}``; a key
  ``"/pkg.Service/*"`` covers a whole service).  A method not in the map
  needs ``default_role`` (admin): deny unless listed.  The health and
  reflection services are open to anyone, even unauthenticated, so probes
  and grpcurl work.
* **Client certificates** carry their role in the subject:
  ``OU=liftshift:<role>`` (``liftshift certs issue --client --role R``
  writes it; :func:`role_ou`).  The prefix keeps an unrelated OU such as
  "admin" in a corporate CA's certificates from granting anything.  The
  identity's name is the certificate's CN.  An optional ``cert_roles``
  mapping CN -> role overrides the OU for the CNs it lists (to lower a
  certificate's role without reissuing it, or for certificates of a CA that
  writes no such OU).
* **Bearer tokens** (``authorization: Bearer <token>`` metadata) are listed
  in a token file, one ``name role sha256-hex-of-token`` per line (``#``
  starts a comment); only hashes are stored, and a presented token is
  compared against every hash in constant time.  :meth:`TokenStore.generate`
  makes a token and its line.  Tokens are accepted over TLS only.
* **Precedence.**  A bearer token, when sent, decides who the caller is
  (``via="token"``), even on a connection with a valid client certificate:
  the certificate then only admits the connection (a shared host's
  certificate, a person's token).  An invalid token is refused; it never
  falls back to the certificate.
* **Insecure loopback.**  ``AuthInterceptor(..., insecure=True)`` is for
  explicitly allowed plaintext on loopback: every caller (from a loopback
  or unix-socket peer) is the admin ``insecure-loopback``.  The daemon must
  call :func:`check_insecure_listen` on the address first.

Warnings.  Where gRPC ends TLS (the sink), certificate refusals (unknown CA,
no client certificate when one is required) happen in the handshake, before
any interceptor: they never reach ``on_refused`` (gRPC logs them) and the
client sees UNAVAILABLE.  The Control service ends TLS in its own front
(:mod:`.tlsfront`, ``callers=``), which reports them to ``on_refused``.  There
is no revocation list: to cut a client off before its certificate expires,
lower it with ``cert_roles`` (viewer) or replace the CA.

Wiring::

    auth = AuthInterceptor(METHOD_ROLES, tokens=TokenStore.load(path), on_refused=audit_refusal)
    server = grpc.aio.server(interceptors=[auth, ErrorInterceptor()])
    server.add_secure_port(addr, load_server_credentials(cert, key, ca))
    channel = grpc.aio.secure_channel(addr, load_channel_credentials(ca, cert, key, token=tok))
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import enum
import functools
import hashlib
import hmac
import inspect
import ipaddress
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from .errors import ERROR_KEY, HINT_KEY, ConfigError, InvalidArgument, LiftshiftError, PermissionDenied, Unauthenticated

if TYPE_CHECKING:
    from .tlsfront import Callers

log = logging.getLogger("liftshift.security")

PathLike = str | os.PathLike[str]


# ---- roles and identities ---------------------------------------------------

class Role(enum.IntEnum):
    """What a caller may do; each role may do everything the lower ones may."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str | Role) -> Role:
        """``"operator"`` (any case) or a Role; InvalidArgument naming the choices otherwise."""
        if isinstance(value, Role):
            return value
        try:
            return cls[str(value).strip().upper()]
        except KeyError:
            raise InvalidArgument(f"unknown role {value!r}: one of {', '.join(str(r) for r in cls)}") from None


ROLE_OU_PREFIX = "liftshift:"


def role_ou(role: str | Role) -> str:
    """The OU value that gives a client certificate ``role`` (``liftshift:operator``)."""
    return ROLE_OU_PREFIX + str(Role.parse(role))


def certificate_role(cert: x509.Certificate) -> Role | None:
    """The role a client certificate carries in its ``OU=liftshift:<role>`` (None: none).

    Several different role OUs, or an unknown role, raise PermissionDenied.
    """
    roles = set()
    for attr in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME):
        value = attr.value if isinstance(attr.value, str) else attr.value.decode(errors="replace")
        if value.startswith(ROLE_OU_PREFIX):
            try:
                roles.add(Role.parse(value.removeprefix(ROLE_OU_PREFIX)))
            except InvalidArgument:
                raise PermissionDenied(f"the client certificate's OU {value!r} names no liftshift role") from None
    if len(roles) > 1:
        raise PermissionDenied(f"the client certificate carries several roles ({', '.join(map(str, sorted(roles)))})")
    return roles.pop() if roles else None


@dataclass(frozen=True)
class Identity:
    """Who is calling: ``via`` is "cert", "token" or "insecure" (plaintext loopback)."""

    name: str
    role: Role
    via: str

    def __str__(self) -> str:
        return f"{self.name} ({self.role} via {self.via})"


INSECURE_IDENTITY = Identity("insecure-loopback", Role.ADMIN, "insecure")

#: The caller of the RPC being handled (set by :class:`AuthInterceptor`;
#: None outside a guarded call and in the open health/reflection services).
current_identity: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "liftshift_current_identity", default=None)
#: Where that caller connects from (set with it): the gRPC peer, or behind a
#: TLS front (:mod:`.tlsfront`) the front's peer, not its back-end connection.
current_peer: contextvars.ContextVar[str | None] = contextvars.ContextVar("liftshift_current_peer", default=None)


# ---- TLS material ------------------------------------------------------------

def _read(path: PathLike, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path}: is a directory, not a file") from None
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot read it ({e.strerror or e})") from None


def _load_certs(path: PathLike, what: str, *, check_dates: bool = True) -> tuple[bytes, list[x509.Certificate]]:
    data = _read(path, what)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ConfigError(f"{what} {path}: not a PEM certificate (no '-----BEGIN CERTIFICATE-----' line)",
                          hint="give the certificate file (NAME.pem), not the key")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise ConfigError(f"{what} {path}: not a valid PEM certificate ({e})") from None
    if check_dates:
        now = datetime.datetime.now(datetime.UTC)
        leaf = certs[0]
        if leaf.not_valid_after_utc < now:
            raise ConfigError(f"{what} {path}: expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
                              hint="issue a new one (liftshift certs issue)")
        if leaf.not_valid_before_utc > now + datetime.timedelta(minutes=5):
            raise ConfigError(f"{what} {path}: not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
                              hint="check this host's clock")
    return data, certs


def _load_key(path: PathLike, what: str) -> tuple[bytes, Any]:
    data = _read(path, what)
    if b"PRIVATE KEY-----" not in data:
        raise ConfigError(f"{what} {path}: not a PEM private key (no '-----BEGIN ... PRIVATE KEY-----' line)",
                          hint="give the key file (NAME.key), not the certificate")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{what} {path}: the key is encrypted; liftshift needs an unencrypted key",
                          hint="keep it unencrypted with mode 0600 (as `liftshift certs` writes it)") from None
    except Exception as e:  # ValueError, UnsupportedAlgorithm
        raise ConfigError(f"{what} {path}: not a valid PEM private key ({e})") from None
    return data, key


def _spki(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo))


def _load_pair(cert: PathLike, key: PathLike, what: str) -> tuple[bytes, bytes]:
    """(chain PEM, key PEM) once both are readable and the key is the certificate's."""
    chain_pem, certs = _load_certs(cert, f"{what} certificate")
    key_pem, private = _load_key(key, f"{what} key")
    if _spki(private.public_key()) != _spki(certs[0].public_key()):
        raise ConfigError(f"{what} key {key} does not match the certificate {cert}",
                          hint="give the key written together with that certificate")
    return chain_pem, key_pem


def load_server_credentials(cert: PathLike, key: PathLike, ca: PathLike | None, *,
                            require_client_cert: bool = True) -> grpc.ServerCredentials:
    """TLS server credentials from PEM files (ConfigError naming the file on any problem).

    ``ca`` is the CA bundle client certificates must chain to; with
    ``require_client_cert`` every client must present one (mTLS), without it
    none is asked for (callers then use bearer tokens) and ``ca`` may be None.
    """
    chain_pem, key_pem = _load_pair(cert, key, "server")
    ca_pem = None
    if ca is not None:
        ca_pem, _ = _load_certs(ca, "CA certificate", check_dates=False)
    elif require_client_cert:
        raise ConfigError("requiring client certificates needs a CA file to verify them against",
                          hint="set the CA file, or turn client certificates off (then callers use tokens)")
    return grpc.ssl_server_credentials([(key_pem, chain_pem)], root_certificates=ca_pem,
                                       require_client_auth=require_client_cert)


def load_channel_credentials(ca: PathLike | None, cert: PathLike | None = None, key: PathLike | None = None, *,
                             token: str | None = None) -> grpc.ChannelCredentials:
    """TLS channel credentials from PEM files (ConfigError naming the file on any problem).

    ``ca`` verifies the server (None: the system's roots); ``cert`` and
    ``key`` are the client certificate for mTLS (both or neither); ``token``
    is sent as ``authorization: Bearer <token>`` on every call.
    """
    if (cert is None) != (key is None):
        raise ConfigError(f"a client certificate needs its key and a key its certificate (got only "
                          f"{'the certificate ' + str(cert) if key is None else 'the key ' + str(key)})")
    ca_pem = _load_certs(ca, "CA certificate", check_dates=False)[0] if ca is not None else None
    chain_pem = key_pem = None
    if cert is not None and key is not None:
        chain_pem, key_pem = _load_pair(cert, key, "client")
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem, certificate_chain=chain_pem)
    if token is not None:
        creds = grpc.composite_channel_credentials(creds, token_call_credentials(token))
    return creds


def token_call_credentials(token: str) -> grpc.CallCredentials:
    """Call credentials sending ``authorization: Bearer <token>`` (secure channels only)."""
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError("a bearer token is printable ASCII without spaces")
    return grpc.access_token_call_credentials(token)


# ---- bearer tokens -----------------------------------------------------------

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}\Z")
_HASH_RE = re.compile(r"[0-9a-f]{64}\Z")
TOKEN_PREFIX = "lst_"
_MAX_TOKEN = 512


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token, as the token file stores it."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenEntry:
    """One line of a token file: who a token is, and the hash of it."""

    name: str
    role: Role
    sha256: str


class TokenStore:
    """The bearer tokens a daemon accepts, by their SHA-256 only.

    File format (UTF-8 text): one ``name role sha256-hex`` per line, fields
    separated by whitespace, ``#`` to the end of a line is a comment.  A
    name may have several lines (rotation: old and new token side by side).
    """

    def __init__(self, entries: Iterable[TokenEntry] = (), *, source: str = "") -> None:
        self.entries = tuple(entries)
        self.source = source
        self._digests = [(bytes.fromhex(e.sha256), e) for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    @classmethod
    def load(cls, path: PathLike) -> TokenStore:
        """Read a token file; ConfigError naming the file (and line) on any problem."""
        data = _read(path, "token file")
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise ConfigError(f"token file {path}: not UTF-8 text") from None
        return cls.parse(text, str(path))

    @classmethod
    def parse(cls, text: str, source: str = "<tokens>") -> TokenStore:
        """Parse a token file's text (``source`` names it in errors)."""
        entries: list[TokenEntry] = []
        seen: dict[str, int] = {}
        for n, raw in enumerate(text.splitlines(), 1):
            fields = raw.split("#", 1)[0].split()
            if not fields:
                continue
            where = f"token file {source} line {n}"
            if len(fields) != 3:
                raise ConfigError(f"{where}: expected 'name role sha256', got {len(fields)} field(s)",
                                  hint="make lines with TokenStore.generate; never put the token itself here")
            name, role_text, digest = fields
            if not _NAME_RE.match(name):
                raise ConfigError(f"{where}: bad name {name!r} (letters, digits, '.', '_', '@', '-')")
            try:
                role = Role.parse(role_text)
            except InvalidArgument as e:
                raise ConfigError(f"{where}: {e.message}") from None
            digest = digest.lower()
            if not _HASH_RE.match(digest):
                raise ConfigError(f"{where}: the third field is not a SHA-256 in hex (64 hex digits)",
                                  hint="the file holds hashes of tokens, never tokens")
            if digest in seen:
                raise ConfigError(f"{where}: the same token hash as line {seen[digest]}")
            seen[digest] = n
            entries.append(TokenEntry(name, role, digest))
        return cls(entries, source=source)

    @staticmethod
    def generate(name: str, role: str | Role) -> tuple[str, str]:
        """A new random token and the token-file line for it (without newline).

        Give the token to the client once; store only the line.
        """
        if not _NAME_RE.match(name):
            raise InvalidArgument(f"bad token name {name!r}: letters, digits, '.', '_', '@', '-' (up to 128)")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        return token, f"{name} {Role.parse(role)} {hash_token(token)}"

    def lookup(self, token: str) -> Identity | None:
        """The identity of a presented token (None: unknown), in constant time per entry."""
        if not token or len(token) > _MAX_TOKEN:
            return None
        digest = hashlib.sha256(token.encode(errors="surrogateescape")).digest()
        found = None
        for stored, entry in self._digests:  # every entry, match or not
            if hmac.compare_digest(stored, digest) and found is None:
                found = entry
        return Identity(found.name, found.role, "token") if found is not None else None


# ---- plaintext on loopback ----------------------------------------------------

def _is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def check_insecure_listen(address: str) -> None:
    """ConfigError unless plaintext ``address`` is loopback-only.

    Accepted: ``127.0.0.0/8``, ``[::1]``, ``localhost`` (with a port) and
    unix sockets (``unix:PATH``).  Refused: every other host, including the
    wildcards ``0.0.0.0`` and ``[::]``, and host names (they may resolve
    anywhere).
    """
    if address.startswith(("unix:", "unix-abstract:")):
        return
    host = address
    if address.startswith("["):
        host = address[1:].split("]", 1)[0]
    elif address.count(":") == 1:
        host = address.split(":", 1)[0]
    if not _is_loopback_host(host):
        raise ConfigError(f"plaintext (insecure) listen address {address!r} is not loopback: anyone who can reach "
                          "it would be admin", hint="listen on 127.0.0.1:PORT or [::1]:PORT, or configure TLS")


def _peer_is_local(peer: str) -> bool:
    """Whether a gRPC peer string (``ipv4:127.0.0.1:5555``, ``ipv6:[::1]:5555``, ``unix:...``) is this host."""
    if peer.startswith(("unix:", "unix-abstract:")):
        return True
    if peer.startswith("ipv4:"):
        return _is_loopback_host(peer[5:].rsplit(":", 1)[0])
    if peer.startswith("ipv6:"):
        rest = peer[5:]
        host = rest[1:].split("]", 1)[0] if rest.startswith("[") else rest.rsplit(":", 1)[0]
        return _is_loopback_host(host.split("%", 1)[0])
    return False


# ---- the interceptor ----------------------------------------------------------

#: ``on_refused(identity_or_None, peer, method, code, reason)``: a plain function
#: or a coroutine function (use one, with ``asyncio.to_thread``, for anything that
#: blocks, such as ``AuditLog.append``).  What it raises is logged; the call is
#: refused all the same.
OnRefused = Callable[[Identity | None, str, str, grpc.StatusCode, str], Awaitable[None] | None]

#: Services open to anyone (probes, grpcurl): health checking and reflection.
PUBLIC_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                   "grpc.reflection.v1.ServerReflection")

_METHOD_RE = re.compile(r"/[A-Za-z_][\w.]*/(?:[A-Za-z_]\w*|\*)\Z")


@functools.lru_cache(maxsize=256)
def _pem_role(pem: str) -> Role | None:
    """:func:`certificate_role` of a peer's PEM certificate (cached: parsed once per certificate)."""
    try:
        return certificate_role(x509.load_pem_x509_certificate(pem.encode()))
    except ValueError:
        return None


def _prop(auth: Mapping[str, Sequence[bytes]], key: str) -> str | None:
    values = auth.get(key) or ()
    if not values:
        return None
    v = values[0]
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Admits each call by its caller's :class:`Identity` and the method's role.

    ``method_roles`` maps full method names (``/pkg.Service/Method``, or
    ``/pkg.Service/*`` for the rest of a service) to the role they need;
    other methods need ``default_role``.  ``tokens`` are the accepted bearer
    tokens (may be replaced at run time, e.g. on reload: ``interceptor.tokens
    = TokenStore.load(path)``); ``cert_roles`` overrides certificate roles by
    CN.  ``on_refused`` hears of every refused call (never of a handshake
    refusal).  Behind a :class:`~.tlsfront.TlsFront`, ``callers`` is its
    registry: the connection's certificate and real peer come from there,
    and a call that did not come through the front is refused.  With ``insecure`` (plaintext on loopback, see
    :func:`check_insecure_listen`) every local caller is
    :data:`INSECURE_IDENTITY` and tokens and certificates are not looked at.
    Works with :class:`~liftshift.daemon.errors.ErrorInterceptor`
    on the same server, in either order; put this one first so that refused
    calls never enter the error wrapper.
    """

    def __init__(self, method_roles: Mapping[str, Role | str], *, tokens: TokenStore | None = None,
                 cert_roles: Mapping[str, Role | str] | None = None, default_role: Role = Role.ADMIN,
                 on_refused: OnRefused | None = None, insecure: bool = False,
                 public_services: Iterable[str] = PUBLIC_SERVICES, callers: Callers | None = None) -> None:
        self.method_roles: dict[str, Role] = {}
        for method, role in method_roles.items():
            if not _METHOD_RE.match(method):
                raise ConfigError(f"method role key {method!r} is not '/package.Service/Method' "
                                  "or '/package.Service/*'")
            try:
                self.method_roles[method] = Role.parse(role)
            except InvalidArgument as e:
                raise ConfigError(f"method role of {method}: {e.message}") from None
        self.cert_roles: dict[str, Role] = {}
        for cn, role in (cert_roles or {}).items():
            try:
                self.cert_roles[cn] = Role.parse(role)
            except InvalidArgument as e:
                raise ConfigError(f"certificate role of CN {cn!r}: {e.message}") from None
        self.tokens = tokens if tokens is not None else TokenStore()
        self.default_role = Role.parse(default_role)
        self.on_refused = on_refused
        self.insecure = insecure
        self.public_services = frozenset(public_services)
        self.callers = callers

    def required_role(self, method: str) -> Role | None:
        """The role ``method`` needs (None: open to anyone)."""
        service = method[1:].split("/", 1)[0] if method.startswith("/") else ""
        if service in self.public_services:
            return None
        role = self.method_roles.get(method) or self.method_roles.get(f"/{service}/*")
        return role if role is not None else self.default_role

    # ---- who is calling ----

    def peer_of(self, context: grpc.aio.ServicerContext) -> str:
        """Where the call comes from (behind a TLS front: the front's peer)."""
        peer = context.peer() or ""
        if self.callers is not None:
            caller = self.callers.lookup(peer)
            if caller is not None:
                return caller.peer
        return peer

    def identify(self, context: grpc.aio.ServicerContext) -> Identity:
        """The caller's identity; Unauthenticated / PermissionDenied when there is none usable."""
        if self.insecure:
            peer = context.peer() or ""
            if not _peer_is_local(peer):
                raise Unauthenticated(f"this daemon accepts plaintext calls from this host only, not from {peer}")
            return INSECURE_IDENTITY
        if self.callers is not None:
            caller = self.callers.lookup(context.peer() or "")
            if caller is None:
                raise Unauthenticated("this is the internal end of the daemon's TLS front",
                                      hint="connect to the daemon's listen address, with TLS")
            tls, cn, pem = True, caller.cn, caller.pem
        else:
            auth = context.auth_context() or {}
            tls = _prop(auth, "transport_security_type") == "ssl"
            cn, pem = _prop(auth, "x509_common_name"), _prop(auth, "x509_pem_cert")
        token = self._bearer(context.invocation_metadata() or ())
        if token is not None:
            if not tls:
                raise Unauthenticated("bearer tokens are accepted over TLS only",
                                      hint="connect with TLS (the daemon's CA certificate)")
            identity = self.tokens.lookup(token)
            if identity is None:
                raise Unauthenticated("the bearer token is not valid for this daemon",
                                      hint="check the token; an admin can issue a new one")
            return identity
        if cn:
            return Identity(cn, self._cert_role(cn, pem), "cert")
        raise Unauthenticated("no credentials: present a client certificate or an 'authorization: Bearer' token",
                              hint="configure the client's certificate or token")

    @staticmethod
    def _bearer(metadata: Iterable[Any]) -> str | None:
        values = [v for k, v in metadata if k.lower() == "authorization"]
        if not values:
            return None
        if len(values) > 1:
            raise Unauthenticated("several 'authorization' headers: send one bearer token")
        value = values[0].decode(errors="replace") if isinstance(values[0], bytes) else str(values[0])
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the 'authorization' header is not 'Bearer <token>'")
        return token.strip()

    def _cert_role(self, cn: str, pem: str | None) -> Role:
        role = self.cert_roles.get(cn)
        if role is not None:
            return role
        role = _pem_role(pem) if pem else None
        if role is None:
            raise PermissionDenied(f"the client certificate CN={cn} carries no liftshift role",
                                   hint="issue it with `liftshift certs issue DIR NAME --client --role ROLE`")
        return role

    # ---- admitting and refusing ----

    async def _admit(self, context: grpc.aio.ServicerContext, method: str, required: Role) -> Identity:
        try:
            identity = self.identify(context)
        except LiftshiftError as err:
            await self._refuse(context, None, method, err)
        if identity.role < required:
            await self._refuse(context, identity, method, PermissionDenied(
                f"{identity.name} ({identity.role}) may not call {method}: it needs the {required} role",
                hint=f"use a certificate or token with the {required} role or higher"))
        return identity

    async def _refuse(self, context: grpc.aio.ServicerContext, identity: Identity | None, method: str,
                      err: LiftshiftError) -> NoReturn:
        peer = self.peer_of(context)
        log.warning("%s from %s (%s) refused: %s", method, identity or "unidentified caller", peer, err.message)
        if self.on_refused is not None:
            try:
                done = self.on_refused(identity, peer, method, err.code, err.message)
                if inspect.isawaitable(done):
                    await done
            except Exception:  # the refusal stands whatever the callback does
                log.exception("on_refused failed for %s from %s", method, peer)
        md: tuple[tuple[str, str], ...] = ((ERROR_KEY, type(err).__name__),)
        if err.hint:
            md += ((HINT_KEY, err.hint),)
        context.set_trailing_metadata(md)
        await context.abort(err.code, str(err))
        raise AssertionError("context.abort returned")  # it raises AbortError

    # ---- wrapping handlers ----

    def _guard_unary(self, fn: Callable[..., Any], method: str, required: Role) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            identity = await self._admit(context, method, required)
            reset = current_identity.set(identity)
            reset_peer = current_peer.set(self.peer_of(context))
            try:
                result = fn(request, context)
                return await result if inspect.isawaitable(result) else result
            finally:
                current_peer.reset(reset_peer)
                current_identity.reset(reset)

        return wrapper

    def _guard_stream(self, fn: Callable[..., Any], method: str, required: Role) -> Callable[..., AsyncIterator[Any]]:
        @functools.wraps(fn)
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            # Nothing of the request stream is read before the caller is admitted.
            identity = await self._admit(context, method, required)
            reset = current_identity.set(identity)
            reset_peer = current_peer.set(self.peer_of(context))
            items = None
            try:
                items = fn(request, context)
                if inspect.isawaitable(items):
                    # A coroutine that streams with context.write(): just run it.
                    await items
                    return
                async for item in items:
                    yield item
            finally:
                aclose = getattr(items, "aclose", None)
                if aclose is not None:
                    await aclose()  # the handler's own finally blocks run now
                with contextlib.suppress(ValueError):  # finalised in another context
                    current_peer.reset(reset_peer)
                with contextlib.suppress(ValueError):
                    current_identity.reset(reset)

        return wrapper

    async def intercept_service(self, continuation: Callable[..., Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        required = self.required_role(method)
        if required is None:
            return handler
        des, ser = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(self._guard_unary(handler.unary_unary, method, required),
                                                       des, ser)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(self._guard_unary(handler.stream_unary, method, required),
                                                        des, ser)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(self._guard_stream(handler.unary_stream, method, required),
                                                        des, ser)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                self._guard_stream(handler.stream_stream, method, required), des, ser)
        # Not a kind of handler this knows how to guard: fail closed (UNIMPLEMENTED).
        log.error("%s: cannot guard handler %r; refusing the method", method, handler)
        return None
