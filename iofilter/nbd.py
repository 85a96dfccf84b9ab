"""``liftshift-nbd``: an NBD server that captures every write into a ring.

Design note
-----------
Why: a QEMU/KVM VM (or qemu-io, fio, qemu-img, nbdcopy) can use any NBD
export as its disk, so an NBD server in front of the raw image is an IO
filter that needs no hypervisor plug-in.  It follows the filter's contract
from :mod:`liftshift.iofilter.ring`: for every WRITE, WRITE_ZEROES and TRIM,
*admit* on the ring (range, closed, freeze, throttle) -> apply to the image
-> *publish* into the ring -> only then reply.  The reply is the guest's
completion, so a write the guest saw complete is always in the ring (or in
its overflow bitmap), and a write that was refused never touched the image.

Ordering: every write-side operation of an export (WRITE, WRITE_ZEROES, TRIM,
FLUSH), from every connection, runs in one ordered path, in the order the
requests were read, so the ring's record order is exactly the order in which
writes reached the image -- for overlapping writes too, which is what a replay
needs -- and a FLUSH covers every write read before it. Serialising only
overlapping ranges would allow more parallelism, but the producer publishes
under one lock anyway and a pwrite of a few KiB costs less than range
tracking. The producer is the ring's C one through ctypes when
``libliftshift_ring.so`` is built (:mod:`.cproducer`), else the Python one.
The path is a single-thread executor, which keeps throttle sleeps, overflow
waits and fdatasync off the event loop. Handing every 4 KiB write to a thread
costs ~3x in IOPS (fio, before replies were coalesced: ~3.8k vs ~9.5k with a
ring), so a small WRITE without FUA runs inline on the loop when nothing is
queued in the thread (it cannot overtake anything) and it cannot sleep (no
throttle word set, room in the ring): :meth:`Export.can_run_inline`. Reads run
beside the writes: small ones inline (a pread from the page cache), large ones
in a two-thread pool. The connection's reader never waits for a request to
finish, only for an in-flight budget (count and bytes), so requests pipeline
and replies go out in completion order; the replies of one burst of requests
are coalesced into one send (a send per 4 KiB reply was the largest cost left
in a profile under fio at queue depth 8).

Plain writes in C: even inline, Python cost ~25 µs of CPU per 4 KiB write
(StreamReader copies and wake-ups, header parsing, dispatch, the reply),
twice nbdkit's whole cost, and with the daemon and the sink on the same
cores that capped replicated IOPS near 0.36 of nbdkit.  So the connection
receives into its own buffer (:class:`~.nbdio.Channel`), and whenever its
reader stands at a request boundary -- as bytes arrive and before each
header is read -- it hands every complete plain WRITE at the front of the
buffer to ``ls_nbd_serve_writes`` (``liftshift_nbd.h``) in one call: the
same admit -> pwrite -> publish -> reply steps, under the same conditions as
an inline write, with one send for all the replies.  The first request that
is anything else stops the call unconsumed and goes the Python way below, so
the C path changes no behaviour, only the cost (~11 µs per write in all,
recv and send included).  It needs ``libliftshift_ring.so`` and the C
producer; ``LIFTSHIFT_NBD_WRITES=python`` turns it off.

Refusals (NBD error values, mapped in :func:`wire_error`): a frozen ring ->
EIO (the write may succeed later); a closed ring or a read-only export ->
EPERM (it never will); writing past the end -> ENOSPC, reading past it or an
unknown command/flag -> EINVAL; a READ or WRITE longer than the 32 MiB
maximum block -> EOVERFLOW (an oversized WRITE's payload is read and dropped
so the connection stays in step, up to 64 MiB; longer, the connection is
closed).  A bad request magic closes the connection; a client that goes away
in the middle of a WRITE payload leaves nothing applied or published,
because a request is dispatched only once its payload is complete.  Errors
are logged once per connection (the first, then a count at disconnect).

Structured replies, block status and TLS are declined (a server may answer
with simple replies only).  ``CAN_MULTI_CONN`` is advertised: no cache of our own,
one file descriptor, one ordered write path, so a FLUSH on one connection
covers the completed writes of every connection.

SIGTERM / SIGINT: stop listening, stop reading requests, finish and answer
the ones already read, fdatasync, exit 0.  CLOSE is appended to the ring only
with ``--close-on-exit`` (when the server lives as long as the VM; otherwise
the VM may reconnect and whoever stops the VM closes the ring).

Known limits: an inline pwrite that blocks (a disk under writeback pressure)
stalls the loop, reads included; a throttle switched on between
``can_run_inline`` and ``admit`` can make one inline write sleep a slot on the
loop; with a bytes-per-second throttle a large TRIM or WRITE_ZEROES is charged
its whole length, as the ring's admit does for every range.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import signal
import socket
import stat
import struct
import sys
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import nbdproto as P
from .cproducer import NBD_ADMIT, NBD_PWRITE, CRingProducer, NbdBatch, open_producer, plain_writes, problem
from .nbdio import Channel
from .producer import RingProducer
from .ring import RECORD_HEADER, Mapped, OutOfRangeError, RingClosedError, RingError, RingFrozenError

log = logging.getLogger("liftshift.nbd")

EXIT_CONFIG = 2
INLINE_READ_MAX = 128 << 10  # reads up to this size are served on the event loop
INLINE_WRITE_MAX = 256 << 10  # writes up to this size may be applied on the event loop
RING_WATCH_S = 0.02  # --ring-watch: how often the ring path is looked at
DISCARD_MAX = 2 * P.MAX_BLOCK  # an oversized WRITE payload up to this is read and dropped
MAX_INFLIGHT = 256  # requests read but not yet answered, per connection
MAX_INFLIGHT_BYTES = 64 << 20
OUT_FLUSH_BYTES = 256 << 10  # queued reply data past this goes to the transport at once
PLAIN_REPLIES = 64 << 10  # reply bytes one C call may produce (16 per plain write)
_ZEROES = bytes(1 << 20)
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_FALLOC_FL_ZERO_RANGE = 0x10


class NbdConfigError(Exception):
    """The server cannot start as configured (exit status 2)."""


class CaptureLostError(Exception):
    """A write reached the image but could not be published into the ring."""


def wire_error(exc: BaseException) -> tuple[int, str]:
    """The NBD error value and a reason for a failed request: the one mapping."""
    if isinstance(exc, RingFrozenError):
        return P.EIO, "writes are frozen (cutover in progress)"
    if isinstance(exc, RingClosedError):
        return P.EPERM, "the ring is closed: the disk takes no more writes"
    if isinstance(exc, OutOfRangeError):
        return P.ENOSPC, exc.problem
    if isinstance(exc, CaptureLostError):
        return P.EIO, str(exc)
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return P.ENOSPC, exc.strerror or str(exc)
        if exc.errno in (errno.EPERM, errno.EACCES, errno.EROFS):
            return P.EPERM, exc.strerror or str(exc)
        return P.EIO, exc.strerror or str(exc)
    return P.EIO, f"internal error: {exc!r}"


def _load_fallocate() -> Callable[[int, int, int, int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):  # pragma: no cover - not glibc/Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_fallocate = _load_fallocate()


class Export:
    """A raw image served as one NBD export, writes captured into its ring.

    The blocking methods (:meth:`write`, :meth:`write_zeroes`, :meth:`trim`,
    :meth:`flush`) must run in the ordered path, :meth:`submit`; :meth:`read`
    may run anywhere.
    """

    def __init__(self, image: str | os.PathLike[str], *, name: str = "default",
                 ring: str | os.PathLike[str] | None = None, read_only: bool = False) -> None:
        self.name = name
        self.image = os.fspath(image)
        self.producer: RingProducer | CRingProducer | None = None
        self._watch: Mapped | None = None  # read-only view of the ring's words, for can_run_inline
        try:
            fd = os.open(self.image, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NbdConfigError(f"image {self.image} does not exist") from None
        except OSError as e:
            raise NbdConfigError(f"cannot open image {self.image}: {e.strerror}") from None
        self.fd = fd
        try:
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
                raise NbdConfigError(f"image {self.image} is neither a regular file nor a block device")
            size = os.lseek(fd, 0, os.SEEK_END)
            if size <= 0:
                raise NbdConfigError(f"image {self.image} is empty")
            if ring is not None:
                self.producer = _open_ring(ring, size, read_only)
                self._watch = Mapped(ring, writable=False)
        except BaseException:
            os.close(fd)
            raise
        self.size = size
        self.shape = P.ExportShape(size, read_only)
        self.tflags = P.transmission_flags(read_only)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="nbd-write")
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="nbd-read")
        self._queued = 0  # operations submitted to the writer thread and not finished
        self._plain = plain_writes()  # ls_nbd_serve_writes, None without the library
        self._batch = NbdBatch()
        self._batch_ref = ctypes.byref(self._batch)
        self._replies = ctypes.create_string_buffer(PLAIN_REPLIES)
        self._replies_at = ctypes.addressof(self._replies)

    # -- scheduling ---------------------------------------------------------

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` in the export's ordered write path (FIFO, one thread)."""
        self._queued += 1
        fut = asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)
        fut.add_done_callback(self._dequeued)
        return fut

    def _dequeued(self, _: object) -> None:
        self._queued -= 1

    def can_run_inline(self, length: int) -> bool:
        """May a WRITE of ``length`` bytes run on the event loop, in order?

        Only when nothing waits in the writer thread (so it cannot overtake
        anything) and neither admit nor publish can sleep: no throttle set and
        room in the ring for its records (only this process produces, so the
        room can only grow until the write is published).
        """
        if self._queued or length > INLINE_WRITE_MAX:
            return False
        w = self._watch
        if w is None:
            return True
        if w.get("throttle_iops") or w.get("throttle_bps"):
            return False
        need = 2 * (length + (length // w.geometry.max_record + 1) * RECORD_HEADER) + 64
        return w.capacity - (w.get("reserve") - w.get("release")) >= need

    def serve_plain(self, address: int, n: int) -> tuple[int, bytes, tuple[int, Exception] | None] | None:
        """Serve in C the plain WRITE requests at the start of the ``n`` received
        bytes at ``address`` (liftshift_nbd.h: admit, pwrite, publish, reply,
        under the conditions of :meth:`can_run_inline`).

        Returns the bytes it used, the replies to send, and for a request it
        used but could not complete its handle and the error to refuse it
        with; None when the C path cannot run now (no library, the Python
        producer, a read-only export, work waiting in the ordered path).
        """
        p = self.producer
        if self._plain is None or self._queued or self.shape.read_only:
            return None
        if p is None:
            ring = None
        elif isinstance(p, CRingProducer):
            ring = p.handle
        else:
            return None
        b = self._batch
        self._plain(ring, self.fd, self.size, INLINE_WRITE_MAX, address, n, self._replies_at, PLAIN_REPLIES,
                    self._batch_ref)
        replies = ctypes.string_at(self._replies_at, b.out) if b.out else b""
        return b.consumed, replies, (b.handle, self._plain_failure(b)) if b.stage else None

    def plain_path(self) -> str:
        """Which code serves plain writes, for the log."""
        if self._plain is None:
            why = problem() or "LIFTSHIFT_NBD_WRITES=python"
            return f"plain writes in Python ({why})"
        if self.producer is not None and not isinstance(self.producer, CRingProducer):
            return "plain writes in Python (the Python ring producer)"
        return "plain writes in C"

    def _plain_failure(self, b: NbdBatch) -> Exception:
        what = f"write [{b.offset}, +{b.length})"
        p = self.producer
        if b.stage == NBD_PWRITE:
            return OSError(b.code, os.strerror(b.code))
        assert isinstance(p, CRingProducer)
        e = p.error(b.code, what)
        if b.stage == NBD_ADMIT:
            return e
        log.error("%s reached the image but not the ring: %s", what, e)
        return CaptureLostError(f"write reached the image but not the ring: {e.problem}")

    def read_async(self, offset: int, length: int) -> asyncio.Future[bytes]:
        """:meth:`read` in the read pool."""
        return asyncio.get_running_loop().run_in_executor(self._readers, self.read, offset, length)

    # -- operations (blocking) ------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the image at ``offset``."""
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise OSError(errno.EIO, f"short read at {offset}: the image shrank under the server")
        return data

    def write(self, offset: int, data: bytes, fua: bool) -> None:
        """Admit, write the image, publish a WRITE record."""
        p = self.producer
        if p is not None:
            p.admit(offset, len(data))
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], offset + done)
        if p is not None:
            self._published(p.publish_write, offset, data)
        if fua:
            os.fdatasync(self.fd)

    def write_zeroes(self, offset: int, length: int, may_trim: bool, fua: bool) -> None:
        """Admit, zero the range (punching a hole when allowed), publish a ZERO record."""
        p = self.producer
        if p is not None:
            p.admit(offset, length)
        if not (may_trim and self._fallocate(_FALLOC_FL_PUNCH_HOLE, offset, length)):
            if not self._fallocate(_FALLOC_FL_ZERO_RANGE, offset, length):
                self._write_zero_bytes(offset, length)
        if p is not None:
            self._published(p.publish_zeroes, offset, length)
        if fua:
            os.fdatasync(self.fd)

    def trim(self, offset: int, length: int, fua: bool) -> None:
        """Admit, discard the range (it reads back as zeroes), publish a TRIM record."""
        p = self.producer
        if p is not None:
            p.admit(offset, length)
        if not self._fallocate(_FALLOC_FL_PUNCH_HOLE, offset, length):
            self._write_zero_bytes(offset, length)
        if p is not None:
            self._published(p.publish_trim, offset, length)
        if fua:
            os.fdatasync(self.fd)

    def flush(self) -> None:
        """Make every completed write durable."""
        os.fdatasync(self.fd)

    # -- a ring that comes and goes (--ring-watch) -----------------------------

    def attach(self, ring: str) -> bool:
        """Start publishing into ``ring`` and announce it (run in the ordered path,
        so every write after the announcement is captured); False if unusable."""
        try:
            producer = _open_ring(ring, self.size, self.shape.read_only)
        except NbdConfigError as e:
            log.error("cannot attach: %s", e)
            return False
        self.producer, self._watch = producer, Mapped(ring, writable=False)
        producer.announce()
        log.info("capture attached: every write is published into %s", ring)
        return True

    def detach(self) -> None:
        """Stop publishing (the ring file was removed or replaced); clears the announcement."""
        if self.producer is not None:
            log.info("capture detached from %s", self.producer.path)
            self.producer.detach()
            self.producer = None
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def close(self, *, close_ring: bool = False) -> None:
        """Finish queued work, flush, optionally append CLOSE, release everything."""
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        try:
            if not self.shape.read_only:
                os.fdatasync(self.fd)
            if self.producer is not None:
                if close_ring:
                    try:
                        seq = self.producer.close()
                        log.info("appended CLOSE to ring %s (seq %d)", self.producer.path, seq)
                    except RingClosedError:
                        log.warning("ring %s was already closed", self.producer.path)
                self.producer.detach()
        finally:
            if self._watch is not None:
                self._watch.close()
            os.close(self.fd)

    # -- internals ----------------------------------------------------------

    def _published(self, publish: Callable[[int, Any], bool], offset: int, arg: Any) -> None:
        try:
            publish(offset, arg)
        except RingError as e:
            # The image already holds the write: the ring was closed (or broken)
            # between admit and publish, which only a foreign CLOSE can cause.
            log.error("write [%d, ...) reached the image but not the ring: %s", offset, e)
            raise CaptureLostError(f"write reached the image but not the ring: {e.problem}") from e

    def _fallocate(self, mode: int, offset: int, length: int) -> bool:
        """fallocate(mode | KEEP_SIZE); False when the file system cannot do it."""
        if _fallocate is None:
            return False
        if _fallocate(self.fd, mode | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
            return True
        err = ctypes.get_errno()
        if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV):
            return False
        raise OSError(err, os.strerror(err))

    def _write_zero_bytes(self, offset: int, length: int) -> None:
        end = offset + length
        while offset < end:
            offset += os.pwrite(self.fd, memoryview(_ZEROES)[: min(len(_ZEROES), end - offset)], offset)


