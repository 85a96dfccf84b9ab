"""liftshift-nbd's C path for plain writes (iofilter/liftshift_nbd.c) through
:meth:`Export.serve_plain`, in process, on crafted request buffers.

What it must do: serve the leading run of plain WRITE requests exactly as the
Python path would (image bytes, ring records in request order, one success
reply per request with its handle), stop *unconsumed* at the first request it
must leave to Python (anything but a plain in-range WRITE of at most
INLINE_WRITE_MAX bytes whose payload has arrived, or any ring condition that
could make it wait or refuse), and report a request that failed after it was
taken with the error Python maps.  The end-to-end behaviour against real
clients is test_nbd.py, which runs every test with both paths.
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from cbuild import c_library

from liftshift.iofilter import FLAG_WRITE, RingConsumer, RingFrozenError, cproducer, create_ring
from liftshift.iofilter import nbdproto as P
from liftshift.iofilter.nbd import INLINE_WRITE_MAX, PLAIN_REPLIES, CaptureLostError, Export

MiB = 1 << 20
SIZE = 4 * MiB


@pytest.fixture(autouse=True)
def _c_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFTSHIFT_RING_LIB", str(c_library()))
    monkeypatch.delenv("LIFTSHIFT_NBD_WRITES", raising=False)
    monkeypatch.delenv("LIFTSHIFT_RING_PRODUCER", raising=False)
    monkeypatch.setattr(cproducer, "_lib", None)
    monkeypatch.setattr(cproducer, "_problem", None)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(random.Random(7).randbytes(SIZE))
    return path


@pytest.fixture
def ring(tmp_path: Path, shm_dir: Path) -> Path:
    path = shm_dir / "disk.ring"
    create_ring(path, SIZE, capacity=32 * MiB)
    return path


@pytest.fixture
def export(image: Path, ring: Path) -> Iterator[Export]:
    ex = Export(image, ring=ring)
    assert ex.plain_path() == "plain writes in C"
    yield ex
    ex.close()


def request(handle: int, offset: int, data: bytes = b"", *, cmd: int = P.CMD_WRITE, flags: int = 0,
            length: int | None = None, magic: int = P.REQUEST_MAGIC) -> bytes:
    return P.REQUEST.pack(magic, flags, cmd, handle, offset, len(data) if length is None else length) + data


def serve(ex: Export, buf: bytes) -> tuple[int, list[tuple[int, int, int]], tuple[int, Exception] | None]:
    """(bytes used, replies as (magic, error, handle), failure) of one call."""
    mem = ctypes.create_string_buffer(buf, len(buf))
    done = ex.serve_plain(ctypes.addressof(mem), len(buf))
    assert done is not None
    used, replies, failure = done
    assert len(replies) % P.SIMPLE_REPLY.size == 0
    parsed = [P.SIMPLE_REPLY.unpack_from(replies, i) for i in range(0, len(replies), P.SIMPLE_REPLY.size)]
    return used, parsed, failure


def ring_writes(ring: Path) -> list[tuple[int, bytes]]:
    out = []
    with RingConsumer(ring) as c:
        while (batch := c.read_batch(max_bytes=64 * MiB)) is not None:
            assert not batch.corrupt
            for r in batch.records():
                assert r.flags == FLAG_WRITE
                out.append((r.offset, bytes(r.payload)))
    return out


def test_a_run_of_plain_writes_is_served_in_order(export: Export, image: Path, ring: Path) -> None:
    rng = random.Random(1)
    writes = []
    for h in range(200):
        length = rng.choice([512, 4096, 4096, 65536, INLINE_WRITE_MAX])
        offset = rng.randrange(0, SIZE - length)
        writes.append((0x1000_0000_0000_0000 + h, offset, rng.randbytes(length)))
    writes.append((77, 128 * 1024, b"\xaa" * 8192))  # overlaps: the later write wins in image and ring
    writes.append((78, 128 * 1024 + 4096, b"\xbb" * 8192))
    buf = b"".join(request(h, off, data) for h, off, data in writes)
    expect = bytearray(image.read_bytes())
    for _, off, data in writes:
        expect[off:off + len(data)] = data

    used, replies, failure = serve(export, buf)

    assert (used, failure) == (len(buf), None)
    assert replies == [(P.SIMPLE_REPLY_MAGIC, 0, h) for h, _, _ in writes]
    assert image.read_bytes() == expect
    assert ring_writes(ring) == [(off, data) for _, off, data in writes]


STOPS = {
    "fua": dict(flags=P.CMD_FLAG_FUA),
    "read": dict(cmd=P.CMD_READ, length=4096, data=b""),
    "flush": dict(cmd=P.CMD_FLUSH, length=0, data=b""),
    "trim": dict(cmd=P.CMD_TRIM, length=4096, data=b""),
    "write_zeroes": dict(cmd=P.CMD_WRITE_ZEROES, length=4096, data=b""),
    "bad_magic": dict(magic=0x12345678),
    "empty": dict(length=0, data=b""),
    "too_long_for_c": dict(data=bytes(INLINE_WRITE_MAX + 512)),
    "past_the_end": dict(offset=SIZE - 512),
    "offset_wraps": dict(offset=(1 << 64) - 512),
    "payload_not_here_yet": dict(data=bytes(4096), cut=100),
    "header_not_here_yet": dict(cut=4096 + 10),
}


@pytest.mark.parametrize("case", sorted(STOPS))
def test_stops_unconsumed_at_a_request_left_to_python(case: str, export: Export, image: Path, ring: Path) -> None:
    spec = dict(STOPS[case])
    cut = spec.pop("cut", 0)
    data = spec.pop("data", b"\x11" * 4096)
    offset = spec.pop("offset", 8192)
    before = image.read_bytes()
    first = [request(1, 0, b"\x01" * 4096), request(2, 4096, b"\x02" * 4096)]
    odd = request(3, offset, data, **spec)
    buf = b"".join(first) + odd + request(4, 16384, b"\x04" * 4096)
    if cut:
        buf = buf[: len(b"".join(first)) + len(odd) - cut]

    used, replies, failure = serve(export, buf)

    assert used == len(b"".join(first)) and failure is None
    assert [h for _, _, h in replies] == [1, 2]
    after = image.read_bytes()
    assert after[:8192] == b"\x01" * 4096 + b"\x02" * 4096
    assert after[8192:] == before[8192:]  # neither the odd request nor the one behind it
    assert ring_writes(ring) == [(0, b"\x01" * 4096), (4096, b"\x02" * 4096)]


@pytest.mark.parametrize("word", ["throttle_iops", "throttle_bps", "freeze", "closed"])
def test_ring_words_that_could_hold_or_refuse_a_write_leave_it_to_python(word: str, export: Export, image: Path,
                                                                        ring: Path) -> None:
    with RingConsumer(ring) as c:
        if word == "closed":
            assert export.producer is not None
            export.producer.close()
        else:
            c.set_control(**{word: 1})
        rejects = c.counters()["frozen_rejects"]
    before = image.read_bytes()

    used, replies, failure = serve(export, request(9, 0, b"\x09" * 4096))

    assert (used, replies, failure) == (0, [], None)
    assert image.read_bytes() == before
    with RingConsumer(ring) as c:
        assert c.counters()["frozen_rejects"] == rejects  # counted once, by Python's refusal


def test_a_nearly_full_ring_leaves_the_write_to_python(image: Path, shm_dir: Path) -> None:
    path = shm_dir / "small.ring"
    create_ring(path, SIZE, capacity=64 * 1024)
    ex = Export(image, ring=path)
    try:
        used, replies, _ = serve(ex, b"".join(request(h, h * 4096, bytes([h]) * 4096) for h in range(32)))
        # Each 4 KiB write needs 2 * (4096 + 56) + 64 bytes of room: the C path
        # stops while a write could still have to wait for the consumer.
        assert 0 < len(replies) < 32 and used == len(replies) * (28 + 4096)
        with RingConsumer(path) as c:
            room = 64 * 1024 - (c.counters()["reserve"] - c.counters()["release"])
        assert room < 2 * (4096 + 56) + 64
    finally:
        ex.close()


def test_at_most_the_reply_buffer_per_call(export: Export) -> None:
    n = PLAIN_REPLIES // P.SIMPLE_REPLY.size + 10
    buf = b"".join(request(h, (h % 1024) * 512, b"r" * 512) for h in range(n))
    used, replies, failure = serve(export, buf)
    assert len(replies) == PLAIN_REPLIES // P.SIMPLE_REPLY.size and failure is None
    assert used == len(replies) * (28 + 512)


def test_a_failed_pwrite_takes_the_request_and_publishes_nothing(export: Export, image: Path, ring: Path) -> None:
    good = request(1, 0, b"\x01" * 4096)
    bad = request(2, 4096, b"\x02" * 4096)
    served_fd = export.fd
    export.fd = os.open(image, os.O_RDONLY)  # every pwrite now fails with EBADF
    try:
        used, replies, failure = serve(export, good + bad)
    finally:
        os.close(export.fd)
        export.fd = served_fd
    assert used == len(good)
    assert failure is not None and failure[0] == 1
    assert isinstance(failure[1], OSError) and failure[1].errno == errno.EBADF
    assert replies == []
    assert ring_writes(ring) == []  # admitted, never published


def test_failures_map_to_the_errors_python_uses(export: Export) -> None:
    b = cproducer.NbdBatch(offset=0, length=4096, stage=cproducer.NBD_ADMIT, code=-10004)
    assert isinstance(export._plain_failure(b), RingFrozenError)
    b = cproducer.NbdBatch(offset=0, length=4096, stage=cproducer.NBD_PUBLISH, code=-10005)
    assert isinstance(export._plain_failure(b), CaptureLostError)
    b = cproducer.NbdBatch(offset=0, length=4096, stage=cproducer.NBD_PWRITE, code=errno.ENOSPC)
    err = export._plain_failure(b)
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC


def test_without_a_ring_writes_reach_the_image(image: Path) -> None:
    ex = Export(image)
    try:
        buf = request(5, 1000, b"abc" * 1000) + request(6, SIZE - 512, b"z" * 512)
        used, replies, failure = serve(ex, buf)
        assert (used, failure) == (len(buf), None) and [h for _, _, h in replies] == [5, 6]
        data = image.read_bytes()
        assert data[1000:4000] == b"abc" * 1000 and data[-512:] == b"z" * 512
    finally:
        ex.close()


def test_not_used_where_python_must_serve(image: Path, ring: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ro = Export(image, read_only=True)
    try:
        assert ro.serve_plain(0, 0) is None
    finally:
        ro.close()
    monkeypatch.setenv("LIFTSHIFT_RING_PRODUCER", "python")
    py = Export(image, ring=ring)
    try:
        assert py.serve_plain(0, 0) is None and py.plain_path() == "plain writes in Python (the Python ring producer)"
    finally:
        py.close()
    monkeypatch.setenv("LIFTSHIFT_RING_PRODUCER", "")
    monkeypatch.setenv("LIFTSHIFT_NBD_WRITES", "python")
    off = Export(image, ring=ring)
    try:
        assert off.serve_plain(0, 0) is None
        assert off.plain_path() == "plain writes in Python (LIFTSHIFT_NBD_WRITES=python)"
    finally:
        off.close()


def test_the_handle_comes_back_as_sent(export: Export) -> None:
    handles = [0, 1, 0xFFFF_FFFF_FFFF_FFFF, 0x0102_0304_0506_0708]
    buf = b"".join(request(h, i * 4096, b"h" * 4096) for i, h in enumerate(handles))
    _, replies, _ = serve(export, buf)
    assert [h for _, _, h in replies] == handles
