"""``make demo``: a live migration end to end on this machine, in under two minutes.

Starts a sink (the destination) and a source daemon on loopback in a
temporary directory, with one ``sim`` VM whose guest keeps writing to its
two disks; migrates it with automatic cutover while the real ``liftshift``
CLI shows progress; prints the cutover report (verification and measured
downtime) and checks independently that the destination VM booted from
exactly the bytes the source held when it stopped; then stops everything it
started and removes its files (``--keep`` keeps them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from liftshift.daemon.hashing import file_xxh3_128

MiB = 1 << 20
VM = "web-1"
DISKS = [("disk0", 2048 * MiB, 640 * MiB), ("disk1", 1024 * MiB, 256 * MiB)]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


class Demo:
    """Everything the demo starts, so that all of it can be stopped."""

    def __init__(self, root: Path, shm: Path) -> None:
        self.root = root
        self.shm = shm
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sink_addr = f"127.0.0.1:{_port()}"
        self.daemon_addr = f"127.0.0.1:{_port()}"
        self.data = root / "sink-data"
        self.sim = root / "sim"
        self.tls = root / "tls"

    def certificates(self) -> None:
        """A CA and every certificate, with the real CLI: both daemons use mutual TLS, as in production."""
        for args in (("init", str(self.tls)), ("issue", str(self.tls), "daemon", "--server"),
                     ("issue", str(self.tls), "daemon-client", "--client", "--role", "operator"),
                     ("issue", str(self.tls), "sink", "--server"),
                     ("issue", str(self.tls), "client", "--client", "--role", "admin")):
            self.cli("certs", *args, capture=True)

    def configs(self) -> tuple[Path, Path]:
        t = self.tls
        sink = self.root / "sink.toml"
        sink.write_text(f'listen = "{self.sink_addr}"\ndata_dir = "{self.data}"\nstop_vms_on_exit = true\n'
                        f'tls_cert = "{t / "sink.pem"}"\ntls_key = "{t / "sink.key"}"\ntls_ca = "{t / "ca.pem"}"\n')
        daemon = self.root / "daemon.toml"
        disks = "".join(f'[[sim.vm.disks]]\nname = "{n}"\nsize = "{s // MiB}MiB"\nfill = "{f // MiB}MiB"\n'
                        for n, s, f in DISKS)
        daemon.write_text(
            f'listen = "{self.daemon_addr}"\nstate_dir = "{self.root / "daemon-state"}"\n'
            f'converge_threshold = "16MiB"\nprogress_interval_ms = 200\n\n'
            f'[sim]\ndir = "{self.sim}"\nring_dir = "{self.shm}"\nstop_vms_on_exit = true\n\n'
            f'[[sim.vm]]\nname = "{VM}"\n'
            f'workload = {{ rate_ops = 300, block_size = "4KiB", working_set = "64MiB", read_fraction = 0.3, '
            f'boot_digest = true }}\n{disks}\n'
            f'[tls]\ncert = "{t / "daemon.pem"}"\nkey = "{t / "daemon.key"}"\nca = "{t / "ca.pem"}"\n'
            f'client_cert = "{t / "daemon-client.pem"}"\nclient_key = "{t / "daemon-client.key"}"\n')
        return sink, daemon

    def start(self, module: str, config: Path, name: str) -> None:
        port_file = self.root / f"{name}.port"
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen([sys.executable, "-m", module, "--config", str(config), "--port-file", str(port_file)],
                             stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; its log:\n{(self.root / f'{name}.log').read_text()}")
            time.sleep(0.05)

    def cli(self, *args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "liftshift.ctl", "--address", self.daemon_addr, *args]
        print(f"$ liftshift {' '.join(args)}", flush=True)
        # The CLI finds the CA and its admin certificate in the demo's TLS directory.
        got = subprocess.run(cmd, text=True, capture_output=capture, check=False,
                             env={**os.environ, "LIFTSHIFT_TLS_DIR": str(self.tls)})
        if got.returncode != 0:
            raise RuntimeError(f"`liftshift {' '.join(args)}` exited {got.returncode}: {got.stderr or ''}")
        return got

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        # The daemons power their sim VMs off on the way out; make sure of it.
        marker = str(self.root).encode()
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if marker in (proc / "cmdline").read_bytes():
                        os.kill(int(proc.name), signal.SIGKILL)
                except OSError:
                    pass


def run(demo: Demo) -> int:
    t0 = time.monotonic()
    _say("a CA and certificates for mutual TLS (liftshift certs)")
    demo.certificates()
    sink_cfg, daemon_cfg = demo.configs()
    _say(f"starting a sink (destination) on {demo.sink_addr} and a source daemon on {demo.daemon_addr}")
    demo.start("liftshift.sink.main", sink_cfg, "sink")
    demo.start("liftshift.daemon.main", daemon_cfg, "daemon")
    _say(f"the source: sim VM {VM} with two disks, its guest doing 300 ops/s (30% reads)")
    demo.cli("inventory")
    _say("migrating it live, with automatic cutover once it has converged")
    created = demo.cli("--json", "migrate", "create", VM, "--dest", demo.sink_addr, "--auto-cutover", "--start",
                       capture=True)
    mid = json.loads(created.stdout)["id"]
    print(f"migration {mid} started", flush=True)
    demo.cli("status", mid, "--watch", "--interval", "250")
    _say("the cutover report")
    demo.cli("migrate", "show", mid)
    shown = json.loads(demo.cli("--json", "migrate", "show", mid, capture=True).stdout)
    report = shown["vms"][0]["cutover"]
    _say("independent check: what the destination VM booted from vs. the stopped source")
    status = demo.data / ".liftshift-sink" / "vms" / VM / "status.json"
    deadline = time.monotonic() + 30
    booted: list[str] = []
    while not booted and time.monotonic() < deadline:
        try:
            booted = json.loads(status.read_text()).get("boot_digests", [])
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    sources = [file_xxh3_128(demo.sim / VM / f"{n}.img") for n, _, _ in DISKS]
    same = booted == sources
    for (name, size, _), src, dst in zip(DISKS, sources, booted or [""] * len(DISKS), strict=True):
        verdict = "identical" if src == dst else "DIFFERENT"
        print(f"  {name} ({size // MiB} MiB): source {src}  destination {dst}  {verdict}")
    ok = bool(report.get("identical")) and same
    _say("result")
    print(f"verification: {'identical' if report.get('identical') else 'NOT identical'} "
          f"({report.get('chunks_verified', 0)} chunks hashed at cutover, "
          f"{report.get('chunks_preverified', 0)} proven before it)")
    print(f"downtime: {report.get('downtime_seconds', 0.0):.3f} s (stop {report.get('stop_seconds', 0.0):.3f}, "
          f"drain {report.get('drain_seconds', 0.0):.3f}, verify {report.get('verify_seconds', 0.0):.3f}, "
          f"power-on {report.get('power_on_seconds', 0.0):.3f})")
    print(f"demo {'PASSED' if ok else 'FAILED'} in {time.monotonic() - t0:.1f} s", flush=True)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m liftshift.ctl.demo``."""
    ap = argparse.ArgumentParser(prog="liftshift-demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs, disks)")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="liftshift-demo-"))
    shm_base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else root
    shm = Path(tempfile.mkdtemp(prefix="liftshift-demo-rings-", dir=shm_base))
    demo = Demo(root, shm)
    # A demo stopped by SIGTERM (a timeout, CI) still stops what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return run(demo)
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
        print(f"demo FAILED: {e}", file=sys.stderr)
        for name in ("daemon", "sink"):
            log = root / f"{name}.log"
            if log.exists():
                print(f"--- last lines of the {name} log ---\n" + "\n".join(log.read_text().splitlines()[-20:]),
                      file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        demo.stop()
        shutil.rmtree(shm, ignore_errors=True)
        if args.keep:
            print(f"files kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
