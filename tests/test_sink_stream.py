"""The Replicate stream loop and stream takeover, in memory (no gRPC).

A :class:`ReplicateSession` reads frames from any async iterator; here a
queue-fed generator plays the gRPC request stream, and a MemoryDisk applier
with a slow fake fdatasync shows group commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import xxhash
from framegen import live, record

from liftshift.daemon.errors import FailedPrecondition, InvalidArgument, Unavailable
from liftshift.sink.apply import VdiskApplier
from liftshift.sink.disk import Buffer, MemoryDisk
from liftshift.sink.registry import Shadow
from liftshift.sink.state import VdiskRow
from liftshift.sink.stream import ReplicateSession
from liftshift.v1 import replication_pb2 as pb

DISK = 1 << 20


class SlowSyncDisk(MemoryDisk):
    """fdatasync takes a while, as on a real device."""

    def __init__(self, size: int, delay: float) -> None:
        super().__init__(size)
        self.delay = delay

    def datasync(self) -> None:
        time.sleep(self.delay)
        super().datasync()


class Store:
    def __init__(self) -> None:
        self.persisted: list[int] = []

    def persist(self, vdisk_id: str, durable_seq: int, closed: bool) -> None:
        self.persisted.append(durable_seq)


class Feed:
    """The request side of a stream: frames put in, an async iterator out."""

    def __init__(self) -> None:
        self.q: asyncio.Queue[pb.Frame | None] = asyncio.Queue()

    def put(self, frame: pb.Frame) -> None:
        self.q.put_nowait(frame)

    def end(self) -> None:
        self.q.put_nowait(None)

    async def frames(self) -> AsyncIterator[bytes]:
        """Serialized, as gRPC hands them to the sink."""
        while (f := await self.q.get()) is not None:
            yield f.SerializeToString()


def session(disk: MemoryDisk | None = None, window: float = 0.005) -> tuple[ReplicateSession, MemoryDisk, Store]:
    disk = disk or MemoryDisk(DISK)
    store = Store()
    applier = VdiskApplier("vd", disk, store)
    return ReplicateSession(applier, fsync_window_s=window, buffer_bytes=1 << 20), disk, store


def live_frame(frame_no: int, seq: int) -> pb.Frame:
    return live([record(seq, (seq * 4096) % DISK, bytes([seq % 256]) * 4096)], seq).frame(frame_no)


async def collect(s: ReplicateSession, feed: Feed) -> list[pb.Ack]:
    async with contextlib.aclosing(s.run(feed.frames())) as acks:
        return [a async for a in acks]


async def test_a_burst_is_group_committed_and_the_end_is_acked() -> None:
    s, disk, store = session(SlowSyncDisk(DISK, 0.02))
    feed = Feed()
    for n in range(2, 102):
        feed.put(live_frame(n, n - 1))
    feed.end()
    acks = await collect(s, feed)
    assert acks[0].durable_frame == 1  # the Hello is acked first: where to resume from
    assert acks[-1].durable_frame == 101 and acks[-1].durable_seq == acks[-1].applied_seq == 100
    assert disk.syncs < 20, "one fdatasync per frame: no group commit"
    assert [a.durable_frame for a in acks] == sorted(a.durable_frame for a in acks)
    assert store.persisted == sorted(store.persisted)
    assert sum(a.fsync_ns for a in acks) > 0


async def test_frames_keep_applying_while_a_sync_runs() -> None:
    s, _, _ = session(SlowSyncDisk(DISK, 0.05))
    feed = Feed()
    feed.put(live_frame(2, 1))
    task = asyncio.create_task(collect(s, feed))
    await asyncio.sleep(0.01)  # the sync of frame 2 is now in flight
    for n in range(3, 13):
        feed.put(live_frame(n, n - 1))
    await asyncio.sleep(0.02)
    assert s.applier.applied_seq == 11 and s.applier.durable_seq < 11  # applied during the fdatasync
    feed.end()
    acks = await task
    assert acks[-1].durable_seq == 11


async def test_a_bad_frame_number_ends_the_stream_after_the_good_frames() -> None:
    s, _, _ = session()
    feed = Feed()
    feed.put(live_frame(2, 1))
    feed.put(live_frame(4, 2))
    with pytest.raises(InvalidArgument, match="frame_no 4 where 3 was expected"):
        await collect(s, feed)
    assert s.applier.applied_seq == 1 and s.finished.is_set()


async def test_stop_acks_what_was_applied_then_ends_with_the_reason() -> None:
    s, _, _ = session(window=60)
    feed = Feed()
    got: list[pb.Ack] = []

    async def consume() -> None:
        async with contextlib.aclosing(s.run(feed.frames())) as acks:
            async for a in acks:
                got.append(a)

    task = asyncio.create_task(consume())
    feed.put(live_frame(2, 1))
    await asyncio.sleep(0.05)
    s.stop(Unavailable("the sink is shutting down"))
    with pytest.raises(Unavailable):
        await task
    assert got[-1].durable_seq == 1 and got[-1].durable_frame == 2 and s.finished.is_set()


async def test_takeover_cancels_a_stream_whose_peer_stopped_reading(tmp_path: Path) -> None:
    row = VdiskRow("vd", DISK, "m", 0, 0, False, tmp_path / "f", tmp_path / "d", 0)
    old, _, _ = session()
    shadow = Shadow(row, old.applier)
    await shadow.take_over(old, lambda sh: sh.applier)
    feed = Feed()
    stuck = asyncio.Event()  # never set: the old peer reads one ack and then nothing

    async def old_peer() -> None:
        async with contextlib.aclosing(old.run(feed.frames())) as acks:
            async for _ in acks:
                await stuck.wait()

    old_task = asyncio.create_task(old_peer())
    await asyncio.sleep(0.02)
    new, _, _ = session()
    t0 = time.monotonic()
    await shadow.take_over(new, lambda sh: sh.applier, grace=0.1)
    assert 0.1 <= time.monotonic() - t0 < 2
    assert shadow.owner is new and old.finished.is_set()
    with pytest.raises(asyncio.CancelledError):
        await old_task


async def test_only_the_newest_waiting_stream_takes_over(tmp_path: Path) -> None:
    row = VdiskRow("vd", DISK, "m", 0, 0, False, tmp_path / "f", tmp_path / "d", 0)
    first, _, _ = session()
    shadow = Shadow(row, first.applier)
    await shadow.take_over(first, lambda sh: sh.applier)
    second, _, _ = session()
    third, _, _ = session()
    waiting = asyncio.create_task(shadow.take_over(second, lambda sh: sh.applier))
    await asyncio.sleep(0)
    newest = asyncio.create_task(shadow.take_over(third, lambda sh: sh.applier))
    await asyncio.sleep(0)
    first.finished.set()  # the first stream ends
    with pytest.raises(FailedPrecondition, match="newer Replicate stream"):
        await waiting
    await newest
    assert shadow.owner is third


class ThreadRecordingDisk(MemoryDisk):
    """Remembers which thread wrote each range."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.writers: dict[int, int] = {}  # offset -> thread ident

    def write(self, offset: int, parts: Sequence[Buffer]) -> None:
        self.writers[offset] = threading.get_ident()
        super().write(offset, parts)