def _open_ring(ring: str | os.PathLike[str], size: int, read_only: bool) -> RingProducer | CRingProducer:
    if read_only:
        raise NbdConfigError("--ring with --read-only: a read-only export has no writes to capture")
    try:
        producer = open_producer(ring)
    except FileNotFoundError as e:
        missing = "" if e.filename == os.fspath(ring) else f" (its {e.filename} is missing)"
        raise NbdConfigError(f"ring {os.fspath(ring)} does not exist{missing}") from None
    except (RingError, OSError) as e:
        raise NbdConfigError(f"cannot use ring {os.fspath(ring)}: {e}") from None
    if producer.geometry.disk_size != size:
        producer.detach()
        raise NbdConfigError(f"ring {os.fspath(ring)} is for a {producer.geometry.disk_size}-byte disk, "
                             f"the image is {size} bytes: create the ring for this disk")
    if producer.counters()["closed"]:
        log.warning("ring %s is closed: every write will be refused with EPERM", producer.path)
    return producer


class Connection:
    """One client: the fixed newstyle handshake, then the transmission phase."""

    def __init__(self, server: NbdServer, channel: Channel, peer: str) -> None:
        self.server = server
        self.peer = peer
        self._r = self._w = channel
        channel.on_data = self._serve_plain
        self._export: Export | None = None
        self._boundary = False  # the reader waits for a request header: plain writes may be served in C
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._pending = 0
        self._pending_bytes = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._room = asyncio.Event()
        self._room.set()
        self._failures: Counter[str] = Counter()
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._flush_scheduled = False

    async def run(self) -> None:
        """Serve the client until it disconnects, breaks the protocol or the server stops."""
        self._task = asyncio.current_task()
        try:
            export = await self._handshake()
            if export is not None:
                log.info("%s: connected to export %r", self.peer, export.name)
                await self._transmit(export)
        except asyncio.CancelledError:
            pass  # the server is stopping: requests already read are still answered below
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            if isinstance(e, asyncio.IncompleteReadError) and e.partial:
                self._failed(f"disconnected in the middle of a message ({len(e.partial)} of {e.expected} bytes)")
        except P.ProtocolViolation as e:
            self._failed(f"protocol violation, closing: {e}")
        finally:
            self._closing = True
            await self._idle.wait()  # writes in the ordered path finish whatever happens
            self._flush()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._w.drain(), 5.0)
            self._w.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._w.wait_closed(), 5.0)
            total = sum(self._failures.values())
            if total > 1:
                log.warning("%s: %d requests failed (%s)", self.peer, total,
                            ", ".join(f"{k} x{n}" for k, n in sorted(self._failures.items())))
            log.info("%s: disconnected", self.peer)

    def stop(self) -> None:
        """Stop reading requests (the ones already read are answered)."""
        if self._task is not None and not self._closing:
            self._task.cancel()

    # -- handshake ------------------------------------------------------------

    async def _handshake(self) -> Export | None:
        r, w = self._r, self._w
        w.write(P.HELLO.pack(P.NBDMAGIC, P.IHAVEOPT, P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES))
        (cflags,) = struct.unpack(">I", await r.readexactly(4))
        if cflags & ~P.CLIENT_FLAGS_KNOWN:
            raise P.ProtocolViolation(f"unknown client flags {cflags:#x}")
        no_zeroes = bool(cflags & P.FLAG_C_NO_ZEROES)
        while True:
            magic, opt, length = P.OPTION_HEADER.unpack(await r.readexactly(P.OPTION_HEADER.size))
            if magic != P.IHAVEOPT:
                raise P.ProtocolViolation(f"bad option magic {magic:#018x}")
            if length > P.OPTION_MAX:
                raise P.ProtocolViolation(f"option {opt} carries {length} bytes (at most {P.OPTION_MAX})")
            data = await r.readexactly(length)
            if opt == P.OPT_EXPORT_NAME:
                try:
                    export = self.server.lookup(P.decode_name(data))
                except P.BadOption as e:
                    raise P.ProtocolViolation(str(e)) from None
                if export is None or self.server.stopping:
                    raise P.ProtocolViolation(f"NBD_OPT_EXPORT_NAME {data[:64]!r}: no such export")
                w.write(P.EXPORT_NAME_REPLY.pack(export.size, export.tflags) + (b"" if no_zeroes else bytes(124)))
                return export
            if opt == P.OPT_ABORT:
                w.write(P.option_reply(opt, P.REP_ACK))
                return None
            if self.server.stopping:
                w.write(P.option_reply(opt, P.REP_ERR_SHUTDOWN, b"the server is shutting down"))
            elif opt == P.OPT_LIST:
                if data:
                    w.write(P.option_reply(opt, P.REP_ERR_INVALID, b"NBD_OPT_LIST carries no data"))
                else:
                    for ex in self.server.exports:
                        w.write(P.option_reply(opt, P.REP_SERVER, P.server_entry(ex.name)))
                    w.write(P.option_reply(opt, P.REP_ACK))
            elif opt in (P.OPT_INFO, P.OPT_GO):
                export = self._info(opt, data)
                if export is not None and opt == P.OPT_GO:
                    return export
            else:
                what = P.OPT_NAMES.get(opt, str(opt))
                w.write(P.option_reply(opt, P.REP_ERR_UNSUP, f"option {what} is not supported".encode()))
            await w.drain()

    def _info(self, opt: int, data: bytes) -> Export | None:
        """Answer NBD_OPT_INFO / NBD_OPT_GO; the export when it was found."""
        w = self._w
        try:
            name, infos = P.parse_info_request(data)
        except P.BadOption as e:
            w.write(P.option_reply(opt, P.REP_ERR_INVALID, str(e).encode()))
            return None
        export = self.server.lookup(name)
        if export is None:
            w.write(P.option_reply(opt, P.REP_ERR_UNKNOWN, f"no export named {name!r}".encode()))
            return None
        w.write(P.option_reply(opt, P.REP_INFO, P.info_export(export.size, export.tflags)))
        # Block sizes are a hint: unaligned requests are served too.
        w.write(P.option_reply(opt, P.REP_INFO, P.info_block_size(P.MIN_BLOCK, P.PREFERRED_BLOCK, P.MAX_BLOCK)))
        if P.INFO_NAME in infos:
            w.write(P.option_reply(opt, P.REP_INFO, P.info_text(P.INFO_NAME, export.name)))
        if P.INFO_DESCRIPTION in infos:
            what = "captured into " + export.producer.path if export.producer else "not captured"
            w.write(P.option_reply(opt, P.REP_INFO, P.info_text(P.INFO_DESCRIPTION, f"{export.image} ({what})")))
        w.write(P.option_reply(opt, P.REP_ACK))
        return export

    # -- transmission ---------------------------------------------------------

    async def _transmit(self, export: Export) -> None:
        r, w, shape = self._r, self._w, export.shape
        self._export = export
        while True:
            if not self._room.is_set():
                await self._room.wait()
            self._boundary = True
            try:
                self._serve_plain()
                head = await r.readexactly(P.REQUEST.size)
            finally:
                self._boundary = False
            magic, flags, cmd, handle, offset, length = P.REQUEST.unpack(head)
            if magic != P.REQUEST_MAGIC:
                raise P.ProtocolViolation(f"bad request magic {magic:#010x}")
            payload = b""
            if cmd == P.CMD_WRITE:
                if length <= shape.max_block:
                    payload = await r.readexactly(length)
                elif length <= DISCARD_MAX:
                    await self._discard(length)  # refused below; the stream stays in step
                else:
                    raise P.ProtocolViolation(f"WRITE of {length} bytes is far beyond the maximum block size")
            refused = P.check_request(shape, cmd, flags, offset, length)
            if refused is not None:
                self._refuse(handle, refused.error, refused.why)
            elif cmd == P.CMD_DISC:
                return
            else:
                self._dispatch(export, cmd, flags, handle, offset, length, payload)
            await w.drain()

    def _serve_plain(self) -> None:
        """Serve in C the run of plain writes received so far (called as bytes
        arrive and before each header is read; see :meth:`Export.serve_plain`).

        Only at a request boundary, so it never takes a payload for a header,
        and only while the client reads its replies (else the reader's
        ``drain()`` holds it back); it stops at the first request it leaves
        to :meth:`_transmit`.
        """
        ch, export = self._r, self._export
        if not self._boundary or export is None:
            return
        while ch.buffered >= P.REQUEST.size and not ch.writing_paused:
            done = export.serve_plain(ch.address + ch.start, ch.buffered)
            if done is None:
                return
            used, replies, failure = done
            ch.consume(used)
            if replies:
                ch.write(replies)
            if failure is None:
                return
            self._refuse(failure[0], *wire_error(failure[1]))

    def _dispatch(self, export: Export, cmd: int, flags: int, handle: int, offset: int, length: int,
                  payload: bytes) -> None:
        fua = bool(flags & P.CMD_FLAG_FUA)
        if cmd == P.CMD_READ:
            if length <= INLINE_READ_MAX:
                try:
                    data = export.read(offset, length) if length else b""
                except OSError as e:
                    self._refuse(handle, *wire_error(e))
                    return
                self._reply(handle, 0, data)
                return
            fut = export.read_async(offset, length)
        elif cmd == P.CMD_FLUSH:
            fut = export.submit(export.flush)
        elif length == 0:
            self._reply(handle, 0)  # an empty write, trim or zero: nothing to do
            return
        elif cmd == P.CMD_WRITE and not fua and export.can_run_inline(length):
            try:
                export.write(offset, payload, False)
            except Exception as e:
                self._refuse(handle, *wire_error(e))
                return
            self._reply(handle, 0)
            return
        elif cmd == P.CMD_WRITE:
            fut = export.submit(export.write, offset, payload, fua)
        elif cmd == P.CMD_TRIM:
            fut = export.submit(export.trim, offset, length, fua)
        else:
            fut = export.submit(export.write_zeroes, offset, length, not flags & P.CMD_FLAG_NO_HOLE, fua)
        nbytes = len(payload) if cmd == P.CMD_WRITE else length if cmd == P.CMD_READ else 0
        self._pending += 1
        self._pending_bytes += nbytes
        self._idle.clear()
        if self._pending >= MAX_INFLIGHT or self._pending_bytes >= MAX_INFLIGHT_BYTES:
            self._room.clear()
        fut.add_done_callback(lambda f: self._completed(f, handle, cmd == P.CMD_READ, nbytes))

    def _completed(self, fut: asyncio.Future[Any], handle: int, is_read: bool, nbytes: int) -> None:
        self._pending -= 1
        self._pending_bytes -= nbytes
        if self._pending < MAX_INFLIGHT and self._pending_bytes < MAX_INFLIGHT_BYTES:
            self._room.set()
        if self._pending == 0:
            self._idle.set()
        exc = fut.exception() if not fut.cancelled() else asyncio.CancelledError()
        if exc is not None:
            self._refuse(handle, *wire_error(exc))
        else:
            self._reply(handle, 0, fut.result() if is_read else None)

    def _refuse(self, handle: int, error: int, why: str) -> None:
        name = P.ERROR_NAMES.get(error, str(error))
        self._failed(f"{name}: {why}", key=name)
        self._reply(handle, error)

    def _reply(self, handle: int, error: int = 0, data: bytes | None = None) -> None:
        """Queue a simple reply; the replies of one burst of requests leave in one send."""
        self._out.append(P.SIMPLE_REPLY.pack(P.SIMPLE_REPLY_MAGIC, error, handle))
        if data:
            self._out.append(data)
            self._out_bytes += len(data)
            if self._out_bytes >= OUT_FLUSH_BYTES:
                self._flush()  # into the transport, where the reader's drain() sees it
                return
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._out_bytes = 0
        out, self._out = self._out, []
        if out and not self._w.is_closing():  # when the client is gone, the answers are lost (not the effects)
            self._w.writelines(out)

    async def _discard(self, length: int) -> None:
        while length:
            length -= len(await self._r.readexactly(min(length, 1 << 20)))

    def _failed(self, what: str, *, key: str | None = None) -> None:
        """Log the first failure of the connection; count the rest."""
        if not self._failures:
            log.warning("%s: %s", self.peer, what)
        self._failures[key or what.split(":", 1)[0]] += 1


