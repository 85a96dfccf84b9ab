"""Ring throughput and wake-up latency, producer and consumer in two processes.

The consumer is this (Python) process: it verifies every payload's XXH3-64,
copies payloads out, and releases after each batch, as the daemon does.
Baseline: copying the same bytes in the same record-sized pieces with a plain
memory copy in this process, measured in the same run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import result

from liftshift.iofilter import RingConsumer, create_ring, remove_ring
from liftshift.iofilter.alloc import tune_malloc

REPO = Path(__file__).resolve().parents[2]
STRESS = REPO / "build" / "bin" / "ring_stress"
DISK = 1 << 30
CAPACITY = 64 << 20


def _consume(ring: Path, proc: subprocess.Popen) -> tuple[int, int, float]:
    """Read until CLOSE; return (records, payload bytes, seconds from first record)."""
    n = nbytes = 0
    t0 = None
    with RingConsumer(ring) as c:
        while True:
            batch = c.read_batch(max_bytes=4 << 20)
            if batch is None:
                if proc.poll() not in (None, 0):
                    raise RuntimeError(f"producer exited with {proc.returncode}")
                c.wait(0.2)
                continue
            if t0 is None:
                t0 = time.perf_counter()
            if batch.corrupt:
                raise RuntimeError(f"{len(batch.corrupt)} corrupt records")
            n += batch.count
            nbytes += batch.payload_bytes
            c.release(batch.end)
            if c.closed_seq is not None:
                return n - 1, nbytes, time.perf_counter() - t0


def _memcpy_rate(size: int, total: int) -> float:
    """Bytes/s of copying ``total`` bytes in ``size`` pieces (the baseline)."""
    src = bytearray(os.urandom(1 << 20)) * 64
    mv = memoryview(src)
    span = len(src) - size
    t0 = time.perf_counter()
    off = 0
    for _ in range(total // size):
        bytes(mv[off : off + size])
        off = (off + size) if off + size <= span else 0
    return total / (time.perf_counter() - t0)


def _run_one(tmp: Path, kind: str, size: int, records: int) -> tuple[int, int, float]:
    ring = tmp / f"{kind}-{size}.ring"
    create_ring(ring, DISK, capacity=CAPACITY, max_record=max(size, 1 << 20), overflow_wait_ns=10_000_000_000)
    if kind == "C":
        cmd = [str(STRESS), "--ring", str(ring), "--image", "-", "--threads", "1",
               "--records", str(records), "--fixed-size", str(size)]
    else:
        cmd = [sys.executable, str(Path(__file__).with_name("ring_pyproducer.py")), str(ring),
               "--size", str(size), "--records", str(records)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        got = _consume(ring, proc)
    finally:
        proc.wait(timeout=120)
        remove_ring(ring)
    if got[0] != records:
        raise RuntimeError(f"{kind} producer: consumer saw {got[0]} records, expected {records}")
    return got


def _latency(tmp: Path) -> tuple[float, float]:
    """Commit-to-consumer wake-up latency with a sleeping consumer (p50, p99 in ms)."""
    ring = tmp / "lat.ring"
    create_ring(ring, DISK, capacity=CAPACITY)
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("ring_pyproducer.py")), str(ring),
                             "--size", "4096", "--records", "1000", "--interval-us", "2000"])
    lat: list[int] = []
    try:
        with RingConsumer(ring) as c:
            while c.closed_seq is None:
                if not c.wait(5):
                    if proc.poll() is not None:
                        break
                    continue
                now = time.monotonic_ns()
                recs = c.read()
                lat.extend(now - r.time_ns for r in recs[:1])
                c.release(c.read_pos)
    finally:
        proc.wait(timeout=60)
        remove_ring(ring)
    lat.sort()
    return lat[len(lat) // 2] / 1e6, lat[int(len(lat) * 0.99)] / 1e6


def run() -> list[dict]:
    tune_malloc()
    if not STRESS.exists():
        raise RuntimeError(f"{STRESS} is missing: run 'make cbuild'")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ring-", dir="/dev/shm") as d:
        tmp = Path(d)
        for kind in ("C", "Python"):
            for size, records in ((4096, 1_000_000 if kind == "C" else 300_000), (65536, 100_000)):
                n, nbytes, secs = _run_one(tmp, kind, size, records)
                base = _memcpy_rate(size, nbytes)
                label = f"ring {kind} producer -> Python consumer, {size // 1024} KiB"
                rows.append(result(label, "records/s", n / secs, "rec/s"))
                rows.append(result(label, "throughput", nbytes / secs / 1e6, "MB/s",
                                   f"memcpy {size // 1024} KiB pieces", base / 1e6))
        p50, p99 = _latency(tmp)
        rows.append(result("ring wake-up latency (doorbell)", "p50", p50, "ms"))
        rows.append(result("ring wake-up latency (doorbell)", "p99", p99, "ms"))
    return rows
