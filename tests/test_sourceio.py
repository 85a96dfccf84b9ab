"""daemon/sourceio.py: which source reads may run on the event loop, on the
file systems this machine has (ext4 for the work tree, tmpfs for /dev/shm)."""

from __future__ import annotations

import os
import random
from pathlib import Path

from tooling import missing

from liftshift.daemon import sourceio

MiB = 1 << 20


def _make(path: Path) -> bytes:
    data = random.Random(3).randbytes(4 * MiB)
    path.write_bytes(data)
    return data


def test_tmpfs_is_read_in_memory(shm_dir: Path) -> None:
    path = shm_dir / "src.img"
    data = _make(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert sourceio.inline_mode(fd) == "memory"
        assert sourceio.read_inline(fd, "memory", MiB, MiB) == data[MiB:2 * MiB]
    finally:
        os.close(fd)


def _disk_dir() -> Path:
    """A directory on a disk file system that honours RWF_NOWAIT (the work tree's)."""
    here = Path(__file__).resolve().parent
    probe = here / f".sourceio-probe-{os.getpid()}"
    probe.write_bytes(b"x")
    try:
        fd = os.open(probe, os.O_RDONLY)
        try:
            mode = sourceio.inline_mode(fd)
        finally:
            os.close(fd)
    finally:
        probe.unlink()
    if mode != "nowait":
        missing(f"the work tree's file system does not honour RWF_NOWAIT ({mode})")
    return here


def test_a_cached_range_is_read_inline_an_evicted_one_is_left_to_a_thread() -> None:
    path = _disk_dir() / f".sourceio-{os.getpid()}.img"
    try:
        data = _make(path)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            assert sourceio.inline_mode(fd) == "nowait"
            os.pread(fd, 4 * MiB, 0)  # in the page cache now
            assert sourceio.read_inline(fd, "nowait", 2 * MiB, MiB) == data[2 * MiB:3 * MiB]
            # Past the end: a short count is left to the thread, which reports it.
            assert sourceio.read_inline(fd, "nowait", 4 * MiB - 512, MiB) is None
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages: dropped
            assert sourceio.read_inline(fd, "nowait", 2 * MiB, MiB) is None
        finally:
            os.close(fd)
    finally:
        path.unlink(missing_ok=True)


def test_thread_mode_never_reads_inline(shm_dir: Path) -> None:
    path = shm_dir / "src.img"
    _make(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert sourceio.read_inline(fd, "thread", 0, MiB) is None
    finally:
        os.close(fd)