class NbdServer:
    """Listens on TCP and/or Unix sockets and serves ``exports``."""

    def __init__(self, exports: list[Export]) -> None:
        self.exports = exports
        self.stopping = False
        self._servers: list[asyncio.Server] = []
        self._connections: set[Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._unix_paths: list[str] = []
        self._count = 0

    def lookup(self, name: str) -> Export | None:
        """The export called ``name``; the empty name is the first (default) export."""
        if name == "" and self.exports:
            return self.exports[0]
        return next((e for e in self.exports if e.name == name), None)

    async def listen_tcp(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0 picks a port); return the port."""
        srv = await asyncio.get_running_loop().create_server(self._channel, host, port, reuse_address=True)
        self._servers.append(srv)
        return int(srv.sockets[0].getsockname()[1])

    async def listen_unix(self, path: str) -> None:
        """Listen on the Unix socket ``path`` (a stale socket file is replaced)."""
        _clear_stale_socket(path)
        self._servers.append(await asyncio.get_running_loop().create_unix_server(self._channel, path))
        self._unix_paths.append(path)

    def _channel(self) -> Channel:
        return Channel(self._accept)

    def _accept(self, channel: Channel) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(channel))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, channel: Channel) -> None:
        self._count += 1
        peer = channel.get_extra_info("peername")
        if isinstance(peer, tuple):
            label = f"{peer[0]}:{peer[1]}"
            with contextlib.suppress(OSError, AttributeError):
                channel.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            label = f"unix#{self._count}"
        if self.stopping:
            channel.close()
            return
        conn = Connection(self, channel, label)
        self._connections.add(conn)
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)

    async def stop(self) -> None:
        """Stop accepting, stop reading requests, answer those already read."""
        self.stopping = True
        for srv in self._servers:
            srv.close()
        for conn in list(self._connections):
            conn.stop()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        for srv in self._servers:
            await srv.wait_closed()
        for path in self._unix_paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _clear_stale_socket(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise NbdConfigError(f"--unix {path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: left behind by a dead server
            return
    raise NbdConfigError(f"--unix {path}: another server is listening there")


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise NbdConfigError(f"--listen {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def write_port_file(path: Path, content: str) -> None:
    """Write ``content`` to ``path`` via a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(content + "\n")
    os.replace(tmp, path)


def _inode(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return 0


async def watch_ring(export: Export, ring: str, interval: float = RING_WATCH_S) -> None:
    """Attach to ``ring`` whenever it exists, detach when it goes (or is replaced).

    The way a filter put on a disk by policy behaves: the daemon creates the
    ring when it wants the disk's writes, and waits for the announcement.
    """
    attached = 0
    while True:
        ino = _inode(ring)
        if attached and ino != attached:
            await export.submit(export.detach)
            attached = 0
        if ino and not attached and await export.submit(export.attach, ring):
            attached = ino
        await asyncio.sleep(interval)


async def serve(export: Export, listen: tuple[str, int] | None, unix: str | None, port_file: Path | None,
                close_on_exit: bool, ring_watch: str | None = None) -> None:
    """Serve ``export`` until SIGTERM/SIGINT, then shut down cleanly."""
    server = NbdServer([export])
    watcher: asyncio.Task[None] | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        where = []
        if unix is not None:
            await server.listen_unix(unix)
            where.append(f"unix:{unix}")
        if listen is not None:
            port = await server.listen_tcp(*listen)
            where.append(f"{listen[0]}:{port}")
        if ring_watch:
            watcher = asyncio.create_task(watch_ring(export, ring_watch))
        ring = export.producer.path if export.producer else (f"watching {ring_watch}" if ring_watch else "no ring")
        log.info("serving %s (%d bytes, export %r, %s, %s) on %s", export.image, export.size, export.name, ring,
                 export.plain_path(), ", ".join(where))
        if port_file is not None:
            write_port_file(port_file, str(port) if listen is not None else str(unix))
        await stop.wait()
        log.info("stopping: answering the requests already read")
    finally:
        if watcher is not None:
            watcher.cancel()
        await server.stop()
        export.close(close_ring=close_on_exit)
        if port_file is not None:
            port_file.unlink(missing_ok=True)
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``liftshift-nbd``; returns the exit status."""
    ap = argparse.ArgumentParser(prog="liftshift-nbd", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    ap.add_argument("--image", required=True, help="raw disk image (or block device) to serve")
    ap.add_argument("--ring", help="ring of this disk: every write is published into it (default: none)")
    ap.add_argument("--ring-watch", metavar="PATH",
                    help="instead of --ring: publish into the ring at PATH whenever it exists (attach and announce "
                         "when it appears, detach when it is removed or replaced), like a filter put on the disk "
                         "by policy; writes while there is none are not captured")
    ap.add_argument("--export", default="default", help="export name (the empty name always works; default: default)")
    ap.add_argument("--listen", metavar="HOST:PORT", help="TCP address; port 0 picks a free port")
    ap.add_argument("--unix", metavar="PATH", help="Unix socket path")
    ap.add_argument("--port-file", type=Path, help="once listening, write the TCP port (or with only --unix, "
                    "the socket path) here, atomically")
    ap.add_argument("--read-only", action="store_true", help="refuse writes (EPERM)")
    ap.add_argument("--close-on-exit", action="store_true",
                    help="append CLOSE to the ring at exit (the server lives as long as the VM)")
    ap.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.listen is None and args.unix is None:
            raise NbdConfigError("give --listen HOST:PORT and/or --unix PATH")
        if args.ring and args.ring_watch:
            raise NbdConfigError("give --ring or --ring-watch, not both")
        if args.ring_watch and args.read_only:
            raise NbdConfigError("--ring-watch with --read-only: a read-only export has no writes to capture")
        listen = parse_listen(args.listen) if args.listen is not None else None
        export = Export(args.image, name=args.export, ring=args.ring, read_only=args.read_only)
    except NbdConfigError as e:
        print(f"liftshift-nbd: {e}", file=sys.stderr)
        return EXIT_CONFIG
    import uvloop

    try:
        uvloop.run(serve(export, listen, args.unix, args.port_file, args.close_on_exit, args.ring_watch))
    except NbdConfigError as e:
        print(f"liftshift-nbd: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as e:
        print(f"liftshift-nbd: cannot listen: {e}", file=sys.stderr)
        return 1
    except RingError as e:  # --close-on-exit could not append CLOSE
        log.error("liftshift-nbd: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
