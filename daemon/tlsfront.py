"""The Control service's TLS front: the handshake in Python, so refusals there are audited.

Design note
-----------
Goal: every attempt to reach the Control service that is refused is
recorded in the audit log -- including the ones refused in the TLS
handshake (a certificate from another CA, an expired one), which gRPC's
own TLS ends inside its C core, invisible to Python and to interceptors.
And a caller without a client certificate must get a typed
``UNAUTHENTICATED`` (or be admitted by a bearer token) instead of a
handshake failure: gRPC's Python API can only *require* client
certificates or never ask for them.

Plan.

* **Where TLS ends.**  The gRPC server listens in plain text on an
  ephemeral port of 127.0.0.1 (the *back end*); :class:`TlsFront` listens on
  the configured address, runs the handshake with Python's :mod:`ssl`
  (TLS 1.2+, ALPN ``h2``, client certificate *requested* and, when sent,
  verified against the CA: ``CERT_OPTIONAL``), then opens a connection to
  the back end and copies bytes both ways.  Control traffic is small (the
  replication stream goes daemon -> sink and keeps gRPC's own TLS), so the
  copy costs nothing that matters.
* **Who is calling.**  Before the first byte is forwarded, the front
  records, under the back-end connection's local port, a :class:`Caller`:
  the real peer address and the verified certificate (CN, PEM).  The
  AuthInterceptor looks the call's peer (``ipv4:127.0.0.1:<port>``) up in
  the :class:`Callers` registry: the kernel guarantees a port belongs to
  one live connection, so a local process that connects to the back end
  directly is not in it and is refused UNAUTHENTICATED.  The entry goes
  when the connection closes.
* **Refusals in the handshake** (``ssl.SSLError``: unknown CA, expired,
  bad signature, protocol or cipher mismatch, no ALPN ``h2``, or the client
  refusing *our* certificate) reach ``on_refused`` as the action
  ``TlsHandshake`` with the peer and OpenSSL's reason.  A connection that
  closes or times out before saying anything (a port scan, a load
  balancer's TCP probe) is logged at debug level only.  So that a flood of
  bad handshakes cannot fill the audit disk, a (peer host, reason) pair is
  recorded at most once per :data:`REPEAT_WINDOW_S`; the next entry after
  the window says how many were not recorded separately.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from .errors import ConfigError, LiftshiftError

log = logging.getLogger("liftshift.tlsfront")

#: What :class:`TlsFront` calls for each refused handshake: ``(None, peer, action, code, reason)``.
OnRefused = Callable[[None, str, str, grpc.StatusCode, str], Awaitable[None] | None]

HANDSHAKE_ACTION = "TlsHandshake"
#: The same (peer host, reason) is audited at most once per this many seconds.
REPEAT_WINDOW_S = 60.0
_COPY_BYTES = 256 * 1024


@dataclass(frozen=True)
class Caller:
    """One connection admitted by the front: where it comes from, and its verified certificate (if any)."""

    peer: str  # gRPC's peer syntax: ipv4:10.0.0.5:51234, ipv6:[fd00::5]:51234
    cn: str | None
    pem: str | None


class Callers:
    """Back-end local port -> :class:`Caller`, for the AuthInterceptor."""

    def __init__(self) -> None:
        self._by_port: dict[int, Caller] = {}

    def add(self, port: int, caller: Caller) -> None:
        self._by_port[port] = caller

    def remove(self, port: int) -> None:
        self._by_port.pop(port, None)

    def lookup(self, peer: str) -> Caller | None:
        """The caller behind a back-end peer ``ipv4:127.0.0.1:<port>`` (None: not one of the front's)."""
        if not peer.startswith("ipv4:127.0.0.1:"):
            return None
        try:
            return self._by_port.get(int(peer.rsplit(":", 1)[1]))
        except ValueError:
            return None

    def __len__(self) -> int:
        return len(self._by_port)


def peer_string(sockaddr: object) -> str:
    """A socket address as gRPC writes peers (``ipv4:h:p``, ``ipv6:[h]:p``)."""
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        host, port = str(sockaddr[0]), sockaddr[1]
        return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
    return str(sockaddr)


def split_listen(address: str) -> tuple[str | None, int]:
    """``host:port`` / ``[v6]:port`` -> (host for asyncio, port); ConfigError for anything else."""
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
    else:
        host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise ConfigError(f"listen address {address!r} is not HOST:PORT or [IPV6]:PORT")
    return host, int(port)


def server_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """The front's TLS context: TLS 1.2+, ALPN h2, client certificates requested and verified against ``ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as e:  # security.load_server_credentials checked them first: rare
        raise ConfigError(f"TLS material {cert} / {key} / {ca}: {e}") from None
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols(["h2"])
    return ctx


def _subject_cn(cert: Mapping[str, Any]) -> str | None:
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def _reason(err: ssl.SSLError) -> str:
    if isinstance(err, ssl.SSLCertVerificationError) and err.verify_message:
        return f"the client certificate was refused: {err.verify_message}"
    reason = err.reason or type(err).__name__
    if reason.startswith(("TLSV1_ALERT_", "SSLV3_ALERT_")):
        return f"the client ended the handshake ({reason}): it may not trust this daemon's certificate"
    return f"TLS handshake failed ({reason})"


class TlsFront:
    """Terminates TLS for one gRPC server listening in plain text on ``127.0.0.1:<backend_port>``."""

    def __init__(self, ctx: ssl.SSLContext, callers: Callers, *, on_refused: OnRefused | None = None,
                 handshake_timeout: float = 10.0) -> None:
        self.ctx = ctx
        self.callers = callers
        self.on_refused = on_refused
        self.handshake_timeout = handshake_timeout
        self.backend_port = 0
        self.refused = 0  # handshakes refused since start (audited or not)
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._recent: dict[tuple[str, str], tuple[float, int]] = {}  # (host, reason) -> (first, unrecorded)

    async def start(self, listen: str, backend_port: int) -> int:
        """Listen on ``listen``; the bound port."""
        host, port = split_listen(listen)
        self.backend_port = backend_port
        try:
            self._server = await asyncio.start_server(self._accepted, host, port, reuse_address=True)
        except OSError as e:
            raise LiftshiftError(f"cannot listen on {listen}: {e.strerror or e}") from None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and drop every open connection."""
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        peer = peer_string(writer.get_extra_info("peername"))
        try:
            await self._serve(peer, reader, writer)
        except asyncio.CancelledError:
            pass
        except Exception:  # one connection's trouble never stops the front
            log.exception("TLS front: connection from %s failed", peer)
        finally:
            writer.close()
            self._conns.discard(task)

    async def _serve(self, peer: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls = _Tls(self.ctx, reader, writer)
        try:
            await asyncio.wait_for(tls.handshake(), self.handshake_timeout)
        except ssl.SSLError as e:
            await self._refuse(peer, _reason(e))
            return
        except (OSError, EOFError, TimeoutError) as e:
            if tls.received:  # it began a handshake: gRPC's client leaves this way when it distrusts us
                await self._refuse(peer, "the client closed the connection during the handshake: it may not trust "
                                         "this daemon's certificate")
            else:  # a TCP probe, a port scan
                log.debug("TLS front: %s left before starting a handshake (%r)", peer, e)
            return
        if tls.obj.selected_alpn_protocol() != "h2":
            await self._refuse(peer, "the client did not negotiate HTTP/2 (ALPN h2): not a gRPC client")
            return
        cert = tls.obj.getpeercert()  # verified against the CA, or {} / None when none was sent
        der = tls.obj.getpeercert(binary_form=True)
        caller = Caller(peer, _subject_cn(cert) if cert else None, ssl.DER_cert_to_PEM_cert(der) if der else None)
        try:
            b_reader, b_writer = await asyncio.open_connection("127.0.0.1", self.backend_port)
        except OSError as e:
            log.error("TLS front: the Control service's back end on 127.0.0.1:%d refused %s: %s",
                      self.backend_port, peer, e)
            return
        port = int(b_writer.get_extra_info("sockname")[1])
        self.callers.add(port, caller)  # before any byte reaches gRPC
        try:
            up = asyncio.ensure_future(tls.copy_out(b_writer))
            down = asyncio.ensure_future(tls.copy_in(b_reader))
            try:
                await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (up, down):
                    t.cancel()
                await asyncio.gather(up, down, return_exceptions=True)
        finally:
            b_writer.close()
            self.callers.remove(port)

    async def _refuse(self, peer: str, reason: str) -> None:
        self.refused += 1
        host = peer.rsplit(":", 1)[0]
        now = time.monotonic()
        first, unrecorded = self._recent.get((host, reason), (-REPEAT_WINDOW_S, 0))
        if now - first < REPEAT_WINDOW_S:
            self._recent[(host, reason)] = (first, unrecorded + 1)
            log.debug("TLS handshake from %s refused again: %s", peer, reason)
            return
        self._recent[(host, reason)] = (now, 0)
        if len(self._recent) > 4096:  # forget old pairs: memory stays bounded under a scan
            self._recent = {k: v for k, v in self._recent.items() if now - v[0] < REPEAT_WINDOW_S}
        if unrecorded:
            reason += f" ({unrecorded} more such refusals from {host} were not recorded separately)"
        log.warning("TLS handshake from %s refused: %s", peer, reason)
        if self.on_refused is None:
            return
        try:
            done = self.on_refused(None, peer, HANDSHAKE_ACTION, grpc.StatusCode.UNAUTHENTICATED, reason)
            if inspect.isawaitable(done):
                await done
        except Exception:  # the refusal stands whatever the callback does
            log.exception("on_refused failed for the TLS handshake from %s", peer)


class _Tls:
    """Server-side TLS over a plain stream with :class:`ssl.SSLObject` and memory BIOs.

    Not ``StreamWriter.start_tls``: under uvloop the first bytes of a
    ClientHello can be read into the plain stream before the handshake
    starts, and are then lost to TLS (the handshake fails at random).  Here
    every byte read goes through the BIO.  One event loop thread uses the
    object; no call into it awaits, so the two copy directions interleave
    safely."""

    def __init__(self, ctx: ssl.SSLContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.reader = reader
        self.writer = writer
        self.received = 0  # bytes from the client so far

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.writer.write(data)

    async def _fill(self) -> bool:
        data = await self.reader.read(_COPY_BYTES)
        if not data:
            self.incoming.write_eof()
            return False
        self.received += len(data)
        self.incoming.write(data)
        return True

    async def handshake(self) -> None:
        """Run the handshake; ssl.SSLError when it is refused (the alert goes out first), EOFError if the peer left."""
        while True:
            try:
                self.obj.do_handshake()
                self._flush()
                await self.writer.drain()
                return
            except ssl.SSLWantReadError:
                self._flush()
                await self.writer.drain()
                if not await self._fill():
                    raise EOFError("closed during the TLS handshake") from None
            except ssl.SSLError:
                self._flush()  # the alert tells the client why
                with contextlib.suppress(OSError):
                    await self.writer.drain()
                raise

    async def copy_out(self, dst: asyncio.StreamWriter) -> None:
        """Decrypt what the client sends into ``dst`` until the client closes."""
        while True:
            try:
                while True:
                    data = self.obj.read(_COPY_BYTES)
                    if not data:
                        return
                    dst.write(data)
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return
            self._flush()  # post-handshake messages (tickets, key updates)
            await dst.drain()
            if not await self._fill():
                return

    async def copy_in(self, src: asyncio.StreamReader) -> None:
        """Encrypt what ``src`` sends to the client until ``src`` closes."""
        while True:
            data = await src.read(_COPY_BYTES)
            if not data:
                with contextlib.suppress(ssl.SSLError):
                    self.obj.unwrap()  # close_notify
                self._flush()
                return
            self.obj.write(data)
            self._flush()
            await self.writer.drain()
