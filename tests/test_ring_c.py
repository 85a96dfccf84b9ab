"""The C producer (iofilter/liftshift_ring.c) against the layout in ring.py.

The ring file is parsed here directly from its bytes, with ring.py's HEADER
and REC only, so these tests check the C library against the specification
rather than against the Python consumer.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import mmap
import os
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cbuild
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liftshift.iofilter import ring

# Return codes of the C API (checked against the header in test_constants_agree).
LS_OK = 0
LS_OVERFLOWED = 1
LS_ENOTRING = -10001
LS_EVERSION = -10002
LS_EGEOMETRY = -10003
LS_EFROZEN = -10004
LS_ECLOSED = -10005
LS_ERANGE = -10006
LS_ETIMEDOUT = -10007
RETURN_CODES = {
    "LS_OK": LS_OK, "LS_OVERFLOWED": LS_OVERFLOWED, "LS_ENOTRING": LS_ENOTRING, "LS_EVERSION": LS_EVERSION,
    "LS_EGEOMETRY": LS_EGEOMETRY, "LS_EFROZEN": LS_EFROZEN, "LS_ECLOSED": LS_ECLOSED, "LS_ERANGE": LS_ERANGE,
    "LS_ETIMEDOUT": LS_ETIMEDOUT,
}
EMPTY_XXH3 = xxhash.xxh3_64_intdigest(b"")
GIB = 1 << 30


# --------------------------------------------------------------- C side


@pytest.fixture(scope="session")
def lib() -> ctypes.CDLL:
    so = ctypes.CDLL(str(cbuild.c_library()))
    vp, u64, c_int = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int
    for fn, args, res in (
        ("ls_ring_open", [ctypes.c_char_p, ctypes.POINTER(vp)], c_int),
        ("ls_ring_detach", [vp], None),
        ("ls_ring_write", [vp, u64, ctypes.c_char_p, u64], c_int),
        ("ls_ring_write_zeroes", [vp, u64, u64], c_int),
        ("ls_ring_trim", [vp, u64, u64], c_int),
        ("ls_ring_admit", [vp, u64, u64], c_int),
        ("ls_ring_publish_write", [vp, u64, ctypes.c_char_p, u64], c_int),
        ("ls_ring_publish_zeroes", [vp, u64, u64], c_int),
        ("ls_ring_publish_trim", [vp, u64, u64], c_int),
        ("ls_ring_close", [vp, ctypes.POINTER(u64)], c_int),
        ("ls_ring_strerror", [c_int], ctypes.c_char_p),
        ("ls_ring_layout", [ctypes.c_char_p, ctypes.POINTER(u64)], c_int),
        ("ls_ring_get_header", [vp], vp),
        ("ls_ring_announce", [vp, u64], None),
    ):
        getattr(so, fn).argtypes = args
        getattr(so, fn).restype = res
    return so


def c_open(lib: ctypes.CDLL, path: Path) -> int:
    """ls_ring_open's return code, detaching again on success."""
    h = ctypes.c_void_p()
    rc = lib.ls_ring_open(os.fsencode(path), ctypes.byref(h))
    if rc == LS_OK:
        lib.ls_ring_detach(h)
    return rc


class CRing:
    """A ctypes handle on one ring; ctypes drops the GIL during each call."""

    def __init__(self, lib: ctypes.CDLL, path: Path) -> None:
        self.lib = lib
        self.h = ctypes.c_void_p()
        rc = lib.ls_ring_open(os.fsencode(path), ctypes.byref(self.h))
        assert rc == LS_OK, lib.ls_ring_strerror(rc)

    def write(self, offset: int, data: bytes) -> int:
        return self.lib.ls_ring_write(self.h, offset, data, len(data))

    def zero(self, offset: int, length: int) -> int:
        return self.lib.ls_ring_write_zeroes(self.h, offset, length)

    def trim(self, offset: int, length: int) -> int:
        return self.lib.ls_ring_trim(self.h, offset, length)

    def admit(self, offset: int, length: int) -> int:
        return self.lib.ls_ring_admit(self.h, offset, length)

    def publish(self, offset: int, data: bytes) -> int:
        return self.lib.ls_ring_publish_write(self.h, offset, data, len(data))

    def publish_zero(self, offset: int, length: int) -> int:
        return self.lib.ls_ring_publish_zeroes(self.h, offset, length)

    def publish_trim(self, offset: int, length: int) -> int:
        return self.lib.ls_ring_publish_trim(self.h, offset, length)

    def close(self) -> tuple[int, int]:
        seq = ctypes.c_uint64(0)
        rc = self.lib.ls_ring_close(self.h, ctypes.byref(seq))
        return rc, seq.value

    def detach(self) -> None:
        self.lib.ls_ring_detach(self.h)


# --------------------------------------------------------------- Python side


@dataclass(frozen=True)
class Rec:
    pos: int
    word: int
    seq: int
    offset: int
    length: int
    flags: int
    paylen: int
    xxh3: int
    time_ns: int
    payload: bytes


@dataclass(frozen=True)
class Pad:
    pos: int
    size: int


