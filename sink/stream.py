"""One Replicate stream: receive frames, apply them in order, group-commit, ack.

Design note
-----------
The loop schedules, the applier does the work
(:class:`~liftshift.sink.apply.VdiskApplier`).  Two tasks per stream:

* the *reader* pulls frames off the gRPC stream, decodes them
  (:mod:`liftshift.daemon.wire`: payloads stay views into the received
  message), checks that ``frame_no`` goes 1, 2, 3, ... and puts them in a
  :class:`FrameQueue`;
* the *apply loop* (the RPC's own task) takes frames in order and applies
  them: on the event loop while this is the only stream the sink is
  applying, else a large frame in a worker thread, so that one stream's
  write waiting for the page cache never holds up the others (see
  :meth:`ReplicateSession._apply_next`); it syncs when the
  queue is empty (the source paused: make it durable now) or when
  ``fsync_window`` has passed since the last sync (the source keeps
  sending: one fdatasync covers a whole window of frames).  The sync
  runs in a worker thread, so the reader keeps receiving meanwhile; then an
  Ack names the applied / durable sequences and the last durable frame.

The queue is bounded in *bytes*, not frames: frames range from a few bytes
to ``max_message``, so a frame count would not bound memory.  A full queue
stops the reader, and gRPC flow control then stops the source.

A stream ends when the source half-closes (final sync, final ack), on a bad
frame (frames before it stay applied; the typed error becomes the status),
or when stopped from outside: :meth:`ReplicateSession.stop` (a newer stream
took the vdisk over, or the sink is shutting down) drops the frames not yet
applied, syncs what was, acks it and ends with the reason as the status.
:meth:`ReplicateSession.cancel` is the last resort for a stream stuck
writing to a peer that stopped reading.  Either way ``finished`` is set
only after any fdatasync or frame write in flight has completed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from liftshift.daemon import wire
from liftshift.daemon.errors import InvalidArgument, LiftshiftError
from liftshift.v1 import replication_pb2 as pb

from .apply import Synced, VdiskApplier
from .meters import VdiskMeter

log = logging.getLogger("liftshift.sink.stream")

_EOF = object()
EMPTY = object()  # FrameQueue.get_nowait: nothing waiting
_FRAME_OVERHEAD = 64  # bytes a queued frame costs beyond its payload (tags, sequence numbers)
# Frames smaller than this are applied on the event loop: handing them to a
# thread would cost more than applying them.
_INLINE_BYTES = 64 << 10
# Streams of this process between the start and the end of ReplicateSession.run.
_streams = 0
# At most this many bytes of frames go to one worker-thread call (a backlog
# is applied in fewer hand-offs; a group commit waits for at most one batch).
_BATCH_BYTES = 4 << 20


class FrameQueue:
    """FIFO of received frames bounded by their total size in bytes.

    At least one frame always fits, however large, so a frame up to
    ``max_message`` never deadlocks the stream.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._items: collections.deque[tuple[Any, int]] = collections.deque()
        self._bytes = 0
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._error: BaseException | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of frames waiting."""
        return self._bytes

    def empty(self) -> bool:
        """True when no frame (nor end of stream) is waiting."""
        return not self._items

    async def put(self, item: Any, nbytes: int) -> None:
        """Append a frame, waiting while the queue holds ``limit`` bytes already."""
        while self._items and self._bytes + nbytes > self._limit and self._error is None:
            self._writable.clear()
            await self._writable.wait()
        if self._error is not None:
            raise self._error
        self._items.append((item, nbytes))
        self._bytes += nbytes
        self._readable.set()

    def put_end(self, error: BaseException | None = None) -> None:
        """Append the end of the stream (or an error) after the frames queued so far."""
        self._items.append((error if error is not None else _EOF, 0))
        self._readable.set()

    def fail_now(self, error: BaseException) -> None:
        """Drop every queued frame: the next :meth:`get` raises ``error``."""
        self._items.clear()
        self._bytes = 0
        self._error = error
        self._readable.set()
        self._writable.set()

    def get_nowait(self) -> Any:
        """The next frame, :data:`EMPTY` when none is waiting, None at the end
        of the stream; raises a queued error."""
        if not self._items:
            if self._error is not None:
                raise self._error
            return EMPTY
        item, nbytes = self._items.popleft()
        self._bytes -= nbytes
        self._writable.set()
        if item is _EOF:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def take_frames(self, max_bytes: int) -> list[Any]:
        """The frames waiting at the head of the queue, up to ``max_bytes`` of
        them; the end of the stream or an error stays queued."""
        out: list[Any] = []
        total = 0
        while self._items:
            item, nbytes = self._items[0]
            if item is _EOF or isinstance(item, BaseException) or total + nbytes > max_bytes:
                break
            self._items.popleft()
            self._bytes -= nbytes
            total += nbytes
            out.append(item)
        if out:
            self._writable.set()
        return out

    async def wait_readable(self) -> None:
        """Return once :meth:`get_nowait` has something (a frame, the end, an error)."""
        while not self._items and self._error is None:
            self._readable.clear()
            await self._readable.wait()


class ReplicateSession:
    """The apply side of one Replicate stream of one vdisk."""

    def __init__(self, applier: VdiskApplier, *, fsync_window_s: float, buffer_bytes: int, peer: str = "",
                 meter: VdiskMeter | None = None) -> None:
        self.applier = applier
        self.meter = meter or VdiskMeter(applier.vdisk_id)  # statistics (liftshift.sink.meters)
        self.vdisk_id = applier.vdisk_id
        self.peer = peer
        self._window = fsync_window_s
        self._queue = FrameQueue(buffer_bytes)
        self._reader: asyncio.Task[None] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._sync: asyncio.Future[Synced] | None = None  # at most one fdatasync in flight
        self._applying: asyncio.Future[None] | None = None  # the last frame handed to a worker thread
        self._sync_frame = 0
        self._stop_reason: LiftshiftError | None = None
        self.finished = asyncio.Event()
        self._last_frame = 1  # the Hello
        self._acked_frame = 0
        self._apply_ns = 0
        self._last_sync = time.monotonic()
        self.frames = 0
        self.bytes = 0

    # -- control from outside ---------------------------------------------

    def stop(self, reason: LiftshiftError) -> None:
        """End the stream after the frames being applied: the others are dropped,
        applied ones synced and acked, and ``reason`` becomes the status."""
        if self._stop_reason is None:
            self._stop_reason = reason
            self._queue.fail_now(reason)
            if self._reader is not None:
                self._reader.cancel()

    def cancel(self) -> None:
        """Cancel the RPC outright (the peer is not reading acks)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()

    # -- the stream -------------------------------------------------------

    async def run(self, requests: AsyncIterator[bytes]) -> AsyncGenerator[pb.Ack, None]:
        """Apply the frames after the Hello from ``requests`` (serialized
        Frames, decoded by :mod:`liftshift.daemon.wire`); yield acks."""
        self._task = asyncio.current_task()
        self._reader = asyncio.create_task(self._read(requests), name=f"replicate-reader-{self.vdisk_id}")
        self.meter.streams += 1
        global _streams
        _streams += 1
        try:
            self.applier.begin_stream()
            async for ack in self._settle():  # the Hello: the source learns where to resume
                yield ack
            while True:
                if self._sync is not None and self._sync.done():
                    yield self._acked()
                try:
                    frame = self._queue.get_nowait()
                except LiftshiftError:
                    if self._stop_reason is None:
                        raise
                    async for ack in self._settle():  # stopped: ack what was applied, then end
                        yield ack
                    raise
                if frame is None:  # the source half-closed: make everything durable, say so, end
                    async for ack in self._settle():
                        yield ack
                    return
                if frame is EMPTY:
                    # Idle: sync now (the source paused), else wait for a frame or the sync.
                    if self._sync is None and self._needs_ack():
                        self._start_sync()
                    await self._wait_for_work()
                    continue
                # Frames already waiting go to the worker thread with this one.
                await self._apply_next([frame, *self._queue.take_frames(_BATCH_BYTES - len(frame.payload))])
                if self._sync is None and time.monotonic() - self._last_sync >= self._window:
                    self._start_sync()
        finally:
            self.meter.streams -= 1
            _streams -= 1
            await self._cleanup()

    def _needs_ack(self) -> bool:
        return self.applier.needs_sync or self._acked_frame < self._last_frame

    def _start_sync(self) -> None:
        """Snapshot the position here, fdatasync in a worker thread; frames go
        on being applied meanwhile (the sync claims only the snapshot)."""
        point = self.applier.begin_sync()
        self._sync_frame = self._last_frame
        self._last_sync = time.monotonic()
        self._sync = asyncio.ensure_future(asyncio.to_thread(self.applier.complete_sync, point))

    def _acked(self) -> pb.Ack:
        """The ack for the finished sync (its error, if it failed)."""
        assert self._sync is not None
        synced = self._sync.result()
        self._sync = None
        self._acked_frame = self._sync_frame
        ack = pb.Ack(applied_seq=self.applier.applied_seq, durable_seq=synced.durable_seq,
                     durable_frame=self._sync_frame, closed=synced.closed, apply_ns=self._apply_ns,
                     fsync_ns=synced.fsync_ns)
        self._apply_ns = 0
        self.meter.acked(ack)
        return ack

    async def _wait_for_work(self) -> None:
        """Until a frame arrives or the sync in flight finishes."""
        if self._sync is None:
            await self._queue.wait_readable()
            return
        readable: asyncio.Future[Any] = asyncio.ensure_future(self._queue.wait_readable())
        waiting: list[asyncio.Future[Any]] = [readable, self._sync]
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            readable.cancel()

    async def _settle(self) -> AsyncIterator[pb.Ack]:
        """Finish the sync in flight, then sync whatever is left; ack each."""
        if self._sync is not None:
            await asyncio.wait([self._sync])
            yield self._acked()
        if self._needs_ack():
            self._start_sync()
            assert self._sync is not None
            await asyncio.wait([self._sync])
            yield self._acked()

    async def _cleanup(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._applying is not None:
            # Nor can a frame being written in a worker thread.
            await asyncio.wait([self._applying])
            if not self._applying.cancelled():
                self._applying.exception()  # retrieved (the stream already failed with it, if anything)
        if self._sync is not None and not self._sync.done():
            # The fdatasync thread cannot be cancelled; whoever owns the vdisk
            # next must not start before it has finished.
            await asyncio.wait([self._sync])
        if self._sync is not None and self._sync.done() and not self._sync.cancelled():
            self._sync.exception()  # retrieved: an unacked failure is not "never retrieved"
        self.finished.set()

    async def _read(self, requests: AsyncIterator[bytes]) -> None:
        expected = 2
        try:
            async for raw in requests:
                frame = wire.decode_frame(raw)
                if frame.frame_no != expected:
                    raise InvalidArgument(f"frame_no {frame.frame_no} where {expected} was expected: frames of a "
                                          "stream are numbered 1, 2, 3, ... (the Hello is 1)")
                expected += 1
                await self._queue.put(frame, len(frame.payload) + _FRAME_OVERHEAD)
        except asyncio.CancelledError:
            raise
        except LiftshiftError as e:
            if self._stop_reason is None:
                self._queue.put_end(e)
            return
        except Exception as e:  # the transport failed under us: end the stream with it
            log.info("vdisk %s: reading the stream from %s failed: %s", self.vdisk_id, self.peer, e)
            self._queue.put_end(e)
            return
        self._queue.put_end()

    async def _apply_next(self, frames: list[wire.WireFrame]) -> None:
        """Apply frames in order, never two batches at once.

        On the event loop when the frames are small, or when this is the
        only stream the sink is running: a hand-off to a worker thread costs
        a thread wake-up and a loop wake-up per batch (a 2 GiB background
        copy: 586 MB/s with every large batch in a thread, 652 MB/s with a
        lone stream's batches on the loop; medians of 6 alternating runs on
        2 cores).  With other streams running, a large batch goes to a worker
        thread instead (its checksums and writes release the GIL), because a
        write waiting for page allocation or writeback would otherwise hold
        up every stream on the loop; a lone stream only holds up itself.
        """
        if _streams <= 1 or sum(len(f.payload) for f in frames) < _INLINE_BYTES:
            for frame in frames:
                self._apply(frame)
            # Let the reader and other streams run between frames: a full
            # queue would otherwise hold the event loop for its whole length.
            await asyncio.sleep(0)
            return
        self._applying = asyncio.get_running_loop().run_in_executor(None, self._apply_all, frames)
        # Shielded: if this task is cancelled the writes go on in their
        # thread, and _cleanup waits for them before the vdisk changes hands.
        await asyncio.shield(self._applying)

    def _apply_all(self, frames: list[wire.WireFrame]) -> None:
        for frame in frames:
            self._apply(frame)

    def _apply(self, frame: wire.WireFrame) -> None:
        """Apply one frame (on the event loop or in a worker thread, never two at once)."""
        t0 = time.perf_counter_ns()
        kind = frame.body
        a = self.applier
        if kind == "live":
            done = a.apply_live(frame.payload, frame.first_seq, frame.last_seq, frame.count)
            self.bytes += len(frame.payload)
            self.meter.applied(done.bytes_written, done.applied, a.applied_seq)
        elif kind == "chunk":
            a.apply_chunk(frame.offset, frame.length, frame.payload, frame.zero, frame.xxh3)
            self.bytes += len(frame.payload)
            self.meter.applied(len(frame.payload), 0, a.applied_seq)
        elif kind == "close":
            a.close_barrier(frame.final_seq)
        elif kind == "hello":
            raise InvalidArgument(f"frame {frame.frame_no} is a second Hello; a stream names its vdisk once")
        else:
            raise InvalidArgument(f"frame {frame.frame_no} has no body (expected live, chunk or close)")
        self._last_frame = frame.frame_no
        self.frames += 1
        self._apply_ns += time.perf_counter_ns() - t0
