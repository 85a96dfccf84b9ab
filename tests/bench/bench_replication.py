"""Replication end to end: background copy, sparse copy, live records, memory.

Real daemon and sink processes on loopback (:class:`tests/e2e.Pair`).  Every
image, shadow and baseline target lives on tmpfs (/dev/shm): storage speed
drops out, fdatasync is cheap, and what is compared is the software; both
sides pay the same page-allocation cost of writing a fresh sparse target,
each timed copy starting after the same pause (``repl_support.settle_pages``:
on a VM, memory freed a moment ago is much cheaper to fill again).

* ``repl.background``: a 2 GiB random image copied to a fresh sink, timed
  from the daemon's spawn until ``background_done == total`` (counted only
  on the sink's durable acks; it fdatasyncs per group commit) and the vdisk
  has converged.  Baseline: ``nbdcopy --flush`` of the same image into
  ``nbdkit file`` serving a fresh sparse file on a loopback TCP port, timed
  from nbdcopy's spawn (nbdkit, like the sink, is already listening).  The
  two alternate ROUNDS times; medians are reported, with CPU seconds per GiB
  of each side's processes, and as context how much of our time was the
  daemon starting (spawn to the first durable chunk: a Python process
  importing gRPC; a daemon serving migrations is already running).
* ``repl.sparse``: a 16 GiB image holding 512 MiB of random data in 4 MiB
  extents, against a dense 512 MiB image, alternating ROUNDS times (medians).
  ``repl.rss``: peak RSS (VmHWM) of the daemon and the sink at the end of
  each 16 GiB run (the largest is reported).
* ``repl.live``: once the background copy of a 1 GiB disk full of data is
  done (the usual state while live writes are shipped: the shadow's blocks
  already exist and each write overwrites one), ring_stress (C, 1 thread,
  4 KiB writes, ``--image -``) writes
  into a 64 MiB ring whose producer waits up to 10 s for space, so nothing
  overflows (overflows are reported anyway): once as fast as it can, then
  paced with ``--rate`` at 50,000 and 20,000 writes/s.  Rate: records durable
  at the sink / seconds from the producer's spawn.  Lag: the daemon's samples,
  one per durable live frame, from the commit of the frame's oldest record to
  the sink's durable ack (``lag_p50_seconds`` / ``lag_p99_seconds`` of the
  Control status), so a record's own lag is at most its frame's sample.
  Context row: the same maximum rate on a 1 GiB disk holding only 64 MiB of
  data, whose shadow is sparse, so most live writes allocate a page there
  (see ``repl_support.settle_pages`` for what that costs on a VM).

Rows whose measurement has a target carry ``[target ...: met]`` or
``[target ...: TARGET MISSED]`` in their name.  The load average is printed
first: the daemon, the sink and the producer share the machine's CPUs, so
anything else running skews every number here.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from run import result

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: e2e, procs, tooling

from e2e import Pair  # noqa: E402
from repl_support import (  # noqa: E402
    GiB,
    MiB,
    NbdBaseline,
    copy_range,
    cpu_seconds,
    fill_random,
    peak_rss_mib,
    settle_pages,
)
from tooling import file_digest  # noqa: E402

from liftshift.iofilter import create_ring  # noqa: E402
from liftshift.v1 import control_pb2 as cpb  # noqa: E402
from liftshift.v1 import control_pb2_grpc  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
STRESS = REPO / "build" / "bin" / "ring_stress"
RING = 64 * MiB
DENSE = 2 * GiB
SPARSE = 16 * GiB
EXTENT = 4 * MiB
SPARSE_DATA = 512 * MiB
LIVE_DISK = 1 * GiB
LIVE_SPARSE_DATA = 64 * MiB  # the sparse live disk's data (context row)
ROUNDS = 3
MAX_RATE_RECORDS = 400_000
PACED = ((50_000, 250_000), (20_000, 100_000))  # (writes/s, records): 5 s each
OVERFLOW_WAIT_NS = 10_000_000_000
POLL_S = 0.02
WINDOW = 100_000  # the daemon's lag window (frames)

Status = cpb.VdiskReplication


def _mark(name: str, ok: bool, target: str) -> str:
    return f"{name} [target {target}: {'met' if ok else 'TARGET MISSED'}]"


def _converged(v: Status) -> bool:
    return (v.background_done_bytes == v.background_total_bytes
            and v.state in (cpb.REPLICATION_STATE_CONVERGED, cpb.REPLICATION_STATE_CLOSED))


class _Run:
    """A sink and a daemon replicating ``source`` (one Pair), with a Control
    channel kept open for polling (a channel per poll would cost the daemon
    a connection each time)."""

    def __init__(self, root: Path, size: int, source: Path, overflow_wait_ns: int | None = None) -> None:
        self.stops: list[Callable[[], object]] = []
        self.pair = Pair(root, size, self.stops.append, ring_capacity=RING)
        self.pair.source = source
        extra = {} if overflow_wait_ns is None else {"overflow_wait_ns": overflow_wait_ns}
        create_ring(self.pair.ring, size, capacity=RING, **extra)
        self.channel: grpc.Channel | None = None
        self.sink_cpu0 = 0.0

    def start(self) -> float:
        """Start the sink, then the daemon; return the time the daemon was spawned."""
        sink = self.pair.start_sink()
        self.sink_cpu0 = cpu_seconds(sink.proc.pid)
        t0 = time.perf_counter()
        daemon = self.pair.start_daemon()
        self.channel = grpc.insecure_channel(daemon.address)
        self.stub = control_pb2_grpc.ControlStub(self.channel)
        return t0

    def status(self) -> Status:
        (v,) = self.stub.ListReplications(cpb.ListReplicationsRequest(), timeout=10).vdisks
        return v

    def wait(self, pred: Callable[[Status], bool], what: str, timeout: float = 300) -> Status:
        deadline = time.monotonic() + timeout
        v = None
        while time.monotonic() < deadline:
            v = self.status()
            if pred(v):
                return v
            time.sleep(POLL_S)
        log = self.pair.daemon.log()[-3000:] if self.pair.daemon else ""
        raise RuntimeError(f"timed out waiting for {what}; last status: {v}\n{log}")

    def cpu(self) -> float:
        """CPU seconds of the daemon, plus the sink's since :meth:`start`."""
        assert self.pair.daemon and self.pair.sink
        return cpu_seconds(self.pair.daemon.proc.pid) + cpu_seconds(self.pair.sink.proc.pid) - self.sink_cpu0

    def peak_rss(self) -> tuple[float, float]:
        assert self.pair.daemon and self.pair.sink
        return peak_rss_mib(self.pair.daemon.proc.pid), peak_rss_mib(self.pair.sink.proc.pid)

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
        for stop in reversed(self.stops):
            stop()


