"""Deployment: the systemd units, and the readiness protocol they rely on.

The units are checked by ``systemd-analyze verify`` (with ExecStart pointed
at this checkout's console scripts) and for the settings the design asks
for; each daemon, started with a NOTIFY_SOCKET like systemd's, must send
READY=1 only once it listens, STOPPING=1 on SIGTERM, and exit 0.
"""

from __future__ import annotations

import configparser
import os
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from e2e import free_port
from tooling import REPO, require_tool

UNITS = {"liftshift-daemon": REPO / "daemon/systemd/liftshift-daemon.service",
         "liftshift-sink": REPO / "sink/systemd/liftshift-sink.service"}


def _unit(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read(path)
    return cp


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_runs_the_console_script_as_a_notify_service(name: str, tmp_path: Path) -> None:
    unit = _unit(UNITS[name])
    svc = unit["Service"]
    assert svc["Type"] == "notify" and svc["Restart"] == "on-failure" and svc["KillSignal"] == "SIGTERM"
    exe, *args = svc["ExecStart"].split()
    assert Path(exe).name == name and args[0] == "--config"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert name in scripts
    analyze = require_tool("systemd-analyze")
    local = Path(sys.executable).parent / name
    copy = tmp_path / UNITS[name].name
    copy.write_text(UNITS[name].read_text().replace(exe, str(local)))
    got = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False)
    assert got.returncode == 0, got.stderr


def _notify_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(60)
    return s, path


@pytest.mark.parametrize("which", ["daemon", "sink"])
def test_ready_after_listening_and_stopping_on_sigterm(which: str, tmp_path: Path, shm_dir: Path) -> None:
    port = free_port()
    cfg = tmp_path / f"{which}.toml"
    if which == "daemon":
        cfg.write_text(f'listen = "127.0.0.1:{port}"\nstate_dir = "{tmp_path / "state"}"\n'
                       f'[sim]\ndir = "{tmp_path / "sim"}"\nring_dir = "{shm_dir}"\n[tls]\ninsecure = true\n')
        module = "liftshift.daemon.main"
    else:
        cfg.write_text(f'listen = "127.0.0.1:{port}"\ndata_dir = "{tmp_path / "data"}"\ninsecure = true\n')
        module = "liftshift.sink.main"
    sock, path = _notify_socket(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", module, "--config", str(cfg)],
                            env={**os.environ, "NOTIFY_SOCKET": path}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        assert sock.recv(4096) == b"READY=1"
        # Ready means listening: a connection succeeds right now.
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        proc.send_signal(signal.SIGHUP)  # reload: logged, keeps running
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096) == b"STOPPING=1"
        assert proc.wait(timeout=60) == 0
        err = proc.stderr.read().decode() if proc.stderr else ""
        assert "reload" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
