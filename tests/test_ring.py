"""Behaviour of the ring through the Python consumer and each producer: the
Python one and the C one behind the same interface (iofilter/cproducer.py,
which liftshift-nbd uses when the library is built)."""

from __future__ import annotations

import asyncio
import os
import struct
import threading
import time
from pathlib import Path

import pytest
import xxhash
from cbuild import c_library

from liftshift.iofilter import (
    FLAG_CLOSE,
    FLAG_TRIM,
    FLAG_WRITE,
    FLAG_ZERO,
    CorruptRecord,
    NotARingError,
    OutOfRangeError,
    Record,
    RingClosedError,
    RingConsumer,
    RingFrozenError,
    RingGeometryError,
    RingProducer,
    RingVersionError,
    cproducer,
    create_ring,
)
from liftshift.iofilter.ring import HEADER, RECORD_HEADER, Geometry, read_geometry

MiB = 1 << 20
PythonProducer = RingProducer


@pytest.fixture(autouse=True, params=["python-producer", "c-producer"])
def producer_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with each producer (the name RingProducer is swapped for the C one), and the
    consumer checks records in C with the C producer, in Python with the Python one."""
    monkeypatch.setenv("LIFTSHIFT_RING_CONSUMER", "python" if request.param == "python-producer" else "")
    if request.param == "c-producer":
        monkeypatch.setenv("LIFTSHIFT_RING_LIB", str(c_library()))
        monkeypatch.setattr(cproducer, "_lib", None)
        monkeypatch.setattr(cproducer, "_problem", None)
        assert cproducer.available(), cproducer.problem()
        monkeypatch.setitem(globals(), "RingProducer", cproducer.CRingProducer)
    return str(request.param)


@pytest.fixture
def ring(shm_dir: Path) -> Path:
    path = shm_dir / "vdisk.ring"
    create_ring(path, 64 * MiB, capacity=1 * MiB, chunk_size=64 << 10, max_record=256 << 10)
    return path


def test_each_producer_is_the_one_under_test(ring: Path, producer_kind: str) -> None:
    with RingProducer(ring) as p:
        assert isinstance(p, cproducer.CRingProducer) == (producer_kind == "c-producer")


def test_records_carry_what_was_written(ring: Path) -> None:
    with RingProducer(ring) as p, RingConsumer(ring) as c:
        assert p.write(8192, b"A" * 4096)
        assert p.write_zeroes(0, 4096)
        assert p.trim(MiB, 2 * MiB)
        assert p.write(16 * MiB, bytes(range(256)) * 2048)  # 512 KiB: split at max_record
        recs = c.read()
    assert all(isinstance(r, Record) for r in recs)
    got = [(r.seq, r.offset, r.length, r.flags, len(r.payload)) for r in recs]
    assert got == [
        (1, 8192, 4096, FLAG_WRITE, 4096),
        (2, 0, 4096, FLAG_ZERO, 0),
        (3, MiB, 2 * MiB, FLAG_TRIM, 0),
        (4, 16 * MiB, 256 << 10, FLAG_WRITE, 256 << 10),
        (5, 16 * MiB + (256 << 10), 256 << 10, FLAG_WRITE, 256 << 10),
    ]
    assert bytes(recs[3].payload) + bytes(recs[4].payload) == bytes(range(256)) * 2048


def test_announce_is_visible_to_the_daemon_until_detach(ring: Path) -> None:
    from liftshift.iofilter.ring import Mapped

    view = Mapped(ring, writable=False)
    try:
        p = RingProducer(ring)
        assert view.get("producer") == 0
        p.announce()
        assert view.get("producer") == os.getpid()
        p.detach()
        assert view.get("producer") == 0
    finally:
        view.close()


def test_close_carries_final_sequence_and_refuses_later_writes(ring: Path) -> None:
    with RingProducer(ring) as p, RingConsumer(ring) as c:
        for i in range(10):
            p.write(i * 4096, b"x" * 4096)
        final = p.close()
        recs = c.read()
        assert recs[-1].flags == FLAG_CLOSE and recs[-1].seq == final == 11
        assert c.closed_seq == final
        with pytest.raises(RingClosedError):
            p.write(0, b"y" * 512)
        assert c.counters()["closed"] == 1


def test_freeze_rejects_writes_and_counts_them(ring: Path) -> None:
    with RingProducer(ring) as p, RingConsumer(ring) as c:
        p.write(0, b"a" * 512)
        c.set_control(freeze=True)
        before = c.counters()
        with pytest.raises(RingFrozenError, match="frozen"):
            p.write(512, b"b" * 512)
        with pytest.raises(RingFrozenError):
            p.write_zeroes(0, 512)
        after = c.counters()
        assert after["frozen_rejects"] == before["frozen_rejects"] + 2
        assert after["reserve"] == before["reserve"]  # nothing entered the ring
        c.set_control(freeze=False)
        assert p.write(512, b"c" * 512)
        assert [r.seq for r in c.read()] == [1, 2]


@pytest.mark.parametrize("mode", ["bps", "iops"])
def test_throttle_holds_the_configured_rate(ring: Path, mode: str) -> None:
    size, n = 16 << 10, 41
    bps, iops = (8 * MiB, 0) if mode == "bps" else (0, 200)
    expected = bps if mode == "bps" else iops * size  # bytes per second
    with RingProducer(ring) as p, RingConsumer(ring) as c:
        c.set_control(throttle_bps=bps, throttle_iops=iops)
        p.write(0, b"w" * size)  # the first write takes the first slot at once
        t0 = time.monotonic()
        for i in range(1, n):
            p.write(i * size, b"w" * size)
            c.release(c.read_pos) if c.read() else None
        elapsed = time.monotonic() - t0
        rate = (n - 1) * size / elapsed
        # Never more than 10% above the limit; below it, a loaded machine oversleeps (each
        # slot starts when the last sleep ended), so the floor is looser.
        assert 0.75 * expected < rate < 1.10 * expected, (rate, expected)
        assert p.counters()["throttled_ns"] > 0.5 * elapsed * 1e9


def test_overflow_marks_dirty_and_never_blocks(shm_dir: Path) -> None:
    path = shm_dir / "tiny.ring"
    create_ring(path, 16 * MiB, capacity=8192, chunk_size=4096, max_record=2048, overflow_wait_ns=1_000_000)
    with RingProducer(path) as p, RingConsumer(path) as c:
        results = [p.write(i * 4096, b"z" * 2048) for i in range(8)]
        assert results[:3] == [True] * 3 and not any(results[4:])
        counters = c.counters()
        assert counters["overflows"] == results.count(False)
        dirty = c.take_dirty()
        overflowed = [i for i, ok in enumerate(results) if not ok]
        assert dirty == [(i * 4096, 4096) for i in overflowed] or _merged(dirty) == _merged(
            [(i * 4096, 4096) for i in overflowed])
        assert c.take_dirty() == []  # harvested once; the other bitmap was clean


def _merged(ranges: list[tuple[int, int]]) -> set[int]:
    return {o + k for o, n in ranges for k in range(0, n, 4096)}


def test_doorbell_wakes_a_waiting_consumer(ring: Path) -> None:
    with RingProducer(ring) as p, RingConsumer(ring) as c:
        assert not c.wait(timeout=0.05)  # nothing committed: times out
        timer = threading.Timer(0.05, lambda: p.write(0, b"d" * 512))
        t0 = time.monotonic()
        timer.start()
        woke = c.wait(timeout=10)
        elapsed = time.monotonic() - t0
        timer.join()
        assert woke and elapsed < 5  # woken by the bell, not the timeout
        assert c.counters()["consumer_waiting"] == 0


def test_doorbell_wakes_an_async_consumer(ring: Path) -> None:
    async def main() -> float:
        with RingProducer(ring) as p, RingConsumer(ring) as c:
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, p.write, 0, b"e" * 512)
            t0 = time.monotonic()
            assert await c.wait_async(timeout=10)
            return time.monotonic() - t0

    assert asyncio.run(main()) < 5


def test_reopened_consumer_resumes_at_release(ring: Path) -> None:
    with RingProducer(ring) as p:
        for i in range(6):
            p.write(i * 512, bytes([i]) * 512)
        with RingConsumer(ring) as c:
            recs = c.read()
            c.release(recs[2].end)  # durable through seq 3
        with RingConsumer(ring) as c2:
            assert [r.seq for r in c2.read()] == [4, 5, 6]
        with pytest.raises(ValueError):
            RingConsumer(ring).release(1 << 40)


# -- bad input ------------------------------------------------------------


def test_not_a_ring_is_named(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 8192)
    with pytest.raises(NotARingError, match=str(junk)):
        RingConsumer(junk)
    short = tmp_path / "short.bin"
    short.write_bytes(b"LLFT")
    with pytest.raises(NotARingError, match="shorter than a ring header"):
        RingProducer(short)


def _patch(path: Path, field: str, value: int) -> None:
    off, code = HEADER[field]
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(struct.pack("<" + code, value))


def test_other_version_is_refused(ring: Path) -> None:
    _patch(ring, "version", 99)
    with pytest.raises(RingVersionError, match="version 99"):
        RingConsumer(ring)


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("capacity", 3 << 20, "power of two"),
        ("chunk_size", 1000, "chunk size"),
        ("disk_size", 0, "disk size"),
        ("max_record", 1 << 30, "max record"),
        ("data_offset", 4096, "overlaps"),
        ("bitmap_bytes", 64, "cannot hold"),
    ],
)
def test_impossible_geometry_is_refused(ring: Path, field: str, value: int, needle: str) -> None:
    _patch(ring, field, value)
    with pytest.raises(RingGeometryError, match=needle) as info:
        RingProducer(ring)
    assert str(ring) in str(info.value)


def test_truncated_ring_is_refused(ring: Path) -> None:
    with open(ring, "r+b") as f:
        f.truncate(8192)
    with pytest.raises(RingGeometryError, match="layout needs"):
        RingConsumer(ring)


def test_create_refuses_nonsense() -> None:
    with pytest.raises(RingGeometryError):
        Geometry.plan(1 << 30, 3000, 65536, None)
    with pytest.raises(RingGeometryError):
        Geometry.plan(1000, 1 << 20, 65536, None)


def test_writes_outside_the_disk_change_nothing(ring: Path) -> None:
    with RingProducer(ring) as p, RingConsumer(ring) as c:
        before = c.counters()
        for call in (lambda: p.write(64 * MiB - 512, b"x" * 1024), lambda: p.write(-512, b"x" * 512),
                     lambda: p.write_zeroes(64 * MiB, 512), lambda: p.trim(0, 0), lambda: p.write(0, b"")):
            with pytest.raises(OutOfRangeError, match="outside"):
                call()
        assert c.counters() == before
        assert c.read() == []


def test_corrupt_payload_is_reported_and_dirtied(ring: Path) -> None:
    with RingProducer(ring) as p, RingConsumer(ring) as c:
        p.write(0, b"good" * 128)
        p.write(3 * MiB, b"bad!" * 1024)
        p.write(4096, b"fine" * 128)
        g = read_geometry(ring, ring.read_bytes()[:4096], ring.stat().st_size)
        # Flip one payload byte of the second record in shared memory.
        second = g.data_offset + RECORD_HEADER + 512 + RECORD_HEADER + 10
        with open(ring, "r+b") as f:
            f.seek(second)
            f.write(b"?")
        recs = c.read()
        assert [type(r) for r in recs] == [Record, CorruptRecord, Record]
        bad = recs[1]
        assert isinstance(bad, CorruptRecord)
        assert bad.expected == xxhash.xxh3_64_intdigest(b"bad!" * 1024) != bad.actual
        assert c.take_dirty() == [(3 * MiB, 64 << 10)]


def test_write_admitted_before_freeze_is_still_published(ring: Path) -> None:
    with RingProducer(ring) as p, RingConsumer(ring) as c:
        p.admit(4096, 512)  # the front-end admitted the write ...
        c.set_control(freeze=True)  # ... the daemon froze while it was going to the vdisk ...
        assert p.publish_write(4096, b"k" * 512)  # ... and it is not lost
        with pytest.raises(RingFrozenError):
            p.admit(8192, 512)
        recs = c.read()
        assert [(r.offset, bytes(r.payload)) for r in recs] == [(4096, b"k" * 512)]
        p.close()
        with pytest.raises(RingClosedError):
            p.publish_write(0, b"late")


def test_batches_report_first_and_last_sequence(ring: Path) -> None:
    with RingProducer(ring) as p, RingConsumer(ring) as c:
        for i in range(4):
            p.write(i * 4096, b"s" * 4096)
        b1 = c.read_batch(max_bytes=2 * 4152)
        b2 = c.read_batch()
        assert b1 is not None and b2 is not None
        assert (b1.first_seq, b1.last_seq, b1.count) == (1, 2, 2)
        assert (b2.first_seq, b2.last_seq, b2.count) == (3, 4, 2)
        assert 0 < b2.first_time_ns <= b2.last_time_ns
