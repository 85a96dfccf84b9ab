"""glibc allocator tuning for processes that move large buffers.

Ring batches, gRPC frames and background chunks are 256 KiB to 8 MiB
bytes objects.  With glibc's defaults each one above the (dynamic) mmap
threshold is a fresh mmap whose pages fault in one by one, and memory freed
at the top of the heap is trimmed back to the kernel only to fault in again
for the next batch.  Raising both thresholds keeps those buffers in the heap
and reuses their pages, which is worth several times the throughput.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

_done = False


def tune_malloc(mmap_threshold: int = 64 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Set glibc's mmap and trim thresholds once per process; False if not glibc."""
    global _done
    if _done:
        return True
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
    _done = ok
    return ok


def freeze_gc() -> None:
    """Move every object alive now (modules, servers, configuration) out of the
    cyclic collector's reach.

    A full collection walks every tracked object; in a daemon that imported
    gRPC, protobuf and its own modules that is a pause of milliseconds to tens
    of milliseconds in the middle of the replication stream, which shows up
    in the lag tail.  Objects made later are collected as usual.
    """
    import gc

    gc.collect()
    gc.freeze()
