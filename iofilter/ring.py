"""The shared-memory write ring: binary layout, creation, validation.

Design note
-----------
One ring file per virtual disk (normally under /dev/shm) carries every guest
write from the IO filter (the *producers*) to the source daemon (the
*consumer*).  This module is the one place the layout is defined; the C
header ``iofilter/liftshift_ring.h`` mirrors it and ``tests/`` check that the
two agree field by field.

File layout (all integers little-endian)::

    0      header page (HEADER_SIZE bytes), 64-byte lines, see HEADER below
    4096   dirty bitmap 0 \\ two bitmaps of ``bitmap_bytes`` each; one bit per
           dirty bitmap 1 /  ``chunk_size`` bytes of the disk
    data_offset (page aligned)
           data area of ``capacity`` bytes (a power of two) holding records

Positions (``reserve``, ``commit``, ``release``) are u64 byte counters that
only grow; ``pos & (capacity - 1)`` is the place in the data area.  Each sits
on its own 64-byte line so producers and the consumer do not share lines:

* ``reserve``  – end of the space handed to producers (producers only);
* ``commit``   – every record below it is complete (producers only);
* ``release``  – the consumer is done with everything below it: only the
  daemon advances it, after the sink has made the records durable.  A
  reopened consumer resumes reading at ``release``.

Records (``RECORD_HEADER`` bytes + payload padded to 8)::

    0  word     u64  bits 0-31 total record size, bit 63 BUSY, bit 62 PAD
    8  seq      u64  strictly increasing, contiguous per ring
    16 offset   u64  byte offset in the vdisk
    24 length   u64  bytes covered on the vdisk
    32 flags    u32  WRITE | ZERO | TRIM | CLOSE
    36 paylen   u32  payload bytes (== length for WRITE, 0 otherwise)
    40 xxh3     u64  XXH3-64 of the payload (of b"" when there is none)
    48 time_ns  u64  CLOCK_MONOTONIC when the producer committed the record
    56 payload

A record never straddles the end of the data area: when it does not fit in
the tail, the producer first fills the tail with a PAD record (only its word
is meaningful) and starts the record at the beginning of the area.

Producer protocol (BPF-ringbuf style, several threads or processes at once)
--------------------------------------------------------------------------
1. *Throttle*: if ``throttle_bps`` or ``throttle_iops`` are set, take a slot
   on the shared virtual clock ``throttle_next_ns`` (GCRA: slot = max(next,
   now); next = slot + cost) and sleep until the slot; add the sleep to
   ``throttled_ns``.
2. *Freeze*: if ``freeze`` is set the write fails (the source VM is being
   stopped); ``frozen_rejects`` counts it.
3. *Reserve* under the spin lock ``lock`` (C: CAS 0->1 acquire, store 0
   release): if ``reserve + pad + size - release > capacity`` the ring is
   full; otherwise write the PAD word (committed at once), write the record
   word with BUSY set, take ``seq = next_seq++`` and advance ``reserve``.
4. *Fill* the header fields and the payload, then store the word without BUSY
   (release order).
5. *Commit*: under ``lock``, walk from ``commit`` over records whose BUSY bit
   is clear (stopping at ``reserve`` or a BUSY one) and store the new
   ``commit`` (release).  Whichever producer finishes last publishes the
   others' records too, so nobody waits for a slow neighbour.
6. *Doorbell*: full fence, then if ``consumer_waiting`` is set write one byte
   to the FIFO ``<ring>.bell`` (non-blocking; a full FIFO is fine).

A producer publishes a write only after the write has reached the vdisk, so
that whatever the daemon later reads from the vdisk for a dirty range is at
least as new as the record or bit that sent it there.

Admission and publication are separate steps: a filter *admits* a guest
write (range, closed, freeze, throttle) before it goes to the vdisk and
*publishes* it after; publication ignores ``freeze``, so a write admitted
before a freeze is never lost.  The CLOSE record, appended once the VM has
stopped and its IO has completed, is the barrier after which nothing more is
published.  ``writes``/``bytes`` count calls (a split or overflowed call
once), ``overflows``/``overflow_bytes`` count calls that overflowed and the
bytes that went to the bitmap.

Announcement: a filter that attaches to a disk on its own (a vSphere IO
filter put there by a storage policy, rather than started by the daemon)
stores a nonzero id (e.g. its process id) in ``producer`` once every later
write of the disk is published into the ring, and 0 when it detaches; CLOSE
leaves it.  The daemon creates the ring and waits for the announcement
before it copies anything, so nothing written after the copy starts escapes.

Overflow: when reserve finds the ring full the producer retries for at most
``overflow_wait_ns`` (a control word) and then, instead of blocking the guest,
marks the chunks of the write in the *active* dirty bitmap (chunk ``c`` is bit
``c % 64`` of u64 word ``c // 64``) and counts
``overflows``/``overflow_bytes``.  Marking: ``e = dirty_epoch``; atomically OR
the bits into bitmap ``e & 1``; full fence; if ``dirty_epoch != e`` mark again
in the new active bitmap.  The daemon harvests with an epoch swap: store
``dirty_epoch = e + 1``, full fence, then read and zero bitmap ``e & 1`` with
plain word stores.  A bit a slow producer sets in the harvested bitmap is
therefore either seen by the harvest or marked again in the new bitmap (the
producer sees the new epoch); a stale bit left behind only causes an extra
resync later.  The consumer side never read-modify-writes a shared word.

Consumer protocol
-----------------
Read ``commit`` (acquire), parse records from the private read cursor up to
it, verify each payload's XXH3-64 (a mismatch is reported as a
:class:`CorruptRecord` whose range goes to the consumer's own dirty set,
never as data) and copy payloads out.  ``release`` is advanced explicitly.
To wait, set ``consumer_waiting = 1``, fence, re-read ``commit`` and only then
sleep on the doorbell FIFO, with a timeout as a backstop.

The Python side reads and writes aligned 8-byte words only and relies on
x86-64 TSO.  A Python "full fence" is an uncontended ``threading.Lock``
acquire/release, which executes a locked instruction.  The Python producer
does not take the C spin lock: it must be the only producer process of its
ring (several threads of it are serialised by a local lock).

Known limits: a producer that dies while holding the spin lock wedges the
ring (the producers of a ring live in one VM process, so only when the VM
itself died); two producers racing on overlapping ranges may publish in the
opposite order to the one the vdisk saw (the guest gets no ordering
guarantee for concurrent overlapping writes either) — the XXH3-128 check at
cutover finds and repairs such a chunk.
"""

