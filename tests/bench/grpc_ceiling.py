"""The transport's ceiling: the least work a gRPC background copy can do, with nothing of liftshift around it.

``repl.background`` compares our copy with nbdcopy.  To tell what of the gap
is ours and what is Python gRPC's, this copies the same image the same way
with none of the pipeline: one process reads the image in 1 MiB pieces
(``pread`` on the event loop), hashes each with XXH3-64 and sends it as one
message of a bidirectional grpc.aio stream; the other hashes each message,
``pwrite``s it into a fresh sparse file, acks every 4 messages and
``fdatasync``s at the end.  The sender keeps at most 16 MiB unacked (the
daemon's default ``max_inflight``).  Both run on uvloop with glibc's
allocator tuned as the daemons tune it.  What it leaves out, our copy does:
frame headers, per-chunk bookkeeping, credits and durable acks from a group
commit, progress in SQLite, zero detection, rate limits.

Usage (the benchmark starts both): ``grpc_ceiling.py serve PORT TARGET``
prints ``ready`` once listening and exits after one stream;
``grpc_ceiling.py send PORT SOURCE`` copies SOURCE and prints the seconds.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator

import grpc
import uvloop
import xxhash

from liftshift.iofilter.alloc import tune_malloc

PIECE = 1 << 20
WINDOW = 16 << 20
ACK_EVERY = 4
METHOD = "/ceiling.Copy/Stream"
OPTIONS = [("grpc.max_send_message_length", 16 << 20), ("grpc.max_receive_message_length", 16 << 20)]


async def serve(port: int, target: str) -> None:
    """Receive one stream into ``target`` (created here), then return."""
    done = asyncio.Event()

    async def stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        offset = 0
        count = 0
        try:
            async for piece in requests:
                xxhash.xxh3_64_intdigest(piece)
                os.pwrite(fd, piece, offset)
                offset += len(piece)
                count += 1
                if count % ACK_EVERY == 0:
                    yield offset.to_bytes(8, "little")
            os.fdatasync(fd)
        finally:
            os.close(fd)
            done.set()
        yield offset.to_bytes(8, "little")

    server = grpc.aio.server(options=OPTIONS)
    handler = grpc.stream_stream_rpc_method_handler(stream, request_deserializer=None, response_serializer=None)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("ceiling.Copy", {"Stream": handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await done.wait()
    await server.stop(1)


async def send(port: int, source: str) -> float:
    """Copy ``source`` over one stream; seconds from the first read to the last ack."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as channel:
        await channel.channel_ready()
        call = channel.stream_stream(METHOD, request_serializer=None, response_deserializer=None)()
        acked = 0
        room = asyncio.Event()

        async def read_acks() -> None:
            nonlocal acked
            async for ack in call:
                acked = int.from_bytes(ack, "little")
                room.set()

        fd = os.open(source, os.O_RDONLY)
        size = os.fstat(fd).st_size
        t0 = time.perf_counter()
        acks = asyncio.create_task(read_acks())
        try:
            for offset in range(0, size, PIECE):
                while offset - acked > WINDOW:
                    if acks.done():
                        acks.result()  # the stream failed: raise its error
                        raise RuntimeError("the receiver ended the stream early")
                    room.clear()
                    waiter = asyncio.ensure_future(room.wait())
                    await asyncio.wait([waiter, acks], return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                piece = os.pread(fd, PIECE, offset)
                xxhash.xxh3_64_intdigest(piece)
                await call.write(piece)
            await call.done_writing()
            await acks
        finally:
            os.close(fd)
        if acked != size:
            raise RuntimeError(f"the receiver acked {acked} of {size} bytes")
        return time.perf_counter() - t0


def main() -> None:
    tune_malloc()
    mode, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode == "serve":
        uvloop.run(serve(port, path))
    else:
        print(f"{uvloop.run(send(port, path)):.6f}", flush=True)


if __name__ == "__main__":
    main()
