"""One NBD client's socket for :mod:`.nbd`: a receive buffer requests are parsed from.

Design note
-----------
Why not asyncio streams: a StreamReader copies every received chunk into a
bytes object, then into its buffer, then into another bytes object per
``readexactly``, and wakes the reading coroutine for each; under a guest's
4 KiB writes that per-request work cost more than the write.  A
:class:`Channel` is an :class:`asyncio.BufferedProtocol`: the loop receives
straight into one fixed buffer, and its owner may look at the received bytes
in place (:attr:`Channel.address`, :attr:`Channel.buffered`) as soon as they
arrive -- liftshift-nbd serves runs of plain writes there in C
(``liftshift_nbd.h``) without waking any coroutine -- and take what it used
(:meth:`Channel.consume`).  Everything else reads with :meth:`readexactly`,
with StreamReader's semantics (``IncompleteReadError`` carrying the partial
bytes at EOF).

A read larger than the buffer (a WRITE payload of up to 32 MiB) is received
straight into a buffer of its own size.  Reading pauses while the buffer is
nearly full of requests nobody has taken (the server's in-flight budget is
spent), which is the flow control StreamReader gives.  The writing side is
the transport's, with ``drain()`` waiting while the transport's buffer is
over its high-water mark.  An EOF from the client keeps the socket open for
writing (``eof_received`` returns True): replies to requests already read
still go out.
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable, Iterable
from typing import Any, cast

BUFFER = 1 << 20  # received, not yet taken: at most this much
MIN_FREE = 64 << 10  # reading pauses when less room than this is left


class Channel(asyncio.BufferedProtocol):
    """A client connection: buffered receiving, the transport for sending."""

    def __init__(self, on_connect: Callable[[Channel], None], capacity: int = BUFFER) -> None:
        self._on_connect = on_connect
        self._buf = bytearray(capacity)
        self._view = memoryview(self._buf)  # pins the buffer: its address never changes
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self._buf))
        self._start = 0
        self._end = 0
        self._big: bytearray | None = None  # a read larger than the buffer, received into itself
        self._big_fill = 0
        self._want = 0
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._lost = False
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._closed: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.on_data: Callable[[], None] | None = None  # called whenever bytes arrive in the buffer

    # -- looking at and taking received bytes -----------------------------------

    @property
    def start(self) -> int:
        """Offset in the buffer of the first byte not yet taken (see :attr:`address`)."""
        return self._start

    @property
    def buffered(self) -> int:
        """Received bytes not yet taken."""
        return self._end - self._start

    def consume(self, n: int) -> None:
        """Take ``n`` bytes from the front of what was received."""
        if not 0 <= n <= self._end - self._start:
            raise ValueError(f"cannot take {n} of {self._end - self._start} buffered bytes")
        self._start += n
        self._taken()

    async def readexactly(self, n: int) -> bytes:
        """The next ``n`` bytes; ``IncompleteReadError`` if the client went away first."""
        if n <= len(self._buf) - MIN_FREE:
            while self._end - self._start < n:
                if self._eof:
                    partial = bytes(self._view[self._start:self._end])
                    raise asyncio.IncompleteReadError(partial, n)
                self._want = n
                await self._wait()
            data = bytes(self._view[self._start:self._start + n])
            self._start += n
            self._taken()
            return data
        big = bytearray(n)
        have = min(n, self._end - self._start)
        big[:have] = self._view[self._start:self._start + have]
        self._start += have
        self._big_fill = have
        if have < n:
            self._big = big
        self._taken()
        try:
            while self._big is not None:  # buffer_updated lets go of it once it is full
                if self._eof:
                    raise asyncio.IncompleteReadError(bytes(big[:self._big_fill]), n)
                await self._wait()
        finally:
            self._big = None
        return bytes(big)

    async def _wait(self) -> None:
        self._resume_if_room()
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _taken(self) -> None:
        if self._start == self._end:
            self._start = self._end = 0
        self._resume_if_room()

    def _resume_if_room(self) -> None:
        if (self._reading_paused and self.transport is not None and not self._lost
                and (self._big is not None or len(self._buf) - (self._end - self._start) >= MIN_FREE)):
            self._reading_paused = False
            self.transport.resume_reading()

    # -- asyncio.BufferedProtocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # noqa: D102
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._closed = asyncio.get_running_loop().create_future()
        self._on_connect(self)

    def get_buffer(self, sizehint: int) -> memoryview:  # noqa: D102
        if self._big is not None:
            return memoryview(self._big)[self._big_fill:]
        if len(self._buf) - self._end < MIN_FREE and self._start:
            # Move the unfinished request to the front (a few KiB at most
            # when the owner keeps up).
            n = self._end - self._start
            ctypes.memmove(self.address, self.address + self._start, n)
            self._start, self._end = 0, n
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> None:  # noqa: D102
        if self._big is not None:
            self._big_fill += nbytes
            if self._big_fill == len(self._big):
                self._big = None  # the next bytes go to the buffer again
                self._wake()
            return
        self._end += nbytes
        if self.on_data is not None:
            self.on_data()
        if self._end - self._start >= self._want:
            self._wake()
        if (not self._reading_paused and self.transport is not None
                and len(self._buf) - (self._end - self._start) < MIN_FREE):
            self._reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:  # noqa: D102
        self._eof = True
        self._wake()
        return True  # half-closed: replies to what was read still go out

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        self._eof = self._lost = True
        self._wake()
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_exception(ConnectionResetError("connection lost"))
        self._drain_waiters.clear()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:  # noqa: D102
        self._writing_paused = True

    def resume_writing(self) -> None:  # noqa: D102
        self._writing_paused = False
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_result(None)
        self._drain_waiters.clear()

    # -- sending --------------------------------------------------------------------

    @property
    def writing_paused(self) -> bool:
        """The transport holds more unsent data than its high-water mark."""
        return self._writing_paused

    def write(self, data: bytes) -> None:
        """Queue ``data`` for sending."""
        assert self.transport is not None
        self.transport.write(data)

    def writelines(self, data: Iterable[bytes]) -> None:
        """Queue every buffer of ``data`` for sending."""
        assert self.transport is not None
        self.transport.writelines(data)

    async def drain(self) -> None:
        """Wait while the transport's send buffer is over its high-water mark."""
        if self._lost:
            raise ConnectionResetError("connection lost")
        if not self._writing_paused:
            return
        fut = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(fut)
        await fut

    def is_closing(self) -> bool:
        """Whether the connection is closing or closed."""
        return self.transport is None or self.transport.is_closing()

    def close(self) -> None:
        """Close the connection (unsent data is still sent first)."""
        if self.transport is not None:
            self.transport.close()

    async def wait_closed(self) -> None:
        """Wait until the connection is gone."""
        if self._closed is not None:
            await asyncio.shield(self._closed)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The transport's ``get_extra_info``."""
        return self.transport.get_extra_info(name, default) if self.transport is not None else default
