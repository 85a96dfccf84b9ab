"""A source daemon with sim VMs and a destination sink, as real processes.

:class:`Site` writes both configs under ``root`` (rings in the test's shm
directory), starts and restarts the daemons, talks to the daemon's Control
service, and removes every guest process it may have left when the test
ends (sim VMs deliberately outlive their daemon).
"""

from __future__ import annotations

import json
import os
import signal
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from e2e import free_port
from pki import make_pki
from procs import DaemonProcess, Starting, python_module, spawn_process

from liftshift.daemon.errors import LiftshiftError, from_rpc_error
from liftshift.daemon.hashing import file_xxh3_128
from liftshift.v1 import control_pb2 as cpb
from liftshift.v1 import control_pb2_grpc

MiB = 1 << 20


@dataclass
class SimVmDef:
    """One sim VM of the site."""

    name: str
    disks: list[tuple[str, int, int]]  # (name, size, fill)
    rate_ops: float = 200.0
    block_size: int = 4096
    working_set: int = 0
    power_on: bool = True
    boot_digest: bool = False

    def toml(self) -> str:
        out = [f'[[sim.vm]]\nname = "{self.name}"\npower_on = {str(self.power_on).lower()}\n'
               f'workload = {{ rate_ops = {self.rate_ops}, block_size = {self.block_size}, '
               f'working_set = {self.working_set}, seed = {zlib.crc32(self.name.encode()) % 1000}, '
               f'boot_digest = {str(self.boot_digest).lower()} }}\n']
        for name, size, fill in self.disks:
            out.append(f'[[sim.vm.disks]]\nname = "{name}"\nsize = {size}\nfill = {fill}\n')
        return "".join(out)


