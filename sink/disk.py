"""Block access to a shadow image: write, punch, sync, read.

Design note
-----------
:class:`VdiskApplier <liftshift.sink.apply.VdiskApplier>` decides *what* to
write; a :class:`Disk` does the writing.  Two implementations share the
interface: :class:`FileDisk` over an open flat file (what the daemon uses)
and :class:`MemoryDisk` over a bytearray (what the in-memory tests use), so
the apply rules are tested without touching a filesystem.

Writes use ``pwritev`` so that consecutive records that are contiguous on the
disk go down in one system call, looping on short writes.  Zeroing uses
``fallocate(PUNCH_HOLE | KEEP_SIZE)`` through libc (Python's ``os`` has no
punch-hole), which both zeroes the range and returns its blocks, keeping the
shadow as sparse as the source; where the filesystem cannot punch
(EOPNOTSUPP) the range is written with zeros instead, once and for all.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Callable, Sequence
from typing import Protocol

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
ZERO_BLOCK = 1 << 20
IOV_MAX = 1024

Buffer = bytes | bytearray | memoryview
Fallocate = Callable[[int, int, int, int], None]


class Disk(Protocol):
    """What the applier needs from a shadow image."""

    size: int

    def write(self, offset: int, parts: Sequence[Buffer]) -> None:
        """Write ``parts`` back to back starting at ``offset``."""

    def zero(self, offset: int, length: int) -> None:
        """Make ``[offset, offset + length)`` read as zeros."""

    def datasync(self) -> None:
        """Make every completed write durable."""

    def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset``."""


def _libc_fallocate() -> Fallocate | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        fn = libc.fallocate
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int

    def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
        # ctypes releases the GIL for the call, like os.pwrite does.
        if fn(fd, mode, offset, length) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return fallocate


_FALLOCATE = _libc_fallocate()


class FileDisk:
    """A :class:`Disk` over an open file descriptor (owned: :meth:`close` closes it)."""

    def __init__(self, fd: int, size: int, *, fallocate: Fallocate | None = _FALLOCATE) -> None:
        self.fd = fd
        self.size = size
        self._fallocate = fallocate
        self.punch_supported = fallocate is not None

    def write(self, offset: int, parts: Sequence[Buffer]) -> None:
        """``pwritev`` the parts at ``offset``, in IOV_MAX groups, retrying short writes."""
        if len(parts) == 1:
            # The common case (one record, one chunk): skip the iovec bookkeeping.
            n = os.pwrite(self.fd, parts[0], offset)
            if n == len(parts[0]):
                return
            parts = [memoryview(parts[0]).cast("B")[n:]] if n > 0 else parts
            offset += max(n, 0)
        for start in range(0, len(parts), IOV_MAX):
            group = [memoryview(p).cast("B") for p in parts[start : start + IOV_MAX]]
            total = sum(len(p) for p in group)
            done = 0
            while done < total:
                n = os.pwritev(self.fd, group, offset + done)
                if n <= 0:
                    raise OSError(errno.EIO, f"pwritev wrote {n} bytes at {offset + done}")
                done += n
                if done < total:
                    group = _advance(group, n)
            offset += total

    def zero(self, offset: int, length: int) -> None:
        """Punch a hole (the range reads as zeros); write zeros where punching is unsupported."""
        if self.punch_supported and self._fallocate is not None:
            try:
                self._fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
                return
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                self.punch_supported = False
        zeros = memoryview(bytes(min(length, ZERO_BLOCK)))
        end = offset + length
        while offset < end:
            n = min(len(zeros), end - offset)
            self.write(offset, [zeros[:n]])
            offset += n

    def datasync(self) -> None:
        """``fdatasync`` the file."""
        os.fdatasync(self.fd)

    def read(self, offset: int, length: int) -> bytes:
        """``pread`` exactly ``length`` bytes (short only at end of file)."""
        out = bytearray()
        while len(out) < length:
            piece = os.pread(self.fd, length - len(out), offset + len(out))
            if not piece:
                break
            out += piece
        return bytes(out)

    def close(self) -> None:
        """Close the file descriptor."""
        os.close(self.fd)


def _advance(parts: list[memoryview], n: int) -> list[memoryview]:
    """Drop the first ``n`` bytes of an iovec list (after a short write)."""
    out = []
    for p in parts:
        if n >= len(p):
            n -= len(p)
            continue
        out.append(p[n:])
        n = 0
    return out


class MemoryDisk:
    """A :class:`Disk` in a bytearray, with counters the tests look at."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.image = bytearray(size)
        self.syncs = 0
        self.writes = 0

    def write(self, offset: int, parts: Sequence[Buffer]) -> None:
        """Copy the parts into the image."""
        for p in parts:
            mv = memoryview(p).cast("B")
            self.image[offset : offset + len(mv)] = mv
            offset += len(mv)
        self.writes += 1

    def zero(self, offset: int, length: int) -> None:
        """Zero the range in the image."""
        self.image[offset : offset + length] = bytes(length)
        self.writes += 1

    def datasync(self) -> None:
        """Count the sync (memory is as durable as it gets)."""
        self.syncs += 1

    def read(self, offset: int, length: int) -> bytes:
        """A copy of the range."""
        return bytes(self.image[offset : offset + length])