from __future__ import annotations

import os
import stat
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

MAGIC = 0x474E495254464C4C  # b"LLFTRING" little-endian
VERSION = 1
HEADER_SIZE = 4096
LINE = 64

# Header: name -> (byte offset, struct code).  Lines are 64 bytes apart.
HEADER: dict[str, tuple[int, str]] = {
    # line 0: identity and geometry, written once at creation
    "magic": (0, "Q"),
    "version": (8, "I"),
    "header_size": (12, "I"),
    "capacity": (16, "Q"),
    "disk_size": (24, "Q"),
    "chunk_size": (32, "I"),
    "max_record": (36, "I"),
    "bitmap_offset": (40, "Q"),
    "bitmap_bytes": (48, "Q"),
    "data_offset": (56, "Q"),
    # line 1: producer reservation state
    "reserve": (64, "Q"),
    "next_seq": (72, "Q"),
    "lock": (80, "Q"),
    "throttle_next_ns": (88, "Q"),
    # line 2
    "commit": (128, "Q"),
    # line 3: written by the consumer only
    "release": (192, "Q"),
    # line 4: producer counters
    "writes": (256, "Q"),
    "bytes": (264, "Q"),
    "overflows": (272, "Q"),
    "overflow_bytes": (280, "Q"),
    "throttled_ns": (288, "Q"),
    "frozen_rejects": (296, "Q"),
    "closed": (304, "Q"),
    "producer": (312, "Q"),
    # line 5: control words written by the daemon
    "throttle_bps": (320, "Q"),
    "throttle_iops": (328, "Q"),
    "freeze": (336, "Q"),
    "overflow_wait_ns": (344, "Q"),
    "dirty_epoch": (352, "Q"),
    # line 6: doorbell handshake (consumer writes, producers read)
    "consumer_waiting": (384, "Q"),
}

