"""The Control service's TLS front (daemon/tlsfront.py) on a real grpc.aio server, under uvloop.

Callers are identified by the certificate the front verified (or a token),
with their own address as the peer; bytes cross intact both ways, big and
concurrent; every refused handshake reaches on_refused with OpenSSL's
reason, at most once per window for the same host and reason; connections
that never speak TLS are not reported; the back end admits nobody who did
not come through the front.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import uvloop

from liftshift.ctl import certs
from liftshift.daemon import tlsfront
from liftshift.daemon.security import AuthInterceptor, Role, TokenStore, current_identity, current_peer
from liftshift.daemon.tlsfront import Callers, TlsFront, server_context

SVC = "liftshift.test.Front"
WHO = f"/{SVC}/Who"  # viewer: "name role via peer"
ECHO = f"/{SVC}/Echo"  # viewer: the request, hashed and returned
STREAM = f"/{SVC}/Stream"  # viewer: stream of N blocks of 256 KiB


@dataclass
class Refusals:
    seen: list[tuple[str, str, str]] = field(default_factory=list)

    def __call__(self, identity: Any, peer: str, method: str, code: grpc.StatusCode, reason: str) -> None:
        self.seen.append((peer, method, reason))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    certs.init_ca(d)
    certs.issue(d, "daemon", kind="server")
    certs.issue(d, "alice", kind="client", role="viewer")
    other = d / "other"
    certs.init_ca(other, cn="someone else's CA")
    certs.issue(other, "mallory", kind="client", role="admin")
    certs.issue(other, "daemon", kind="server")
    return d


# Each channel its own connections (gRPC shares them between channels by default), so
# closing a channel closes its connection.
OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20),
           ("grpc.use_local_subchannel_pool", 1)]


def creds(pki: Path, who: str | None = "alice", *, ca: Path | None = None, token: str | None = None
          ) -> grpc.ChannelCredentials:
    base = pki if who != "mallory" else pki / "other"
    c = grpc.ssl_channel_credentials((ca or pki / "ca.pem").read_bytes(),
                                     (base / f"{who}.key").read_bytes() if who else None,
                                     (base / f"{who}.pem").read_bytes() if who else None)
    return grpc.composite_channel_credentials(c, grpc.access_token_call_credentials(token)) if token else c


def handlers() -> grpc.GenericRpcHandler:
    async def who(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        ident = current_identity.get()
        assert ident is not None
        return f"{ident.name} {ident.role} {ident.via} {current_peer.get()}".encode()

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return hashlib.sha256(request).digest() + request

    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for i in range(int(request)):
            yield bytes([i % 251]) * (256 * 1024)

    return grpc.method_handlers_generic_handler(SVC, {
        "Who": grpc.unary_unary_rpc_method_handler(who),
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    })


@dataclass
class Served:
    address: str
    backend: int
    front: TlsFront
    callers: Callers
    refusals: Refusals


@asynccontextmanager
async def serve(pki: Path, *, handshake_timeout: float = 10.0, tokens: TokenStore | None = None
                ) -> AsyncIterator[Served]:
    callers, refusals = Callers(), Refusals()
    auth = AuthInterceptor({f"/{SVC}/*": Role.VIEWER}, tokens=tokens, on_refused=refusals, callers=callers)
    server = grpc.aio.server(interceptors=[auth], options=[("grpc.max_receive_message_length", 64 << 20),
                                                           ("grpc.max_send_message_length", 64 << 20)])
    server.add_generic_rpc_handlers([handlers()])
    backend = server.add_insecure_port("127.0.0.1:0")
    front = TlsFront(server_context(pki / "daemon.pem", pki / "daemon.key", pki / "ca.pem"), callers,
                     on_refused=refusals, handshake_timeout=handshake_timeout)
    await server.start()
    port = await front.start("127.0.0.1:0", backend)
    try:
        yield Served(f"127.0.0.1:{port}", backend, front, callers, refusals)
    finally:
        await front.close()
        await server.stop(None)


def run(fn: Callable[[], Awaitable[None]]) -> None:
    """The daemons run on uvloop: so do these tests (its TLS quirks are the ones that matter)."""
    uvloop.run(fn())


async def unary(address: str, c: grpc.ChannelCredentials, method: str, request: bytes = b"") -> bytes:
    async with grpc.aio.secure_channel(address, c, options=OPTIONS) as ch:
        return bytes(await ch.unary_unary(method)(request, timeout=15))


async def rpc_error(address: str, c: grpc.ChannelCredentials, method: str = WHO) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await unary(address, c, method)
    return info.value


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


def test_callers_are_who_the_front_verified_from_where_they_connect(pki: Path, tmp_path: Path) -> None:
    token, line = TokenStore.generate("carol", "operator")
    (tmp_path / "tokens").write_text(line + "\n")

    async def main() -> None:
        async with serve(pki, tokens=TokenStore.load(tmp_path / "tokens")) as s:
            name, role, via, peer = (await unary(s.address, creds(pki), WHO)).decode().split()
            assert (name, role, via) == ("alice", "viewer", "cert")
            assert peer.startswith("ipv4:127.0.0.1:") and int(peer.rsplit(":", 1)[1]) != s.backend
            # A token, with no certificate at all, is enough; without either the call is UNAUTHENTICATED.
            assert (await unary(s.address, creds(pki, None, token=token), WHO)).decode().split()[:3] == [
                "carol", "operator", "token"]
            await until(lambda: len(s.callers) == 0)  # each closed connection leaves the registry
            err = await rpc_error(s.address, creds(pki, None))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "no credentials" in (err.details() or "")
            # The back end, reached directly, admits nobody.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{s.backend}", options=OPTIONS) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await ch.unary_unary(WHO)(b"", timeout=15)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "TLS front" in (info.value.details() or "")
            assert [(m, r.split(":")[0]) for _, m, r in s.refusals.seen] == [
                (WHO, "no credentials"), (WHO, "this is the internal end of the daemon's TLS front")]
        assert len(s.callers) == 0  # the front closed every connection

    run(main)


def test_big_and_concurrent_calls_cross_intact(pki: Path) -> None:
    async def main() -> None:
        async with serve(pki) as s:
            c = creds(pki)
            payloads = [bytes(range(256)) * (4096 * (i + 1)) + bytes([i]) for i in range(4)]  # 1-4 MiB
            async with grpc.aio.secure_channel(s.address, c, options=OPTIONS) as ch:
                echoes = await asyncio.gather(*(ch.unary_unary(ECHO)(p, timeout=30) for p in payloads))
                blocks = [b async for b in ch.unary_stream(STREAM)(b"40", timeout=30)]
            for p, e in zip(payloads, echoes, strict=True):
                assert e[:32] == hashlib.sha256(p).digest() and e[32:] == p
            assert [len(b) for b in blocks] == [256 * 1024] * 40
            assert [b[0] for b in blocks] == [i % 251 for i in range(40)]
            assert s.refusals.seen == []

    run(main)


def test_refused_handshakes_are_reported_once_per_host_and_reason(pki: Path, monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    monkeypatch.setattr(tlsfront, "REPEAT_WINDOW_S", 1.0)

    async def main() -> None:
        async with serve(pki) as s:
            for _ in range(4):  # a certificate from another CA (gRPC may try more than once per call)
                err = await rpc_error(s.address, creds(pki, "mallory"))
                assert err.code() == grpc.StatusCode.UNAVAILABLE
            foreign = "the client certificate was refused: unable to get local issuer certificate"

            def of_foreign() -> list[str]:  # (a loaded machine may add other reasons: a client giving up)
                return [r for _, _, r in s.refusals.seen if r.startswith(foreign)]

            await until(lambda: s.front.refused >= 4)
            assert [(m, r) for _, m, r in s.refusals.seen if r.startswith(foreign)] == [("TlsHandshake", foreign)]
            await asyncio.sleep(1.1)
            await rpc_error(s.address, creds(pki, "mallory"))
            await until(lambda: len(of_foreign()) >= 2)
            again = re.search(r"\((\d+) more such refusals from ipv4:127\.0\.0\.1 were not recorded separately\)$",
                              of_foreign()[1])
            assert again and int(again[1]) >= 3 and 2 + int(again[1]) <= s.front.refused, s.refusals.seen

            def reported(text: str) -> Callable[[], bool]:
                return lambda: any(text in r for _, _, r in s.refusals.seen)

            # A client that does not trust the daemon's certificate ends the handshake itself.
            await rpc_error(s.address, creds(pki, ca=pki / "other" / "ca.pem"))
            await until(reported("it may not trust this daemon's certificate"))
            # A plain-text gRPC client on the TLS port.
            async with grpc.aio.insecure_channel(s.address, options=OPTIONS) as ch:
                with pytest.raises(grpc.aio.AioRpcError):
                    await ch.unary_unary(WHO)(b"", timeout=5)
            await until(reported("TLS handshake failed ("))
            # TLS without ALPN h2: not a gRPC client.
            ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
            ctx.load_cert_chain(pki / "alice.pem", pki / "alice.key")
            host, port = s.address.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx, server_hostname="localhost")
            assert await reader.read() == b""  # closed by the front
            writer.close()
            await until(reported("did not negotiate HTTP/2 (ALPN h2): not a gRPC client"))
            assert all(p.startswith("ipv4:127.0.0.1:") and m == "TlsHandshake" for p, m, _ in s.refusals.seen)

    run(main)


def test_connections_that_never_speak_tls_are_closed_and_not_reported(pki: Path) -> None:
    async def main() -> None:
        async with serve(pki, handshake_timeout=0.5) as s:
            host, port = s.address.rsplit(":", 1)
            with socket.create_connection((host, int(port))):
                pass  # a TCP probe
            reader, writer = await asyncio.open_connection(host, int(port))
            assert await asyncio.wait_for(reader.read(), 5) == b""  # idle: dropped at the handshake timeout
            writer.close()
            assert await unary(s.address, creds(pki), WHO)  # still serving
            assert s.refusals.seen == [] and s.front.refused == 0

    run(main)
