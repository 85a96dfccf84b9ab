"""A test-side client of the sink's Replication service.

:class:`Conversation` drives one Replicate stream step by step (send a frame,
wait for an ack, expect an error), which is what the bad-input tests need:
they snapshot the sink's state after the good frames are durable and before
the bad one.  :func:`replicate` sends a whole list of frames and collects
the acks.  Frames are given as ``make(frame_no) -> Frame`` callables
(:meth:`LiveBatch.frame`, :meth:`ChunkCopy.frame`) because frame numbers
belong to the stream that carries them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

import grpc
from tooling import file_digest  # noqa: F401 - re-exported for the sink tests

from liftshift.v1 import replication_pb2 as pb
from liftshift.v1 import replication_pb2_grpc

FrameMaker = Callable[[int], pb.Frame]
CLIENT_MAX_MESSAGE = 64 << 20  # larger than the sink's, so the sink is the one refusing


def channel(address: str) -> grpc.aio.Channel:
    """An insecure channel that lets the client send more than the sink accepts."""
    return grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", CLIENT_MAX_MESSAGE),
                                                       ("grpc.max_receive_message_length", CLIENT_MAX_MESSAGE)])


def hello(vdisk_id: str) -> FrameMaker:
    return lambda n: pb.Frame(frame_no=n, hello=pb.Hello(vdisk_id=vdisk_id))


def close(final_seq: int) -> FrameMaker:
    return lambda n: pb.Frame(frame_no=n, close=pb.CloseBarrier(final_seq=final_seq))


class Conversation:
    """One Replicate stream, one step at a time."""

    def __init__(self, stub: replication_pb2_grpc.ReplicationStub) -> None:
        self._out: asyncio.Queue[pb.Frame | None] = asyncio.Queue()
        self.call = stub.Replicate(self._requests())
        self.next_no = 1
        self.last_ack = pb.Ack()  # the latest ack read, whoever read it

    async def _requests(self) -> AsyncIterator[pb.Frame]:
        while (frame := await self._out.get()) is not None:
            yield frame

    def send(self, make: FrameMaker, frame_no: int | None = None) -> None:
        """Queue a frame (numbered in order unless ``frame_no`` is forced)."""
        self._out.put_nowait(make(self.next_no if frame_no is None else frame_no))
        self.next_no += 1

    def send_raw(self, frame: pb.Frame) -> None:
        """Queue a frame exactly as given."""
        self._out.put_nowait(frame)

    def half_close(self) -> None:
        self._out.put_nowait(None)

    async def ack(self, timeout: float = 10) -> pb.Ack:
        """The next ack (an RPC error raises AioRpcError)."""
        ack = await asyncio.wait_for(self.call.read(), timeout)
        assert ack is not grpc.aio.EOF, "stream ended without an ack"
        self.last_ack = ack
        return ack

    async def ack_for(self, frame_no: int, timeout: float = 10) -> pb.Ack:
        """Read acks until one covers ``frame_no``."""
        while True:
            ack = await self.ack(timeout)
            if ack.durable_frame >= frame_no:
                return ack

    async def error(self, timeout: float = 10) -> grpc.aio.AioRpcError:
        """Read until the stream fails; return the error (acks before it are dropped)."""
        try:
            while True:
                ack = await asyncio.wait_for(self.call.read(), timeout)
                assert ack is not grpc.aio.EOF, "stream ended cleanly, an error was expected"
                self.last_ack = ack
        except grpc.aio.AioRpcError as e:
            return e


async def replicate(stub: replication_pb2_grpc.ReplicationStub, vdisk_id: str,
                    frames: Sequence[FrameMaker]) -> list[pb.Ack]:
    """Hello, every frame, half-close; return all acks (the last covers every frame)."""
    makers = [hello(vdisk_id), *frames]

    async def requests() -> AsyncIterator[pb.Frame]:
        for n, make in enumerate(makers, start=1):
            yield make(n)

    return [ack async for ack in stub.Replicate(requests())]
