"""liftshift-nbd write IOPS with replication running, against ``nbdkit file``.

The issue's measurement: ``fio --ioengine=nbd``, 4 KiB random writes at
queue depth 8, each run SECONDS long, over a 256 MiB raw image on tmpfs
filled with random data first (so every write overwrites allocated pages),
all NBD traffic on Unix sockets.  In one run, in this order:

1. Baseline: ``nbdkit file`` serving the image (no capture).
2. Diagnostics, ``nbd.serve_only`` and ``nbd.capture_only``: a standalone
   ``liftshift-nbd`` without a ring, then with a 64 MiB ring drained by a
   thread of this process (waiting on the doorbell, checking and releasing
   every record as the daemon does, shipping nothing).  With 3. they split
   the gap to nbdkit into serving, capture and shipping.
3. ``nbd.replication``: a sink and a daemon (``platform = "qemu"``, one
   headless VM whose disk is a copy of the image taken before any run,
   served by the daemon's own ``liftshift-nbd`` on
   ``<qemu.dir>/nbd-1/disk0.sock``; ring capacity the 64 MiB default); a
   migration created with ``start=True``, no automatic cutover.  Once the
   background copy is done, the VM has converged and every chunk has been
   proven identical once, fio runs as in 1.: what it measures is live-write
   capture and shipping, plus the daemon's usual re-verification of written
   chunks ahead of cutover (``preverify_bytes_per_s``, default 512 MiB/s;
   PREVERIFY overrides it for experiments).  Target: at least 0.5 of 1.
4. ``nbd.lag``: the daemon's lag percentiles are over its most recent
   100,000 durable live frames, which would include 3., so that migration
   is aborted and a fresh one (a new vdisk, an empty lag window) is created
   and brought to the same point; fio then runs with ``--rate_iops`` at
   half the IOPS of 3.  Once every record is durable, ``lag_p50_seconds`` /
   ``lag_p99_seconds`` of ``ListReplications`` are read (per frame, from
   the commit of its oldest record to the sink's durable ack); the window
   must hold fewer than 100,000 samples, i.e. this run only.  Also
   reported: the IOPS achieved at the cap and the lag of 3. (whose window
   held only 3.).
5. ``nbd.cpu``: CPU time per write (``/proc/PID/stat``) of nbdkit, of the
   standalone liftshift-nbd, and of liftshift-nbd, the daemon and the sink
   during 3.
6. The migration is aborted, the daemon (``stop_vms_on_exit = true``, so
   it stops its NBD server) and the sink get SIGTERM; none may be left
   running (checked with signal 0).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from run import result

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: e2e, procs

from e2e import free_port  # noqa: E402
from procs import DaemonProcess, python_module, start_process  # noqa: E402
from repl_support import cpu_seconds, fill_random  # noqa: E402

from liftshift.iofilter import RingConsumer, create_ring  # noqa: E402
from liftshift.v1 import control_pb2 as cpb  # noqa: E402
from liftshift.v1 import control_pb2_grpc  # noqa: E402

MiB = 1 << 20
IMAGE = 256 * MiB
RING = 64 * MiB  # the qemu platform's default ring_capacity
SECONDS = 10
RATE_FRACTION = 0.5
TARGET_RATIO = 0.5
LAG_WINDOW = 100_000  # frames kept by the daemon's LagWindow
VM = "nbd-1"
POLL_S = 0.05
PREVERIFY = ""  # preverify_bytes_per_s of the daemon ("" its default, "0" off), for experiments


def _wait_ready(what: str, ready: Path, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Until the server writes ``ready`` (nbdkit's pid file, liftshift-nbd's port file: both once listening)."""
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited at start with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not write {ready} within {timeout:.0f} s")
        time.sleep(0.02)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _fio(sock: Path, seconds: int, rate_iops: int = 0) -> dict[str, float]:
    """``iops`` and ``writes`` (completed) of one fio run."""
    cmd = ["fio", "--name=bench", "--ioengine=nbd", f"--uri=nbd+unix:///?socket={sock}", "--rw=randwrite",
           "--bs=4k", "--iodepth=8", f"--size={IMAGE}", "--time_based", f"--runtime={seconds}",
           "--output-format=json"]
    if rate_iops:
        cmd.append(f"--rate_iops={rate_iops}")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]
    if job["error"]:
        raise RuntimeError(f"fio reported error {job['error']}")
    return {"iops": float(job["write"]["iops"]), "writes": float(job["write"]["total_ios"])}


