"""The C fast path for LiveRecords frames (``libliftshift_apply.so``), through ctypes.

Design note
-----------
:mod:`liftshift.sink.records` is the reference: it defines what a valid
frame is and words every refusal.  ``sink/liftshift_apply.c`` implements the
same checks in one pass over the frame, and a writer that ``pwritev``\\ s the
fresh WRITE records in coalesced runs, both without the GIL.  The applier
uses it like this:

* :func:`check` returns a :class:`FrameScan` (first / last sequence, count,
  the first CLOSE that is not last) for a frame the C code accepts, and None
  when it refuses one; the caller then runs :func:`~.records.parse_records`,
  which raises the typed error, so messages and error classes come from one
  place.  Tests hold the two to the same verdict on valid, mutated and
  hand-built bad frames.
* :func:`write` applies a checked frame's WRITE records to a file descriptor
  and hands back every other fresh record (ZERO, TRIM, CLOSE, VOID) for the
  applier to handle in Python.

When the library is not built (``make cbuild``) or cannot be loaded,
:data:`AVAILABLE` is False, :func:`problem` says why, and the applier uses
the Python path, which is correct but several times slower.  The library is
looked up at ``$LIFTSHIFT_APPLY_LIB`` if set, else ``build/lib`` of the
source tree.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import NamedTuple

from .records import FrameScan

ABI = 2
CHECK_OK = 0

_DEFAULT = Path(__file__).resolve().parent.parent / "build" / "lib" / "libliftshift_apply.so"
_PyBUF_SIMPLE = 0


class _Summary(ctypes.Structure):
    _fields_ = [("first_seq", ctypes.c_uint64), ("last_seq", ctypes.c_uint64), ("count", ctypes.c_uint64),
                ("inner_close_seq", ctypes.c_uint64), ("error_at", ctypes.c_uint64)]


class _PyBuffer(ctypes.Structure):
    """CPython's Py_buffer (stable ABI since 3.11)."""

    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None


class _Pinned:
    """The address of a read-only buffer (bytes, or a memoryview of one), held
    for the duration of a ``with`` block: ctypes passes only writable buffers
    and bytes objects, and a frame's payload is a view into received bytes."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._view = _PyBuffer()
        if _get_buffer(data, ctypes.byref(self._view), _PyBUF_SIMPLE) != 0:
            raise TypeError("not a contiguous buffer")  # pragma: no cover - PyObject_GetBuffer raised already
        self.address = self._view.buf or 0
        self.length = self._view.len

    def __enter__(self) -> _Pinned:
        return self

    def __exit__(self, *exc: object) -> None:
        _release_buffer(ctypes.byref(self._view))


def _load() -> tuple[ctypes.CDLL | None, str]:
    path = os.environ.get("LIFTSHIFT_APPLY_LIB") or str(_DEFAULT)
    try:
        lib = ctypes.CDLL(path)  # CDLL: calls release the GIL
    except OSError as e:
        return None, f"cannot load {path}: {e} (build it with `make cbuild`)"
    try:
        abi = lib.ls_apply_abi()
    except AttributeError:
        return None, f"{path} is not the liftshift apply library"
    if abi != ABI:
        return None, f"{path} has ABI {abi}, this sink needs {ABI} (rebuild with `make cbuild`)"
    lib.ls_frame_check.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.POINTER(_Summary)]
    lib.ls_frame_check.restype = ctypes.c_int
    u64p = ctypes.POINTER(ctypes.c_uint64)
    lib.ls_frame_write.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64, u64p, u64p, u64p]
    lib.ls_frame_write.restype = ctypes.c_int
    lib.ls_frame_apply.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64,
                                   ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64, ctypes.POINTER(_Summary), u64p,
                                   u64p, u64p, ctypes.POINTER(ctypes.c_int)]
    lib.ls_frame_apply.restype = ctypes.c_int
    return lib, ""


_LIB, _PROBLEM = _load()
AVAILABLE = _LIB is not None


def problem() -> str:
    """Why the C path is unavailable ("" when it is available)."""
    return _PROBLEM


def check_code(data: bytes | memoryview, disk_size: int) -> tuple[int, FrameScan, int]:
    """(verdict, scan, byte offset of the refused record): the raw C answer, for tests."""
    assert _LIB is not None, _PROBLEM
    s = _Summary()
    with _Pinned(data) as p:
        rc = _LIB.ls_frame_check(p.address, p.length, disk_size, ctypes.byref(s))
    return rc, FrameScan(s.first_seq, s.last_seq, s.count, s.inner_close_seq), s.error_at


def check(data: bytes | memoryview, disk_size: int) -> FrameScan | None:
    """The scan of a frame the C checks accept; None when they refuse it
    (parse it with :func:`~.records.parse_records` for the error)."""
    rc, scan, _at = check_code(data, disk_size)
    return scan if rc == CHECK_OK else None


class WriteStop(NamedTuple):
    """Where :func:`write` stopped: ``pos`` is the end of the frame or a fresh
    non-WRITE record; ``applied_seq`` the last record written; ``errno`` 0 or
    the error of the write that failed."""

    pos: int
    applied_seq: int
    written: int
    errno: int


def write(fd: int, data: bytes | memoryview, after_seq: int, pos: int, applied_seq: int) -> WriteStop:
    """Write the fresh WRITE records of a checked frame from byte ``pos``."""
    assert _LIB is not None, _PROBLEM
    c_pos, c_applied, c_written = ctypes.c_uint64(pos), ctypes.c_uint64(applied_seq), ctypes.c_uint64(0)
    with _Pinned(data) as p:
        rc = _LIB.ls_frame_write(fd, p.address, p.length, after_seq, ctypes.byref(c_pos), ctypes.byref(c_applied),
                                 ctypes.byref(c_written))
    return WriteStop(c_pos.value, c_applied.value, c_written.value, -rc if rc < 0 else 0)


def check_and_write(fd: int, data: bytes | memoryview, disk_size: int, first_seq: int, last_seq: int, count: int,
                    after_seq: int) -> WriteStop | None:
    """:func:`check`, the summary held to the frame header (and no CLOSE
    before the last record), then :func:`write` from the start, in one call
    (one GIL round trip per frame for a worker thread).  None, with nothing
    written, when anything is off: the caller takes the reference path,
    which raises the right error."""
    assert _LIB is not None, _PROBLEM
    s = _Summary()
    c_pos, c_applied, c_written = ctypes.c_uint64(0), ctypes.c_uint64(after_seq), ctypes.c_uint64(0)
    c_rc = ctypes.c_int(0)
    with _Pinned(data) as p:
        rc = _LIB.ls_frame_apply(fd, p.address, p.length, disk_size, first_seq, last_seq, count, after_seq,
                                 ctypes.byref(s), ctypes.byref(c_pos), ctypes.byref(c_applied), ctypes.byref(c_written),
                                 ctypes.byref(c_rc))
    if rc != CHECK_OK:
        return None
    return WriteStop(c_pos.value, c_applied.value, c_written.value, -c_rc.value if c_rc.value < 0 else 0)
