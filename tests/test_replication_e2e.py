"""Replication end to end: real daemon and sink processes on loopback.

A Python producer plays the guest (random offsets and sizes from 512 B to
1 MiB, overwrites of hot blocks, ZERO and TRIM) while the background copy
runs.  After CLOSE and drain the shadow must equal the source, first by the
daemon's own verification *without any repair*, then by XXH3-128 of the two
files, then by ``qemu-img compare``.  Faults (kill -9 of either daemon, cut
links) at random moments must not change that, nor cost more than 10% of the
disk in re-sent bytes.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
from pathlib import Path

import pytest
from e2e import MiB, Pair
from tcpproxy import TcpProxy
from tooling import file_digest, require_tool

from liftshift.iofilter import RingProducer
from liftshift.iofilter.workload import Workload, WorkloadSpec
from liftshift.v1 import control_pb2 as cpb


def assert_identical(pair: Pair) -> cpb.VerifyVdiskResponse:
    got = pair.verify()
    assert got.identical and got.chunks_mismatched == 0, got
    assert file_digest(pair.source) == file_digest(pair.shadow)
    qemu_img = require_tool("qemu-img")
    out = subprocess.run([qemu_img, "compare", "-f", "raw", "-F", "raw", str(pair.source), str(pair.shadow)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return got


def close_and_wait(pair: Pair, producer: RingProducer) -> cpb.VdiskReplication:
    final = producer.close()
    return pair.wait(lambda v: v.state == cpb.REPLICATION_STATE_CLOSED and v.durable_seq >= final,
                     what=f"CLOSE {final} durable and copy complete")


@pytest.fixture
def pair(shm_dir: Path, request: pytest.FixtureRequest) -> Pair:
    return Pair(shm_dir / "e2e", 128 * MiB, request.addfinalizer)


def test_live_migration_of_a_written_disk_ends_identical(pair: Pair) -> None:
    pair.prepare(data_fraction=0.5)
    pair.start_sink()
    pair.start_daemon()
    fd = pair.open_image()
    with RingProducer(pair.ring) as producer:
        wl = Workload(producer, fd, WorkloadSpec(max_size=1 * MiB), seed=11)
        first = wl.run(ops=400)  # while the background copy runs
        pair.wait(pair.background_done, what="background copy")
        second = wl.run(ops=200)  # live only
        v = close_and_wait(pair, producer)
    os.close(fd)
    published = 600 - first.overflowed - second.overflowed
    assert v.live_records >= published + 1  # every published write, and CLOSE
    assert v.background_done_bytes == v.background_total_bytes
    assert v.resent_bytes == 0  # no fault, nothing sent twice
    got = assert_identical(pair)
    assert got.chunks_compared == pair.size // MiB


def test_overflow_is_resynced(shm_dir: Path, request: pytest.FixtureRequest) -> None:
    # A tiny ring and a guest that does not wait: most writes overflow.
    pair = Pair(shm_dir / "ovf", 32 * MiB, request.addfinalizer, ring_capacity=256 << 10)
    pair.prepare(data_fraction=0.3)
    from liftshift.iofilter import RingConsumer

    with RingConsumer(pair.ring) as c:
        c.set_control(overflow_wait_ns=0)
    pair.start_sink()
    pair.start_daemon()
    fd = pair.open_image()
    with RingProducer(pair.ring) as producer:
        res = Workload(producer, fd, WorkloadSpec(min_size=64 << 10, max_size=1 * MiB), seed=5).run(ops=300)
        v = close_and_wait(pair, producer)
    os.close(fd)
    assert res.overflowed > 10 and v.ring_overflows > 10
    assert_identical(pair)


def _fault_points(rng: random.Random) -> list[float]:
    return sorted(rng.uniform(0.05, 0.9) for _ in range(3))


@pytest.mark.parametrize("victim", ["daemon", "sink", "link"])
def test_faults_resume_without_recopy(shm_dir: Path, request: pytest.FixtureRequest, victim: str) -> None:
    rng = random.Random(hash(victim) & 0xFFFF)
    # Re-sent bytes per fault are bounded by max_inflight (16 MiB) plus the ring (8 MiB).
    pair = Pair(shm_dir / victim, 256 * MiB, request.addfinalizer)
    pair.prepare(data_fraction=0.6, seed=3)
    proxy = None
    pair.start_sink()
    if victim == "link":
        proxy = TcpProxy(pair.sink_port)
        request.addfinalizer(proxy.close)
        pair.via_port = proxy.port
    pair.start_daemon()
    fd = pair.open_image()
    faults = 0

    resent_before: list[int] = []

    def fault() -> None:
        nonlocal faults
        faults += 1
        resent_before.append(pair.status().resent_bytes)
        if victim == "daemon":
            assert pair.daemon is not None
            pair.daemon.kill()
            pair.start_daemon()
        elif victim == "sink":
            assert pair.sink is not None
            pair.sink.kill()
            pair.start_sink()
        else:
            assert proxy is not None
            proxy.cut()

    with RingProducer(pair.ring) as producer:
        wl = Workload(producer, fd, WorkloadSpec(max_size=256 << 10, rate_ops=400), seed=rng.randrange(1 << 30))
        stop = threading.Event()

        def guest() -> None:
            while not stop.is_set():
                wl.run(ops=20)

        t = threading.Thread(target=guest)
        t.start()
        try:
            # Three faults during the background copy, at random fractions of it ...
            for frac in _fault_points(rng):
                pair.wait(lambda v, f=frac: v.background_done_bytes >= f * v.background_total_bytes,
                          what=f"background {frac:.0%}")
                fault()
            pair.wait(pair.background_done, what="background copy")
            # ... and three while only live writes flow.
            for _ in range(3):
                pair.wait(lambda v: v.live_records > 0 and v.connected, what="live shipping")
                threading.Event().wait(rng.uniform(0.1, 0.5))
                fault()
        finally:
            stop.set()
            t.join()
        v = close_and_wait(pair, producer)
    os.close(fd)
    assert faults == 6
    marks = [*resent_before, v.resent_bytes]
    per_fault = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    print(f"{victim}: bytes re-sent after each fault: {per_fault}")
    assert max(per_fault) < 0.10 * pair.size, f"re-sent bytes per fault {per_fault} (disk {pair.size})"
    assert_identical(pair)
