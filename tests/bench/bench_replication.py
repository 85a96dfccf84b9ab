"""Replication end to end: background copy, sparse copy, live records, memory.

Real daemon and sink processes on loopback (:class:`tests/e2e.Pair`).  Every
image, shadow and baseline target lives on tmpfs (/dev/shm): storage speed
drops out, fdatasync is cheap, and what is compared is the software; both
sides pay the same page-allocation cost of writing a fresh sparse target,
each timed copy starting after the same pause (``repl_support.settle_pages``:
on a VM, memory freed a moment ago is much cheaper to fill again).

* ``repl.background``: a 2 GiB random image copied to a fresh sink until
  ``background_done == total`` (counted only on the sink's durable acks; it
  fdatasyncs per group commit) and the vdisk has converged.  The headline
  times the copy on a running daemon: from the first poll that sees a
  durable chunk (the daemon is up and its stream open, as a daemon serving
  migrations is when one starts) to the end, over the bytes made durable in
  between; CPU seconds of daemon + sink over the same window.  Context rows:
  the same copies timed from the daemon's spawn, and how much of that was
  start-up (a Python process importing gRPC, connecting, the first round
  trip).  Baseline: ``nbdcopy --flush`` of the same image into ``nbdkit
  file`` serving a fresh sparse file on a loopback TCP port, timed from
  nbdcopy's spawn (nbdkit, like the sink, is already listening).  Second
  context: ``grpc_ceiling.py``, the least a Python gRPC copy can do (1 MiB
  messages of a bidi stream, XXH3 on both sides, acks, pwrite), to show
  what of the gap to nbdcopy is gRPC's and what is ours.  After one
  untimed warm-up copy (the first copy after the source is written is
  slow, whoever makes it) the three take turns ROUNDS times, each round
  starting with the next of them; medians.
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
from dataclasses import dataclass
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
    free_port,
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


@dataclass
class Copy:
    """One background copy: from the daemon's spawn, and its steady part.

    The steady part runs from the first poll that sees a durable chunk to
    the end: the daemon is up and connected, as a daemon serving migrations
    is before one starts, and what is timed is the copy alone.
    """

    secs: float  # daemon spawn -> everything durable
    cpu: float  # CPU seconds of daemon + sink over ``secs``
    startup: float  # daemon spawn -> first durable chunk seen
    steady_bytes: int  # bytes made durable after that
    steady_secs: float
    steady_cpu: float
    status: Status
    rss: tuple[float, float]
    shadow: Path


def _copy_once(root: Path, size: int, source: Path) -> Copy:
    """One background copy to a fresh sink."""
    r = _Run(root, size, source)
    try:
        t0 = r.start()
        first = r.wait(lambda v: v.background_done_bytes > 0, "first chunk durable")
        t1 = time.perf_counter()
        cpu1 = r.cpu()
        st = r.wait(_converged, "background copy durable")
        t2 = time.perf_counter()
        cpu, rss = r.cpu(), r.peak_rss()
    finally:
        r.close()
    return Copy(t2 - t0, cpu, t1 - t0, size - first.background_done_bytes, t2 - t1, cpu - cpu1, st, rss,
                r.pair.shadow)


def _ceiling(src: Path, target: Path) -> float:
    """Seconds of the bare gRPC copy of ``src`` into a fresh ``target`` (see grpc_ceiling.py)."""
    port = free_port()
    script = str(Path(__file__).with_name("grpc_ceiling.py"))
    server = subprocess.Popen([sys.executable, script, "serve", str(port), str(target)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("the gRPC ceiling receiver did not start")
        out = subprocess.run([sys.executable, script, "send", str(port), str(src)], capture_output=True, text=True,
                             timeout=300, check=True).stdout
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return float(out.strip().splitlines()[-1])


def _dense(tmp: Path, src: Path, nbd: NbdBaseline) -> list[dict]:
    want = file_digest(src)
    ours: list[Copy] = []
    theirs: list[tuple[float, float]] = []
    bare: list[float] = []

    def check(target: Path, what: str) -> None:
        if file_digest(target) != want:
            raise RuntimeError(f"{what} differs from its source")

    def liftshift(i: int) -> str:
        c = _copy_once(tmp / f"dense-{i}", DENSE, src)
        check(c.shadow, "the 2 GiB shadow")
        shutil.rmtree(tmp / f"dense-{i}")
        ours.append(c)
        return (f"liftshift {c.steady_bytes / c.steady_secs / 1e6:.0f} MB/s from the first durable chunk "
                f"({c.steady_cpu:.1f} CPU s), {DENSE / c.secs / 1e6:.0f} MB/s from spawn")

    def ceiling(_i: int) -> str:
        target = tmp / "ceiling-target.img"
        bare.append(_ceiling(src, target))
        check(target, "the gRPC ceiling's copy")
        target.unlink()
        return f"bare gRPC {DENSE / bare[-1] / 1e6:.0f} MB/s"

    def nbdcopy(_i: int) -> str:
        target = tmp / "nbd-target.img"
        nsecs, ncpu = nbd.copy(src, DENSE, target)
        check(target, "the nbdkit target")
        target.unlink()
        theirs.append((nsecs, ncpu))
        return f"nbdcopy {DENSE / nsecs / 1e6:.0f} MB/s ({ncpu:.1f} CPU s)"

    # Warm-up, untimed: the first copy after the 2 GiB source was written ran
    # at half speed whichever tool it was (nbdcopy first: 460 MB/s and 8.1
    # CPU s, 708 MB/s and 5.4 CPU s in the next round; liftshift, always
    # first before this: 169-191 MB/s in round 1 of three runs, 228-359 in
    # rounds 2-3), so round 1 would tax whoever goes first.
    settle_pages()
    target = tmp / "warm-up.img"
    _ceiling(src, target)
    target.unlink()
    copies = [liftshift, ceiling, *([] if nbd.missing else [nbdcopy])]
    for i in range(ROUNDS):
        parts = {}
        for k in range(len(copies)):  # each round starts with the next one (none always goes first)
            copy = copies[(i + k) % len(copies)]
            settle_pages()
            parts[copy] = copy(i)
        print(f"   dense 2 GiB round {i + 1}: " + ", ".join(parts[c] for c in copies), flush=True)
    mbps = statistics.median(c.steady_bytes / c.steady_secs for c in ours) / 1e6
    cpu_gib = statistics.median(c.steady_cpu / (c.steady_bytes / GiB) for c in ours)
    spawn_mbps = DENSE / statistics.median(c.secs for c in ours) / 1e6
    startup = statistics.median(c.startup for c in ours)
    bare_mbps = DENSE / statistics.median(bare) / 1e6
    name = f"repl.background 2 GiB random -> sink, tmpfs (median of {ROUNDS})"
    if nbd.missing:
        print(f"   SKIPPED the nbdcopy baseline: {', '.join(nbd.missing)} not installed", file=sys.stderr, flush=True)
        return [result(f"{name} (baseline SKIPPED: {', '.join(nbd.missing)} not installed)", "throughput", mbps,
                       "MB/s"),
                result(f"{name}: CPU of daemon+sink", "cpu", cpu_gib, "CPU s/GiB")]
    base = DENSE / statistics.median(s for s, _ in theirs) / 1e6
    base_cpu = statistics.median(c for _, c in theirs) / (DENSE / GiB)
    label = f"{nbd.label} (median of {ROUNDS})"
    return [result(_mark(f"{name}, running daemon (from its first durable chunk)", mbps / base >= 0.8,
                         "ratio >= 0.8"), "throughput", mbps, "MB/s", label, base),
            result(f"{name}: CPU of daemon+sink", "cpu", cpu_gib, "CPU s/GiB", "CPU of nbdcopy+nbdkit", base_cpu),
            result(f"{name}, from the daemon's spawn (context)", "throughput", spawn_mbps, "MB/s", label, base),
            result(f"{name}: of which daemon start-up, spawn to first durable chunk (context)", "time", startup,
                   "s"),
            result(f"{name}: bare grpc.aio stream, the transport's ceiling (context, grpc_ceiling.py)", "throughput",
                   bare_mbps, "MB/s", label, base)]


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
        big = _copy_once(tmp / f"sparse-{i}", SPARSE, sparse)
        secs, st, (rd, rs), shadow = big.secs, big.status, big.rss, big.shadow
        _check_extents(sparse, shadow, [s * EXTENT for s in slots])
        allocated = os.stat(shadow).st_blocks * 512
        shutil.rmtree(tmp / f"sparse-{i}")
        big_s.append(secs)
        rss_d.append(rd)
        rss_s.append(rs)
        settle_pages()
        dense = _copy_once(tmp / f"small-{i}", SPARSE_DATA, small)
        dsecs, dshadow = dense.secs, dense.shadow
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