class View:
    """The ring file as bytes: header words, bitmaps, and a record parser."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR)
        self.mm = mmap.mmap(self.fd, 0)
        self.g = ring.read_geometry(path, self.mm[: ring.HEADER_SIZE], len(self.mm))
        self.mask = self.g.capacity - 1
        self._fence = threading.Lock()

    def get(self, name: str) -> int:
        off, code = ring.HEADER[name]
        return struct.unpack_from("<" + code, self.mm, off)[0]

    def put(self, name: str, value: int) -> None:
        off, code = ring.HEADER[name]
        struct.pack_into("<" + code, self.mm, off, value)

    def fence(self) -> None:
        self._fence.acquire()
        self._fence.release()

    def parse(self, start: int, end: int) -> list[Rec | Pad]:
        """Every record and PAD in [start, end), checked against the layout."""
        out: list[Rec | Pad] = []
        pos = start
        while pos < end:
            at = pos & self.mask
            base = self.g.data_offset + at
            (word,) = struct.unpack_from("<Q", self.mm, base)
            size = word & ring.WORD_LEN_MASK
            assert not word & ring.WORD_BUSY, f"BUSY record at {pos} below commit"
            assert size and size % 8 == 0 and at + size <= self.g.capacity, f"bad size {size} at {pos}"
            if word & ring.WORD_PAD:
                out.append(Pad(pos, size))
            else:
                _, seq, offset, length, flags, paylen, digest, time_ns = ring.REC.unpack_from(self.mm, base)
                assert size == ring.record_size(paylen)
                start_payload = base + ring.RECORD_HEADER
                payload = bytes(self.mm[start_payload : start_payload + paylen])
                out.append(Rec(pos, word, seq, offset, length, flags, paylen, digest, time_ns, payload))
            pos += size
        assert pos == end, f"records overrun {end}: {pos}"
        return out

    def records(self) -> list[Rec]:
        """Committed, unreleased records (PADs left out)."""
        return [r for r in self.parse(self.get("release"), self.get("commit")) if isinstance(r, Rec)]

    def dirty_chunks(self, which: int) -> set[int]:
        start = self.g.bitmap_offset + which * self.g.bitmap_bytes
        raw = int.from_bytes(self.mm[start : start + self.g.bitmap_bytes], "little")
        return {i for i in range(self.g.bitmap_bytes * 8) if raw >> i & 1}

    def snapshot(self) -> bytes:
        return bytes(self.mm)

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)


@pytest.fixture
def make_ring(shm_dir: Path, lib: ctypes.CDLL):
    """make_ring(disk, **create_ring kwargs) -> (path, View, CRing), on tmpfs like a real ring."""
    opened: list[tuple[View, CRing]] = []

    def make(disk_size: int = 1 << 20, **kw: int) -> tuple[Path, View, CRing]:
        path = shm_dir / f"ring{len(opened)}"
        kw.setdefault("capacity", 1 << 16)
        ring.create_ring(path, disk_size, **kw)
        v, c = View(path), CRing(lib, path)
        opened.append((v, c))
        return path, v, c

    yield make
    for v, c in opened:
        c.detach()
        v.close()


# --------------------------------------------------------------- layout


def test_layout_offsets_agree(lib: ctypes.CDLL) -> None:
    off = ctypes.c_uint64()
    for name, (expected, _) in ring.HEADER.items():
        assert lib.ls_ring_layout(name.encode(), ctypes.byref(off)) == 0, name
        assert off.value == expected, name
    assert lib.ls_ring_layout(b"no_such_field", ctypes.byref(off)) == -1


def _constants_program() -> str:
    fields = "\n".join(
        f'    printf("\\"{n}\\": [%zu, %zu],\\n", offsetof(ls_ring_header, {n}), '
        f"sizeof(((ls_ring_header *)0)->{n}));"
        for n in ring.HEADER
    )
    rec = "\n".join(
        f'    printf("\\"rec_{n}\\": [%zu, %zu],\\n", offsetof(ls_record_header, {n}), '
        f"sizeof(((ls_record_header *)0)->{n}));"
        for n in ("word", "seq", "offset", "length", "flags", "paylen", "xxh3", "time_ns")
    )
    consts = "\n".join(
        f'    printf("\\"{n}\\": %lld,\\n", (long long)({n}));'
        for n in ("LS_RING_RECORD_HEADER", "LS_RING_HEADER_SIZE", "LS_RING_LINE", "LS_RING_VERSION",
                  "LS_RING_MIN_CAPACITY", "LS_RING_MAX_CAPACITY", "LS_WORD_LEN_MASK", "LS_FLAG_WRITE",
                  "LS_FLAG_ZERO", "LS_FLAG_TRIM", "LS_FLAG_CLOSE", "LS_RING_MAX_RANGE_RECORD",
                  *RETURN_CODES)
    )
    return f"""#include <stdio.h>
