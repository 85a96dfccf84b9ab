"""The C ring producer (``libliftshift_ring.so``) behind :class:`RingProducer`'s interface.

Design note
-----------
liftshift-nbd publishes every guest write; in Python that costs ~15-20 µs
of CPU per 4 KiB write (a dozen header words through ``struct``, the
record header, the payload slice, the bell), about as much as serving the
write itself.  ``iofilter/liftshift_ring.c`` is the same protocol in C (the
VAIO filter's producer, tested against the Python consumer), so
:class:`CRingProducer` calls it through ctypes: one call to admit, one to
publish, the GIL released inside (ctypes does that), bytes passed without a
copy.  It has :class:`~.producer.RingProducer`'s methods and raises the
same typed errors with the same words.

:func:`open_producer` picks it when the library loads and
``LIFTSHIFT_RING_PRODUCER`` is not ``python``; otherwise the Python
producer, which is correct but slower.  The library is looked up at
``$LIFTSHIFT_RING_LIB`` if set, else ``build/lib`` of the source tree
(``make cbuild``).  Only one producer *process* may publish into a ring at a
time whichever is used: the C producer takes the ring's spin lock, the
Python one does not.

The same library checks records on the consumer side: :func:`scanner`
gives :class:`~.consumer.RingConsumer` ``ls_ring_scan``, which accepts the
plain records of a batch (sequence and XXH3-64) in one call instead of a
Python loop over them (``read_batch`` then takes 1.0 instead of 1.6-1.9 µs
per 4 KiB record, most of it the copy out of shared memory); anything
unusual is left to the Python rules.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .producer import AdmitAndPublish, RingProducer
from .ring import (
    Mapped,
    NotARingError,
    OutOfRangeError,
    RingClosedError,
    RingError,
    RingFrozenError,
    RingGeometryError,
    RingVersionError,
)

LS_OVERFLOWED = 1
_ERRORS: dict[int, type[RingError]] = {
    -10001: NotARingError, -10002: RingVersionError, -10003: RingGeometryError, -10004: RingFrozenError,
    -10005: RingClosedError, -10006: OutOfRangeError,
}
_DEFAULT = Path(__file__).resolve().parent.parent / "build" / "lib" / "libliftshift_ring.so"


class _Scan(ctypes.Structure):
    _fields_ = [("count", ctypes.c_uint64), ("payload", ctypes.c_uint64), ("last_seq", ctypes.c_uint64),
                ("last_time_ns", ctypes.c_uint64), ("last_flags", ctypes.c_uint32), ("reserved", ctypes.c_uint32)]


class NbdBatch(ctypes.Structure):
    """``ls_nbd_batch`` (liftshift_nbd.h): what one ``ls_nbd_serve_writes`` call did."""

    _fields_ = [("consumed", ctypes.c_uint64), ("out", ctypes.c_uint64), ("served", ctypes.c_uint64),
                ("handle", ctypes.c_uint64), ("offset", ctypes.c_uint64), ("length", ctypes.c_uint64),
                ("stage", ctypes.c_int32), ("code", ctypes.c_int32)]


NBD_ADMIT, NBD_PWRITE, NBD_PUBLISH = 1, 2, 3  # NbdBatch.stage: where a consumed request failed

Scan = tuple[int, int, int, tuple[int, int, int]]  # bytes accepted, count, payload, (last seq, flags, time)

_lib: Any = None
_problem: str | None = None


def _load() -> Any:
    global _lib, _problem
    if _lib is not None or _problem is not None:
        return _lib
    path = os.environ.get("LIFTSHIFT_RING_LIB") or str(_DEFAULT)
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        _problem = f"cannot load {path}: {e} (run `make cbuild`)"
        return None
    vp, u64, i = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int
    lib.ls_ring_open.argtypes = [ctypes.c_char_p, ctypes.POINTER(vp)]
    lib.ls_ring_open.restype = i
    lib.ls_ring_detach.argtypes = [vp]
    lib.ls_ring_detach.restype = None
    lib.ls_ring_announce.argtypes = [vp, u64]
    lib.ls_ring_announce.restype = None
    lib.ls_ring_admit.argtypes = [vp, u64, u64]
    lib.ls_ring_admit.restype = i
    lib.ls_ring_publish_write.argtypes = [vp, u64, ctypes.c_char_p, u64]
    lib.ls_ring_publish_write.restype = i
    lib.ls_ring_publish_zeroes.argtypes = [vp, u64, u64]
    lib.ls_ring_publish_zeroes.restype = i
    lib.ls_ring_publish_trim.argtypes = [vp, u64, u64]
    lib.ls_ring_publish_trim.restype = i
    lib.ls_ring_close.argtypes = [vp, ctypes.POINTER(u64)]
    lib.ls_ring_close.restype = i
    lib.ls_ring_scan.argtypes = [ctypes.c_char_p, u64, u64, i, ctypes.POINTER(_Scan)]
    lib.ls_ring_scan.restype = u64
    lib.ls_nbd_serve_writes.argtypes = [vp, i, u64, u64, vp, u64, vp, u64, ctypes.POINTER(NbdBatch)]
    lib.ls_nbd_serve_writes.restype = u64
    lib.ls_ring_strerror.argtypes = [i]
    lib.ls_ring_strerror.restype = ctypes.c_char_p
    _lib = lib
    return lib


def available() -> bool:
    """Whether the C producer can be used here."""
    return _load() is not None


def problem() -> str | None:
    """Why the C producer cannot be used (None when it can)."""
    _load()
    return _problem


def scanner() -> Callable[[bytes, int | None], Scan] | None:
    """``scan(blob, expect)``: the plain records at the start of ``blob``
    checked in C (``ls_ring_scan``, see liftshift_ring.h), or None when the
    library is not available or ``LIFTSHIFT_RING_CONSUMER=python``."""
    if os.environ.get("LIFTSHIFT_RING_CONSUMER", "").lower() == "python":
        return None
    lib = _load()
    if lib is None:
        return None
    fn = lib.ls_ring_scan
    out = _Scan()
    ref = ctypes.byref(out)

    def scan(blob: bytes, expect: int | None) -> Scan:
        used = fn(blob, len(blob), expect or 0, expect is not None, ref)
        return used, out.count, out.payload, (out.last_seq, out.last_flags, out.last_time_ns)

    return scan


def plain_writes() -> Any:
    """``ls_nbd_serve_writes`` (liftshift_nbd.h) for liftshift-nbd, or None when
    the library is not available or ``LIFTSHIFT_NBD_WRITES=python``."""
    if os.environ.get("LIFTSHIFT_NBD_WRITES", "").lower() == "python":
        return None
    lib = _load()
    return None if lib is None else lib.ls_nbd_serve_writes


class CRingProducer(AdmitAndPublish):
    """:class:`~.producer.RingProducer`'s interface over ``liftshift_ring.c`` (see the module note)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        lib = _load()
        if lib is None:
            raise RingError(path, _problem or "the C ring library is not available")
        # Geometry and words through the Python mapping: the same checks and
        # messages as the Python producer (typed errors for a bad header).
        self._m = Mapped(path, writable=False)
        self.path = self._m.path
        self.geometry = self._m.geometry
        handle = ctypes.c_void_p()
        rc = lib.ls_ring_open(os.fsencode(self.path), ctypes.byref(handle))
        if rc != 0:
            self._m.close()
            if rc < 0 and -rc < 10000:
                raise OSError(-rc, f"{os.strerror(-rc)}: {self.path}")
            raise self._error(rc)
        self._lib = lib
        self._h = handle.value
        self._admit = lib.ls_ring_admit
        self._write = lib.ls_ring_publish_write

    @property
    def handle(self) -> int | None:
        """The library's ``ls_ring *`` (None once detached), for ``ls_nbd_serve_writes``."""
        return self._h

    def error(self, rc: int, what: str = "") -> RingError:
        """The typed error of the library's code ``rc`` about ``what``."""
        return self._error(rc, what)

    def _error(self, rc: int, what: str = "") -> RingError:
        words = _lib.ls_ring_strerror(rc).decode()
        if rc == -10006 and what:
            words = f"{what} is outside the {self.geometry.disk_size}-byte disk"
        elif rc == -10005:
            words = "ring is closed; the source VM has stopped"
        elif rc == -10004:
            words = "writes are frozen: the source VM is being stopped for cutover"
        cls = _ERRORS.get(rc, RingError)
        return cls(self.path, words)

    def _published(self, rc: int, offset: int, length: int) -> bool:
        if rc == 0:
            return True
        if rc == LS_OVERFLOWED:
            return False
        if rc == -errno.EINVAL:
            raise ValueError("invalid arguments to the ring library")
        raise self._error(rc, f"write [{offset}, +{length})")

    # -- RingProducer's interface ---------------------------------------------

    def admit(self, offset: int, length: int) -> None:
        """Admit a guest write before it goes to the vdisk (waits for a throttle slot)."""
        if offset < 0 or length <= 0:
            raise OutOfRangeError(self.path, f"write [{offset}, +{length}) is outside the "
                                             f"{self.geometry.disk_size}-byte disk")
        rc = self._admit(self._h, offset, length)
        if rc:
            raise self._error(rc, f"write [{offset}, +{length})")

    def publish_write(self, offset: int, data: bytes | bytearray | memoryview) -> bool:
        """Publish an admitted WRITE; False when it overflowed into the dirty bitmap."""
        if not isinstance(data, bytes):
            data = bytes(data)
        if offset < 0 or not data:
            raise OutOfRangeError(self.path, f"write [{offset}, +{len(data)}) is outside the "
                                             f"{self.geometry.disk_size}-byte disk")
        return self._published(self._write(self._h, offset, data, len(data)), offset, len(data))

    def publish_zeroes(self, offset: int, length: int) -> bool:
        """Publish an admitted ZERO: the range reads back as zeros."""
        self._check(offset, length)
        return self._published(self._lib.ls_ring_publish_zeroes(self._h, offset, length), offset, length)

    def publish_trim(self, offset: int, length: int) -> bool:
        """Publish an admitted TRIM: the range is discarded."""
        self._check(offset, length)
        return self._published(self._lib.ls_ring_publish_trim(self._h, offset, length), offset, length)

    def close(self) -> int:
        """Append the CLOSE record and return its sequence, the ring's final one."""
        seq = ctypes.c_uint64()
        rc = self._lib.ls_ring_close(self._h, ctypes.byref(seq))
        if rc == -10005:
            raise RingClosedError(self.path, "ring is already closed")
        if rc:
            raise self._error(rc)
        return int(seq.value)

    def counters(self) -> dict[str, int]:
        """Current producer counters and control words."""
        return self._m.counters()

    def announce(self, ident: int | None = None) -> None:
        """Say in the header's ``producer`` word that every later write is published here."""
        self._lib.ls_ring_announce(self._h, ident or os.getpid())

    def detach(self) -> None:
        """Unmap the ring (clearing ``producer`` if this handle announced itself)."""
        if self._h:
            self._lib.ls_ring_detach(self._h)
            self._h = None
        self._m.close()

    def __enter__(self) -> CRingProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length <= 0:
            raise OutOfRangeError(self.path, f"write [{offset}, +{length}) is outside the "
                                             f"{self.geometry.disk_size}-byte disk")


def open_producer(path: str | os.PathLike[str]) -> RingProducer | CRingProducer:
    """The C producer when it can be used (see the module note), else the Python one."""
    if os.environ.get("LIFTSHIFT_RING_PRODUCER", "").lower() != "python" and available():
        return CRingProducer(path)
    return RingProducer(path)

