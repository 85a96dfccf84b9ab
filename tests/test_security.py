"""Authentication and authorization: the quick-start PKI, TLS loading, tokens, and
the auth interceptor on real grpc.aio servers (127.0.0.1, ephemeral ports)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import ipaddress
import json
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from liftshift.ctl import certs
from liftshift.ctl.output import Output
from liftshift.daemon import errors
from liftshift.daemon.errors import AlreadyExists, ConfigError, InvalidArgument, NotFound
from liftshift.daemon.security import (
    INSECURE_IDENTITY,
    AuthInterceptor,
    Identity,
    Role,
    TokenStore,
    certificate_role,
    check_insecure_listen,
    current_identity,
    hash_token,
    load_channel_credentials,
    load_server_credentials,
)

SVC = "liftshift.test.Svc"
READ = f"/{SVC}/Read"  # viewer
CUTOVER = f"/{SVC}/Cutover"  # operator
SECRET = f"/{SVC}/Secret"  # not listed: admin
WATCH = f"/{SVC}/Watch"  # unary-stream, operator
UPLOAD = f"/{SVC}/Upload"  # stream-unary, operator
REPLICATE = f"/{SVC}/Replicate"  # stream-stream of raw bytes, operator
FAIL = f"/{SVC}/Fail"  # viewer; raises a typed error
ROLES = {READ: Role.VIEWER, CUTOVER: "operator", WATCH: Role.OPERATOR, UPLOAD: Role.OPERATOR,
         REPLICATE: Role.OPERATOR, FAIL: Role.VIEWER}


# ---- the PKI, made once ----------------------------------------------------------

@dataclass
class Pki:
    dir: Path
    other: Path  # a second, unrelated CA

    def pair(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.pem", self.dir / f"{name}.key"


def _client_without_role(d: Path, name: str) -> None:
    """A client certificate of the CA with no liftshift OU, as another tool would make it."""
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    (d / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    certs.init_ca(d)
    certs.issue(d, "daemon", kind="server")
    certs.issue(d, "alice", kind="client", role="operator")
    certs.issue(d, "vic", kind="client", role=Role.VIEWER)
    certs.issue(d, "root", kind="client", role="admin")
    _client_without_role(d, "norole")
    other = tmp_path_factory.mktemp("other-pki")
    certs.init_ca(other, cn="someone else's CA")
    certs.issue(other, "mallory", kind="client", role="admin")
    return Pki(d, other)


@dataclass
class Tokens:
    viewer: str
    operator: str
    admin: str
    store: TokenStore


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Tokens:
    made = {role: TokenStore.generate(f"bot-{role}", role) for role in ("viewer", "operator", "admin")}
    path = tmp_path_factory.mktemp("tokens") / "tokens"
    path.write_text("# name role sha256\n\n" + "".join(f"{line}  # {r}\n" for r, (_, line) in made.items()))
    return Tokens(made["viewer"][0], made["operator"][0], made["admin"][0], TokenStore.load(path))


# ---- a server with a few guarded methods ---------------------------------------------

@dataclass
class Target:
    """What the handlers saw: every call that reached a handler, with its identity."""

    calls: list[tuple[str, Identity | None]] = field(default_factory=list)
    refused: list[tuple[Identity | None, str, str, grpc.StatusCode, str]] = field(default_factory=list)
    requests_read: int = 0

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        async def read(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.calls.append(("Read", current_identity.get()))
            return b"read:" + request

        async def cutover(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.calls.append(("Cutover", current_identity.get()))
            ident = current_identity.get()
            return f"cut over by {ident.name if ident else None}".encode()

        async def secret(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.calls.append(("Secret", current_identity.get()))
            return b"secret"

        async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.calls.append(("Fail", current_identity.get()))
            raise NotFound("no VM called nothing", hint="see `liftshift inventory`")

        async def watch(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            self.calls.append(("Watch", current_identity.get()))
            for i in range(3):
                await asyncio.sleep(0)
                ident = current_identity.get()  # still set after the handler was suspended
                yield f"{i}:{ident.name if ident else None}".encode()

        async def upload(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
            self.calls.append(("Upload", current_identity.get()))
            got = [frame async for frame in requests]
            self.requests_read += len(got)
            return b"+".join(got)

        async def replicate(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            self.calls.append(("Replicate", current_identity.get()))
            async for frame in requests:
                self.requests_read += 1
                yield b"ack:" + frame

        uu = grpc.unary_unary_rpc_method_handler
        return {
            "Read": uu(read), "Cutover": uu(cutover), "Secret": uu(secret), "Fail": uu(fail),
            "Watch": grpc.unary_stream_rpc_method_handler(watch),
            "Upload": grpc.stream_unary_rpc_method_handler(upload),
            # Raw bytes in, as the sink registers Replicate.
            "Replicate": grpc.stream_stream_rpc_method_handler(replicate, request_deserializer=None),
        }

    def on_refused(self, identity: Identity | None, peer: str, method: str, code: grpc.StatusCode,
                   reason: str) -> None:
        self.refused.append((identity, peer, method, code, reason))


@asynccontextmanager
async def serve(target: Target, auth: AuthInterceptor, creds: grpc.ServerCredentials | None = None, *,
                auth_first: bool = True) -> AsyncIterator[str]:
    """A server with the auth and error interceptors; yields its address."""
    order = [auth, errors.ErrorInterceptor()] if auth_first else [errors.ErrorInterceptor(), auth]
    server = grpc.aio.server(interceptors=order)
    # Registered both ways, as the sink's add_to_server does.
    handlers = target.handlers()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SVC, handlers),))
    server.add_registered_method_handlers(SVC, handlers)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    if creds is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def mtls(pki: Pki) -> grpc.ServerCredentials:
    return load_server_credentials(*pki.pair("daemon"), pki.dir / "ca.pem")


def tls_only(pki: Pki) -> grpc.ServerCredentials:
    return load_server_credentials(*pki.pair("daemon"), None, require_client_cert=False)


def client(pki: Pki, name: str | None = None, *, token: str | None = None, ca: Path | None = None) -> Any:
    cert, key = pki.pair(name) if name else (None, None)
    return load_channel_credentials(ca or pki.dir / "ca.pem", cert, key, token=token)


async def call(address: str, creds: Any, method: str, request: bytes = b"x", **kw: Any) -> bytes:
    channel = grpc.aio.secure_channel(address, creds) if creds is not None else grpc.aio.insecure_channel(address)
    async with channel:
        return await channel.unary_unary(method)(request, timeout=5, **kw)


async def refused(address: str, creds: Any, method: str, **kw: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(address, creds, method, **kw)
    return info.value


# ---- the PKI ------------------------------------------------------------------------

def test_certs_make_a_chain_that_verifies(pki: Pki) -> None:
    ca = x509.load_pem_x509_certificate((pki.dir / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((pki.dir / "daemon.pem").read_bytes())
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(x509.DNSName("localhost"))
    chain = verifier.verify(server, [])
    assert chain[-1] == ca
    for ip in ("127.0.0.1", "::1"):
        PolicyBuilder().store(Store([ca])).build_server_verifier(x509.IPAddress(ipaddress.ip_address(ip))) \
            .verify(server, [])
    with pytest.raises(VerificationError, match="(?i)name"):
        PolicyBuilder().store(Store([ca])).build_server_verifier(x509.DNSName("elsewhere.example")) \
            .verify(server, [])
    alice = x509.load_pem_x509_certificate((pki.dir / "alice.pem").read_bytes())
    alice.verify_directly_issued_by(ca)
    assert alice.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert certificate_role(alice) is Role.OPERATOR
    assert certificate_role(server) is None
    other = x509.load_pem_x509_certificate((pki.other / "mallory.pem").read_bytes())
    with pytest.raises(ValueError, match="(?i)issuer"):
        other.verify_directly_issued_by(ca)
    for key in ("ca.key", "daemon.key", "alice.key"):
        assert stat.S_IMODE(os.stat(pki.dir / key).st_mode) == 0o600


def test_certs_refuse_overwrites_and_bad_input(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no CA in") as no_ca:
        certs.issue(tmp_path, "daemon")
    assert "certs init" in (no_ca.value.hint or "")
    first = certs.init_ca(tmp_path / "pki").cert.read_bytes()
    with pytest.raises(AlreadyExists, match="ca.pem"):
        certs.init_ca(tmp_path / "pki")
    assert (tmp_path / "pki" / "ca.pem").read_bytes() == first  # untouched
    certs.init_ca(tmp_path / "pki", force=True)
    assert (tmp_path / "pki" / "ca.pem").read_bytes() != first
    d = tmp_path / "pki"
    for bad in ("../evil", "a/b", "", "ca", ".hidden"):
        with pytest.raises(InvalidArgument, match="bad certificate name"):
            certs.issue(d, bad)
    with pytest.raises(InvalidArgument, match="unknown role"):
        certs.issue(d, "bob", kind="client", role="root")
    with pytest.raises(InvalidArgument, match="needs a role"):
        certs.issue(d, "bob", kind="client")
    with pytest.raises(InvalidArgument, match="neither an IP"):
        certs.issue(d, "srv", sans=["bad name!"])
    w = certs.issue(d, "srv", sans=["sink.example", "10.0.0.7"])
    assert w.sans == ("sink.example", "10.0.0.7")
    san = x509.load_pem_x509_certificate(w.cert.read_bytes()).extensions \
        .get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["sink.example"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    with pytest.raises(AlreadyExists, match="srv.pem"):
        certs.issue(d, "srv")
    assert sorted(p.name for p in d.iterdir()) == ["ca.key", "ca.pem", "srv.key", "srv.pem"]  # no leftovers


async def test_certs_cli(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="liftshift")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    certs.register(sub, common)
    d = str(tmp_path / "pki")

    async def run(*argv: str, json_mode: bool = False) -> str:
        args = parser.parse_args(list(argv))
        if getattr(args, "validate", None):
            args.validate(args)
        buf = io.StringIO()
        assert await args.run(args, None, Output(json_mode, stdout=buf, stderr=buf)) == 0
        return buf.getvalue()

    text = await run("certs", "init", d)
    assert f"wrote {d}/ca.pem" in text and f"wrote {d}/ca.key" in text
    text = await run("certs", "issue", d, "bob", "--client", "--role", "viewer")
    assert "role viewer" in text and "CN=bob" in text
    got = json.loads(await run("certs", "issue", d, "sink", "--server", "--san", "sink.example", json_mode=True))
    assert got["kind"] == "server" and got["sans"] == ["sink.example"] and got["cert"] == f"{d}/sink.pem"
    with pytest.raises(SystemExit):  # usage error: a client without a role
        await run("certs", "issue", d, "carol", "--client")
    with pytest.raises(SystemExit):  # neither --server nor --client
        await run("certs", "issue", d, "carol")


# ---- loading TLS material -----------------------------------------------------------

def test_load_errors_name_the_file(pki: Pki, tmp_path: Path) -> None:
    cert, key = pki.pair("daemon")
    ca = pki.dir / "ca.pem"
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match=f"server certificate {missing}: no such file"):
        load_server_credentials(missing, key, ca)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    with pytest.raises(ConfigError, match=f"server certificate {garbage}: not a PEM certificate"):
        load_server_credentials(garbage, key, ca)
    with pytest.raises(ConfigError, match=f"server key {garbage}: not a PEM private key"):
        load_server_credentials(cert, garbage, ca)
    with pytest.raises(ConfigError, match=f"server certificate {key}: not a PEM certificate"):
        load_server_credentials(key, cert, ca)  # swapped
    _, alice_key = pki.pair("alice")
    with pytest.raises(ConfigError, match=f"server key {alice_key} does not match the certificate {cert}"):
        load_server_credentials(cert, alice_key, ca)
    with pytest.raises(ConfigError, match=f"CA certificate {missing}: no such file"):
        load_server_credentials(cert, key, missing)
    with pytest.raises(ConfigError, match="needs a CA file"):
        load_server_credentials(cert, key, None)
    with pytest.raises(ConfigError, match=f"CA certificate {garbage}: not a PEM certificate"):
        load_channel_credentials(garbage)
    with pytest.raises(ConfigError, match=f"client key {key} does not match the certificate"):
        load_channel_credentials(ca, pki.dir / "alice.pem", key)
    with pytest.raises(ConfigError, match="needs its key"):
        load_channel_credentials(ca, pki.dir / "alice.pem")
    with pytest.raises(ConfigError, match=f"{tmp_path}: is a directory"):
        load_channel_credentials(tmp_path)
    unreadable = tmp_path / "unreadable.pem"
    unreadable.write_bytes(ca.read_bytes())
    unreadable.chmod(0)
    if os.geteuid() != 0:  # root reads anything
        with pytest.raises(ConfigError, match=f"{unreadable}: cannot read it"):
            load_channel_credentials(unreadable)


def test_token_store_format(tmp_path: Path) -> None:
    token, line = TokenStore.generate("ci-bot", "operator")
    name, role, digest = line.split()
    assert (name, role, digest) == ("ci-bot", "operator", hash_token(token))
    assert token not in line
    store = TokenStore.parse(f"# comment\n{line}  # the CI\n\n", "t")
    assert store.lookup(token) == Identity("ci-bot", Role.OPERATOR, "token")
    assert store.lookup(token + "x") is None and store.lookup("") is None and store.lookup("x" * 10_000) is None
    path = tmp_path / "tokens"
    for text, problem in ((f"{line}\n{line}\n", "line 2: the same token hash as line 1"),
                          ("bob admin\n", "line 1: expected 'name role sha256'"),
                          (f"bob boss {digest}\n", "line 1: unknown role 'boss'"),
                          (f"bob admin {token}\n", "line 1: the third field is not a SHA-256"),
                          (f"../x admin {digest}\n", "line 1: bad name")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=f"token file {path} {problem}"):
            TokenStore.load(path)
    with pytest.raises(ConfigError, match=f"token file {tmp_path / 'absent'}: no such file"):
        TokenStore.load(tmp_path / "absent")
    with pytest.raises(InvalidArgument):
        TokenStore.generate("bad name", "viewer")


def test_method_roles() -> None:
    auth = AuthInterceptor({CUTOVER: Role.OPERATOR, "/liftshift.v1.Replication/*": "operator", READ: "viewer"})
    assert auth.required_role(CUTOVER) is Role.OPERATOR
    assert auth.required_role(READ) is Role.VIEWER
    assert auth.required_role("/liftshift.v1.Replication/Replicate") is Role.OPERATOR
    assert auth.required_role(SECRET) is Role.ADMIN  # not listed
    assert auth.required_role("/grpc.health.v1.Health/Check") is None
    assert auth.required_role("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") is None
    with pytest.raises(ConfigError, match="not '/package.Service/Method'"):
        AuthInterceptor({"Cutover": Role.OPERATOR})
    with pytest.raises(ConfigError, match="unknown role 'boss'"):
        AuthInterceptor({CUTOVER: "boss"})


def test_check_insecure_listen() -> None:
    for ok in ("127.0.0.1:50051", "127.8.9.10:1", "[::1]:50051", "localhost:50051", "unix:/run/liftshift.sock"):
        check_insecure_listen(ok)
    for bad in ("0.0.0.0:50051", "[::]:50051", "10.1.2.3:50051", "192.168.0.1:1", "sink.example:50051",
                ":50051", "[2001:db8::1]:50051"):
        with pytest.raises(ConfigError, match="not loopback"):
            check_insecure_listen(bad)


# ---- on a real server: certificates ------------------------------------------------------

async def test_mtls_call_sees_the_clients_identity(pki: Pki) -> None:
    t = Target()
    async with serve(t, AuthInterceptor(ROLES, on_refused=t.on_refused), mtls(pki)) as addr:
        assert await call(addr, client(pki, "alice"), CUTOVER) == b"cut over by alice"
        assert await call(addr, client(pki, "vic"), READ) == b"read:x"
        err = await refused(addr, client(pki, "vic"), CUTOVER)
    assert t.calls == [("Cutover", Identity("alice", Role.OPERATOR, "cert")),
                       ("Read", Identity("vic", Role.VIEWER, "cert"))]
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "vic (viewer) may not call" in (err.details() or "")
    assert [(r[0], r[2], r[3]) for r in t.refused] == [
        (Identity("vic", Role.VIEWER, "cert"), CUTOVER, grpc.StatusCode.PERMISSION_DENIED)]
    assert current_identity.get() is None


async def test_cert_from_another_ca_is_refused_at_the_handshake(pki: Pki) -> None:
    t = Target()
    async with serve(t, AuthInterceptor(ROLES, on_refused=t.on_refused), mtls(pki)) as addr:
        creds = load_channel_credentials(pki.dir / "ca.pem", pki.other / "mallory.pem", pki.other / "mallory.key")
        err = await refused(addr, creds, READ)
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        no_cert = await refused(addr, client(pki), READ)  # no client certificate at all
        assert no_cert.code() == grpc.StatusCode.UNAVAILABLE
        # ...and a token does not help without the certificate the server requires.
        await refused(addr, client(pki, token="lst_whatever"), READ)
        assert await call(addr, client(pki, "alice"), READ) == b"read:x"  # the server is fine
    assert t.calls == [("Read", Identity("alice", Role.OPERATOR, "cert"))]
    assert t.refused == []  # handshake refusals never reach the interceptor


async def test_cert_roles_override_and_certs_without_role(pki: Pki) -> None:
    t = Target()
    auth = AuthInterceptor(ROLES, cert_roles={"alice": Role.VIEWER, "norole": "admin"}, on_refused=t.on_refused)
    async with serve(t, auth, mtls(pki)) as addr:
        err = await refused(addr, client(pki, "alice"), CUTOVER)  # lowered to viewer
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        # A client certificate without a role OU (another tool's) has a role only when mapped.
        assert await call(addr, client(pki, "norole"), SECRET) == b"secret"
    async with serve(t, AuthInterceptor(ROLES, on_refused=t.on_refused), mtls(pki)) as addr:
        err = await refused(addr, client(pki, "norole"), READ)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "CN=norole carries no liftshift role" in (err.details() or "")
        # A server certificate is no client certificate (extended key usage): refused in the handshake.
        assert (await refused(addr, client(pki, "daemon"), READ)).code() == grpc.StatusCode.UNAVAILABLE
    assert t.calls == [("Secret", Identity("norole", Role.ADMIN, "cert"))]
    assert [(r[0], r[3]) for r in t.refused] == [(Identity("alice", Role.VIEWER, "cert"),
                                                  grpc.StatusCode.PERMISSION_DENIED),
                                                 (None, grpc.StatusCode.PERMISSION_DENIED)]


# ---- on a real server: tokens ------------------------------------------------------------

async def test_viewer_token_on_operator_method_is_denied(pki: Pki, tokens: Tokens) -> None:
    t = Target()
    async with serve(t, AuthInterceptor(ROLES, tokens=tokens.store, on_refused=t.on_refused), tls_only(pki)) as addr:
        err = await refused(addr, client(pki, token=tokens.viewer), CUTOVER)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    typed = errors.from_rpc_error(err)  # the client rebuilds the typed error
    assert isinstance(typed, errors.PermissionDenied) and "operator role" in (typed.hint or "")
    assert t.calls == []
    [(identity, peer, method, code, reason)] = t.refused
    assert identity == Identity("bot-viewer", Role.VIEWER, "token")
    assert peer.startswith("ipv4:127.0.0.1:") and method == CUTOVER
    assert code == grpc.StatusCode.PERMISSION_DENIED and "needs the operator role" in reason


async def test_unknown_or_missing_token_is_unauthenticated(pki: Pki, tokens: Tokens) -> None:
    t = Target()
    async with serve(t, AuthInterceptor(ROLES, tokens=tokens.store, on_refused=t.on_refused), tls_only(pki)) as addr:
        unknown = await refused(addr, client(pki, token="lst_not-a-real-token"), READ)
        none = await refused(addr, client(pki), READ)
        mangled = await refused(addr, client(pki), READ, metadata=(("authorization", "Basic dTpw"),))
        # Health is open to anyone, even without credentials.
        async with grpc.aio.secure_channel(addr, client(pki)) as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
    for err in (unknown, none, mangled):
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert isinstance(errors.from_rpc_error(err), errors.Unauthenticated)
    assert "not valid" in (unknown.details() or "") and "no credentials" in (none.details() or "")
    assert t.calls == []
    assert [(r[0], r[3]) for r in t.refused] == [(None, grpc.StatusCode.UNAUTHENTICATED)] * 3


async def test_operator_token_works_and_unlisted_methods_need_admin(pki: Pki, tokens: Tokens) -> None:
    t = Target()
    async with serve(t, AuthInterceptor(ROLES, tokens=tokens.store, on_refused=t.on_refused), tls_only(pki)) as addr:
        assert await call(addr, client(pki, token=tokens.operator), CUTOVER) == b"cut over by bot-operator"
        assert await call(addr, client(pki, token=tokens.operator), READ) == b"read:x"  # higher role suffices
        err = await refused(addr, client(pki, token=tokens.operator), SECRET)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "admin role" in (err.details() or "")
        assert await call(addr, client(pki, token=tokens.admin), SECRET) == b"secret"
        # Per-call metadata works as well as call credentials.
        assert await call(addr, client(pki), CUTOVER,
                          metadata=(("authorization", f"Bearer {tokens.operator}"),)) == b"cut over by bot-operator"
    assert [c[0] for c in t.calls] == ["Cutover", "Read", "Secret", "Cutover"]
    assert t.calls[0][1] == Identity("bot-operator", Role.OPERATOR, "token")


async def test_token_takes_precedence_over_cert(pki: Pki, tokens: Tokens) -> None:
    t = Target()
    async with serve(t, AuthInterceptor(ROLES, tokens=tokens.store, on_refused=t.on_refused), mtls(pki)) as addr:
        # root's certificate is admin, but the viewer token decides.
        err = await refused(addr, client(pki, "root", token=tokens.viewer), CUTOVER)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        # An invalid token never falls back to the certificate.
        err = await refused(addr, client(pki, "root", token="lst_bogus"), READ)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert await call(addr, client(pki, "vic", token=tokens.operator), CUTOVER) == b"cut over by bot-operator"
    assert t.calls == [("Cutover", Identity("bot-operator", Role.OPERATOR, "token"))]


async def test_tokens_are_refused_over_plaintext(tokens: Tokens) -> None:
    t = Target()
    async with serve(t, AuthInterceptor(ROLES, tokens=tokens.store, on_refused=t.on_refused)) as addr:
        err = await refused(addr, None, READ, metadata=(("authorization", f"Bearer {tokens.admin}"),))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "TLS only" in (err.details() or "")
    assert t.calls == []


# ---- streams, composition, insecure mode ---------------------------------------------------

@pytest.mark.parametrize("auth_first", [True, False], ids=["auth-outer", "errors-outer"])
async def test_streams_are_guarded(pki: Pki, tokens: Tokens, auth_first: bool) -> None:
    t = Target()
    auth = AuthInterceptor(ROLES, tokens=tokens.store, on_refused=t.on_refused)
    async with serve(t, auth, tls_only(pki), auth_first=auth_first) as addr:
        for token, ok in ((tokens.viewer, False), (tokens.operator, True)):
            async with grpc.aio.secure_channel(addr, client(pki, token=token)) as ch:
                watch = ch.unary_stream(WATCH)(b"", timeout=5)
                upload = ch.stream_unary(UPLOAD)
                if ok:
                    replicate = ch.stream_stream(REPLICATE)(iter([b"hello", b"frame-2"]), timeout=5)
                    assert [m async for m in watch] == [b"0:bot-operator", b"1:bot-operator", b"2:bot-operator"]
                    assert [m async for m in replicate] == [b"ack:hello", b"ack:frame-2"]
                    assert await upload(iter([b"a", b"b", b"c"]), timeout=5) == b"a+b+c"
                    continue
                # A refused client stream is opened without requests queued: grpc aio
                # reports INTERNAL instead of the server's status when the refusal
                # races a request still being sent (grpc/grpc#36066).
                for stream in (watch, ch.stream_stream(REPLICATE)(timeout=5)):
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        [m async for m in stream]
                    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await upload(timeout=5)
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # Both interceptors on one server: typed errors still map when admitted.
        err = await refused(addr, client(pki, token=tokens.viewer), FAIL)
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert isinstance(errors.from_rpc_error(err), NotFound)
    # The refused streams never started, nor read a request.
    assert sorted(c[0] for c in t.calls) == ["Fail", "Replicate", "Upload", "Watch"]
    assert t.requests_read == 2 + 3
    assert sorted((r[2], r[3]) for r in t.refused) == [(REPLICATE, grpc.StatusCode.PERMISSION_DENIED),
                                                       (UPLOAD, grpc.StatusCode.PERMISSION_DENIED),
                                                       (WATCH, grpc.StatusCode.PERMISSION_DENIED)]


async def test_insecure_loopback_mode() -> None:
    t = Target()
    async with serve(t, AuthInterceptor(ROLES, insecure=True, on_refused=t.on_refused)) as addr:
        assert await call(addr, None, CUTOVER) == b"cut over by insecure-loopback"
        assert await call(addr, None, SECRET) == b"secret"
    assert t.calls == [("Cutover", INSECURE_IDENTITY), ("Secret", INSECURE_IDENTITY)]
    assert INSECURE_IDENTITY.role is Role.ADMIN and t.refused == []


async def test_without_insecure_mode_plaintext_callers_are_unauthenticated() -> None:
    t = Target()
    async with serve(t, AuthInterceptor(ROLES, on_refused=t.on_refused)) as addr:
        err = await refused(addr, None, READ)
        async with grpc.aio.insecure_channel(addr) as ch:  # probes still work
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert t.calls == []


async def test_async_on_refused_that_fails_still_refuses(pki: Pki, tokens: Tokens) -> None:
    t = Target()
    heard: list[str] = []

    async def on_refused(identity: Identity | None, peer: str, method: str, code: grpc.StatusCode,
                         reason: str) -> None:
        heard.append(method)
        raise OSError("audit disk full")

    async with serve(t, AuthInterceptor(ROLES, tokens=tokens.store, on_refused=on_refused), tls_only(pki)) as addr:
        err = await refused(addr, client(pki, token=tokens.viewer), SECRET)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert heard == [SECRET] and t.calls == []
