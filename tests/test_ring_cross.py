"""The C producer and the Python consumer agree on every record.

``ring_stress`` (4 threads, each owning a partition of the disk) writes a
reference image and publishes the same writes through the C library into a
small ring that wraps thousands of times; this process consumes concurrently,
checks that sequences are contiguous with no gap or duplicate, that every
payload checksum is valid, and replays the records onto a second image whose
XXH3-128 must equal the reference's.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from cbuild import stress_binary
from tooling import file_digest

from liftshift.iofilter import FLAG_CLOSE, FLAG_TRIM, FLAG_WRITE, FLAG_ZERO, RingConsumer, create_ring

DISK = 64 << 20


def replay_while_producing(ring: Path, image: Path, proc: subprocess.Popen) -> tuple[list[int], int]:
    """Consume until CLOSE, applying records to ``image``; return (sequences, overflow-resynced)."""
    seqs: list[int] = []
    fd = os.open(image, os.O_RDWR)
    try:
        with RingConsumer(ring) as c:
            while c.closed_seq is None:
                batch = c.read_batch(max_bytes=4 << 20)
                if batch is None:
                    assert proc.poll() in (None, 0), f"producer died: {proc.returncode}"
                    c.wait(0.5)
                    continue
                assert not batch.corrupt, batch.corrupt[:3]
                for rec in batch.records():
                    seqs.append(rec.seq)
                    if rec.flags & FLAG_WRITE:
                        os.pwrite(fd, rec.payload, rec.offset)
                    elif rec.flags & (FLAG_ZERO | FLAG_TRIM):
                        os.pwrite(fd, bytes(rec.length), rec.offset)
                    else:
                        assert rec.flags == FLAG_CLOSE
                c.release(batch.end)
            dirty = c.take_dirty()
    finally:
        os.close(fd)
    return seqs, len(dirty)


def test_c_producer_python_consumer_agree(shm_dir: Path) -> None:
    stress = stress_binary()
    ring, reference, shadow = shm_dir / "d.ring", shm_dir / "ref.img", shm_dir / "shadow.img"
    create_ring(ring, DISK, capacity=1 << 20, max_record=64 << 10, overflow_wait_ns=30_000_000_000)
    for img in (reference, shadow):
        with open(img, "wb") as f:
            f.truncate(DISK)
    records = int(os.environ.get("LIFTSHIFT_CROSS_RECORDS", "1000000"))
    proc = subprocess.Popen(
        [str(stress), "--ring", str(ring), "--image", str(reference), "--threads", "4", "--records", str(records),
         "--min-size", "512", "--max-size", "4096", "--zero-pct", "2", "--seed", "7"],
        stdout=subprocess.PIPE, text=True)
    try:
        seqs, resynced = replay_while_producing(ring, shadow, proc)
    finally:
        out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0
    report = json.loads(out.strip().splitlines()[-1])
    assert report["overflows"] == 0 and resynced == 0  # a 30 s overflow wait never expires here
    # Contiguous from 1, no gaps, no duplicates, CLOSE last with the final sequence.
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) == report["records"] + 1 == report["final_seq"]
    assert report["records"] >= records
    with RingConsumer(ring) as c:
        counters = c.counters()
    assert counters["reserve"] // counters["release"] == 1 and counters["release"] > 100 * (1 << 20)  # wrapped
    assert file_digest(shadow) == file_digest(reference)
