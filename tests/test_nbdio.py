"""liftshift-nbd's receive buffer (iofilter/nbdio.py) driven the way the event
loop drives a BufferedProtocol, with a recording transport: reads across
pieces and at EOF, reads larger than the buffer, flow control both ways, the
owner's look at received bytes, and compaction."""

from __future__ import annotations

import asyncio
import random

import pytest

from liftshift.iofilter.nbdio import MIN_FREE, Channel

CAP = 256 << 10


class Transport:
    """Records what the channel asks of its transport."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0
        self.sent: list[bytes] = []
        self.closed = False

    def pause_reading(self) -> None:
        assert not self.paused
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        assert self.paused
        self.paused = False

    def write(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def writelines(self, data: list[bytes]) -> None:
        self.sent.extend(bytes(d) for d in data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


def channel() -> tuple[Channel, Transport]:
    ch = Channel(lambda c: None, capacity=CAP)
    t = Transport()
    ch.connection_made(t)  # type: ignore[arg-type]
    return ch, t


def feed(ch: Channel, data: bytes) -> None:
    """What the loop does: ask for a buffer, receive into it, report the count."""
    while data:
        buf = ch.get_buffer(-1)
        assert len(buf) > 0, "an empty buffer would be a fatal error in the loop"
        n = min(len(buf), len(data))
        buf[:n] = data[:n]
        del buf
        ch.buffer_updated(n)
        data = data[n:]


async def test_reads_join_pieces_and_eof_gives_the_partial_bytes() -> None:
    ch, _ = channel()
    task = asyncio.ensure_future(ch.readexactly(10))
    await asyncio.sleep(0)
    feed(ch, b"hello")
    await asyncio.sleep(0)
    assert not task.done()
    feed(ch, b"world!")
    assert await task == b"helloworld"
    assert ch.buffered == 1
    ch.eof_received()
    with pytest.raises(asyncio.IncompleteReadError) as e:
        await ch.readexactly(4)
    assert e.value.partial == b"!" and e.value.expected == 4


async def test_a_read_larger_than_the_buffer_lands_in_its_own() -> None:
    ch, t = channel()
    data = random.Random(1).randbytes(3 * CAP + 123)
    feed(ch, data[:1000])  # part of it arrived before the read
    task = asyncio.ensure_future(ch.readexactly(len(data) - 10))
    await asyncio.sleep(0)
    sizes = []
    rest = data[1000:]
    while rest:
        buf = ch.get_buffer(-1)
        sizes.append(len(buf))
        n = min(len(buf), len(rest), 100_000)
        buf[:n] = rest[:n]
        del buf
        ch.buffer_updated(n)
        rest = rest[n:]
    assert await task == data[:-10]
    assert sizes[0] == len(data) - 10 - 1000  # straight into the payload's own buffer
    assert ch.buffered == 10 and await ch.readexactly(10) == data[-10:]
    assert not t.paused


async def test_reading_pauses_when_nobody_takes_and_resumes_when_taken() -> None:
    ch, t = channel()
    feed(ch, bytes(CAP - MIN_FREE + 1))
    assert t.paused and t.pauses == 1
    assert len(ch.get_buffer(-1)) > 0
    await ch.readexactly(MIN_FREE)
    assert not t.paused
    ch.consume(ch.buffered)
    assert ch.buffered == 0 and len(ch.get_buffer(-1)) == CAP


async def test_the_owner_sees_bytes_first_and_a_reader_wakes_only_for_what_is_left() -> None:
    ch, _ = channel()
    seen = []

    def on_data() -> None:
        seen.append(bytes(ch._view[ch.start:ch.start + ch.buffered]))
        if ch.buffered >= 4:
            ch.consume(4)  # the owner takes whole 4-byte messages, like the C path

    ch.on_data = on_data
    task = asyncio.ensure_future(ch.readexactly(3))
    await asyncio.sleep(0)
    feed(ch, b"abcd")
    await asyncio.sleep(0)
    assert not task.done() and ch.buffered == 0
    feed(ch, b"xyz")
    assert await task == b"xyz"
    assert seen == [b"abcd", b"xyz"]


async def test_a_request_cut_at_the_end_of_the_buffer_moves_to_the_front() -> None:
    ch, t = channel()
    data = random.Random(2).randbytes(CAP - MIN_FREE // 2)
    ch.on_data = None
    buf = ch.get_buffer(-1)
    buf[:len(data)] = data
    del buf
    ch.buffer_updated(len(data))
    assert t.paused
    ch.consume(len(data) - 100)  # all but the start of a request
    assert not t.paused
    buf = ch.get_buffer(-1)
    assert ch.start == 0 and ch.buffered == 100 and len(buf) == CAP - 100
    buf[:5] = b"12345"
    del buf
    ch.buffer_updated(5)
    assert await ch.readexactly(105) == data[-100:] + b"12345"


async def test_drain_waits_for_the_transport_and_fails_when_the_peer_is_gone() -> None:
    ch, t = channel()
    await ch.drain()
    ch.pause_writing()
    waiter = asyncio.ensure_future(ch.drain())
    await asyncio.sleep(0)
    assert not waiter.done() and ch.writing_paused
    ch.resume_writing()
    await waiter
    ch.pause_writing()
    waiter = asyncio.ensure_future(ch.drain())
    await asyncio.sleep(0)
    ch.connection_lost(None)
    with pytest.raises(ConnectionResetError):
        await waiter
    with pytest.raises(ConnectionResetError):
        await ch.drain()
    await asyncio.wait_for(ch.wait_closed(), 1)
    reader = ch.readexactly(1)
    with pytest.raises(asyncio.IncompleteReadError):
        await reader


async def test_writes_and_close_go_to_the_transport() -> None:
    ch, t = channel()
    ch.write(b"a")
    ch.writelines([b"b", b"c"])
    assert t.sent == [b"a", b"b", b"c"] and not ch.is_closing()
    assert ch.get_extra_info("peername") == ("127.0.0.1", 1)
    ch.close()
    assert ch.is_closing()
    with pytest.raises(ValueError):
        ch.consume(1)