def _measured(sock: Path, pid: int, seconds: int) -> tuple[float, float]:
    """(IOPS, CPU microseconds per write of process ``pid``) of one fio run."""
    cpu0 = cpu_seconds(pid)
    got = _fio(sock, seconds)
    return got["iops"], (cpu_seconds(pid) - cpu0) / got["writes"] * 1e6


# -- baseline and diagnostics: a server started here ------------------------------------


def _nbdkit(image: Path, sock: Path) -> tuple[float, float]:
    ready = sock.with_suffix(".pid")
    proc = subprocess.Popen(["nbdkit", "-f", "-U", str(sock), "-P", str(ready), "file", str(image)])
    try:
        _wait_ready("nbdkit", ready, proc)
        return _measured(sock, proc.pid, SECONDS)
    finally:
        _stop(proc)


def _drain(ring: Path, stop: threading.Event, failure: list[str]) -> None:
    try:
        with RingConsumer(ring) as c:
            while not stop.is_set():
                batch = c.read_batch(4 << 20)
                if batch is None:
                    c.wait(0.05)
                    continue
                if batch.corrupt:
                    raise RuntimeError(f"{len(batch.corrupt)} corrupt records")
                c.release(batch.end)
    except Exception as e:  # reported by the caller
        failure.append(repr(e))


def _liftshift_nbd(image: Path, sock: Path, ring: Path | None) -> tuple[float, float]:
    """A standalone liftshift-nbd; with ``ring``, drained by a thread of this process."""
    ready = sock.with_suffix(".ready")
    cmd = [sys.executable, "-m", "liftshift.iofilter.nbd", "--image", str(image), "--unix", str(sock),
           "--port-file", str(ready), "--log-level", "WARNING"]
    stop, failure = threading.Event(), list[str]()
    drainer = None
    if ring is not None:
        create_ring(ring, IMAGE, capacity=RING)
        cmd += ["--ring", str(ring)]
        drainer = threading.Thread(target=_drain, args=(ring, stop, failure), daemon=True)
        drainer.start()
    proc = subprocess.Popen(cmd)
    try:
        _wait_ready("liftshift-nbd", ready, proc)
        return _measured(sock, proc.pid, SECONDS)
    finally:
        _stop(proc)
        stop.set()
        if drainer is not None:
            drainer.join()
            with RingConsumer(ring) as c:  # type: ignore[arg-type]
                if c.counters()["overflows"]:
                    print(f"   warning: the ring overflowed {c.counters()['overflows']} times", flush=True)
            if failure:
                raise RuntimeError(f"the drain thread failed: {failure[0]}")


# -- replication: a sink, a daemon, a headless qemu VM ------------------------------------


