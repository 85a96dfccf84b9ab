"""A raw-socket NBD client for tests that need to send what real clients never do.

It speaks just enough of the protocol to reach the transmission phase
(fixed newstyle, ``NBD_OPT_GO``, simple replies) and then lets a test send
any request header, payload or garbage, pipeline requests and read replies
in whatever order the server sends them.  The wire constants come from
:mod:`liftshift.iofilter.nbdproto`, except where a test is about them.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from liftshift.iofilter import nbdproto as P

TIMEOUT_S = 10.0


class Closed(Exception):
    """The server closed the connection."""


@dataclass(frozen=True)
class Reply:
    """One simple reply; ``data`` only for a successful READ."""

    error: int
    handle: int
    data: bytes = b""


class NbdClient:
    """One connection; use :func:`connect` to build it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.size = 0
        self.tflags = 0
        self._next_handle = 1
        self._read_lengths: dict[int, int] = {}

    # -- plumbing -------------------------------------------------------------

    def recv_exactly(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise Closed(f"connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def is_closed(self, timeout: float = TIMEOUT_S) -> bool:
        """True when the server closes the connection within ``timeout`` (data before EOF is skipped)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
            return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        finally:
            self.sock.settimeout(TIMEOUT_S)

    def close(self) -> None:
        self.sock.close()

    # -- handshake ------------------------------------------------------------

    def hello(self, client_flags: int = P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES) -> int:
        """Read the greeting, send client flags; return the handshake flags."""
        magic, opt_magic, flags = P.HELLO.unpack(self.recv_exactly(P.HELLO.size))
        assert (magic, opt_magic) == (P.NBDMAGIC, P.IHAVEOPT)
        self.send(struct.pack(">I", client_flags))
        return int(flags)

    def option(self, opt: int, data: bytes = b"") -> list[tuple[int, bytes]]:
        """Send an option; return its replies ``(type, data)`` up to the final one."""
        self.send(P.OPTION_HEADER.pack(P.IHAVEOPT, opt, len(data)) + data)
        replies = []
        while True:
            magic, ropt, rtype, length = P.OPTION_REPLY.unpack(self.recv_exactly(P.OPTION_REPLY.size))
            assert magic == P.OPT_REPLY_MAGIC and ropt == opt, (magic, ropt, opt)
            replies.append((rtype, self.recv_exactly(length)))
            if rtype != P.REP_SERVER and rtype != P.REP_INFO:
                return replies

    def go(self, name: str = "", infos: tuple[int, ...] = (P.INFO_BLOCK_SIZE,), opt: int = P.OPT_GO
           ) -> list[tuple[int, bytes]]:
        """NBD_OPT_GO (or INFO); on success remember size and flags."""
        raw = name.encode()
        data = struct.pack(">I", len(raw)) + raw + struct.pack(f">H{len(infos)}H", len(infos), *infos)
        replies = self.option(opt, data)
        for rtype, body in replies:
            if rtype == P.REP_INFO and struct.unpack_from(">H", body)[0] == P.INFO_EXPORT:
                _, self.size, self.tflags = struct.unpack(">HQH", body)
        return replies

    # -- transmission -----------------------------------------------------------

    def request(self, cmd: int, offset: int = 0, length: int = 0, *, flags: int = 0, payload: bytes | None = None,
                magic: int = P.REQUEST_MAGIC) -> int:
        """Send one request (WRITE payload defaults to ``length`` bytes of 0x5a); return its handle."""
        handle = self._next_handle
        self._next_handle += 1
        if cmd == P.CMD_WRITE and payload is None:
            payload = b"\x5a" * length
        self.send(P.REQUEST.pack(magic, flags, cmd, handle, offset, length) + (payload or b""))
        if cmd == P.CMD_READ:
            self._read_lengths[handle] = length
        return handle

    def reply(self) -> Reply:
        """The next reply, whichever request it answers."""
        magic, error, handle = P.SIMPLE_REPLY.unpack(self.recv_exactly(P.SIMPLE_REPLY.size))
        assert magic == P.SIMPLE_REPLY_MAGIC, hex(magic)
        length = self._read_lengths.pop(handle, 0)
        data = self.recv_exactly(length) if length and not error else b""
        return Reply(error, handle, data)

    def call(self, cmd: int, offset: int = 0, length: int = 0, **kw: object) -> Reply:
        """One request and its reply."""
        handle = self.request(cmd, offset, length, **kw)  # type: ignore[arg-type]
        r = self.reply()
        assert r.handle == handle, (r.handle, handle)
        return r

    def disconnect(self) -> None:
        """NBD_CMD_DISC, then close."""
        self.request(P.CMD_DISC)
        self.close()


def connect(address: str | tuple[str, int], *, export: str = "", go: bool = True) -> NbdClient:
    """Connect over TCP (``(host, port)``) or a Unix socket (a path) and, with ``go``, reach transmission."""
    if isinstance(address, tuple):
        sock = socket.create_connection(address, timeout=TIMEOUT_S)
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(TIMEOUT_S)
        sock.connect(address)
    c = NbdClient(sock)
    if go:
        c.hello()
        replies = c.go(export)
        assert replies[-1][0] == P.REP_ACK, replies
    return c