#include "liftshift_ring.h"
int main(void) {{
    printf("{{\\n");
{fields}
{rec}
{consts}
    printf("\\"LS_RING_MAGIC\\": %llu,\\n", (unsigned long long)LS_RING_MAGIC);
    printf("\\"LS_WORD_BUSY\\": %llu,\\n", (unsigned long long)LS_WORD_BUSY);
    printf("\\"LS_WORD_PAD\\": %llu,\\n", (unsigned long long)LS_WORD_PAD);
    printf("\\"sizeof_header\\": %zu,\\n", sizeof(ls_ring_header));
    printf("\\"sizeof_record\\": %zu\\n}}\\n", sizeof(ls_record_header));
    return 0;
}}
"""


def test_constants_agree() -> None:
    exe = cbuild.compile_program("ring_constants", _constants_program())
    c = json.loads(subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout)
    for name, (offset, code) in ring.HEADER.items():
        assert c[name] == [offset, struct.calcsize("<" + code)], name
    # Record fields in REC order, offsets and sizes derived from its format.
    pos = 0
    for name, code in zip(("word", "seq", "offset", "length", "flags", "paylen", "xxh3", "time_ns"),
                          ring.REC.format.lstrip("<"), strict=True):
        assert c[f"rec_{name}"] == [pos, struct.calcsize(code)], name
        pos += struct.calcsize(code)
    assert c["LS_RING_RECORD_HEADER"] == c["sizeof_record"] == ring.RECORD_HEADER == ring.REC.size
    assert c["LS_RING_HEADER_SIZE"] == c["sizeof_header"] == ring.HEADER_SIZE
    assert c["LS_RING_LINE"] == ring.LINE
    assert c["LS_RING_MAGIC"] == ring.MAGIC
    assert c["LS_RING_VERSION"] == ring.VERSION
    assert (c["LS_RING_MIN_CAPACITY"], c["LS_RING_MAX_CAPACITY"]) == (ring.MIN_CAPACITY, ring.MAX_CAPACITY)
    assert (c["LS_WORD_BUSY"], c["LS_WORD_PAD"], c["LS_WORD_LEN_MASK"]) == (
        ring.WORD_BUSY, ring.WORD_PAD, ring.WORD_LEN_MASK)
    assert (c["LS_FLAG_WRITE"], c["LS_FLAG_ZERO"], c["LS_FLAG_TRIM"], c["LS_FLAG_CLOSE"]) == (
        ring.FLAG_WRITE, ring.FLAG_ZERO, ring.FLAG_TRIM, ring.FLAG_CLOSE)
    assert c["LS_RING_MAX_RANGE_RECORD"] == GIB
    for name, value in RETURN_CODES.items():
        assert c[name] == value, name


def test_strerror_names_every_code(lib: ctypes.CDLL) -> None:
    texts = {rc: lib.ls_ring_strerror(rc).decode() for rc in RETURN_CODES.values()}
    assert len(set(texts.values())) == len(texts)
    assert lib.ls_ring_strerror(-errno.ENOENT).decode() == os.strerror(errno.ENOENT)
    assert lib.ls_ring_strerror(-123456).decode() == "unknown liftshift ring error"


# --------------------------------------------------------------- records


def test_write_record(make_ring) -> None:
    _, v, c = make_ring()
    data = bytes(range(256)) * 3 + b"tail!"  # 773 bytes: the record needs 3 pad bytes
    before = time.monotonic_ns()
    assert c.write(4096 * 3 + 512, data) == LS_OK
    after = time.monotonic_ns()
    [rec] = v.records()
    assert (rec.seq, rec.offset, rec.length, rec.flags, rec.paylen) == (1, 4096 * 3 + 512, 773, ring.FLAG_WRITE, 773)
    assert rec.word == ring.RECORD_HEADER + 776
    assert rec.payload == data
    assert rec.xxh3 == xxhash.xxh3_64_intdigest(data)
    assert before <= rec.time_ns <= after
    pad_at = v.g.data_offset + ring.RECORD_HEADER + 773
    assert v.mm[pad_at : pad_at + 3] == b"\0\0\0"
    assert v.get("reserve") == v.get("commit") == 56 + 776
    assert (v.get("next_seq"), v.get("writes"), v.get("bytes")) == (2, 1, 773)


def test_zero_trim_and_close_records(make_ring) -> None:
    _, v, c = make_ring()
    assert c.write(0, b"x" * 512) == LS_OK
    assert c.zero(8192, 4096) == LS_OK
    assert c.trim(65536, 1 << 19) == LS_OK
    rc, final = c.close()
    assert (rc, final) == (LS_OK, 4)
    recs = v.records()
    assert [(r.seq, r.flags, r.offset, r.length, r.paylen) for r in recs] == [
        (1, ring.FLAG_WRITE, 0, 512, 512),
        (2, ring.FLAG_ZERO, 8192, 4096, 0),
        (3, ring.FLAG_TRIM, 65536, 1 << 19, 0),
        (4, ring.FLAG_CLOSE, 0, 0, 0),
    ]
    for r in recs[1:]:
        assert (r.xxh3, r.word, r.payload) == (EMPTY_XXH3, ring.RECORD_HEADER, b"")
    assert v.get("closed") == 1
    assert v.get("next_seq") == 5
    assert (v.get("writes"), v.get("bytes")) == (3, 512 + 4096 + (1 << 19))
    snap = v.snapshot()
    assert c.write(0, b"y" * 512) == LS_ECLOSED
    assert c.zero(0, 512) == LS_ECLOSED
    assert c.close() == (LS_ECLOSED, 0)
    assert v.snapshot() == snap


def test_big_write_is_split_at_max_record(make_ring) -> None:
    _, v, c = make_ring(capacity=1 << 16, max_record=4096)
    data = os.urandom(10_000)
    assert c.write(1 << 16, data) == LS_OK
    recs = v.records()
    assert [(r.seq, r.offset, r.length, r.paylen) for r in recs] == [
        (1, 65536, 4096, 4096), (2, 65536 + 4096, 4096, 4096), (3, 65536 + 8192, 1808, 1808)]
    assert b"".join(r.payload for r in recs) == data
    assert all(r.xxh3 == xxhash.xxh3_64_intdigest(r.payload) for r in recs)
    assert (v.get("writes"), v.get("bytes")) == (1, 10_000)


def test_long_ranges_are_split_at_1gib(make_ring) -> None:
    _, v, c = make_ring(disk_size=3 * GIB)
    assert c.trim(512, 2 * GIB + 4096) == LS_OK
    assert c.zero(0, 3 * GIB) == LS_OK
    assert [(r.flags, r.offset, r.length) for r in v.records()] == [
        (ring.FLAG_TRIM, 512, GIB), (ring.FLAG_TRIM, 512 + GIB, GIB), (ring.FLAG_TRIM, 512 + 2 * GIB, 4096),
        (ring.FLAG_ZERO, 0, GIB), (ring.FLAG_ZERO, GIB, GIB), (ring.FLAG_ZERO, 2 * GIB, GIB)]


def _fill_to_4088(c: CRing) -> None:
    """On a 4096-byte ring (max_record 1024) from position 0: 3 x 1080 + 848 bytes."""
    for i in range(3):
        assert c.write(i * 512, b"a" * 1024) == LS_OK
    assert c.write(0, b"b" * 792) == LS_OK


def test_pad_record_before_wrap(make_ring) -> None:
    """A record that does not fit in the tail starts at 0 behind a PAD."""
    _, v, c = make_ring(capacity=4096)
    _fill_to_4088(c)  # 8 bytes left in the tail
    v.put("release", v.get("commit"))  # the consumer is done with them
    assert c.write(8192, b"c" * 8) == LS_OK  # 64 bytes do not fit in 8
    items = v.parse(4088, v.get("commit"))
    assert items[0] == Pad(4088, 8)
    assert isinstance(items[1], Rec) and items[1].pos == 4096 and items[1].seq == 5
    assert items[1].payload == b"c" * 8
    word = struct.unpack_from("<Q", v.mm, v.g.data_offset + 4088)[0]
    assert word == 8 | ring.WORD_PAD
    assert v.get("reserve") == v.get("commit") == 4096 + 64
    # A larger PAD: from position 64 a 1080-byte record fits 3 times, then pads.
    v.put("release", v.get("commit"))
    for i in range(3):
        assert c.write(i * 4096, bytes([i]) * 1024) == LS_OK
    tail = v.get("commit")
    assert tail == 4096 + 64 + 3 * 1080
    v.put("release", tail)
    assert c.write(3 * 4096, b"\x03" * 1024) == LS_OK
    items = v.parse(tail, v.get("commit"))
    assert items[0] == Pad(tail, 8192 - tail)
    assert isinstance(items[1], Rec) and items[1].pos == 8192 and items[1].payload == b"\x03" * 1024


# --------------------------------------------------------------- rejections


def test_out_of_range_changes_nothing(make_ring, lib: ctypes.CDLL) -> None:
    _, v, c = make_ring(disk_size=1 << 20)
    assert c.write(0, b"z" * 512) == LS_OK
    snap = v.snapshot()
    end = 1 << 20
    assert c.write(end - 512, b"q" * 1024) == LS_ERANGE
    assert c.write(end, b"q") == LS_ERANGE
    assert c.write(0, b"") == LS_ERANGE
    assert c.write(2**64 - 512, b"q" * 1024) == LS_ERANGE  # offset + len wraps
    assert c.zero(end - 512, 1024) == LS_ERANGE
    assert c.trim(0, 0) == LS_ERANGE
    assert c.trim(512, 2**64 - 1) == LS_ERANGE
    assert lib.ls_ring_write(c.h, 0, None, 512) == -errno.EINVAL
    assert v.snapshot() == snap
    assert c.write(end - 512, b"q" * 512) == LS_OK  # the last sector is fine


def test_freeze_rejects_and_counts(make_ring) -> None:
    _, v, c = make_ring()
    v.put("freeze", 1)
    reserve, seq = v.get("reserve"), v.get("next_seq")
    assert c.write(0, b"f" * 512) == LS_EFROZEN
    assert c.zero(0, 512) == LS_EFROZEN
    assert c.trim(0, 512) == LS_EFROZEN
    assert v.get("frozen_rejects") == 3
    assert (v.get("reserve"), v.get("next_seq"), v.get("writes")) == (reserve, seq, 0)
    rc, final = c.close()  # the filter may still close a frozen ring
    assert (rc, final) == (LS_OK, 1)
    v.put("freeze", 0)
    assert c.write(0, b"f" * 512) == LS_ECLOSED


def test_freeze_never_drops_an_admitted_write(make_ring) -> None:
    """Freeze is decided at admission: a write admitted before the daemon set
    freeze (its vdisk write in flight) is still published, and only CLOSE ends
    the stream."""
    _, v, c = make_ring()
    assert c.admit(0, 512) == LS_OK
    assert c.admit(4096, 1024) == LS_OK
    assert c.admit(8192, 512) == LS_OK
    v.put("freeze", 1)  # the cutover starts while the three IOs are in flight
    assert c.admit(65536, 512) == LS_EFROZEN  # new IO is refused before the vdisk
    assert c.write(65536, b"n" * 512) == LS_EFROZEN
    assert v.get("frozen_rejects") == 2
    assert v.records() == []
    assert c.publish(0, b"a" * 512) == LS_OK  # the admitted ones complete
    assert c.publish_zero(4096, 1024) == LS_OK
    assert c.publish_trim(8192, 512) == LS_OK
    assert c.close() == (LS_OK, 4)
    assert [(r.seq, r.flags, r.offset, r.length) for r in v.records()] == [
        (1, ring.FLAG_WRITE, 0, 512), (2, ring.FLAG_ZERO, 4096, 1024), (3, ring.FLAG_TRIM, 8192, 512),
        (4, ring.FLAG_CLOSE, 0, 0)]
    assert v.records()[0].payload == b"a" * 512
    assert (v.get("writes"), v.get("bytes"), v.get("frozen_rejects")) == (3, 512 + 1024 + 512, 2)


def test_announce_sets_producer_and_detach_clears_it(make_ring, lib: ctypes.CDLL) -> None:
    path, v, c = make_ring()
    other = CRing(lib, path)
    assert v.get("producer") == 0
    lib.ls_ring_announce(c.h, 4242)
    assert v.get("producer") == 4242
    other.detach()  # a handle that did not announce leaves the word alone
    assert v.get("producer") == 4242
    assert c.close()[0] == LS_OK
    assert v.get("producer") == 4242  # CLOSE leaves it: the filter still owned the ring
    c.detach()
    assert v.get("producer") == 0
    c.detach = lambda: None  # type: ignore[method-assign]  # already detached for the fixture


def test_publish_after_close_is_refused(make_ring, lib: ctypes.CDLL) -> None:
    _, v, c = make_ring()
    assert c.admit(0, 512) == LS_OK
    assert c.close() == (LS_OK, 1)
    snap = v.snapshot()
    assert c.publish(0, b"l" * 512) == LS_ECLOSED
    assert c.publish_zero(0, 512) == LS_ECLOSED
    assert c.publish_trim(0, 512) == LS_ECLOSED
    assert c.admit(0, 512) == LS_ECLOSED
    v.put("freeze", 1)
    assert c.admit(0, 512) == LS_ECLOSED  # closed is checked before freeze
    v.put("freeze", 0)
    assert v.get("frozen_rejects") == 0
    assert lib.ls_ring_publish_write(c.h, 0, None, 512) == -errno.EINVAL
    assert v.snapshot() == snap


def test_publish_checks_range_but_neither_freeze_nor_throttle(make_ring) -> None:
    _, v, c = make_ring(disk_size=1 << 20)
    snap = v.snapshot()
    end = 1 << 20
    assert c.admit(end - 512, 1024) == LS_ERANGE
    assert c.admit(0, 0) == LS_ERANGE
    assert c.publish(end - 512, b"q" * 1024) == LS_ERANGE
    assert c.publish_zero(0, 0) == LS_ERANGE
    assert c.publish_trim(512, 2**64 - 1) == LS_ERANGE
    assert v.snapshot() == snap
    v.put("throttle_iops", 10)  # 100 ms per call, taken at admission only
    v.put("freeze", 1)
    t0 = time.monotonic()
    for i in range(5):
        assert c.publish(i * 512, b"p" * 512) == LS_OK
    assert time.monotonic() - t0 < 0.1
    assert (v.get("throttle_next_ns"), v.get("throttled_ns"), v.get("frozen_rejects")) == (0, 0, 0)
    v.put("freeze", 0)
    assert c.admit(0, 512) == LS_OK
    assert v.get("throttle_next_ns") > 0
    assert [r.offset for r in v.records()] == [0, 512, 1024, 1536, 2048]


def test_closed_word_rejects(make_ring) -> None:
    _, v, c = make_ring()
    v.put("closed", 1)
    snap = v.snapshot()
    assert c.write(0, b"c" * 512) == LS_ECLOSED
    assert c.trim(0, 512) == LS_ECLOSED
    assert c.close()[0] == LS_ECLOSED
    assert v.snapshot() == snap


# --------------------------------------------------------------- open


def _header_with(path: Path, **fields: int) -> None:
    with open(path, "r+b") as f:
        for name, value in fields.items():
            off, code = ring.HEADER[name]
            f.seek(off)
            f.write(struct.pack("<" + code, value))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"magic": 0x1234}, LS_ENOTRING),
        ({"version": 2}, LS_EVERSION),
        ({"header_size": 2048}, LS_EGEOMETRY),
        ({"capacity": 3 * 4096}, LS_EGEOMETRY),
        ({"capacity": 1 << 41}, LS_EGEOMETRY),
        ({"disk_size": 1000}, LS_EGEOMETRY),
        ({"chunk_size": 2048}, LS_EGEOMETRY),
        ({"max_record": 40000}, LS_EGEOMETRY),
        ({"max_record": 1004}, LS_EGEOMETRY),
        ({"bitmap_offset": 8192}, LS_EGEOMETRY),
        ({"bitmap_bytes": 0}, LS_EGEOMETRY),
        ({"data_offset": 4096}, LS_EGEOMETRY),
        ({"capacity": 1 << 17}, LS_EGEOMETRY),  # the file is too short for it
    ],
)
def test_open_rejects_bad_headers(tmp_path: Path, lib: ctypes.CDLL, change: dict[str, int], expected: int) -> None:
    path = tmp_path / "ring"
    ring.create_ring(path, 1 << 20, capacity=1 << 16)
    assert c_open(lib, path) == LS_OK
    _header_with(path, **change)
    assert c_open(lib, path) == expected


def test_open_rejects_other_files(tmp_path: Path, lib: ctypes.CDLL) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(8192))
    assert c_open(lib, junk) == LS_ENOTRING
    short = tmp_path / "short"
    short.write_bytes(struct.pack("<Q", ring.MAGIC))
    assert c_open(lib, short) == LS_ENOTRING
    assert c_open(lib, tmp_path / "missing") == -errno.ENOENT
    path = tmp_path / "ring"
    ring.create_ring(path, 1 << 20, capacity=1 << 16)
    os.unlink(ring.bell_path(path))
    assert c_open(lib, path) == -errno.ENOENT
    Path(ring.bell_path(path)).write_bytes(b"")
    assert c_open(lib, path) == -errno.EINVAL  # a regular file is no doorbell


def test_detach_writes_nothing(tmp_path: Path, lib: ctypes.CDLL) -> None:
    path = tmp_path / "ring"
    ring.create_ring(path, 1 << 20, capacity=1 << 16)
    before = path.read_bytes()
    assert c_open(lib, path) == LS_OK
    assert path.read_bytes() == before


_PY_ERRORS = {"NotARingError": LS_ENOTRING, "RingVersionError": LS_EVERSION, "RingGeometryError": LS_EGEOMETRY}


_U32 = st.integers(0, 2**32 - 1)
_U64 = st.integers(0, 2**64 - 1)


@st.composite
def _headers(draw: st.DrawFn) -> tuple[dict[str, int], int]:
    """A valid ring header with up to two fields (or the file size) broken,
    mostly just past the edge of a rule of read_geometry / Geometry.check."""
    g = ring.Geometry.plan(512 * draw(st.integers(1, 1 << 13)), 1 << draw(st.integers(12, 20)),
                           1 << draw(st.integers(12, 17)), None)
    fields = {"magic": ring.MAGIC, "version": ring.VERSION, "header_size": ring.HEADER_SIZE,
              "capacity": g.capacity, "disk_size": g.disk_size, "chunk_size": g.chunk_size,
              "max_record": g.max_record, "bitmap_offset": g.bitmap_offset, "bitmap_bytes": g.bitmap_bytes,
              "data_offset": g.data_offset}
    cap, top = g.capacity, (g.capacity - 2 * ring.RECORD_HEADER) // 2 & ~7
    edges = {
        "magic": st.one_of(st.just(ring.MAGIC ^ 1 << 63), _U64),
        "version": st.one_of(st.sampled_from([0, 2]), _U32),
        "header_size": st.one_of(st.sampled_from([0, 2048, 8192]), _U32),
        "capacity": st.one_of(st.sampled_from([0, 2048, cap * 2, cap + 4096, 1 << 40, 1 << 41]), _U64),
        "disk_size": st.one_of(st.sampled_from([0, g.disk_size + 1, g.disk_size * 64, 2**64 - 512]), _U64),
        "chunk_size": st.one_of(st.sampled_from([0, 2048, g.chunk_size * 2, g.chunk_size + 4096]), _U32),
        "max_record": st.one_of(st.sampled_from([0, 8, top, top + 8, g.max_record + 4]), _U32),
        "bitmap_offset": st.one_of(st.sampled_from([0, 4096 + 64, 8192]), _U64),
        "bitmap_bytes": st.one_of(st.sampled_from([0, g.bitmap_bytes - 64, g.bitmap_bytes + 64,
                                                   g.bitmap_bytes + 1, 2**63]), _U64),
        "data_offset": st.one_of(st.sampled_from([4096, g.data_offset - 4096, g.data_offset + 4096,
                                                  g.data_offset + 8, 2**64 - 4096]), _U64),
    }
    size = g.file_size
    for name in draw(st.lists(st.sampled_from([*edges, "file_size"]), max_size=2)):
        if name == "file_size":
            size = draw(st.sampled_from([0, 100, 4095, 4096, g.file_size - 8, g.file_size + 4096]))
        else:
            fields[name] = max(0, draw(edges[name]))
    return fields, size


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_headers())
def test_open_validates_exactly_like_read_geometry(lib: ctypes.CDLL, case: tuple[dict[str, int], int]) -> None:
    fields, size = case
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ring"
        os.mkfifo(ring.bell_path(path))
        header = bytearray(ring.HEADER_SIZE)
        for name, value in fields.items():
            off, code = ring.HEADER[name]
            struct.pack_into("<" + code, header, off, value)
        with open(path, "wb") as f:
            f.write(header[:size])
            f.truncate(size)
        fd = os.open(path, os.O_RDONLY)
        try:
            ring.read_geometry(path, os.pread(fd, ring.HEADER_SIZE, 0), os.fstat(fd).st_size)
            expected = LS_OK
        except ring.RingError as e:
            expected = _PY_ERRORS[type(e).__name__]
        finally:
            os.close(fd)
        assert c_open(lib, path) == expected, fields


# --------------------------------------------------------------- overflow


def test_overflow_marks_exactly_the_written_chunks(make_ring) -> None:
    _, v, c = make_ring(disk_size=1 << 20, capacity=4096, chunk_size=4096, overflow_wait_ns=100_000)
    _fill_to_4088(c)
    reserve, seq = v.get("reserve"), v.get("next_seq")
    t0 = time.monotonic_ns()
    assert c.write(5 * 4096 + 100, b"o" * 200) == LS_OVERFLOWED  # chunk 5
    assert time.monotonic_ns() - t0 >= 100_000  # it waited overflow_wait_ns first
    assert c.write(10 * 4096 - 512, b"o" * 1024) == LS_OVERFLOWED  # chunks 9, 10
    assert c.write(63 * 4096, b"o" * 8192) == LS_OVERFLOWED  # split; chunks 63, 64 (two bitmap words)
    assert c.zero(200 * 4096, 3 * 4096) == LS_OVERFLOWED  # 200..202
    assert v.dirty_chunks(0) == {5, 9, 10, 63, 64, 200, 201, 202}
    assert v.dirty_chunks(1) == set()
    assert (v.get("overflows"), v.get("overflow_bytes")) == (4, 200 + 1024 + 8192 + 3 * 4096)
    assert (v.get("writes"), v.get("bytes")) == (8, 3 * 1024 + 792 + 200 + 1024 + 8192 + 3 * 4096)
    assert (v.get("reserve"), v.get("commit"), v.get("next_seq")) == (reserve, reserve, seq)
    v.put("dirty_epoch", 1)  # the daemon harvested bitmap 0: bitmap 1 is active now
    assert c.trim(255 * 4096, 4096) == LS_OVERFLOWED
    assert v.dirty_chunks(1) == {255}
    assert 255 not in v.dirty_chunks(0)


def test_overflow_wait_is_bounded(make_ring) -> None:
    _, v, c = make_ring(capacity=4096, overflow_wait_ns=30_000_000)
    _fill_to_4088(c)
    t0 = time.monotonic()
    assert c.write(0, b"f" * 1024) == LS_OVERFLOWED
    assert 0.030 <= time.monotonic() - t0 < 1.0
    v.put("overflow_wait_ns", 0)  # read live: now it overflows at once
    t0 = time.monotonic()
    assert c.write(0, b"f" * 1024) == LS_OVERFLOWED
    assert time.monotonic() - t0 < 0.010


def _release_later(v: View, delay: float) -> threading.Timer:
    timer = threading.Timer(delay, lambda: v.put("release", v.get("commit")))
    timer.start()
    return timer


def test_overflow_wait_succeeds_when_the_consumer_releases(make_ring) -> None:
    _, v, c = make_ring(capacity=4096, overflow_wait_ns=5_000_000_000)
    _fill_to_4088(c)
    timer = _release_later(v, 0.05)
    try:
        t0 = time.monotonic()
        assert c.write(0, b"late" * 256) == LS_OK
        assert 0.04 <= time.monotonic() - t0 < 2.0
    finally:
        timer.join()
    [rec] = v.records()
    assert rec.payload == b"late" * 256 and rec.seq == 5
    assert v.get("overflows") == 0


def test_close_waits_for_space(make_ring) -> None:
    _, v, c = make_ring(capacity=4096, overflow_wait_ns=0)
    _fill_to_4088(c)  # CLOSE needs 56 bytes: 8 of PAD would not do
    timer = _release_later(v, 0.1)
    try:
        t0 = time.monotonic()
        assert c.close() == (LS_OK, 5)
        assert time.monotonic() - t0 >= 0.09
    finally:
        timer.join()
    [rec] = v.records()
    assert (rec.flags, rec.pos, rec.seq) == (ring.FLAG_CLOSE, 4096, 5)
    assert v.get("overflows") == 0


# --------------------------------------------------------------- throttle


@pytest.mark.parametrize(("bps", "iops", "size"), [(16 << 20, 0, 65536), (0, 250, 512), (16 << 20, 250, 65536)])
def test_throttle_paces_writes(make_ring, bps: int, iops: int, size: int) -> None:
    _, v, c = make_ring(disk_size=1 << 24, capacity=1 << 23)
    start = v.g.data_offset  # fault the data area in: only the throttle should take time
    v.mm[start : start + (1 << 23)] = bytes(1 << 23)
    v.put("throttle_bps", bps)
    v.put("throttle_iops", iops)
    cost = max(size * 10**9 // bps if bps else 0, 10**9 // iops if iops else 0)
    n = 41
    data = os.urandom(size)
    t0 = time.monotonic_ns()
    for i in range(n):
        assert c.write(i * size, data) == LS_OK
    elapsed = time.monotonic_ns() - t0
    expected = (n - 1) * cost  # the first write's slot is now; each next one is `cost` later
    assert 0.9 * expected <= elapsed <= 1.1 * expected
    assert 0.9 * expected <= v.get("throttled_ns") <= elapsed
    assert v.get("throttle_next_ns") >= t0 + n * cost


def test_no_throttle_when_unset(make_ring) -> None:
    _, v, c = make_ring()
    for i in range(100):
        assert c.write(i * 512, b"n" * 512) == LS_OK
    assert (v.get("throttle_next_ns"), v.get("throttled_ns")) == (0, 0)


# --------------------------------------------------------------- doorbell


def test_doorbell_rings_only_for_a_waiting_consumer(make_ring) -> None:
    path, v, c = make_ring()
    bell = os.open(ring.bell_path(path), os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert c.write(0, b"a" * 512) == LS_OK
        with pytest.raises(BlockingIOError):
            os.read(bell, 16)
        v.put("consumer_waiting", 1)
        assert c.write(0, b"b" * 512) == LS_OK
        assert select.select([bell], [], [], 1.0)[0] == [bell]
        assert os.read(bell, 16) == b"\x01"
        # A full FIFO is fine: the consumer has wake-ups queued already.
        w = os.open(ring.bell_path(path), os.O_WRONLY | os.O_NONBLOCK)
        try:
            with pytest.raises(BlockingIOError):
                while True:
                    os.write(w, b"\0" * 4096)
            assert c.write(0, b"c" * 512) == LS_OK
            assert c.zero(0, 512) == LS_OK
        finally:
            os.close(w)
    finally:
        os.close(bell)


# --------------------------------------------------------------- concurrency


def _consume(path: Path, v: View, replay: bytearray, stop: threading.Event, slow_s: float) -> dict[str, int]:
    """A consumer that follows the protocol: replay records in order, release, sleep on the doorbell."""
    bell = os.open(ring.bell_path(path), os.O_RDONLY | os.O_NONBLOCK)
    pos = v.get("release")
    expect: int | None = None
    stats = {"records": 0, "close_seq": 0}
    try:
        while not stop.is_set():
            commit = v.get("commit")
            if commit == pos:
                v.put("consumer_waiting", 1)
                v.fence()
                if v.get("commit") == pos:
                    select.select([bell], [], [], 0.05)
                    with contextlib.suppress(BlockingIOError):
                        os.read(bell, 4096)
                v.put("consumer_waiting", 0)
                continue
            for rec in v.parse(pos, commit):
                if isinstance(rec, Pad):
                    continue
                assert expect is None or rec.seq == expect, (rec.seq, expect)
                expect = rec.seq + 1
                assert rec.xxh3 == xxhash.xxh3_64_intdigest(rec.payload)
                if rec.flags == ring.FLAG_WRITE:
                    replay[rec.offset : rec.offset + rec.length] = rec.payload
                elif rec.flags in (ring.FLAG_ZERO, ring.FLAG_TRIM):
                    replay[rec.offset : rec.offset + rec.length] = bytes(rec.length)
                else:
                    assert rec.flags == ring.FLAG_CLOSE
                    stats["close_seq"] = rec.seq
                    stop.set()
                stats["records"] += 1
            pos = commit
            v.put("release", pos)
            if slow_s:
                time.sleep(slow_s)
    finally:
        os.close(bell)
    return stats


def _run_with_consumer(args: list[str], path: Path, v: View, replay: bytearray, slow_s: float = 0.0,
                       env: dict[str, str] | None = None,
                       cwd: Path | None = None) -> tuple[subprocess.CompletedProcess[str], dict[str, int]]:
    """Run a ring_stress command while a consumer thread drains the ring."""
    stop = threading.Event()
    box: dict[str, object] = {}

    def consume() -> None:
        try:
            box["stats"] = _consume(path, v, replay, stop, slow_s)
        except BaseException as e:  # re-raised in the test thread
            box["error"] = e

    consumer = threading.Thread(target=consume)
    consumer.start()
    proc = None
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    finally:
        if proc is None or proc.returncode != 0:
            stop.set()
        consumer.join(timeout=60)
        stop.set()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, box["stats"]  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("capacity", "wait_ns", "slow_s", "max_size"),
    [(1 << 18, 5_000_000_000, 0.0, 16384), (1 << 14, 20_000, 0.002, 8192)],
    ids=["no-overflow", "overflowing"],
)
def test_stress_replays_to_the_image(make_ring, tmp_path: Path, capacity: int, wait_ns: int, slow_s: float,
                                     max_size: int) -> None:
    """Threads of ring_stress against a live consumer: replaying the ring, then
    resyncing the dirty chunks from the image, rebuilds the image exactly."""
    disk = 8 << 20
    path, v, _ = make_ring(disk_size=disk, capacity=capacity, chunk_size=4096, overflow_wait_ns=wait_ns)
    image = tmp_path / "image"
    with open(image, "wb") as f:
        f.truncate(disk)
    replay = bytearray(disk)
    proc, stats = _run_with_consumer(
        [str(cbuild.stress_binary()), "--ring", str(path), "--image", str(image), "--threads", "4",
         "--records", "3000", "--max-size", str(max_size), "--zero-pct", "10", "--seed", "7", "--report-json"],
        path, v, replay, slow_s)
    out = json.loads(proc.stdout)
    assert out["records"] == 3000
    assert out["final_seq"] == stats["close_seq"] == v.get("next_seq") - 1
    assert out["overflows"] == v.get("overflows")
    assert v.get("writes") == 3000
    if wait_ns > 1_000_000_000:
        assert out["overflows"] == 0
        assert stats["records"] == out["final_seq"]  # every call is one record, plus CLOSE
    else:
        assert out["overflows"] > 0
    cs = v.g.chunk_size
    img = image.read_bytes()
    for chunk in v.dirty_chunks(0) | v.dirty_chunks(1):
        replay[chunk * cs : (chunk + 1) * cs] = img[chunk * cs : (chunk + 1) * cs]
    assert replay == img


def test_stress_without_image(make_ring, tmp_path: Path) -> None:
    """--image - skips the reference image: only the ring is exercised."""
    disk = 8 << 20
    path, v, _ = make_ring(disk_size=disk, capacity=1 << 18, overflow_wait_ns=5_000_000_000)
    work = tmp_path / "cwd"
    work.mkdir()
    replay = bytearray(disk)
    proc, stats = _run_with_consumer(
        [str(cbuild.stress_binary()), "--ring", str(path), "--image", "-", "--threads", "3",
         "--records", "1000", "--max-size", "16384", "--zero-pct", "10", "--report-json"],
        path, v, replay, cwd=work)
    out = json.loads(proc.stdout)
    assert out["ok"] is True
    assert out["records"] == v.get("writes") == 1000
    assert out["overflows"] == 0
    assert out["final_seq"] == stats["close_seq"] == 1001 == stats["records"]
    assert out["bytes"] > 0 and out["zeroes"] + out["trims"] > 0
    assert list(work.iterdir()) == []  # "-" is not a file name


def test_stress_rate_paces_the_calls(make_ring, tmp_path: Path) -> None:
    """--rate R spreads the calls over records / R seconds, shared by the threads."""
    disk = 8 << 20
    path, v, _ = make_ring(disk_size=disk, capacity=1 << 20, overflow_wait_ns=5_000_000_000)
    proc, stats = _run_with_consumer(
        [str(cbuild.stress_binary()), "--ring", str(path), "--image", "-", "--threads", "2",
         "--records", "1000", "--fixed-size", "4096", "--rate", "4000", "--report-json"],
        path, v, bytearray(disk))
    out = json.loads(proc.stdout)
    assert out["ok"] is True and out["rate"] == 4000 and out["records"] == 1000
    assert stats["records"] == 1001  # every call, plus CLOSE
    assert 0.24 <= out["seconds"] < 2.0  # 1000 calls at 4000/s take 0.25 s (never less)


_PRODUCER_PROCESS = r"""
import ctypes, os, sys, time
lib = ctypes.CDLL(sys.argv[1])
lib.ls_ring_open.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
lib.ls_ring_write.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_uint64]
h = ctypes.c_void_p()
assert lib.ls_ring_open(sys.argv[2].encode(), ctypes.byref(h)) == 0
me, n, go = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
while not os.path.exists(go):
    time.sleep(0.001)