def _copy_once(root: Path, size: int, source: Path) -> tuple[float, float, Status, tuple[float, float], Path]:
    """One background copy to a fresh sink: (seconds, CPU seconds, final status, peak RSS, shadow).

    The time runs from the daemon's spawn, its start-up included; how much of
    it that was (until the first chunk is durable) is kept in ``STARTUP``."""
    r = _Run(root, size, source)
    try:
        t0 = r.start()
        r.wait(lambda v: v.background_done_bytes > 0, "first chunk durable")
        STARTUP.append(time.perf_counter() - t0)
        st = r.wait(_converged, "background copy durable")
        secs = time.perf_counter() - t0
        cpu, rss = r.cpu(), r.peak_rss()
    finally:
        r.close()
    return secs, cpu, st, rss, r.pair.shadow


STARTUP: list[float] = []  # seconds from a daemon's spawn to its first durable chunk, per copy


def _dense(tmp: Path, src: Path, nbd: NbdBaseline) -> list[dict]:
    want = file_digest(src)
    ours: list[tuple[float, float]] = []
    theirs: list[tuple[float, float]] = []
    first = len(STARTUP)
    for i in range(ROUNDS):
        settle_pages()
        secs, cpu, _st, _rss, shadow = _copy_once(tmp / f"dense-{i}", DENSE, src)
        if file_digest(shadow) != want:
            raise RuntimeError("the 2 GiB shadow differs from its source")
        shutil.rmtree(tmp / f"dense-{i}")
        ours.append((secs, cpu))
        line = f"   dense 2 GiB round {i + 1}: liftshift {DENSE / secs / 1e6:.0f} MB/s ({cpu:.1f} CPU s)"
        if not nbd.missing:
            target = tmp / "nbd-target.img"
            settle_pages()
            nsecs, ncpu = nbd.copy(src, DENSE, target)
            if file_digest(target) != want:
                raise RuntimeError("the nbdkit target differs from its source")
            target.unlink()
            theirs.append((nsecs, ncpu))
            line += f", nbdcopy {DENSE / nsecs / 1e6:.0f} MB/s ({ncpu:.1f} CPU s)"
        print(line, flush=True)
    mbps = DENSE / statistics.median(s for s, _ in ours) / 1e6
    cpu_gib = statistics.median(c for _, c in ours) / (DENSE / GiB)
    name = f"repl.background 2 GiB random -> sink, tmpfs (median of {ROUNDS})"
    if nbd.missing:
        print(f"   SKIPPED the nbdcopy baseline: {', '.join(nbd.missing)} not installed", file=sys.stderr, flush=True)
        return [result(f"{name} (baseline SKIPPED: {', '.join(nbd.missing)} not installed)", "throughput", mbps,
                       "MB/s"),
                result(f"{name}: CPU of daemon+sink", "cpu", cpu_gib, "CPU s/GiB")]
    base = DENSE / statistics.median(s for s, _ in theirs) / 1e6
    base_cpu = statistics.median(c for _, c in theirs) / (DENSE / GiB)
    startup = statistics.median(STARTUP[first:])
    return [result(_mark(name, mbps / base >= 0.8, "ratio >= 0.8"), "throughput", mbps, "MB/s",
                   f"{nbd.label} (median of {ROUNDS})", base),
            result(f"{name}: CPU of daemon+sink", "cpu", cpu_gib, "CPU s/GiB", "CPU of nbdcopy+nbdkit", base_cpu),
            result(f"{name}: of which daemon start-up, spawn to first durable chunk (context)", "time", startup,
                   "s")]