class _Site:
    """A sink and a qemu-platform daemon with one headless VM (disk ``image``)."""

    def __init__(self, root: Path, image: Path, preverify: str = "") -> None:
        self.root, self.image, self.preverify = root, image, preverify
        self.verify_ahead = preverify != "0"
        self.stops: list[Callable[[], object]] = []
        self.pids: dict[str, int] = {}
        self.channel: grpc.Channel | None = None
        self.sock = root / "qemu" / VM / "disk0.sock"

    def start(self) -> None:
        """The sink, then the daemon (which powers the VM on: its NBD server listens)."""
        root = self.root
        root.mkdir()
        scfg = root / "sink.toml"
        scfg.write_text(f'listen = "127.0.0.1:{free_port()}"\ndata_dir = "{root / "sink-data"}"\n'
                        "stop_vms_on_exit = true\ninsecure = true\n")
        self.sink = start_process(python_module("liftshift.sink.main", "--config", scfg, "--port-file",
                                                root / "sink.port"), root / "sink.port", cleanup=self.stops.append)
        self.pids["sink"] = self.sink.proc.pid
        dcfg = root / "daemon.toml"
        dcfg.write_text(
            f'listen = "127.0.0.1:{free_port()}"\nstate_dir = "{root / "state"}"\nplatform = "qemu"\n'
            + (f'preverify_bytes_per_s = "{self.preverify}"\n' if self.preverify else "") +
            f'[qemu]\ndir = "{root / "qemu"}"\nring_dir = "{root / "rings"}"\naccel = "tcg"\n'
            "stop_vms_on_exit = true\n"
            f'[[qemu.vm]]\nname = "{VM}"\nheadless = true\n'
            f'[[qemu.vm.disks]]\nname = "disk0"\nimage = "{self.image}"\n[tls]\ninsecure = true\n')
        self.daemon: DaemonProcess = start_process(
            python_module("liftshift.daemon.main", "--config", dcfg, "--port-file", root / "daemon.port"),
            root / "daemon.port", cleanup=self.stops.append, timeout=60)
        self.pids["daemon"] = self.daemon.proc.pid
        self.pids["liftshift-nbd"] = int((root / "qemu" / VM / "disk0.nbd.pid").read_text().split()[0])
        self.channel = grpc.insecure_channel(self.daemon.address)
        self.stub = control_pb2_grpc.ControlStub(self.channel)

    def call(self, method: str, request: object, timeout: float = 60) -> object:
        return getattr(self.stub, method)(request, timeout=timeout)

    def vdisk(self, vdisk_id: str) -> cpb.VdiskReplication:
        got = self.call("ListReplications", cpb.ListReplicationsRequest())
        assert isinstance(got, cpb.ListReplicationsResponse)
        for v in got.vdisks:
            if v.vdisk_id == vdisk_id:
                return v
        raise RuntimeError(f"the daemon replicates no vdisk {vdisk_id}")

    def start_migration(self, timeout: float = 120) -> str:
        """A fresh migration of the VM, once it has copied, converged and proven every chunk once:
        its vdisk id."""
        m = self.call("CreateMigration", cpb.CreateMigrationRequest(vms=[VM], destination=self.sink.address,
                                                                    start=True))
        assert isinstance(m, cpb.Migration)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self.call("GetMigration", cpb.MigrationRef(migration_id=m.id))
            assert isinstance(m, cpb.Migration)
            (d,) = m.vms[0].vdisks
            if (d.background_done_bytes == d.background_total_bytes and (d.verified_once or not self.verify_ahead)
                    and m.vms[0].state == cpb.MIGRATION_STATE_CONVERGED):
                self.migration = m.id
                return d.vdisk_id
            if m.state == cpb.MIGRATION_STATE_FAILED:
                break
            time.sleep(POLL_S)
        raise RuntimeError(f"migration did not converge: {m}\n{self.daemon.log()[-3000:]}")

    def abort(self) -> None:
        self.call("AbortMigration", cpb.MigrationRef(migration_id=self.migration))

    def drained(self, vdisk_id: str, timeout: float = 60) -> cpb.VdiskReplication:
        """The vdisk's status once every record written is durable at the sink."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            v = self.vdisk(vdisk_id)
            if (v.durable_seq == v.shipped_seq and v.dirty_bytes == 0 and v.lag_seconds == 0
                    and last is not None and v.live_records == last.live_records):
                return v
            last = v
            time.sleep(POLL_S * 2)
        raise RuntimeError(f"vdisk {vdisk_id} did not drain: {last}")

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of liftshift-nbd, the daemon and the sink."""
        return {name: cpu_seconds(self.pids[name]) for name in ("liftshift-nbd", "daemon", "sink")}

    def close(self) -> None:
        """Stop whatever was started (the daemon stops its NBD server); raise if a process is left."""
        if self.channel is not None:
            self.channel.close()
        for stop in reversed(self.stops):
            stop()
        left = [f"{name} (pid {pid})" for name, pid in self.pids.items() if _running(pid)]
        if left:
            raise RuntimeError(f"left running after the daemons stopped: {', '.join(left)}")


