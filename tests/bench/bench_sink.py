"""Sink apply throughput: in process, and end to end through a real sink process.

* ``sink.apply``: :class:`VdiskApplier` applying 1 MiB LiveRecords frames
  (parse, XXH3-64 verify, pwritev) to a file, no fdatasync.  Baseline: plain
  ``os.pwrite`` of the same payloads at the same offsets, same run.
* ``sink.e2e``: the same frames streamed over loopback gRPC to a sink
  process, until the last ack says everything is durable (group commit,
  acks, protobuf, the event loop).  Baseline: ``sink.apply`` of this run.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from run import result

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: procs, framegen, sinkclient

from framegen import LiveBatch, record  # noqa: E402
from procs import python_module, start_process  # noqa: E402
from sinkclient import channel, replicate  # noqa: E402

from liftshift.iofilter.alloc import tune_malloc  # noqa: E402
from liftshift.sink.apply import VdiskApplier  # noqa: E402
from liftshift.sink.disk import FileDisk  # noqa: E402
from liftshift.v1 import replication_pb2 as pb  # noqa: E402
from liftshift.v1 import replication_pb2_grpc  # noqa: E402

MiB = 1 << 20
DISK = 256 * MiB
FRAME = 1 * MiB
TOTAL = 256 * MiB


class _NoStore:
    def persist(self, vdisk_id: str, durable_seq: int, closed: bool) -> None:
        pass


def _frames(record_size: int, seed: int = 1) -> tuple[list[LiveBatch], list[tuple[int, bytes]]]:
    """TOTAL bytes of WRITE records at random aligned offsets, cut into FRAME-sized frames."""
    rng = random.Random(seed)
    payload = os.urandom(record_size)  # one payload reused: generating random bytes is not what we measure
    per_frame = FRAME // (record_size + 56)
    frames, writes = [], []
    seq = 1
    for _ in range(TOTAL // (per_frame * record_size)):
        recs = []
        for _ in range(per_frame):
            off = rng.randrange(0, DISK // record_size) * record_size
            recs.append(record(seq, off, payload))
            writes.append((off, payload))
            seq += 1
        frames.append(LiveBatch(b"".join(recs), seq - per_frame, seq - 1, per_frame))
    return frames, writes


def _apply_rate(frames: list[LiveBatch], path: Path) -> float:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    os.ftruncate(fd, DISK)
    a = VdiskApplier("bench", FileDisk(fd, DISK), _NoStore())
    nbytes = sum(len(f.data) for f in frames)
    t0 = time.perf_counter()
    for f in frames:
        a.apply_live(f.data, f.first_seq, f.last_seq, f.count)
    dt = time.perf_counter() - t0
    os.close(fd)
    return nbytes / dt / MiB


def _pwrite_rate(writes: list[tuple[int, bytes]], nbytes: int, path: Path) -> float:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    os.ftruncate(fd, DISK)
    t0 = time.perf_counter()
    for off, data in writes:
        os.pwrite(fd, data, off)
    dt = time.perf_counter() - t0
    os.close(fd)
    return nbytes / dt / MiB


async def _e2e_rate(frames: list[LiveBatch], address: str) -> float:
    async with channel(address) as ch:
        stub = replication_pb2_grpc.ReplicationStub(ch)
        await stub.OpenVdisk(pb.OpenVdiskRequest(vdisk_id="bench", size_bytes=DISK, migration_id="bench"))
        nbytes = sum(len(f.data) for f in frames)
        t0 = time.perf_counter()
        acks = await replicate(stub, "bench", [f.frame for f in frames])
        dt = time.perf_counter() - t0
        assert acks[-1].durable_seq == frames[-1].last_seq
        return nbytes / dt / MiB


def run() -> list[dict]:
    tune_malloc()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-sink-", dir="/var/tmp") as tmp:
        base = Path(tmp)
        for record_size in (4096, 65536):
            frames, writes = _frames(record_size)
            payload_bytes = sum(len(d) for _, d in writes)
            base_rate = _pwrite_rate(writes, payload_bytes, base / "raw")
            rate = _apply_rate(frames, base / "shadow")
            rows.append(result(f"sink.apply {record_size // 1024}KiB records", "throughput", rate, "MiB/s",
                               "os.pwrite of the payloads", base_rate))
            cfg = base / f"sink{record_size}.toml"
            cfg.write_text(f'data_dir = "{base}/data{record_size}"\nlisten = "127.0.0.1:0"\nlog_level = "warning"\n'
                           "insecure = true\n")
            port_file = base / f"port{record_size}"
            proc = start_process(python_module("liftshift.sink.main", "--config", cfg, "--port-file", port_file),
                                 port_file)
            try:
                e2e = asyncio.run(_e2e_rate(frames, proc.address))
            finally:
                proc.stop()
            rows.append(result(f"sink.e2e {record_size // 1024}KiB records", "throughput", e2e, "MiB/s",
                               "sink.apply in process", rate))
    return rows