def _check_extents(src: Path, shadow: Path, offsets: list[int]) -> None:
    sfd, dfd = os.open(src, os.O_RDONLY), os.open(shadow, os.O_RDONLY)
    try:
        for off in offsets:
            if os.pread(sfd, EXTENT, off) != os.pread(dfd, EXTENT, off):
                raise RuntimeError(f"the 16 GiB shadow differs from its source at {off}")
    finally:
        os.close(sfd)
        os.close(dfd)


def _sparse(tmp: Path, sparse: Path, slots: list[int], small: Path) -> list[dict]:
    small_hash = file_digest(small)
    big_s: list[float] = []
    small_s: list[float] = []
    rss_d: list[float] = []
    rss_s: list[float] = []
    for i in range(ROUNDS):
        settle_pages()
        secs, _cpu, st, (rd, rs), shadow = _copy_once(tmp / f"sparse-{i}", SPARSE, sparse)
        _check_extents(sparse, shadow, [s * EXTENT for s in slots])
        allocated = os.stat(shadow).st_blocks * 512
        shutil.rmtree(tmp / f"sparse-{i}")
        big_s.append(secs)
        rss_d.append(rd)
        rss_s.append(rs)
        settle_pages()
        dsecs, _c, _st, _rss, dshadow = _copy_once(tmp / f"small-{i}", SPARSE_DATA, small)
        if file_digest(dshadow) != small_hash:
            raise RuntimeError("the 512 MiB shadow differs from its source")
        shutil.rmtree(tmp / f"small-{i}")
        small_s.append(dsecs)
        print(f"   sparse round {i + 1}: 16 GiB sparse {secs:.2f} s (sent {st.chunk_bytes_sent / MiB:.0f} MiB, shadow "
              f"allocates {allocated / MiB:.0f} MiB; VmHWM daemon {rd:.0f} MiB, sink {rs:.0f} MiB), "
              f"dense 512 MiB {dsecs:.2f} s", flush=True)
    t_sparse, t_dense = statistics.median(big_s), statistics.median(small_s)
    d, s = max(rss_d), max(rss_s)
    name = f"repl.sparse 16 GiB with 512 MiB data in 4 MiB extents, tmpfs (median of {ROUNDS})"
    return [result(_mark(name, t_sparse / t_dense <= 1.5, "ratio <= 1.5"), "time", t_sparse, "s",
                   f"dense 512 MiB copy (median of {ROUNDS})", t_dense),
            result(_mark("repl.rss daemon, 16 GiB sparse run (max of rounds)", d <= 200, "<= 200 MiB"),
                   "VmHWM", d, "MiB"),
            result(_mark("repl.rss sink, 16 GiB sparse run (max of rounds)", s <= 200, "<= 200 MiB"),
                   "VmHWM", s, "MiB")]


def _live(root: Path, source: Path, records: int, rate: int | None) -> tuple[dict, Status, float]:
    """Background-copy a small disk, then run ring_stress into its ring until
    CLOSE is durable; return (ring_stress's JSON, final status, seconds)."""
    r = _Run(root, LIVE_DISK, source, overflow_wait_ns=OVERFLOW_WAIT_NS)
    try:
        r.start()
        r.wait(_converged, "background copy of the live disk")
        args = [str(STRESS), "--ring", str(r.pair.ring), "--image", "-", "--threads", "1", "--records", str(records),
                "--fixed-size", "4096", "--report-json", *(["--rate", str(rate)] if rate else [])]
        t0 = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True, timeout=600)  # no status polling meanwhile
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        out = json.loads(proc.stdout)
        st = r.wait(lambda v: v.durable_seq >= out["final_seq"], "every live record durable")
        secs = time.perf_counter() - t0
    finally:
        r.close()
    shutil.rmtree(root)
    return out, st, secs