for i in range(n):
    data = me.to_bytes(4, "little") + i.to_bytes(4, "little") + bytes([me]) * 504
    assert lib.ls_ring_write(h, (me * n + i) * 512, data, 512) == 0
"""


def test_several_processes_share_one_ring(make_ring, tmp_path: Path) -> None:
    procs, n = 3, 2000
    path, v, _ = make_ring(disk_size=procs * n * 512, capacity=1 << 22)
    go = tmp_path / "go"
    children = [
        subprocess.Popen([sys.executable, "-c", _PRODUCER_PROCESS, str(cbuild.c_library()), str(path), str(p),
                          str(n), str(go)])
        for p in range(procs)
    ]
    go.touch()
    assert [c.wait(timeout=120) for c in children] == [0] * procs
    recs = v.records()
    assert [r.seq for r in recs] == list(range(1, procs * n + 1))
    assert v.get("commit") == v.get("reserve")
    seen: dict[int, list[int]] = {p: [] for p in range(procs)}
    for r in recs:
        me, i = struct.unpack_from("<II", r.payload)
        assert r.offset == (me * n + i) * 512 and r.xxh3 == xxhash.xxh3_64_intdigest(r.payload)
        seen[me].append(i)
    assert all(seen[p] == list(range(n)) for p in range(procs))  # each producer's order is kept
    assert v.get("writes") == procs * n


@pytest.mark.parametrize("sanitizer", ["thread", "address,undefined"])
def test_stress_is_clean_under_sanitizers(make_ring, tmp_path: Path, sanitizer: str) -> None:
    """Data races (TSan) and memory errors (ASan/UBSan) in the producer threads."""
    exe = cbuild.compile_program(
        f"ring_stress_{sanitizer.split(',')[0]}", sources=cbuild.STRESS_SOURCES,
        extra_flags=(f"-fsanitize={sanitizer}", "-fno-omit-frame-pointer", "-Wno-tsan"))
    path, v, _ = make_ring(disk_size=4 << 20, capacity=1 << 15, overflow_wait_ns=50_000)
    image = tmp_path / "image"
    with open(image, "wb") as f:
        f.truncate(4 << 20)
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 exitcode=66",
               ASAN_OPTIONS="halt_on_error=1 exitcode=66", UBSAN_OPTIONS="halt_on_error=1 exitcode=66")
    proc, _ = _run_with_consumer([str(exe), "--ring", str(path), "--image", str(image), "--threads", "4",
                                  "--records", "2000", "--max-size", "8192", "--zero-pct", "10", "--report-json"],
                                 path, v, bytearray(4 << 20), env=env)
    assert json.loads(proc.stdout)["records"] == 2000