def chunk_frame(frame_no: int, offset: int, data: bytes) -> pb.Frame:
    return pb.Frame(frame_no=frame_no, chunk=pb.Chunk(offset=offset, length=len(data), data=data,
                                                      xxh3=xxhash.xxh3_64_intdigest(data),
                                                      kind=pb.CHUNK_KIND_BACKGROUND))


async def test_a_lone_stream_applies_large_frames_on_the_loop_and_others_share_a_thread() -> None:
    """One stream: a 256 KiB chunk is written on the event loop (no hand-off).
    Two streams at once: the same chunk goes to a worker thread, so a write
    waiting for the page cache cannot hold up the other stream; a small frame
    stays on the loop either way."""
    loop_thread = threading.get_ident()
    big = bytes(range(256)) * 1024  # 256 KiB
    small = b"s" * 4096

    lone_disk = ThreadRecordingDisk(DISK)
    lone, _, _ = session(lone_disk)
    feed = Feed()
    feed.put(chunk_frame(2, 0, big))
    feed.end()
    await collect(lone, feed)
    assert lone_disk.writers == {0: loop_thread}
    assert lone_disk.read(0, len(big)) == big

    disk_a, disk_b = ThreadRecordingDisk(DISK), ThreadRecordingDisk(DISK)
    (a, _, _), (b, _, _) = session(disk_a), session(disk_b)
    feed_a, feed_b = Feed(), Feed()
    task_b = asyncio.create_task(collect(b, feed_b))  # B is running (idle) while A applies
    async with asyncio.timeout(10):
        while not b.meter.streams:
            await asyncio.sleep(0)
        feed_a.put(chunk_frame(2, 0, big))
        task_a = asyncio.create_task(collect(a, feed_a))
        while 0 not in disk_a.writers:  # applied alone, not batched with the small frame
            await asyncio.sleep(0.001)
    feed_a.put(chunk_frame(3, 512 << 10, small))
    feed_a.end()
    await task_a
    feed_b.end()
    await task_b
    assert disk_a.writers[0] != loop_thread, "a large frame blocked the loop while another stream was running"
    assert disk_a.writers[512 << 10] == loop_thread
    assert disk_a.read(0, len(big)) == big and disk_a.read(512 << 10, len(small)) == small