def _live_max(tmp: Path, source: Path, label: str) -> tuple[float, Status]:
    """The maximum-rate run: (records/s, final status)."""
    out, st, secs = _live(tmp / f"live-max-{label}", source, MAX_RATE_RECORDS, None)
    rate = MAX_RATE_RECORDS / secs
    print(f"   live max ({label} shadow): {MAX_RATE_RECORDS} records durable in {secs:.2f} s; producer "
          f"{out['records_per_s']:.0f} calls/s, {out['overflows']} overflowed; {st.lag_samples} lag samples",
          flush=True)
    return rate, st


def _live_rows(tmp: Path, source: Path, sparse_source: Path) -> list[dict]:
    rows = []
    rate, st = _live_max(tmp, source, "full")
    p50, p99 = st.lag_p50_seconds, st.lag_p99_seconds
    name = "repl.live max rate, C producer 1 thread 4 KiB"
    rows += [result(_mark(name, rate >= 100_000 and p99 < 1.0, ">= 100k rec/s with lag < 1 s"), "replicated",
                    rate, "rec/s"),
             result(f"{name}: lag p50", "lag", p50 * 1e3, "ms"),
             result(f"{name}: lag p99", "lag", p99 * 1e3, "ms"),
             result(f"{name}: ring overflows", "overflows", st.ring_overflows, "calls")]
    srate, sst = _live_max(tmp, sparse_source, "sparse")
    rows += [result(f"{name}, sparse shadow (64 MiB of 1 GiB copied; context, no target)", "replicated", srate,
                    "rec/s"),
             result(f"{name}, sparse shadow: lag p99", "lag", sst.lag_p99_seconds * 1e3, "ms")]
    for pace, records in PACED:
        out, st, secs = _live(tmp / f"live-{pace}", source, records, pace)
        p50, p99 = st.lag_p50_seconds, st.lag_p99_seconds
        window = f" (most recent {WINDOW} frames)" if st.lag_samples >= WINDOW else ""
        print(f"   live paced {pace}/s: producer {out['records_per_s']:.0f} calls/s, {records} records durable in "
              f"{secs:.2f} s, {out['overflows']} overflowed; {st.lag_samples} lag samples{window}", flush=True)
        name = f"repl.live paced {pace // 1000}k writes/s, 4 KiB" + ("" if pace == 50_000 else " (context, no target)")
        p99_name = f"{name}: lag p99"
        if pace == 50_000:
            p99_name = _mark(p99_name, p99 <= 0.050, "<= 50 ms")
        rows += [result(f"{name}: replicated", "replicated", records / secs, "rec/s"),
                 result(f"{name}: lag p50", "lag", p50 * 1e3, "ms"),
                 result(p99_name, "lag", p99 * 1e3, "ms"),
                 result(f"{name}: ring overflows", "overflows", st.ring_overflows, "calls")]
    return rows


def _print_load(when: str) -> None:
    one, five, _ = os.getloadavg()
    busy = "  (WARNING: the machine is busy; numbers are skewed)" if when == "before" and one > 0.5 else ""
    print(f"   load average {when}: {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs{busy}",
          flush=True)


def run() -> list[dict]:
    if not STRESS.exists():
        raise RuntimeError(f"{STRESS} is missing: run 'make cbuild'")
    t_start = time.perf_counter()
    _print_load("before")
    nbd = NbdBaseline()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-repl-", dir="/dev/shm") as d:
        tmp = Path(d)
        # 1. dense 2 GiB vs nbdcopy
        dense = tmp / "dense-2g.img"
        fill_random(dense, DENSE)
        rows += _dense(tmp, dense, nbd)
        # Images for the other parts, cut from the dense one (its data is random).
        small = tmp / "dense-512m.img"
        small.touch()
        copy_range(dense, 0, small, 0, SPARSE_DATA)
        sparse = tmp / "sparse-16g.img"
        with open(sparse, "wb") as f:
            f.truncate(SPARSE)
        slots = sorted(random.Random(7).sample(range(SPARSE // EXTENT), SPARSE_DATA // EXTENT))
        for k, slot in enumerate(slots):
            copy_range(dense, k * EXTENT, sparse, slot * EXTENT, EXTENT)
        live_src = tmp / "live-1g.img"
        live_sparse = tmp / "live-1g-sparse.img"
        for img, data in ((live_src, LIVE_DISK), (live_sparse, LIVE_SPARSE_DATA)):
            with open(img, "wb") as f:
                f.truncate(LIVE_DISK)
            copy_range(dense, 0, img, 0, data)
        dense.unlink()
        # 2. sparse 16 GiB vs dense 512 MiB, and peak RSS
        rows += _sparse(tmp, sparse, slots, small)
        sparse.unlink()
        small.unlink()
        # 3. live records
        rows += _live_rows(tmp, live_src, live_sparse)
    print(f"   bench_replication took {time.perf_counter() - t_start:.0f} s", flush=True)
    return rows
