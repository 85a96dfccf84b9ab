"""The sink's C fast path (sink/liftshift_apply.c via liftshift.sink.capply)
agrees with the Python reference (liftshift.sink.records, VdiskApplier's
Python path) on every frame: same verdict, same kind of error, same summary,
same bytes on disk, same applied position after an I/O error.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
from pathlib import Path

import hypothesis.strategies as st
import pytest
import xxhash
from cbuild import require_toolchain
from framegen import LiveBatch, Workload, live, pad, record
from hypothesis import HealthCheck, given, settings
from test_sink_apply import BAD_FRAMES, FakeStore

from liftshift.daemon.errors import ChecksumMismatch, InvalidArgument, LiftshiftError, OutOfRange, TooLarge
from liftshift.iofilter.ring import FLAG_CLOSE, FLAG_TRIM, FLAG_VOID, FLAG_ZERO, REC
from liftshift.sink import capply
from liftshift.sink.apply import VdiskApplier
from liftshift.sink.disk import FileDisk, MemoryDisk
from liftshift.sink.records import parse_records, scan_records

DISK = 1 << 20
_KIND = {1: InvalidArgument, 2: OutOfRange, 3: ChecksumMismatch}


@pytest.fixture(autouse=True)
def _built() -> None:
    require_toolchain()
    assert capply.AVAILABLE, capply.problem()


def same_verdict(data: bytes, disk_size: int = DISK) -> None:
    """C and Python accept the same frames, with the same summary, and refuse
    the same ones with the same kind of error at the same record."""
    rc, scan, at = capply.check_code(data, disk_size)
    try:
        records = parse_records(data, disk_size)
    except LiftshiftError as e:
        assert rc != capply.CHECK_OK, f"C accepted a frame Python refuses: {e}"
        assert type(e) is _KIND[rc], f"C says {rc}, Python raised {type(e).__name__}: {e}"
        if isinstance(e, InvalidArgument):
            assert f"at byte {at}:" in str(e)
        return
    assert rc == capply.CHECK_OK, f"C refused (code {rc} at byte {at}) a frame Python accepts"
    assert scan == scan_records(records)


# -- verdicts ------------------------------------------------------------------


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), frame_bytes=st.sampled_from([4 << 10, 64 << 10, 256 << 10]))
def test_real_ring_frames_scan_the_same(shm_dir: Path, seed: int, frame_bytes: int) -> None:
    w = Workload(shm_dir, DISK, seed)
    w.max_bytes = frame_bytes
    try:
        for _ in range(3):
            w.ops(60)
            for b in w.drain():
                same_verdict(b.data)
        w.close()
        for b in w.drain():
            same_verdict(b.data)
    finally:
        w.detach()


@pytest.mark.parametrize("name,batch", [(b[0], b[1]) for b in BAD_FRAMES], ids=[b[0] for b in BAD_FRAMES])
def test_hand_built_bad_frames_get_the_same_verdict(name: str, batch: LiveBatch) -> None:
    same_verdict(batch.data)


EDGE_FRAMES = [
    b"",
    pad(64),
    pad(8) + record(1, 0, b"a") + pad(16),
    record(1, DISK - 1, b"z"),
    record(1, DISK, b"z"),
    record(1, 2**64 - 1, b"z"),  # offset + length wraps 64 bits
    record(1, 0, flags=FLAG_ZERO, length=2**64 - 1),
    record(1, DISK, flags=FLAG_CLOSE, length=0),
    record(1, DISK + 1, flags=FLAG_CLOSE, length=0),
    record(1, 0, flags=FLAG_CLOSE, length=0) + record(2, 0, flags=FLAG_CLOSE, length=0),
    record(1, 0, b"a") + record(2, 0, flags=FLAG_CLOSE, length=0) + record(3, 0, b"b"),
    record(1, 0, flags=FLAG_TRIM, length=0),
    record(1, 0, flags=FLAG_ZERO, length=512, digest=5),
    record(1, 2**60, flags=FLAG_VOID, length=7, digest=9),  # VOID: neither range nor checksum matter
    record(0, 0, b"a"),
    record(2**64 - 1, 0, b"a"),
    record(7, 0, b"a") + pad(8) + record(8, 0, b"b"),
    (24).to_bytes(8, "little") + bytes(16),  # a record shorter than its header
    (4 | 1 << 62).to_bytes(8, "little"),  # a PAD shorter than 8
    bytes(8),  # size 0
    bytes(7),
]


@pytest.mark.parametrize("i", range(len(EDGE_FRAMES)))
def test_edge_frames_get_the_same_verdict(i: int) -> None:
    same_verdict(EDGE_FRAMES[i])


def test_no_record_may_follow_the_last_sequence_number() -> None:
    # After seq 2**64-1 the next sequence would wrap: Python and C both refuse the frame
    # at the second record (found by the property test below).
    same_verdict(record(2**64 - 1, 0, b"a" * 8) + record(6, 0, b"b" * 8))
    same_verdict(record(2**64 - 1, 0, b"a" * 8))  # alone it is a valid frame


def test_void_record_keeps_a_stretched_size() -> None:
    # A VOID record keeps the size of the record it replaced.
    rec = bytearray(record(1, 0, b"x" * 100))
    REC.pack_into(rec, 0, len(rec), 1, 0, 0, FLAG_VOID, 0, xxhash.xxh3_64_intdigest(b""), 0)
    same_verdict(bytes(rec))
    assert capply.check(bytes(rec), DISK) == (1, 1, 1, 0)


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_mutated_frames_get_the_same_verdict(data: st.DataObject) -> None:
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    parts = []
    for i in range(data.draw(st.integers(1, 5))):
        kind = rng.random()
        if kind < 0.6:
            parts.append(record(5 + i, rng.randrange(0, DISK - 4096), rng.randbytes(rng.randrange(1, 300))))
        elif kind < 0.75:
            parts.append(record(5 + i, rng.randrange(0, DISK - 4096), flags=FLAG_ZERO, length=512))
        elif kind < 0.85:
            parts.append(record(5 + i, 0, flags=FLAG_CLOSE, length=0))
        else:
            parts.append(pad(8 * rng.randrange(1, 9)))
    frame = bytearray(b"".join(parts))
    for _ in range(data.draw(st.integers(0, 3))):
        how = data.draw(st.sampled_from(["flip", "word", "field", "cut"]))
        if not frame:
            break
        at = data.draw(st.integers(0, len(frame) - 1))
        if how == "flip":
            frame[at] ^= 1 << data.draw(st.integers(0, 7))
        elif how == "word":  # header words are where the interesting rules are
            at -= at % 8
            frame[at : at + 8] = data.draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little")[: len(frame) - at]
        elif how == "field":
            at -= at % 8
            value = data.draw(st.sampled_from([0, 1, 7, 8, 56, 57, 64, DISK, DISK - 1, 2**32 - 1, 2**63, 2**64 - 1]))
            frame[at : at + 8] = value.to_bytes(8, "little")[: len(frame) - at]
        else:
            del frame[at:]
    same_verdict(bytes(frame))


# -- applying ------------------------------------------------------------------


def file_applier(tmp_path: Path, name: str, size: int = DISK) -> tuple[VdiskApplier, FileDisk]:
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(size)
    disk = FileDisk(os.open(path, os.O_RDWR), size)
    return VdiskApplier(name, disk, FakeStore()), disk  # type: ignore[arg-type]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), frame_bytes=st.sampled_from([4 << 10, 64 << 10]), resend=st.booleans())
def test_file_disk_fast_path_rebuilds_the_reference(shm_dir: Path, tmp_path: Path, seed: int, frame_bytes: int,
                                                     resend: bool) -> None:
    """Real ring output (writes, zeroes, trims, PAD, CLOSE) applied through the
    C writer gives the reference image and the same results as the Python path."""
    w = Workload(shm_dir, DISK, seed)
    w.max_bytes = frame_bytes
    fast, disk = file_applier(tmp_path, f"fast-{seed}-{frame_bytes}-{resend}")
    slow = VdiskApplier("slow", MemoryDisk(DISK), FakeStore())  # type: ignore[arg-type]
    try:
        batches: list[LiveBatch] = []
        for _ in range(3):
            w.ops(80)
            batches += w.drain()
        w.close()
        batches += w.drain()
        for i, b in enumerate(batches):
            if resend and i % 3 == 2:  # a new stream re-sends the previous frame too
                for a in (fast, slow):
                    a.begin_stream()
                prev = batches[i - 1]
                b = LiveBatch(prev.data + b.data, prev.first_seq, b.last_seq, prev.count + b.count)
            got = fast.apply_live(b.data, b.first_seq, b.last_seq, b.count)
            want = slow.apply_live(b.data, b.first_seq, b.last_seq, b.count)
            assert got == want
        assert fast.close_seq == slow.close_seq == w.last_seq
        assert disk.read(0, DISK) == bytes(w.reference)
    finally:
        disk.close()
        w.detach()


@pytest.mark.parametrize("name,batch,error,message", BAD_FRAMES, ids=[b[0] for b in BAD_FRAMES])
def test_bad_frames_on_a_file_disk_are_refused_the_same_and_change_nothing(
        tmp_path: Path, name: str, batch: LiveBatch, error: type[LiftshiftError], message: str) -> None:
    a, disk = file_applier(tmp_path, "bad")
    a.apply_live(live([record(1, 0, b"p" * 4096), record(2, 8192, b"q" * 4096)], 1).data, 1, 2, 2)
    a.sync()
    before = (disk.read(0, DISK), a.applied_seq, a.durable_seq)
    with pytest.raises(error, match=message):
        a.apply_live(batch.data, batch.first_seq, batch.last_seq, batch.count)
    assert (disk.read(0, DISK), a.applied_seq, a.durable_seq) == before
    disk.close()


@pytest.mark.parametrize("header", [(1, 2, 1), (2, 2, 2), (1, 3, 2), (1, 2, 3)])
def test_one_call_path_writes_nothing_when_the_header_disagrees(tmp_path: Path, header: tuple[int, int, int]) -> None:
    path = tmp_path / "hdr"
    path.write_bytes(bytes(4096))
    fd = os.open(path, os.O_RDWR)
    frame = live([record(1, 0, b"a" * 8), record(2, 8, b"b" * 8)], 1).data
    assert capply.check_and_write(fd, frame, 4096, *header, 0) is None
    closing = live([record(1, 0, flags=FLAG_CLOSE, length=0), record(2, 8, b"b" * 8)], 1).data
    assert capply.check_and_write(fd, closing, 4096, 1, 2, 2, 0) is None
    assert os.pread(fd, 4096, 0) == bytes(4096)
    assert capply.check_and_write(fd, frame, 4096, 1, 2, 2, 1) == (len(frame), 2, 8, 0)  # seq 1 already applied
    assert os.pread(fd, 16, 0) == bytes(8) + b"b" * 8
    os.close(fd)


def test_contiguous_writes_coalesce_across_pad_and_past_iov_max(tmp_path: Path) -> None:
    a, disk = file_applier(tmp_path, "iov")
    recs = []
    for i in range(2100):  # more than IOV_MAX pieces in one contiguous run
        recs.append(record(1 + i, i * 8, bytes([i % 251]) * 8))
        if i == 700:
            recs.append(pad(16))
    frame = live(recs, 1)
    result = a.apply_live(frame.data, 1, 2100, 2100)
    assert (result.applied, result.bytes_written, a.applied_seq) == (2100, 2100 * 8, 2100)
    assert disk.read(0, 2100 * 8) == b"".join(bytes([i % 251]) * 8 for i in range(2100))
    disk.close()


def test_write_error_keeps_the_position_of_the_last_run_written(tmp_path: Path) -> None:
    """Out of space half-way: a typed error, applied_seq names exactly what was written."""

    class LimitedDisk(FileDisk):
        pass

    path = tmp_path / "small"
    with open(path, "wb") as f:
        f.truncate(DISK)
    fd = os.open(path, os.O_RDWR)
    a = VdiskApplier("vd", LimitedDisk(fd, DISK), FakeStore())  # type: ignore[arg-type]
    a.apply_live(live([record(1, 0, b"a" * 8)], 1).data, 1, 1, 1)
    os.close(fd)
    full = os.open("/dev/full", os.O_WRONLY)
    a.disk.fd = full  # type: ignore[attr-defined]
    with pytest.raises(TooLarge, match="no space"):
        a.apply_live(live([record(2, 4096, b"b" * 8), record(3, 0, b"c" * 8)], 2).data, 2, 3, 2)
    assert a.applied_seq == 1
    os.close(full)


def test_other_io_errors_propagate_as_oserror(tmp_path: Path) -> None:
    a, disk = file_applier(tmp_path, "ro")
    os.close(disk.fd)
    disk.fd = os.open(tmp_path / "ro", os.O_RDONLY)
    with pytest.raises(OSError) as e:
        a.apply_live(live([record(1, 0, b"x")], 1).data, 1, 1, 1)
    assert e.value.errno == errno.EBADF and a.applied_seq == 0
    disk.close()


def test_a_view_into_a_larger_buffer_is_applied_in_place(tmp_path: Path) -> None:
    a, disk = file_applier(tmp_path, "view")
    frame = live([record(1, 100, b"hello"), record(2, 105, b"world")], 1).data
    received = b"\x01\x02\x03" + frame + b"\x04"
    a.apply_live(memoryview(received)[3:-1], 1, 2, 2)
    assert disk.read(100, 10) == b"helloworld"
    disk.close()


def test_without_the_library_the_sink_says_why_and_uses_python(tmp_path: Path) -> None:
    code = ("from liftshift.sink import capply; import sys; "
            "sys.exit(0 if not capply.AVAILABLE and 'make cbuild' in capply.problem() else 1)")
    env = {**os.environ, "LIFTSHIFT_APPLY_LIB": str(tmp_path / "missing.so")}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_python_path_alone_gives_the_same_results(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    frames = [live([record(1, 0, b"a" * 10), record(2, 512, flags=FLAG_ZERO, length=512), record(3, 5, b"b" * 10)], 1),
              live([record(4, 0, flags=FLAG_CLOSE, length=0)], 4)]
    results = []
    for available in (True, False):
        monkeypatch.setattr(capply, "AVAILABLE", available)
        a, disk = file_applier(tmp_path, f"py-{available}")
        results.append(([a.apply_live(f.data, f.first_seq, f.last_seq, f.count) for f in frames],
                        disk.read(0, 2048), a.close_seq))
        disk.close()
    assert results[0] == results[1]
