"""liftshift-nbd write IOPS against nbdkit's file plugin on the same image.

fio (``--ioengine=nbd``) writes 4 KiB blocks at random, queue depth 8, into
a tmpfs image served by ``liftshift-nbd`` with a ring whose records a thread
of this process drains (verifying and releasing them, as the daemon does, so
the ring never overflows), then by ``nbdkit file`` (the baseline, no
capture).  Runs alternate, the median of each is reported.

The drain runs twice: waiting on the doorbell, as the daemon does (a fast
consumer is nearly always waiting, so the producer writes the doorbell FIFO
after almost every record, a syscall and a wake-up on the server's hot path),
and polling every 2 ms (no doorbell), which shows what that costs.
"""

from __future__ import annotations

import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from run import result

from liftshift.iofilter import RingConsumer, create_ring

IMAGE = 256 << 20
RING = 64 << 20
SECONDS = 3
REPEATS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _fio_iops(port: int) -> float:
    out = subprocess.run(["fio", "--name=bench", "--ioengine=nbd", f"--uri=nbd://127.0.0.1:{port}/",
                          "--rw=randwrite", "--bs=4k", "--iodepth=8", f"--size={IMAGE}", "--time_based",
                          f"--runtime={SECONDS}", "--output-format=json"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return float(json.loads(out[out.index("{"):])["jobs"][0]["write"]["iops"])


def _drain(ring: Path, stop: threading.Event, doorbell: bool) -> None:
    with RingConsumer(ring) as c:
        while not stop.is_set():
            batch = c.read_batch(4 << 20)
            if batch is None:
                if doorbell:
                    c.wait(0.05)
                else:
                    time.sleep(0.002)
                continue
            if batch.corrupt:
                raise RuntimeError(f"{len(batch.corrupt)} corrupt records")
            c.release(batch.end)


def _liftshift(image: Path, ring: Path, doorbell: bool) -> float:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "liftshift.iofilter.nbd", "--image", str(image), "--ring",
                             str(ring), "--listen", f"127.0.0.1:{port}", "--log-level", "WARNING"])
    stop = threading.Event()
    drainer = threading.Thread(target=_drain, args=(ring, stop, doorbell), daemon=True)
    drainer.start()
    try:
        _wait_port(port, proc)
        return _fio_iops(port)
    finally:
        _stop(proc)
        stop.set()
        drainer.join()
        with RingConsumer(ring) as c:
            if c.counters()["overflows"]:
                print(f"   warning: the ring overflowed {c.counters()['overflows']} times", flush=True)


def _nbdkit(image: Path) -> float:
    port = _free_port()
    proc = subprocess.Popen(["nbdkit", "-f", "-p", str(port), "file", str(image)])
    try:
        _wait_port(port, proc)
        return _fio_iops(port)
    finally:
        _stop(proc)


def run() -> list[dict]:
    for tool in ("fio", "nbdkit"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed")
    bell: list[float] = []
    poll: list[float] = []
    theirs: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-nbd-", dir="/dev/shm") as tmp:
        image, ring = Path(tmp) / "disk.img", Path(tmp) / "disk.ring"
        with open(image, "wb") as f:
            f.truncate(IMAGE)
        create_ring(ring, IMAGE, capacity=RING)
        for _ in range(REPEATS):
            bell.append(_liftshift(image, ring, True))
            poll.append(_liftshift(image, ring, False))
            theirs.append(_nbdkit(image))
    base = statistics.median(theirs)
    return [result("nbd 4KiB randwrite qd8, ring drained (doorbell)", "write IOPS", statistics.median(bell), "IOPS",
                   "nbdkit file (no capture)", base),
            result("nbd 4KiB randwrite qd8, ring drained (polling)", "write IOPS", statistics.median(poll), "IOPS",
                   "nbdkit file (no capture)", base)]
