"""XXH3-128 of the chunks of a range of a file: the one hash both ends verify with.

Design note
-----------
The source daemon hashes the source vdisk and the sink hashes the shadow with
this same function, so a mismatch can only mean different bytes, never a
different way of hashing them.  Each chunk's digest is XXH3-128 of its bytes,
big-endian (``xxhash.xxh3_128().digest()``), as ``ChunkHash.xxh3_128`` carries
it on the wire.

Reading: the range is read with ``os.preadv`` into one reused buffer in pieces
of ``read_size`` (1-8 MiB, whatever the chunk size), and each piece is fed to
the hashers of the chunks it covers, so small chunks do not cost a syscall
each and large ones are never held in memory whole.

Holes: a chunk that ``SEEK_DATA`` says lies entirely in a hole reads as zeros;
its digest is the (cached) digest of that many zero bytes and it is not read.
A sparse shadow of a mostly empty disk therefore hashes in time proportional
to its data, not its size.  Files or devices without ``SEEK_DATA`` are read
in full.
"""

from __future__ import annotations

import errno
import functools
import os
import stat

import xxhash

from .errors import InvalidArgument, OutOfRange

MiB = 1 << 20
MIN_READ = 1 * MiB
MAX_READ = 8 * MiB
DEFAULT_READ = 4 * MiB


@functools.lru_cache(maxsize=64)
def zero_digest(length: int) -> bytes:
    """XXH3-128 of ``length`` zero bytes (cached: holes repeat the same few lengths)."""
    h = xxhash.xxh3_128()
    block = bytes(min(length, MAX_READ))
    left = length
    while left:
        n = min(left, len(block))
        h.update(memoryview(block)[:n])
        left -= n
    return h.digest()


def _next_data(fd: int, offset: int, end: int) -> int | None:
    """The first data offset at or after ``offset`` (``end`` if none before it);
    None when the file cannot tell holes from data."""
    try:
        return min(os.lseek(fd, offset, os.SEEK_DATA), end)
    except OSError as e:
        if e.errno == errno.ENXIO:  # no data after offset: the rest is a hole
            return end
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ESPIPE):
            return None
        raise


def hash_ranges(fd: int, offset: int, length: int, chunk_size: int, *,
                read_size: int = DEFAULT_READ) -> list[tuple[int, int, bytes]]:
    """``(offset, length, xxh3_128 digest)`` of each ``chunk_size`` piece of
    ``[offset, offset + length)`` of the open file ``fd``; the last piece may
    be shorter.

    Raises :class:`InvalidArgument` for a non-positive chunk size or a
    negative range and :class:`OutOfRange` when the range runs past the end
    of the file (callers check bounds first; this guards against a file that
    shrank).
    """
    if chunk_size <= 0:
        raise InvalidArgument(f"chunk_size must be positive, got {chunk_size}")
    if offset < 0 or length < 0:
        raise InvalidArgument(f"range [{offset}, +{length}) is negative")
    read_size = max(MIN_READ, min(MAX_READ, read_size))
    end = offset + length
    out: list[tuple[int, int, bytes]] = []
    reader = _Window(fd, min(read_size, max(length, 1)), end)
    sparse_ok = True
    pos = offset
    while pos < end:
        chunk_len = min(chunk_size, end - pos)
        chunk_end = pos + chunk_len
        if sparse_ok:
            data_at = _next_data(fd, pos, chunk_end)
            if data_at is None:
                sparse_ok = False
            elif data_at >= chunk_end:
                out.append((pos, chunk_len, zero_digest(chunk_len)))
                pos = chunk_end
                continue
        h = xxhash.xxh3_128()
        at = pos
        while at < chunk_end:
            piece = reader.view(at, chunk_end)
            h.update(piece)
            at += len(piece)
        out.append((pos, chunk_len, h.digest()))
        pos = chunk_end
    return out


class _Window:
    """A read-ahead window over ``fd``: one reused buffer refilled by preadv."""

    def __init__(self, fd: int, size: int, end: int) -> None:
        self._fd = fd
        self._buf = bytearray(size)
        self._mv = memoryview(self._buf)
        self._end = end  # never read past the range being hashed
        self._start = 0
        self._len = 0

    def view(self, at: int, stop: int) -> memoryview:
        """Bytes from ``at`` (at least one, at most up to ``stop``) out of the window."""
        if not self._start <= at < self._start + self._len:
            want = min(len(self._buf), self._end - at)
            got = os.preadv(self._fd, [self._mv[:want]], at)
            if got == 0:
                size = os.fstat(self._fd).st_size
                raise OutOfRange(f"offset {at} is past the end of the file ({size} bytes)")
            self._start, self._len = at, got
        lo = at - self._start
        return self._mv[lo : min(self._len, stop - self._start)]


def file_xxh3_128(path: str | os.PathLike[str]) -> str:
    """XXH3-128 of a whole file, as hex (what the demo and the sim guest report)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return fd_xxh3_128(fd)
    finally:
        os.close(fd)


def fd_xxh3_128(fd: int) -> str:
    """XXH3-128 of everything an open file holds, as hex.

    Holes of a regular file (``SEEK_DATA``) are hashed as zeros without being
    read, and data is read into one reused buffer: a sparse disk hashes in
    time proportional to its data plus the cost of hashing its zeros."""
    h = xxhash.xxh3_128()
    buf = memoryview(bytearray(DEFAULT_READ))
    pos = 0
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        end = st.st_size
        zeros = _zeros()
        while pos < end:
            data = _next_data(fd, pos, end)
            if data is None:
                break  # holes cannot be told from data here: read the rest below
            while pos < data:
                n = min(len(zeros), data - pos)
                h.update(zeros[:n])
                pos += n
            if pos >= end:
                break
            try:
                hole = min(os.lseek(fd, pos, os.SEEK_HOLE), end)
            except OSError:
                break  # read the rest below
            while pos < hole:
                n = os.preadv(fd, [buf[:min(len(buf), hole - pos)]], pos)
                if n == 0:
                    return h.hexdigest()  # the file shrank: what it holds ends here
                h.update(buf[:n])
                pos += n
    while n := os.preadv(fd, [buf], pos):
        h.update(buf[:n])
        pos += n
    return h.hexdigest()


@functools.cache
def _zeros() -> memoryview:
    return memoryview(bytes(DEFAULT_READ))