# Record header
RECORD_HEADER = 56
REC = struct.Struct("<QQQQIIQQ")  # word seq offset length flags paylen xxh3 time_ns
WORD_BUSY = 1 << 63
WORD_PAD = 1 << 62
WORD_LEN_MASK = 0xFFFFFFFF

FLAG_WRITE = 1
FLAG_ZERO = 2
FLAG_TRIM = 4
FLAG_CLOSE = 8
# Never written into a ring: the daemon sets it, in its private copy of a
# batch, on a record whose payload failed its checksum, so the sink keeps the
# sequence contiguous without applying it (the range is resynced instead).
FLAG_VOID = 16
FLAG_NAMES = {FLAG_WRITE: "WRITE", FLAG_ZERO: "ZERO", FLAG_TRIM: "TRIM", FLAG_CLOSE: "CLOSE", FLAG_VOID: "VOID"}

DEFAULT_CAPACITY = 64 << 20
DEFAULT_CHUNK = 64 << 10
DEFAULT_OVERFLOW_WAIT_NS = 2_000_000  # 2 ms: the guest waits at most this before we overflow
MIN_CAPACITY = 1 << 12
MAX_CAPACITY = 1 << 40

_Q = struct.Struct("<Q")


class RingError(Exception):
    """Base of every ring error; ``path`` names the ring file."""

    def __init__(self, path: str | os.PathLike[str] | None, problem: str) -> None:
        self.path = str(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class NotARingError(RingError):
    """The file is not a liftshift ring (bad magic, too short)."""


class RingVersionError(RingError):
    """The ring was made by an incompatible layout version."""


class RingGeometryError(RingError):
    """The header describes an impossible geometry."""


class RingFrozenError(RingError):
    """Writes are frozen: the source VM is being stopped for cutover."""


class RingClosedError(RingError):
    """The ring carries a CLOSE record; no more writes are accepted."""


class OutOfRangeError(RingError):
    """A write falls outside the disk."""


class RingCorruptError(RingError):
    """The consumer found a record that breaks the layout (not a checksum)."""


def align8(n: int) -> int:
    """Round ``n`` up to a multiple of 8."""
    return (n + 7) & ~7


def record_size(paylen: int) -> int:
    """Bytes a record with ``paylen`` payload bytes occupies in the data area."""
    return RECORD_HEADER + align8(paylen)


@dataclass(frozen=True)
class Geometry:
    """The fixed part of a ring header, validated."""

    capacity: int
    disk_size: int
    chunk_size: int
    max_record: int
    bitmap_offset: int
    bitmap_bytes: int
    data_offset: int

    @property
    def file_size(self) -> int:
        return self.data_offset + self.capacity

    @property
    def chunks(self) -> int:
        return (self.disk_size + self.chunk_size - 1) // self.chunk_size

    @classmethod
    def plan(cls, disk_size: int, capacity: int, chunk_size: int, max_record: int | None) -> Geometry:
        """Lay out a new ring; raises :class:`RingGeometryError` on nonsense."""
        chunks = (disk_size + chunk_size - 1) // chunk_size
        bitmap_bytes = ((chunks + 511) // 512) * 64  # whole 64-byte lines
        data_offset = (HEADER_SIZE + 2 * bitmap_bytes + 4095) & ~4095
        if max_record is None:
            max_record = min(capacity // 4, 1 << 20)
        g = cls(capacity, disk_size, chunk_size, max_record, HEADER_SIZE, bitmap_bytes, data_offset)
        g.check(None)
        return g

    def check(self, path: str | os.PathLike[str] | None) -> None:
        """Raise :class:`RingGeometryError` naming the first impossible field."""

        def bad(why: str) -> RingGeometryError:
            return RingGeometryError(path, f"impossible geometry: {why}")

        c = self.capacity
        if c < MIN_CAPACITY or c > MAX_CAPACITY or c & (c - 1):
            raise bad(f"capacity {c} is not a power of two in [{MIN_CAPACITY}, {MAX_CAPACITY}]")
        if self.disk_size <= 0 or self.disk_size % 512:
            raise bad(f"disk size {self.disk_size} is not a positive multiple of 512")
        cs = self.chunk_size
        if cs < 4096 or cs & (cs - 1):
            raise bad(f"chunk size {cs} is not a power of two >= 4096")
        if not 0 < self.max_record <= (c - RECORD_HEADER * 2) // 2 or self.max_record % 8:
            raise bad(f"max record {self.max_record} must be a multiple of 8 and at most half the capacity")
        if self.bitmap_offset != HEADER_SIZE:
            raise bad(f"bitmap offset {self.bitmap_offset} != {HEADER_SIZE}")
        if self.bitmap_bytes * 8 < self.chunks or self.bitmap_bytes % LINE:
            raise bad(f"bitmap of {self.bitmap_bytes} bytes cannot hold {self.chunks} chunks")
        if self.data_offset < self.bitmap_offset + 2 * self.bitmap_bytes or self.data_offset % 4096:
            raise bad(f"data offset {self.data_offset} overlaps the bitmaps or is not page aligned")


def create_ring(
    path: str | os.PathLike[str],
    disk_size: int,
    *,
    capacity: int = DEFAULT_CAPACITY,
    chunk_size: int = DEFAULT_CHUNK,
    max_record: int | None = None,
    overflow_wait_ns: int = DEFAULT_OVERFLOW_WAIT_NS,
    exist_ok: bool = False,
) -> Geometry:
    """Create the ring file and its doorbell FIFO; return the geometry.

    The file is written under a temporary name and renamed into place, so a
    crash never leaves a half-initialised ring behind.  With ``exist_ok`` an
    existing valid ring of the same disk size is kept as it is (its positions
    and sequence carry on).
    """
    path = Path(path)
    g = Geometry.plan(disk_size, capacity, chunk_size, max_record)
    if path.exists():
        if not exist_ok:
            raise FileExistsError(f"{path}: ring already exists")
        with open(path, "rb") as f:
            old = read_geometry(path, f.read(HEADER_SIZE), os.fstat(f.fileno()).st_size)
        if old.disk_size != disk_size:
            raise RingGeometryError(path, f"existing ring is for a {old.disk_size}-byte disk, not {disk_size}")
        _ensure_bell(path)
        return old
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    hdr = bytearray(HEADER_SIZE)
    for name, value in (
        ("magic", MAGIC),
        ("version", VERSION),
        ("header_size", HEADER_SIZE),
        ("capacity", g.capacity),
        ("disk_size", g.disk_size),
        ("chunk_size", g.chunk_size),
        ("max_record", g.max_record),
        ("bitmap_offset", g.bitmap_offset),
        ("bitmap_bytes", g.bitmap_bytes),
        ("data_offset", g.data_offset),
        ("next_seq", 1),
        ("overflow_wait_ns", overflow_wait_ns),
    ):
        off, code = HEADER[name]
        struct.pack_into("<" + code, hdr, off, value)
    with open(tmp, "wb") as f:
        f.write(hdr)
        f.truncate(g.file_size)  # sparse: bitmaps and data start zeroed
    os.replace(tmp, path)
    _ensure_bell(path)
    return g


def bell_path(path: str | os.PathLike[str]) -> str:
    """The doorbell FIFO that belongs to ring ``path``."""
    return os.fspath(path) + ".bell"


def _ensure_bell(path: Path) -> None:
    bp = bell_path(path)
    try:
        os.mkfifo(bp, 0o600)
    except FileExistsError:
        if not stat.S_ISFIFO(os.stat(bp).st_mode):
            raise RingError(bp, "exists and is not a FIFO") from None


def remove_ring(path: str | os.PathLike[str]) -> None:
    """Delete a ring and its doorbell (missing files are fine)."""
    for p in (os.fspath(path), bell_path(path)):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def read_geometry(path: str | os.PathLike[str], header: bytes, file_size: int) -> Geometry:
    """Validate a header read from ``path``; raise the typed error that fits."""
    if len(header) < HEADER_SIZE or file_size < HEADER_SIZE:
        raise NotARingError(path, f"file is {file_size} bytes, shorter than a ring header")
    (magic,) = _Q.unpack_from(header, 0)
    if magic != MAGIC:
        raise NotARingError(path, f"bad magic {magic:#018x}, this is not a liftshift ring")
    version, hsize = struct.unpack_from("<II", header, 8)
    if version != VERSION:
        raise RingVersionError(path, f"ring layout version {version}, this build reads version {VERSION}")
    if hsize != HEADER_SIZE:
        raise RingGeometryError(path, f"impossible geometry: header size {hsize} != {HEADER_SIZE}")
    fields = {n: struct.unpack_from("<" + HEADER[n][1], header, HEADER[n][0])[0] for n in (
        "capacity", "disk_size", "chunk_size", "max_record", "bitmap_offset", "bitmap_bytes", "data_offset")}
    g = Geometry(**fields)
    g.check(path)
    if file_size < g.file_size:
        raise RingGeometryError(path, f"impossible geometry: file is {file_size} bytes, layout needs {g.file_size}")
    return g


class Mapped:
    """An open, validated ring mapping with word accessors (shared by both sides)."""

    def __init__(self, path: str | os.PathLike[str], *, writable: bool = True) -> None:
        import mmap

        self.path = os.fspath(path)
        fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            header = os.pread(fd, HEADER_SIZE, 0)
            self.geometry = read_geometry(self.path, header, size)
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            # MAP_POPULATE maps every page now, so the hot path never takes a
            # page fault the first time it touches a part of the ring.
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            self.mm = mmap.mmap(fd, self.geometry.file_size, flags, prot)
        finally:
            os.close(fd)
        self.buf = memoryview(self.mm)
        g = self.geometry
        self.capacity = g.capacity
        self.mask = g.capacity - 1
        self.data_offset = g.data_offset
        self._fence_lock = threading.Lock()

    def get(self, name: str) -> int:
        """Read one header word (aligned 8-byte load)."""
        off, code = HEADER[name]
        return int(struct.unpack_from("<" + code, self.mm, off)[0])

    def set(self, name: str, value: int) -> None:
        """Write one header word (aligned 8-byte store)."""
        off, code = HEADER[name]
        struct.pack_into("<" + code, self.mm, off, value)

    def fence(self) -> None:
        """Full memory barrier: an uncontended lock executes a locked instruction."""
        self._fence_lock.acquire()
        self._fence_lock.release()

    def bitmap_word_offset(self, which: int, word: int) -> int:
        return self.geometry.bitmap_offset + which * self.geometry.bitmap_bytes + word * 8

    def counters(self) -> dict[str, int]:
        """Producer counters and control words, for status and statistics."""
        names = ("reserve", "commit", "release", "next_seq", "writes", "bytes", "overflows", "overflow_bytes",
                 "throttled_ns", "frozen_rejects", "closed", "producer", "throttle_bps", "throttle_iops", "freeze",
                 "overflow_wait_ns", "dirty_epoch", "consumer_waiting")
        return {n: self.get(n) for n in names}

    def close(self) -> None:
        self.buf.release()
        self.mm.close()
