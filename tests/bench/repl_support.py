"""Helpers for bench_replication: images, process statistics, the nbdcopy baseline.

* :func:`fill_random` appends random bytes to a file (``openssl rand`` when
  it is installed, which is several times faster than Python's generator;
  the data is incompressible either way);
* :func:`cpu_seconds` / :func:`peak_rss_mib` read ``/proc/PID/stat`` and
  ``VmHWM`` of a running process;
* :func:`settle_pages` puts every timed copy in the same memory state;
* :class:`NbdBaseline` copies an image with ``nbdcopy`` into ``nbdkit file``
  serving a fresh sparse file on a loopback TCP port, the same kind of target
  the sink starts from.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30
_CLK_TCK = os.sysconf("SC_CLK_TCK")
# Seconds after a large delete before the next timed copy starts (settle_pages).
PAGE_SETTLE_S = 4.0


def settle_pages() -> None:
    """Wait until the memory freed by the last deleted target is cold again.

    Writing a fresh tmpfs file allocates a page per 4 KiB, and on a virtual
    machine whose balloon reports free pages to the host (Linux hands them
    over about 2 s after they are freed) a page reused before it was reported
    costs a fraction of one the host must fault in again: here `dd` into a
    fresh 2 GiB tmpfs file ran at 0.9-1.7 GB/s right after another 2 GiB file
    was deleted and at 0.4-0.6 GB/s a few seconds later.  A copy that starts
    right after the previous one's target was deleted, and finishes fast,
    gets the cheap pages; so every timed copy, ours and the baseline, starts
    after the same pause and finds the same cold pages.
    """
    time.sleep(PAGE_SETTLE_S)


def fill_random(path: Path, nbytes: int, seed: int = 1) -> None:
    """Append ``nbytes`` of random data to ``path``."""
    openssl = shutil.which("openssl")
    done = 0
    with open(path, "ab") as f:
        while done < nbytes:
            n = min(GiB, nbytes - done)
            if openssl:
                f.flush()
                subprocess.run([openssl, "rand", str(n)], stdout=f, check=True)
            else:
                rng = random.Random(seed + done)
                for off in range(0, n, 4 * MiB):
                    f.write(rng.randbytes(min(4 * MiB, n - off)))
            done += n


def copy_range(src: Path, src_off: int, dst: Path, dst_off: int, length: int) -> None:
    """Copy ``length`` bytes between files (``dst`` must exist)."""
    with open(src, "rb") as fi, open(dst, "r+b") as fo:
        while length:
            n = os.copy_file_range(fi.fileno(), fo.fileno(), length, src_off, dst_off)
            if n <= 0:
                raise OSError(f"copy_file_range copied {n} bytes")
            src_off += n
            dst_off += n
            length -= n


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a running process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def peak_rss_mib(pid: int) -> float:
    """``VmHWM`` (peak resident set) of a running process, in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NbdBaseline:
    """``nbdcopy [--flush] SRC nbd://127.0.0.1:PORT`` into ``nbdkit file`` of a fresh sparse file."""

    TOOLS = ("nbdkit", "nbdcopy")

    def __init__(self) -> None:
        self.missing = [t for t in self.TOOLS if shutil.which(t) is None]
        self.flush = False
        if not self.missing:
            helptext = subprocess.run(["nbdcopy", "--help"], capture_output=True, text=True).stdout
            self.flush = "--flush" in helptext

    @property
    def label(self) -> str:
        return f"nbdcopy{' --flush' if self.flush else ' (no --flush)'} -> nbdkit file, loopback TCP"

    def copy(self, src: Path, size: int, target: Path) -> tuple[float, float]:
        """Copy ``src`` into a new sparse ``target`` of ``size`` bytes served by
        nbdkit; return (seconds of nbdcopy, CPU seconds of nbdcopy + nbdkit)."""
        target.unlink(missing_ok=True)
        with open(target, "wb") as f:
            f.truncate(size)
        port = free_port()
        log = target.with_name(target.name + ".log")  # a file, not a pipe nobody reads while we wait
        with open(log, "wb") as out:
            server = subprocess.Popen(["nbdkit", "--foreground", "--exit-with-parent", "-i", "127.0.0.1",
                                       "-p", str(port), "file", str(target)], stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"nbdkit did not start: {log.read_text(errors='replace')}") from None
                    time.sleep(0.02)
            args = ["nbdcopy", *(["--flush"] if self.flush else []), str(src), f"nbd://127.0.0.1:{port}"]
            with open(log, "ab") as out:
                t0 = time.perf_counter()
                proc = subprocess.Popen(args, stdout=out, stderr=out)
                _pid, status, usage = os.wait4(proc.pid, 0)  # wait4: the child's own CPU time
                seconds = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {log.read_text(errors='replace')}")
            cpu = usage.ru_utime + usage.ru_stime + cpu_seconds(server.pid)
            return seconds, cpu
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.unlink(missing_ok=True)