def _running(pid: int, timeout: float = 10.0) -> bool:
    """kill -0 says the process exists and is not a zombie, for ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                alive = f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except (ProcessLookupError, FileNotFoundError):
            return False
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def _replicated(site: _Site) -> dict[str, float]:
    """Full speed with replication running, then the lag at a capped rate (a fresh migration)."""
    out: dict[str, float] = {}
    vdisk = site.start_migration()
    cpu0 = site.cpu()
    full = _fio(site.sock, SECONDS)
    cpu1 = site.cpu()
    v = site.drained(vdisk)
    out["iops"] = float(full["iops"])
    for name in cpu0:
        out[f"cpu {name}"] = (cpu1[name] - cpu0[name]) / full["writes"] * 1e6
    out["full p50"], out["full p99"] = v.lag_p50_seconds * 1e3, v.lag_p99_seconds * 1e3
    print(f"   full speed: {full['iops']:,.0f} IOPS, {full['writes']:,.0f} writes, {v.live_records:,} live "
          f"records shipped, {v.ring_overflows} ring overflows, lag p50 {out['full p50']:.1f} ms p99 "
          f"{out['full p99']:.1f} ms ({v.lag_samples:,} frames); CPU per write: "
          + ", ".join(f"{n} {out[f'cpu {n}']:.0f} us" for n in cpu0), flush=True)
    site.abort()
    vdisk = site.start_migration()  # a new vdisk: its lag window holds only the paced run
    cap = max(1, int(out["iops"] * RATE_FRACTION))
    paced = _fio(site.sock, SECONDS, rate_iops=cap)
    v = site.drained(vdisk)
    if v.lag_samples >= LAG_WINDOW:
        raise RuntimeError(f"{v.lag_samples} lag samples: the window does not hold just the paced run")
    out["cap"], out["paced iops"] = cap, paced["iops"]
    out["p50"], out["p99"] = v.lag_p50_seconds * 1e3, v.lag_p99_seconds * 1e3
    print(f"   paced at {cap:,} IOPS: {paced['iops']:,.0f} IOPS, {v.live_records:,} live records, "
          f"{v.ring_overflows} ring overflows, lag p50 {out['p50']:.1f} ms p99 {out['p99']:.1f} ms "
          f"({v.lag_samples:,} frames)", flush=True)
    site.abort()
    return out


def _mark(name: str, ok: bool, target: str) -> str:
    return f"{name} [target {target}: {'met' if ok else 'TARGET MISSED'}]"


def run() -> list[dict]:
    for tool in ("fio", "nbdkit"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed")
    print(f"   load average {os.getloadavg()[0]:.2f} (2 shared cores: other load skews every number)", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-nbd-", dir="/dev/shm") as tmp:
        root = Path(tmp)
        image, vm_image = root / "disk.img", root / "vm-disk0.img"
        fill_random(image, IMAGE)
        shutil.copyfile(image, vm_image)
        base, base_cpu = _nbdkit(image, root / "nbdkit.sock")
        print(f"   nbdkit file: {base:,.0f} IOPS, {base_cpu:.0f} us CPU per write", flush=True)
        serve, serve_cpu = _liftshift_nbd(image, root / "serve.sock", None)
        capture, capture_cpu = _liftshift_nbd(image, root / "capture.sock", root / "capture.ring")
        print(f"   liftshift-nbd: {serve:,.0f} IOPS without a ring ({serve_cpu:.0f} us CPU per write), "
              f"{capture:,.0f} with a drained ring ({capture_cpu:.0f} us)", flush=True)
        site = _Site(root / "site", vm_image, PREVERIFY)
        try:
            site.start()
            r = _replicated(site)
        finally:
            site.close()
    ratio = r["iops"] / base
    per_write = "CPU per write"
    rows = [
        result(_mark("nbd.replication 4KiB randwrite qd8, liftshift-nbd + replication to a sink",
                     ratio >= TARGET_RATIO, f">= {TARGET_RATIO} of nbdkit"), "write IOPS", r["iops"], "IOPS",
               "nbdkit file", base),
        result("nbd.capture_only liftshift-nbd, ring drained by a thread, nothing shipped", "write IOPS", capture,
               "IOPS", "nbdkit file", base),
        result("nbd.serve_only liftshift-nbd, no ring", "write IOPS", serve, "IOPS", "nbdkit file", base),
        result(f"nbd.lag p50 at {RATE_FRACTION:.0%} of the replicated rate", "lag p50", r["p50"], "ms"),
        result(f"nbd.lag p99 at {RATE_FRACTION:.0%} of the replicated rate", "lag p99", r["p99"], "ms"),
        result(f"nbd.lag achieved IOPS at the {RATE_FRACTION:.0%} cap", "write IOPS", r["paced iops"], "IOPS",
               "the cap", r["cap"]),
        result("nbd.lag p99 at full speed (same run as nbd.replication)", "lag p99", r["full p99"], "ms"),
        result("nbd.cpu nbdkit file", per_write, base_cpu, "us"),
        result("nbd.cpu liftshift-nbd, no ring", per_write, serve_cpu, "us"),
        result("nbd.cpu liftshift-nbd, ring drained by a thread", per_write, capture_cpu, "us"),
    ]
    for name in ("liftshift-nbd", "daemon", "sink"):
        rows.append(result(f"nbd.cpu {name} during nbd.replication", per_write, r[f"cpu {name}"], "us"))
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
