"""Write capture: the shared-memory ring, its producers and its consumer."""

from .consumer import CorruptRecord, Record, RingConsumer
from .producer import RingProducer
from .ring import (
    FLAG_CLOSE,
    FLAG_TRIM,
    FLAG_WRITE,
    FLAG_ZERO,
    Geometry,
    NotARingError,
    OutOfRangeError,
    RingClosedError,
    RingCorruptError,
    RingError,
    RingFrozenError,
    RingGeometryError,
    RingVersionError,
    create_ring,
    remove_ring,
)

__all__ = [
    "FLAG_CLOSE", "FLAG_TRIM", "FLAG_WRITE", "FLAG_ZERO", "CorruptRecord", "Geometry", "NotARingError",
    "OutOfRangeError", "Record", "RingClosedError", "RingConsumer", "RingCorruptError", "RingError",
    "RingFrozenError", "RingGeometryError", "RingProducer", "RingVersionError", "create_ring", "remove_ring",
]
