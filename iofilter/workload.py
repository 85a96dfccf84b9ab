"""A guest stand-in: writes a vdisk image and publishes every write to its ring.

Each operation is what a filter does for a guest write: admit it (throttle,
freeze), apply it to the image, then publish it.  The mix is random offsets
and sizes (sector aligned), overwrites of a small hot set, ZERO and TRIM.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass

from .producer import RingProducer

SECTOR = 512


@dataclass
class WorkloadSpec:
    """Shape of the writes."""

    min_size: int = 512
    max_size: int = 1 << 20
    hot_fraction: float = 0.3  # share of writes that go to the hot set
    hot_blocks: int = 16  # distinct hot offsets
    zero_fraction: float = 0.03
    trim_fraction: float = 0.03
    rate_ops: float = 0.0  # operations per second; 0 = as fast as possible


@dataclass
class WorkloadResult:
    """What was done."""

    ops: int = 0
    bytes: int = 0
    overflowed: int = 0
    seconds: float = 0.0


def punch_or_zero(fd: int, offset: int, length: int) -> None:
    """Make a range of the image read as zeros."""
    os.pwrite(fd, bytes(length), offset)


class Workload:
    """Random guest writes against ``image_fd`` through ``producer``."""

    def __init__(self, producer: RingProducer, image_fd: int, spec: WorkloadSpec | None = None,
                 seed: int = 0) -> None:
        self.producer = producer
        self.fd = image_fd
        self.spec = spec or WorkloadSpec()
        self.rng = random.Random(seed)
        self.size = producer.geometry.disk_size
        self.hot = [self._aligned(self.rng.randrange(self.size)) for _ in range(self.spec.hot_blocks)]
        self._overflowed = 0

    def _aligned(self, off: int) -> int:
        return off // SECTOR * SECTOR

    def _length(self, offset: int) -> int:
        s = self.spec
        n = self.rng.randint(s.min_size // SECTOR, max(s.min_size, s.max_size) // SECTOR) * SECTOR
        return max(SECTOR, min(n, self.size - offset))

    def step(self) -> int:
        """Do one operation; returns the bytes it covered."""
        r = self.rng.random()
        s = self.spec
        offset = self.rng.choice(self.hot) if r < s.hot_fraction else self._aligned(self.rng.randrange(self.size))
        length = self._length(offset)
        p = self.producer
        p.admit(offset, length)
        kind = self.rng.random()
        if kind < s.zero_fraction:
            punch_or_zero(self.fd, offset, length)
            ok = p.publish_zeroes(offset, length)
        elif kind < s.zero_fraction + s.trim_fraction:
            punch_or_zero(self.fd, offset, length)
            ok = p.publish_trim(offset, length)
        else:
            data = self.rng.randbytes(length)
            os.pwrite(self.fd, data, offset)
            ok = p.publish_write(offset, data)
        self._overflowed += 0 if ok else 1
        return length

    def run(self, *, ops: int | None = None, seconds: float | None = None) -> WorkloadResult:
        """Run for ``ops`` operations or ``seconds``, whichever comes first."""
        res = WorkloadResult()
        t0 = time.monotonic()
        interval = 1 / self.spec.rate_ops if self.spec.rate_ops else 0.0
        next_at = t0
        while (ops is None or res.ops < ops) and (seconds is None or time.monotonic() - t0 < seconds):
            res.bytes += self.step()
            res.ops += 1
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        res.overflowed = self._overflowed
        res.seconds = time.monotonic() - t0
        return res
