"""A source daemon and a sink as real processes on loopback, for end-to-end tests.

:class:`Pair` creates a source image (partly sparse, partly random data), its
ring, and the two daemons' configs; starts, kills and restarts either
daemon; and reads the daemon's Control status.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from procs import DaemonProcess, python_module, start_process

from liftshift.iofilter import create_ring
from liftshift.v1 import control_pb2 as cpb
from liftshift.v1 import control_pb2_grpc

MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_source(path: Path, size: int, data_fraction: float, seed: int) -> None:
    """A sparse image with random data in scattered 4 MiB extents."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        extent = 4 * MiB
        for off in range(0, size, extent):
            if rng.random() < data_fraction:
                f.seek(off)
                f.write(rng.randbytes(min(extent, size - off)))


@dataclass
class Pair:
    """Everything one replicated vdisk needs, in ``root``."""

    root: Path
    size: int
    cleanup: Callable[[Callable[[], None]], object]
    ring_capacity: int = 8 * MiB
    # Unique per test, so a daemon can never mistake another test's sink for its own.
    vdisk_id: str = field(default_factory=lambda: f"vm1-disk0-{os.urandom(4).hex()}")
    sink_port: int = field(default_factory=free_port)
    daemon_extra: str = ""
    sink: DaemonProcess | None = None
    daemon: DaemonProcess | None = None
    via_port: int | None = None  # the daemon reaches the sink through this port (a proxy) when set
    # One channel to each daemon process (a restarted daemon gets a new one), not one per poll.
    _channel: grpc.Channel | None = field(default=None, init=False, repr=False)
    _channel_to: DaemonProcess | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.cleanup(self._close_channel)
        self.source = self.root / "source.img"
        self.ring = self.root / "source.ring"
        self.data = self.root / "sink-data"
        self.shadow = self.data / f"{self.vdisk_id}-flat.vmdk"

    def prepare(self, data_fraction: float = 0.5, seed: int = 1) -> None:
        make_source(self.source, self.size, data_fraction, seed)
        create_ring(self.ring, self.size, capacity=self.ring_capacity)

    def start_sink(self) -> DaemonProcess:
        cfg = self.root / "sink.toml"
        cfg.write_text(f'listen = "127.0.0.1:{self.sink_port}"\ndata_dir = "{self.data}"\nfsync_window_ms = 5\n'
                       "insecure = true\n")
        pf = self.root / "sink.port"
        self.sink = start_process(python_module("liftshift.sink.main", "--config", cfg, "--port-file", pf), pf,
                                  cleanup=self.cleanup)
        return self.sink

    def start_daemon(self) -> DaemonProcess:
        cfg = self.root / "daemon.toml"
        port = self.via_port or self.sink_port
        cfg.write_text(
            f'listen = "127.0.0.1:0"\nstate_dir = "{self.root / "daemon-state"}"\nreconnect_max_s = 0.5\n'
            f"{self.daemon_extra}\n"
            "[tls]\ninsecure = true\n"
            f'[[replicate]]\nvdisk_id = "{self.vdisk_id}"\nring = "{self.ring}"\nsource = "{self.source}"\n'
            f'sink = "127.0.0.1:{port}"\n')
        pf = self.root / "daemon.port"
        self.daemon = start_process(python_module("liftshift.daemon.main", "--config", cfg, "--port-file", pf),
                                    pf, cleanup=self.cleanup)
        return self.daemon

    def _control(self) -> control_pb2_grpc.ControlStub:
        assert self.daemon is not None
        if self._channel is None or self._channel_to is not self.daemon:
            self._close_channel()
            self._channel = grpc.insecure_channel(self.daemon.address)
            self._channel_to = self.daemon
        return control_pb2_grpc.ControlStub(self._channel)

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = self._channel_to = None

    def status(self) -> cpb.VdiskReplication:
        resp = self._control().ListReplications(cpb.ListReplicationsRequest(), timeout=10)
        (v,) = resp.vdisks
        return v

    def wait(self, pred: Callable[[cpb.VdiskReplication], bool], timeout: float = 120, what: str = "") -> \
            cpb.VdiskReplication:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.status()
                if pred(last):
                    return last
            except grpc.RpcError:
                pass
            time.sleep(0.05)
        log = self.daemon.log() if self.daemon else ""
        raise AssertionError(f"timed out waiting for {what or pred}; last status: {last}\n{log[-3000:]}")

    def verify(self) -> cpb.VerifyVdiskResponse:
        return self._control().VerifyVdisk(cpb.VerifyVdiskRequest(vdisk_id=self.vdisk_id), timeout=300)

    def background_done(self, v: cpb.VdiskReplication) -> bool:
        return v.background_done_bytes == v.background_total_bytes

    def open_image(self) -> int:
        return os.open(self.source, os.O_RDWR)
