"""Starting liftshift daemons as real processes in tests.

Integration tests run the daemons the way an operator does: as processes
with a configuration file.  :func:`start_process` starts one, waits until it
has written its ``--port-file`` and answers gRPC health checks with SERVING,
and registers a cleanup that stops it (SIGTERM, then SIGKILL after a
timeout).  The process's stdout and stderr go to a log file whose tail is
included in every failure message, so a daemon that dies at start-up says
why.  Signals are sent to the one process started here, by pid.

Typical use::

    def test_x(tmp_path, request):
        cfg = tmp_path / "sink.toml"
        cfg.write_text(f'data_dir = "{tmp_path}/data"\\nlisten = "127.0.0.1:0"\\ninsecure = true\\n')
        port_file = tmp_path / "port"
        sink = start_process(python_module("liftshift.sink.main", "--config", cfg, "--port-file", port_file),
                             port_file, cleanup=request.addfinalizer)
        ... connect to f"127.0.0.1:{sink.port}" ...
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Wait for a process started with pipes (a CLI run side by side with others); kill it on timeout."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def python_module(module: str, *args: object) -> list[str]:
    """The command line running ``python -m module args...`` with this interpreter."""
    return [sys.executable, "-m", module, *(str(a) for a in args)]


class DaemonProcess:
    """A started daemon: ``proc`` (the Popen), ``port`` (from its port file),
    ``log_path`` (its stdout+stderr)."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: Path, host: str) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log_path
        self.host = host

    @property
    def address(self) -> str:
        """``host:port`` to dial."""
        return f"{self.host}:{self.port}"

    def log(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; return the exit status
        (a no-op returning the status when it has already exited)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL (a crash, as far as the daemon can tell) and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def wait_serving(address: str, *, service: str = "", timeout: float = START_TIMEOUT_S,
                 alive: Callable[[], bool] = lambda: True, credentials: grpc.ChannelCredentials | None = None) -> None:
    """Poll gRPC health at ``address`` (over TLS with ``credentials``) until ``service`` is SERVING."""
    deadline = time.monotonic() + timeout
    last: object = None
    channel = grpc.secure_channel(address, credentials) if credentials is not None else grpc.insecure_channel(address)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and alive():
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            except grpc.RpcError as e:
                last = e.code()
            time.sleep(0.05)
    raise TimeoutError(f"{address} is not SERVING after {timeout:.0f} s (last answer: {last})")


def start_process(args: Sequence[str | os.PathLike[str]], port_file: str | os.PathLike[str], *,
                  env: dict[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
                  cleanup: Callable[[Callable[[], None]], object] | None = None, host: str = "127.0.0.1",
                  health_service: str = "", log_path: str | os.PathLike[str] | None = None,
                  timeout: float = START_TIMEOUT_S,
                  credentials: grpc.ChannelCredentials | None = None) -> DaemonProcess:
    """Start ``args`` as a process and wait until it serves.

    ``env`` is added to this process's environment; ``cleanup`` (for example
    pytest's ``request.addfinalizer``) receives the stop function.  Raises
    RuntimeError with the log's tail when the process exits or never serves.
    """
    return spawn_process(args, port_file, env=env, cwd=cwd, cleanup=cleanup, host=host, log_path=log_path,
                         timeout=timeout).wait(health_service=health_service, credentials=credentials)


class Starting:
    """A process started by :func:`spawn_process`; :meth:`wait` until it serves."""

    def __init__(self, args: Sequence[str | os.PathLike[str]], handle: DaemonProcess, port_path: Path,
                 timeout: float) -> None:
        self.args = args
        self.handle = handle
        self.port_path = port_path
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout

    def _fail(self, why: str) -> RuntimeError:
        proc = self.handle.proc
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        return RuntimeError(f"{self.args[0]} ... {why}; exit status {proc.returncode}; output:\n"
                            f"{_tail(self.handle.log_path)}")

    def wait(self, *, health_service: str = "", credentials: grpc.ChannelCredentials | None = None) -> DaemonProcess:
        """Until it has written its port file and answers health checks with SERVING (RuntimeError
        with the log's tail when it exits or the start's timeout passes first)."""
        proc, port = self.handle.proc, None
        while port is None:
            if proc.poll() is not None:
                raise self._fail("exited before writing its port file")
            if time.monotonic() > self.deadline:
                raise self._fail(f"wrote no port file {self.port_path} within {self.timeout:.0f} s")
            try:
                text = self.port_path.read_text().strip()
                port = int(text) if text else None
            except (FileNotFoundError, ValueError):
                port = None
            if port is None:
                time.sleep(0.02)
        try:
            wait_serving(f"{self.handle.host}:{port}", service=health_service,
                         timeout=max(1.0, self.deadline - time.monotonic()), alive=lambda: proc.poll() is None,
                         credentials=credentials)
        except TimeoutError as e:
            raise self._fail(str(e)) from None
        if proc.poll() is not None:
            raise self._fail("exited while starting")
        self.handle.port = port
        return self.handle


def spawn_process(args: Sequence[str | os.PathLike[str]], port_file: str | os.PathLike[str], *,
                  env: dict[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
                  cleanup: Callable[[Callable[[], None]], object] | None = None, host: str = "127.0.0.1",
                  log_path: str | os.PathLike[str] | None = None, timeout: float = START_TIMEOUT_S) -> Starting:
    """Start ``args`` as a process without waiting for it: processes that do not need each other
    start side by side (most of a start is the interpreter importing).  Arguments as for
    :func:`start_process`; ``timeout`` counts from now."""
    port_path = Path(port_file)
    port_path.unlink(missing_ok=True)  # a stale file would look like a started daemon
    logp = Path(log_path) if log_path is not None else port_path.with_name(port_path.name + ".log")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(logp, "ab") as out:
        proc = subprocess.Popen([os.fspath(a) for a in args], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=full_env, cwd=cwd)
    handle = DaemonProcess(proc, 0, logp, host)  # the port is filled in by Starting.wait
    if cleanup is not None:
        cleanup(handle.stop)
    return Starting(args, handle, port_path, timeout)
