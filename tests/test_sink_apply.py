"""The sink's apply core in memory: VdiskApplier over MemoryDisk, and its helpers.

Frames come from a real ring (RingProducer -> RingConsumer.read_batch), so
the parser is held to the layout the producer really writes, PAD records and
wraps included; the malformed cases are hand-built.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
from pathlib import Path

import hypothesis.strategies as st
import pytest
import xxhash
from framegen import LiveBatch, Workload, live, pad, record
from hypothesis import HealthCheck, given, settings

from liftshift.daemon.errors import (
    ChecksumMismatch,
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    LiftshiftError,
    OutOfRange,
    SequenceError,
    TooLarge,
)
from liftshift.daemon.hashing import file_xxh3_128, hash_ranges, zero_digest
from liftshift.iofilter.ring import FLAG_CLOSE, FLAG_TRIM, FLAG_ZERO, WORD_BUSY
from liftshift.sink.apply import VdiskApplier
from liftshift.sink.config import SinkConfig, load_config, reference_markdown
from liftshift.sink.disk import FileDisk, MemoryDisk
from liftshift.sink.shadow import check_vdisk_id, create_shadow, descriptor_text
from liftshift.sink.state import SinkState
from liftshift.sink.stream import EMPTY, FrameQueue

DISK = 1 << 20
KiB = 1 << 10
MiB = 1 << 20


class FakeStore:
    """Records persisted positions; can be told to fail."""

    def __init__(self, disk: MemoryDisk | None = None) -> None:
        self.calls: list[tuple[str, int, bool]] = []
        self.disk = disk
        self.syncs_at_persist: list[int] = []
        self.fail = False

    def persist(self, vdisk_id: str, durable_seq: int, closed: bool) -> None:
        if self.fail:
            raise OSError(errno.EIO, "state database unavailable")
        if self.disk is not None:
            self.syncs_at_persist.append(self.disk.syncs)
        self.calls.append((vdisk_id, durable_seq, closed))


def applier(size: int = DISK, **kw: object) -> tuple[VdiskApplier, MemoryDisk, FakeStore]:
    disk = MemoryDisk(size)
    store = FakeStore(disk)
    return VdiskApplier("vd", disk, store, **kw), disk, store  # type: ignore[arg-type]


def apply_batch(a: VdiskApplier, b: LiveBatch) -> None:
    a.apply_live(b.data, b.first_seq, b.last_seq, b.count)


def snapshot(a: VdiskApplier, disk: MemoryDisk) -> tuple[bytes, int, int, bool]:
    return xxhash.xxh3_128_digest(disk.image), a.applied_seq, a.durable_seq, a.closed


# -- applying real ring output ---------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), frame_bytes=st.sampled_from([4 * KiB, 64 * KiB, 256 * KiB]),
       resend_points=st.lists(st.integers(0, 200), max_size=3))
def test_ring_frames_rebuild_the_reference_even_with_resends(shm_dir: Path, seed: int, frame_bytes: int,
                                                             resend_points: list[int]) -> None:
    """Whatever the frame size, syncs and reconnects (re-sending from
    durable_seq + 1, records already applied skipped), the shadow ends equal
    to the reference and applied_seq names the last record."""
    w = Workload(shm_dir, DISK, seed)
    w.max_bytes = frame_bytes
    a, disk, _ = applier()
    rng = random.Random(seed)
    sent: list[LiveBatch] = []
    try:
        for _ in range(4):
            w.ops(30)
            for b in w.drain():
                apply_batch(a, b)
                sent.append(b)
                if rng.random() < 0.3:
                    a.sync()
            if resend_points and len(sent) > resend_points[0] % max(1, len(sent)):
                resend_points.pop(0)
                # Reconnect: a new stream re-sends every frame holding a record after durable_seq.
                a.begin_stream()
                for b in sent:
                    if b.last_seq > a.durable_seq:
                        apply_batch(a, b)
        a.sync()
    finally:
        w.detach()
    assert disk.image == w.reference
    assert a.applied_seq == a.durable_seq == w.last_seq


def test_pad_records_anywhere_are_skipped() -> None:
    a, disk, _ = applier()
    b = live([pad(8), record(1, 0, b"a" * 100), pad(56 + 64), record(2, 4096, b"b" * 512), pad(16)], 1)
    apply_batch(a, b)
    assert disk.image[:100] == b"a" * 100 and disk.image[4096:4608] == b"b" * 512
    assert a.applied_seq == 2


def test_zero_and_trim_zero_the_range_and_close_ends_the_sequence() -> None:
    a, disk, _ = applier()
    apply_batch(a, live([record(1, 0, b"x" * 8192)], 1))
    apply_batch(a, live([record(2, 1024, flags=FLAG_ZERO, length=1024), record(3, 4096, flags=FLAG_TRIM, length=512),
                         record(4, 0, flags=FLAG_CLOSE, length=0)], 2))
    assert disk.image[:8192] == b"x" * 1024 + bytes(1024) + b"x" * 2048 + bytes(512) + b"x" * 3584
    assert a.close_seq == 4 and not a.closed  # closed only once the barrier is durable
    with pytest.raises(SequenceError, match="closed at seq 4"):
        apply_batch(a, live([record(5, 0, b"y")], 5))
    a.close_barrier(4)
    assert a.sync().closed and a.closed


def test_contiguous_writes_go_down_in_one_call() -> None:
    a, disk, _ = applier()
    apply_batch(a, live([record(1, 0, b"a" * 512), record(2, 512, b"b" * 512), record(3, 1024, b"c" * 512),
                         record(4, 8192, b"d" * 512)], 1))
    assert disk.writes == 2
    assert disk.image[:1536] == b"a" * 512 + b"b" * 512 + b"c" * 512


# -- a bad frame changes nothing ---------------------------------------------


def _primed() -> tuple[VdiskApplier, MemoryDisk, tuple[bytes, int, int, bool]]:
    a, disk, _ = applier()
    apply_batch(a, live([record(1, 0, b"p" * 4096), record(2, 8192, b"q" * 4096)], 1))
    a.sync()
    return a, disk, snapshot(a, disk)


BAD_FRAMES: list[tuple[str, LiveBatch, type[LiftshiftError], str]] = [
    ("checksum", live([record(3, 0, b"good"), record(4, 0, b"evil", digest=123)], 3), ChecksumMismatch,
     "seq 4.*XXH3-64"),
    ("past the end", live([record(3, 0, b"good"), record(4, DISK - 2, b"four")], 3), OutOfRange,
     f"past the end of the {DISK}-byte vdisk"),
    ("zero past the end", live([record(3, DISK, flags=FLAG_ZERO, length=512)], 3), OutOfRange, "past the end"),
    ("truncated", LiveBatch(record(3, 0, b"x" * 100)[:-8], 3, 3, 1), InvalidArgument, "runs past the end of the"),
    ("trailing bytes", LiveBatch(record(3, 0, b"x") + b"\0" * 4, 3, 3, 1), InvalidArgument, "trailing bytes"),
    ("busy", live([record(3, 0, b"x", word_extra=WORD_BUSY)], 3), InvalidArgument, "BUSY"),
    ("unknown word bits", live([record(3, 0, b"x", word_extra=1 << 40)], 3), InvalidArgument, "unknown bits"),
    ("two flags", live([record(3, 0, b"x", flags=3)], 3), InvalidArgument, "exactly one of"),
    ("payload on zero", live([record(3, 0, b"x", flags=FLAG_ZERO)], 3), InvalidArgument, "carries a 1-byte payload"),
    ("length mismatch", live([record(3, 0, b"abc", length=4)], 3), InvalidArgument, "payload of 3 bytes"),
    ("seq zero", live([record(0, 0, b"a")], 0), InvalidArgument, "sequence 0 is not valid"),
    ("seq jump in frame", live([record(3, 0, b"a"), record(5, 0, b"b")], 3, 5, 2), InvalidArgument,
     "seq 5 follows seq 3"),
    ("count disagrees", live([record(3, 0, b"a")], 3, 3, 2), InvalidArgument, "count=2"),
    ("last_seq disagrees", live([record(3, 0, b"a")], 3, 4, 1), InvalidArgument, "last_seq=4"),
    ("only pad", live([pad(64)], 3, 3, 0), InvalidArgument, "no records"),
    ("gap", live([record(4, 0, b"a")], 4), SequenceError, "gap.*starts at seq 4"),
    ("after close", live([record(3, 0, flags=FLAG_CLOSE, length=0), record(4, 0, b"a")], 3), SequenceError,
     "follows the CLOSE"),
]


@pytest.mark.parametrize("name,batch,error,message", BAD_FRAMES, ids=[b[0] for b in BAD_FRAMES])
def test_bad_frame_is_refused_and_changes_nothing(name: str, batch: LiveBatch, error: type[LiftshiftError],
                                                  message: str) -> None:
    a, disk, before = _primed()
    with pytest.raises(error, match=message):
        apply_batch(a, batch)
    assert snapshot(a, disk) == before
    assert not a.needs_sync


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_corruption_is_refused_without_effect_or_applied_whole(data: st.DataObject) -> None:
    """Flip one byte anywhere in a valid frame: either a typed error and no
    change, or (header fields the ring does not checksum) a whole frame applied."""
    a, disk, before = _primed()
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    recs = [record(3 + i, rng.randrange(0, DISK // 512) * 512 % (DISK - 2048), rng.randbytes(rng.randrange(1, 2048)))
            for i in range(4)]
    frame = bytearray(live(recs, 3).data)
    at = data.draw(st.integers(0, len(frame) - 1))
    frame[at] ^= data.draw(st.integers(1, 255))
    try:
        a.apply_live(bytes(frame), 3, 6, 4)
    except LiftshiftError:
        assert snapshot(a, disk) == before
    else:
        assert a.applied_seq == 6


def test_corrupt_payload_is_always_a_checksum_mismatch() -> None:
    for seed in range(50):
        a, disk, before = _primed()
        rng = random.Random(seed)
        payload = bytearray(rng.randbytes(rng.randrange(1, 4096)))
        frame = bytearray(record(3, 0, bytes(payload)))
        frame[56 + rng.randrange(len(payload))] ^= 1 << rng.randrange(8)
        with pytest.raises(ChecksumMismatch):
            a.apply_live(bytes(frame), 3, 3, 1)
        assert snapshot(a, disk) == before


# -- sequence rules across frames ---------------------------------------------


def test_gap_and_replay_within_a_stream_are_refused() -> None:
    a, disk, _ = applier()
    apply_batch(a, live([record(1, 0, b"a"), record(2, 0, b"b")], 1))
    before = snapshot(a, disk)
    with pytest.raises(SequenceError, match="gap.*starts at seq 4.*ended at seq 2"):
        apply_batch(a, live([record(4, 0, b"d")], 4))
    with pytest.raises(SequenceError, match="replay.*starts at seq 2"):
        apply_batch(a, live([record(2, 0, b"b"), record(3, 0, b"c")], 2))
    assert snapshot(a, disk) == before
    apply_batch(a, live([record(3, 0, b"c")], 3))
    assert a.applied_seq == 3 and disk.image[:1] == b"c"


def test_new_stream_may_resend_and_applied_records_are_skipped() -> None:
    a, disk, _ = applier()
    apply_batch(a, live([record(1, 0, b"a" * 10), record(2, 10, b"b" * 10)], 1))
    disk.image[0:10] = b"Z" * 10  # a resend must not rewrite what was applied
    a.begin_stream()
    result = a.apply_live(live([record(1, 0, b"a" * 10), record(2, 10, b"b" * 10), record(3, 20, b"c" * 10)], 1).data,
                          1, 3, 3)
    assert (result.applied, result.skipped, a.applied_seq) == (1, 2, 3)
    assert disk.image[:30] == b"Z" * 10 + b"b" * 10 + b"c" * 10


def test_close_barrier_needs_everything_applied() -> None:
    a, _, _ = applier()
    apply_batch(a, live([record(1, 0, b"a"), record(2, 0, flags=FLAG_CLOSE, length=0)], 1))
    with pytest.raises(SequenceError, match="only seq 2 is applied"):
        a.close_barrier(3)
    with pytest.raises(SequenceError, match="CLOSE record was seq 2"):
        a.close_barrier(1)
    a.close_barrier(2)
    assert not a.closed and a.needs_sync
    a.sync()
    assert a.closed
    a.apply_chunk(0, 4, b"fix!", False, xxhash.xxh3_64_intdigest(b"fix!"))  # repairs still land after close


# -- chunks ------------------------------------------------------------------


def test_chunks_are_verified_then_written_or_punched() -> None:
    a, disk, _ = applier()
    data = os.urandom(64 * KiB)
    a.apply_chunk(128 * KiB, len(data), data, False, xxhash.xxh3_64_intdigest(data))
    assert disk.image[128 * KiB : 192 * KiB] == data and a.needs_sync
    a.apply_chunk(128 * KiB, 4096, b"", True, xxhash.xxh3_64_intdigest(b""))
    assert disk.image[128 * KiB : 132 * KiB] == bytes(4096)
    before = snapshot(a, disk)
    for args, error, msg in [
        ((DISK - 100, 200, b"x" * 200, False, xxhash.xxh3_64_intdigest(b"x" * 200)), OutOfRange, "past the end"),
        ((0, 4, b"abcd", False, 7), ChecksumMismatch, "XXH3-64"),
        ((0, 5, b"abcd", False, xxhash.xxh3_64_intdigest(b"abcd")), InvalidArgument, "carries 4 bytes"),
        ((0, 4, b"abcd", True, xxhash.xxh3_64_intdigest(b"")), InvalidArgument, "zero Chunk"),
        ((0, 0, b"", False, xxhash.xxh3_64_intdigest(b"")), InvalidArgument, "length 0"),
    ]:
        with pytest.raises(error, match=msg):
            a.apply_chunk(*args)  # type: ignore[arg-type]
        assert snapshot(a, disk) == before


# -- durability ----------------------------------------------------------------


def test_sync_makes_data_durable_before_recording_it() -> None:
    a, disk, store = applier()
    apply_batch(a, live([record(1, 0, b"a")], 1))
    s = a.sync()
    assert (s.durable_seq, a.durable_seq) == (1, 1)
    assert store.calls == [("vd", 1, False)] and store.syncs_at_persist == [1]
    assert a.sync().fsync_ns == 0 and disk.syncs == 1  # nothing new: no fdatasync


def test_a_sync_records_the_position_only_when_it_moved() -> None:
    """Chunks make a sync needed but carry no sequence: their fdatasync does not
    write the state database again; a new sequence or the CLOSE barrier does."""
    a, disk, store = applier()
    a.apply_chunk(0, 4096, b"c" * 4096, False, xxhash.xxh3_64_intdigest(b"c" * 4096))
    assert a.sync().durable_seq == 0 and disk.syncs == 1 and store.calls == []
    apply_batch(a, live([record(1, 0, b"a")], 1))
    a.apply_chunk(8192, 4096, b"d" * 4096, False, xxhash.xxh3_64_intdigest(b"d" * 4096))
    a.sync()
    assert disk.syncs == 2 and store.calls == [("vd", 1, False)]
    a.apply_chunk(0, 4096, b"e" * 4096, False, xxhash.xxh3_64_intdigest(b"e" * 4096))
    a.sync()
    assert disk.syncs == 3 and store.calls == [("vd", 1, False)]
    a.close_barrier(1)
    assert a.sync().closed
    assert store.calls == [("vd", 1, False), ("vd", 1, True)]


def test_a_failed_record_keeps_the_old_durable_position() -> None:
    a, _, store = applier()
    apply_batch(a, live([record(1, 0, b"a")], 1))
    store.fail = True
    with pytest.raises(OSError):
        a.sync()
    assert a.durable_seq == 0 and a.needs_sync
    store.fail = False
    assert a.sync().durable_seq == 1


class FailingSyncDisk(MemoryDisk):
    def datasync(self) -> None:
        raise OSError(errno.EIO, "Input/output error")


def test_failed_fdatasync_poisons_the_applier() -> None:
    store = FakeStore()
    a = VdiskApplier("vd", FailingSyncDisk(DISK), store)
    apply_batch(a, live([record(1, 0, b"a")], 1))
    with pytest.raises(OSError):
        a.sync()
    assert a.broken and a.durable_seq == 0 and store.calls == []
    with pytest.raises(FailedPrecondition, match="I/O error"):
        apply_batch(a, live([record(2, 0, b"b")], 2))


class FullDisk(MemoryDisk):
    def write(self, offset: int, parts: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_out_of_space_is_a_typed_error() -> None:
    a = VdiskApplier("vd", FullDisk(DISK), FakeStore())
    with pytest.raises(TooLarge, match="no space left"):
        apply_batch(a, live([record(1, 0, b"a")], 1))
    assert a.applied_seq == 0


def test_restart_resumes_from_durable() -> None:
    a, _, _ = applier(durable_seq=41, closed=False)
    assert a.applied_seq == a.durable_seq == 41
    with pytest.raises(SequenceError, match="gap"):
        apply_batch(a, live([record(43, 0, b"a")], 43))
    apply_batch(a, live([record(42, 0, b"a")], 42))


# -- the file-backed disk --------------------------------------------------------


def test_file_disk_punches_holes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    os.ftruncate(fd, 4 << 20)
    d = FileDisk(fd, 4 << 20)
    d.write(0, [os.urandom(2 << 20)])
    d.datasync()
    blocks = os.fstat(fd).st_blocks
    d.zero(0, 1 << 20)
    assert d.read(0, 1 << 20) == bytes(1 << 20)
    assert os.fstat(fd).st_blocks < blocks
    d.close()


def test_file_disk_writes_zeros_where_punching_is_unsupported(tmp_path: Path) -> None:
    calls = []

    def no_punch(fd: int, mode: int, offset: int, length: int) -> None:
        calls.append((offset, length))
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    d = FileDisk(fd, 3 << 20, fallocate=no_punch)
    d.write(0, [b"\xff" * (3 << 20)])
    d.zero(100, (2 << 20) + 5)
    d.zero(0, 10)
    assert calls == [(100, (2 << 20) + 5)] and not d.punch_supported  # asked once, then remembered
    image = d.read(0, 3 << 20)
    assert image == bytes(10) + b"\xff" * 90 + bytes((2 << 20) + 5) + b"\xff" * ((1 << 20) - 105)
    d.close()


# -- hashing, shadows, state, config, queue ----------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), chunk=st.sampled_from([4096, 65536, 3 << 20, 9 << 20]),
       start=st.integers(0, 1 << 20), length=st.integers(0, 12 << 20))
def test_hash_ranges_matches_direct_hashing_of_sparse_files(tmp_path: Path, seed: int, chunk: int, start: int,
                                                            length: int) -> None:
    size = 16 << 20
    rng = random.Random(seed)
    image = bytearray(size)
    path = tmp_path / f"h{seed}"
    with open(path, "wb") as f:
        f.truncate(size)
        for _ in range(rng.randrange(0, 6)):
            off, n = rng.randrange(0, size - 65536), rng.randrange(1, 65536)
            data = rng.randbytes(n)
            f.seek(off)
            f.write(data)
            image[off : off + n] = data
    length = min(length, size - start)
    fd = os.open(path, os.O_RDONLY)
    try:
        got = hash_ranges(fd, start, length, chunk, read_size=1 << 20)
    finally:
        os.close(fd)
    end = start + length
    want = [(o, min(chunk, end - o), xxhash.xxh3_128_digest(bytes(image[o : min(o + chunk, end)])))
            for o in range(start, end, chunk)]
    assert got == want


def test_hash_ranges_refuses_a_range_past_the_file(tmp_path: Path) -> None:
    path = tmp_path / "small"
    path.write_bytes(b"x" * 1000)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OutOfRange, match="past the end of the file"):
            hash_ranges(fd, 0, 2000, 512)
        with pytest.raises(InvalidArgument, match="chunk_size"):
            hash_ranges(fd, 0, 10, 0)
    finally:
        os.close(fd)
    assert zero_digest(4096) == xxhash.xxh3_128_digest(bytes(4096))


@pytest.mark.parametrize("where", ["tmp", "shm"])
def test_whole_file_digest_hashes_holes_as_zeros(where: str, tmp_path: Path, shm_dir: Path) -> None:
    """fd_xxh3_128 skips holes (SEEK_DATA) yet digests exactly the bytes the file reads as."""
    path = (tmp_path if where == "tmp" else shm_dir) / "sparse.img"
    size = 21 * MiB + 4097  # not a multiple of the read size
    extents = [(0, 1000), (5 * MiB + 123, 3 * MiB + 7), (12 * MiB, 4 * MiB), (size - 10, 10)]
    rng = random.Random(5)
    with open(path, "wb") as f:
        f.truncate(size)
        for off, n in extents:
            f.seek(off)
            f.write(rng.randbytes(n))
    assert file_xxh3_128(path) == xxhash.xxh3_128_hexdigest(path.read_bytes())
    empty = path.with_name("empty.img")
    with open(empty, "wb") as f:
        f.truncate(9 * MiB)  # a hole only
    assert file_xxh3_128(empty) == xxhash.xxh3_128_hexdigest(bytes(9 * MiB))


@pytest.mark.parametrize("good", ["a", "vm-01_disk.0", "A" * 128, "0.vmdk"])
def test_vdisk_ids_accepted(good: str) -> None:
    assert check_vdisk_id(good) == good


@pytest.mark.parametrize("bad,why", [("a/b", "'/'"), ("..", "'..'"), ("a..b", "'..'"), ("a\0b", "NUL"),
                                     ("a\\b", "'\\\\'"), ("", "1-128"), (".hidden", "starting with"),
                                     ("a" * 129, "1-128"), ("a b", "1-128"), ("é", "1-128")])
def test_vdisk_ids_refused(bad: str, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        check_vdisk_id(bad)


def test_create_shadow_is_sparse_with_a_descriptor(tmp_path: Path) -> None:
    size = 10 << 30
    paths = create_shadow(tmp_path, "disk-1", size)
    st_ = os.stat(paths.flat)
    assert st_.st_size == size and st_.st_blocks == 0
    text = paths.descriptor.read_text()
    assert f'RW {size // 512} VMFS "disk-1-flat.vmdk"' in text
    assert text.startswith("# Disk DescriptorFile\nversion=1\n") and "parentCID=ffffffff" in text
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    paths.flat.write_bytes(b"stale")  # leftovers without a state record are replaced
    create_shadow(tmp_path, "disk-1", size)
    assert os.stat(paths.flat).st_size == size and os.stat(paths.flat).st_blocks == 0


def test_descriptor_geometry() -> None:
    text = descriptor_text("x", 8 << 30, cid=0x1234ABCD)
    assert "CID=1234abcd" in text and 'ddb.geometry.cylinders = "1044"' in text
    assert 'ddb.geometry.heads = "255"' in text and 'createType="vmfs"' in text


def test_state_persists_monotonically_and_is_exclusive(tmp_path: Path) -> None:
    s = SinkState(tmp_path)
    s.insert("a", 4096, "m1", tmp_path / "a-flat.vmdk", tmp_path / "a.vmdk")
    s.persist("a", 10, False)
    s.persist("a", 7, False)  # a late, older sync never moves the record back
    row = s.get("a")
    assert row is not None and (row.durable_seq, row.applied_seq, row.closed) == (10, 10, False)
    with pytest.raises(FailedPrecondition, match="in use by another liftshift-sink"):
        SinkState(tmp_path)
    s.close()
    again = SinkState(tmp_path)
    assert [r.vdisk_id for r in again.all()] == ["a"]
    again.close()


def test_config_env_overrides_and_errors_name_key_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "sink.toml"
    cfg.write_text(f'data_dir = "{tmp_path}"\nmax_message = "4MiB"\ninsecure = true\n')
    c = load_config(str(cfg), {"LIFTSHIFT_SINK_LISTEN": "0.0.0.0:0", "LIFTSHIFT_SINK_FSYNC_WINDOW_MS": "2.5"})
    assert (c.listen, c.fsync_window_ms, c.max_message) == ("0.0.0.0:0", 2.5, 4 << 20)
    assert c.state_path == tmp_path / ".liftshift-sink"
    for text, key in [('listen = "nope"', "listen"), ("max_message = 10", "max_message"),
                      ('max_message = "lots"', "max_message"), ('log_level = "loud"', "log_level"),
                      ("fsync_window_ms = -1", "fsync_window_ms"), ("colour = 1", "colour")]:
        cfg.write_text(f'data_dir = "{tmp_path}"\ninsecure = true\n{text}\n')
        with pytest.raises(ConfigError, match=f"{cfg}.*'{key}'"):
            load_config(str(cfg), {})
    cfg.write_text('listen = "127.0.0.1:0"\ninsecure = true\n')
    with pytest.raises(ConfigError, match="required key 'data_dir'"):
        load_config(str(cfg), {})
    ref = reference_markdown()
    for key in ("data_dir", "listen", "state_dir", "fsync_window_ms", "max_message", "max_hash_chunks", "log_level"):
        assert f"| `{key}` |" in ref
    assert "`16MiB`" in ref


async def test_frame_queue_is_bounded_in_bytes() -> None:
    q = FrameQueue(100)
    await q.put("a", 60)
    await q.put("big", 30)
    blocked = asyncio.create_task(q.put("b", 60))
    await asyncio.sleep(0.01)
    assert not blocked.done() and q.nbytes == 90
    assert q.get_nowait() == "a"
    await asyncio.wait_for(blocked, 1)
    q.put_end()
    assert [q.get_nowait(), q.get_nowait(), q.get_nowait(), q.get_nowait()] == ["big", "b", None, EMPTY]
    waiter = asyncio.create_task(q.wait_readable())
    await asyncio.sleep(0)
    assert not waiter.done()
    q.fail_now(SequenceError("stop"))
    await asyncio.wait_for(waiter, 1)
    with pytest.raises(SequenceError):
        q.get_nowait()


async def test_one_frame_larger_than_the_limit_still_fits() -> None:
    q = FrameQueue(100)
    await asyncio.wait_for(q.put("huge", 10_000), 1)
    assert q.get_nowait() == "huge" and q.nbytes == 0


def test_example_config_loads_and_matches_the_defaults() -> None:
    example = Path(__file__).resolve().parent.parent / "sink" / "sink.example.toml"
    c = load_config(str(example), {})
    d = SinkConfig(data_dir=c.data_dir, tls_cert=c.tls_cert, tls_key=c.tls_key, tls_ca=c.tls_ca)
    assert c.tls_cert is not None and not c.insecure  # the example shows mutual TLS
    assert c == d, "sink.example.toml drifted from SinkConfig's defaults"