@dataclass
class Site:
    """A daemon (source) and a sink (destination) on loopback."""

    root: Path
    shm: Path
    vms: list[SimVmDef]
    cleanup: Callable[[Callable[[], None]], object]
    sink_port: int = field(default_factory=free_port)
    daemon_port: int = field(default_factory=free_port)
    daemon_extra: str = ""
    tls_extra: str = ""  # more keys of the daemon's [tls] table
    sink_extra: str = ""  # more top-level keys of the sink's config
    boot_digest: bool = False  # every VM's guest reports the digests of what it booted from
    sink: DaemonProcess | None = None
    daemon: DaemonProcess | None = None
    # One channel to each daemon process (a restarted daemon gets a new one): a channel
    # per call would cost a TLS handshake on both sides every time a test polls.
    _channel: grpc.Channel | None = field(default=None, init=False, repr=False)
    _channel_to: DaemonProcess | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.sim_dir = self.root / "sim"
        self.data = self.root / "sink-data"
        self.cleanup(self.kill_guests)
        self.cleanup(self._close_channel)
        # Mutual TLS, as in production; the CLI run by the test finds its
        # credentials through LIFTSHIFT_TLS_DIR (restored when the test ends).
        self.pki = make_pki(self.root / "tls")
        old = os.environ.get("LIFTSHIFT_TLS_DIR")
        os.environ["LIFTSHIFT_TLS_DIR"] = str(self.pki.dir)

        def restore() -> None:
            if old is None:
                os.environ.pop("LIFTSHIFT_TLS_DIR", None)
            else:
                os.environ["LIFTSHIFT_TLS_DIR"] = old

        self.cleanup(restore)
        for v in self.vms:
            v.boot_digest = v.boot_digest or self.boot_digest

    @property
    def destination(self) -> str:
        return f"127.0.0.1:{self.sink_port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.daemon_port}"

    def start_sink(self) -> DaemonProcess:
        self.sink = self._spawn_sink().wait(credentials=self.pki.credentials())
        return self.sink

    def _spawn_sink(self) -> Starting:
        cfg = self.root / "sink.toml"
        cfg.write_text(f'listen = "{self.destination}"\ndata_dir = "{self.data}"\nfsync_window_ms = 5\n'
                       f"stop_vms_on_exit = true\n{self.sink_extra}\n" + self.pki.sink_toml())
        pf = self.root / "sink.port"
        return spawn_process(python_module("liftshift.sink.main", "--config", cfg, "--port-file", pf), pf,
                             cleanup=self.cleanup)

    def daemon_config(self) -> Path:
        cfg = self.root / "daemon.toml"
        cfg.write_text(
            f'listen = "{self.address}"\nstate_dir = "{self.root / "daemon-state"}"\nreconnect_max_s = 0.5\n'
            f"progress_interval_ms = 100\n{self.daemon_extra}\n"
            f'[sim]\ndir = "{self.sim_dir}"\nring_dir = "{self.shm}"\nring_capacity = {8 * MiB}\n'
            + "".join(v.toml() for v in self.vms) + self.pki.daemon_toml(self.tls_extra))
        return cfg

    def start_daemon(self) -> DaemonProcess:
        self.daemon = self._spawn_daemon().wait(credentials=self.pki.credentials())
        return self.daemon

    def _spawn_daemon(self) -> Starting:
        cfg = self.daemon_config()
        pf = self.root / "daemon.port"
        return spawn_process(python_module("liftshift.daemon.main", "--config", cfg, "--port-file", pf), pf,
                             cleanup=self.cleanup)

    def start(self) -> Site:
        """The sink and the daemon, started side by side (neither needs the other to start)."""
        sink, daemon = self._spawn_sink(), self._spawn_daemon()
        self.sink = sink.wait(credentials=self.pki.credentials())
        self.daemon = daemon.wait(credentials=self.pki.credentials())
        return self

    # -- control -------------------------------------------------------------

    def stub(self) -> control_pb2_grpc.ControlStub:
        """A Control stub on this site's channel to the daemon now running."""
        if self._channel is None or self._channel_to is not self.daemon:
            self._close_channel()
            self._channel = grpc.secure_channel(self.address, self.pki.credentials())
            self._channel_to = self.daemon
        return control_pb2_grpc.ControlStub(self._channel)

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = self._channel_to = None

    def call(self, method: str, request: object, timeout: float = 60) -> object:
        """A Control RPC; a refusal is raised as the server's typed error."""
        try:
            return getattr(self.stub(), method)(request, timeout=timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def migration(self, mid: str) -> cpb.Migration:
        m = self.call("GetMigration", cpb.MigrationRef(migration_id=mid))
        assert isinstance(m, cpb.Migration)
        return m

    def wait_state(self, mid: str, state: int, timeout: float = 120, vm: str | None = None) -> cpb.Migration:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.migration(mid)
            except LiftshiftError:
                time.sleep(0.1)
                continue
            current = last.state if vm is None else next(v.state for v in last.vms if v.vm == vm)
            if current == state:
                return last
            time.sleep(0.05)
        tail = self.daemon.log()[-4000:] if self.daemon else ""
        raise AssertionError(f"migration {mid} did not reach {cpb.MigrationState.Name(state)} "
                             f"within {timeout}s; last: {last}\n{tail}")

    # -- files and processes --------------------------------------------------

    def image(self, vm: str, disk: str) -> Path:
        return self.sim_dir / vm / f"{disk}.img"

    def shadow(self, mid: str, vm: str, disk: str) -> Path:
        return self.data / f"{mid}.{vm}.{disk}-flat.vmdk"

    def guest_pid(self, vm: str, where: str = "source") -> int:
        path = self.sim_dir / vm / "guest.pid" if where == "source" else None
        if path is None:
            rec = json.loads((self.data / ".liftshift-sink" / "vms" / f"{vm}.json").read_text())
            return int(rec["pid"])
        try:
            return int(path.read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def kill_guests(self) -> None:
        """Kill every guest this site may have started (source and destination)."""
        marker = b"liftshift.iofilter.guest"
        roots = (str(self.sim_dir).encode(), str(self.data).encode())
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            try:
                cmd = (pid_dir / "cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmd and any(r in cmd for r in roots):
                try:
                    os.kill(int(pid_dir.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass


def boot_digests(site: Site, vm: str, timeout: float = 30) -> list[str]:
    """What the destination VM booted from (its guest's status file)."""
    status = site.data / ".liftshift-sink" / "vms" / vm / "status.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = json.loads(status.read_text()).get("boot_digests")
            if got:
                return list(got)
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"destination VM {vm} never reported its boot digests")


def assert_identical_at_stop(site: Site, mid: str, vm: SimVmDef) -> None:
    """The destination VM booted from exactly what the stopped source holds."""
    sources = [file_xxh3_128(site.image(vm.name, d)) for d, _, _ in vm.disks]
    assert boot_digests(site, vm.name) == sources, f"{vm.name}: destination booted from different bytes"
