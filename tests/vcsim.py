"""govmomi's vCenter simulator as a test fixture.

Design note
-----------
The ``vsphere`` platform is tested against a real implementation of the
vSphere API, not a mock of ours: ``tests/vcsim/main.go`` wraps govmomi's
``simulator`` package (with PBM/SPBM at ``/pbm`` and vAPI at ``/rest``)
and serves it over TLS on loopback.  :func:`vcsim_binary` builds it once into
``build/bin/vcsim`` from Debian's ``golang-go`` and
``golang-github-vmware-govmomi-dev`` (GOPATH mode, nothing downloaded) and
rebuilds it when ``main.go`` is newer.  :func:`start_vcsim` starts one
simulated vCenter as a process, the way :mod:`procs` starts our daemons:
it waits for the state file the program writes once it serves, checks that
it answers over HTTPS with its own certificate as CA, registers the stop
(SIGTERM, by pid) with ``cleanup`` and keeps its output in a log file whose
tail is in every failure.  A test starts two for a migration: the source
vCenter and the destination vCenter, whose datastore directory is the sink's
data directory (``[LocalDS_0] sub/x.vmdk`` is ``datastore_dir / "sub/x.vmdk"``).

Tests make a real API call fail on demand with :meth:`Vcsim.inject_fault`:
the program answers the next matching SOAP call (by method name, optionally
only when the request names a given moref) with a vim fault, as a vCenter
would, so pyvmomi raises ``vim.fault.<Type>``; :meth:`Vcsim.faults` says how
often each fired and :meth:`Vcsim.clear_faults` disarms them.

A missing Go toolchain or govmomi package skips the test with a reason,
except under ``LIFTSHIFT_REQUIRE_TOOLS=1`` (CI), where it fails
(:func:`tooling.missing`).  A compile error always fails.

Typical use::

    def test_x(tmp_path, request):
        src = start_vcsim(tmp_path / "src", cleanup=request.addfinalizer)
        si = src.connect()            # pyvmomi ServiceInstance, CA-verified
        ... src.datastore_dir ...     # LocalDS_0 on this machine

What this simulator version (govmomi 0.24) does and does not model is
written down where the platform uses it; ``tests/test_vcsim_fixture.py``
pins the parts the platform relies on.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tooling import REPO, missing

SOURCE_DIR = REPO / "tests" / "vcsim"
BINARY = REPO / "build" / "bin" / "vcsim"
GOPATH = Path("/usr/share/gocode")
GOVMOMI = GOPATH / "src" / "github.com" / "vmware" / "govmomi"
PACKAGES = "golang-go golang-github-vmware-govmomi-dev"
BUILD_TIMEOUT_S = 600.0  # a cold build (empty Go cache) takes about a minute
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


def _toolchain_problem() -> str | None:
    if shutil.which("go") is None:
        return f"no Go toolchain: `go` is not on PATH (apt-get install {PACKAGES})"
    for pkg in ("simulator", "pbm/simulator", "vapi/simulator"):
        if not (GOVMOMI / pkg).is_dir():
            return f"govmomi's {pkg} package is not in {GOPATH} (apt-get install golang-github-vmware-govmomi-dev)"
    return None


def _fresh() -> bool:
    if not BINARY.is_file():
        return False
    built = BINARY.stat().st_mtime_ns
    return all(src.stat().st_mtime_ns <= built for src in SOURCE_DIR.glob("*.go"))


@functools.cache
def vcsim_binary() -> Path:
    """``build/bin/vcsim``, built now unless it is newer than its sources."""
    if _fresh():
        return BINARY
    problem = _toolchain_problem()
    if problem:
        missing(problem)
    BINARY.parent.mkdir(parents=True, exist_ok=True)
    tmp = BINARY.with_name(f".vcsim.{os.getpid()}.tmp")  # renamed into place: parallel runs never see half a binary
    env = {**os.environ, "GOPATH": str(GOPATH), "GO111MODULE": "off", "GOFLAGS": ""}
    if not any(env.get(k) for k in ("GOCACHE", "XDG_CACHE_HOME", "HOME")):
        env["GOCACHE"] = str(REPO / "build" / "go-cache")  # go refuses to build without a cache directory
    args = ["go", "build", "-o", str(tmp), "./tests/vcsim"]
    try:
        proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        tmp.unlink(missing_ok=True)
        pytest.fail(f"building vcsim took longer than {BUILD_TIMEOUT_S:.0f} s")
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        pytest.fail(f"building vcsim failed:\n$ GOPATH={GOPATH} GO111MODULE=off {' '.join(args)}\n"
                    f"{proc.stdout}{proc.stderr}")
    os.replace(tmp, BINARY)
    return BINARY


@dataclass(frozen=True)
class Datastore:
    """A simulated datastore and the local directory that is its content."""

    name: str
    dir: Path


@dataclass
class Vcsim:
    """A running simulated vCenter."""

    proc: subprocess.Popen[bytes]
    url: str  # https://127.0.0.1:PORT/sdk
    host: str
    port: int
    username: str
    password: str
    cert_file: Path  # PEM; the certificate is its own CA
    datastores: tuple[Datastore, ...]
    log_path: Path
    start_seconds: float  # from exec to answering over HTTPS

    @property
    def datastore(self) -> Datastore:
        """The first datastore (``LocalDS_0``, where the model's VMs live)."""
        return self.datastores[0]

    @property
    def datastore_dir(self) -> Path:
        """The first datastore's local directory."""
        return self.datastores[0].dir

    def ssl_context(self) -> ssl.SSLContext:
        """A verifying client context trusting only this simulator's certificate."""
        return ssl.create_default_context(cafile=str(self.cert_file))

    def connect(self, *, user: str | None = None, password: str | None = None) -> Any:
        """A pyvmomi ``vim.ServiceInstance`` logged in over verified TLS.

        Disconnect it (``pyVim.connect.Disconnect``) or let the process end."""
        from pyVim.connect import SmartConnect

        return SmartConnect(host=self.host, port=self.port, user=self.username if user is None else user,
                            pwd=self.password if password is None else password, sslContext=self.ssl_context())

    def inject_fault(self, method: str, fault: str = "InsufficientResourcesFault",
                     message: str = "injected by the test", count: int = 1, match: str = "") -> None:
        """Answer the next ``count`` SOAP calls of ``method`` (``"PowerOnVM_Task"``)
        with the vim fault type ``fault`` and ``message`` (pyvmomi raises
        ``vim.fault.<fault>`` with ``msg == message`` from the method call
        itself, before any task exists).

        With ``match``, only calls whose request body contains it fire, e.g. a
        VM's moref value (``vm._moId``) to fail one VM's call and no other's.
        Faults fire in the order armed; calls no armed fault matches pass
        through.  An unknown fault type or a count below 1 raises ValueError."""
        self._faults_request("POST", {"method": method, "fault": fault, "message": message, "count": count,
                                      "match": match})

    def clear_faults(self) -> None:
        """Disarm every injected fault (and forget their fired counts)."""
        self._faults_request("DELETE")

    def faults(self) -> list[dict[str, Any]]:
        """The faults armed since the last :meth:`clear_faults`, in arming order:
        ``method``, ``fault``, ``message``, ``count``, ``match`` as armed and
        ``fired``, how many calls each has failed (exhausted when ``fired == count``)."""
        result: list[dict[str, Any]] = json.loads(self._faults_request("GET"))
        return result

    def _faults_request(self, verb: str, body: dict[str, Any] | None = None) -> bytes:
        req = urllib.request.Request(f"https://{self.host}:{self.port}/liftshift-test/faults", method=verb,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=5.0) as resp:
                data: bytes = resp.read()
                return data
        except urllib.error.HTTPError as e:
            why = e.read().decode(errors="replace").strip()
            if e.code == 400:
                raise ValueError(why) from None
            raise RuntimeError(f"vcsim {verb} /liftshift-test/faults: HTTP {e.code}: {why}") from None

    def log(self) -> str:
        """Everything the simulator wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; return the exit status."""
        return _stop(self.proc, timeout)


def _stop(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def _answers(url: str, context: ssl.SSLContext) -> str | None:
    """None when ``url``'s service answers over verified HTTPS, else why not."""
    base = url.rsplit("/sdk", 1)[0]
    try:
        with urllib.request.urlopen(f"{base}/sdk/vimServiceVersions.xml", context=context, timeout=2.0) as resp:
            resp.read()
            return None
    except OSError as e:
        return str(e)


def start_vcsim(workdir: str | os.PathLike[str], *, cleanup: Callable[[Callable[[], object]], object] | None = None,
                name: str = "vcsim", username: str = "liftshift", password: str = "vcsim-secret",
                vms: int = 2, hosts: int = 1, clusters: int = 1, standalone_hosts: int = 0, datastores: int = 1,
                pools: int = 0, portgroups: int = 1, autostart: bool = True,
                datastore_dir: str | os.PathLike[str] | None = None, session_idle_timeout: float = 0.0,
                extra_args: Sequence[str] = (), timeout: float = START_TIMEOUT_S) -> Vcsim:
    """Start a simulated vCenter listening on a free loopback port.

    Inventory: one datacenter ``DC0`` with ``clusters`` clusters of ``hosts``
    hosts, ``standalone_hosts`` standalone hosts, ``datastores`` datastores
    (``LocalDS_<i>``) mounted on every host, ``portgroups`` distributed port
    groups plus the standard ``VM Network``, and ``vms`` VMs (``DC0_C0_RP0_VM0``
    ...) per resource pool, powered on when ``autostart``.  Each datastore
    is a directory created inside ``datastore_dir`` (default ``workdir/datastores``).
    Only ``username``/``password`` log in.  ``session_idle_timeout`` (seconds,
    0 = never) expires idle sessions, for re-login tests.
    """
    binary = vcsim_binary()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / f"{name}.json"
    state_path.unlink(missing_ok=True)  # a stale file would look like a started simulator
    log_path = work / f"{name}.log"
    ds_dir = Path(datastore_dir) if datastore_dir is not None else work / "datastores"
    args = [str(binary), "-state", str(state_path), "-cert", str(work / f"{name}-cert.pem"),
            "-listen", "127.0.0.1:0", "-username", username, "-password", password,
            "-datastore-dir", str(ds_dir), "-vms", str(vms), "-hosts", str(hosts), "-clusters", str(clusters),
            "-standalone-hosts", str(standalone_hosts), "-datastores", str(datastores), "-pools", str(pools),
            "-portgroups", str(portgroups), f"-autostart={'true' if autostart else 'false'}",
            "-session-idle-timeout", f"{session_idle_timeout}s", *extra_args]
    started = time.monotonic()
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    if cleanup is not None:
        cleanup(lambda: _stop(proc))

    def fail(why: str) -> RuntimeError:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        return RuntimeError(f"vcsim {why}; exit status {proc.returncode}; output:\n{_tail(log_path)}")

    deadline = time.monotonic() + timeout
    state: dict[str, Any] | None = None
    while state is None:
        if proc.poll() is not None:
            raise fail("exited before writing its state file")
        if time.monotonic() > deadline:
            raise fail(f"wrote no state file {state_path} within {timeout:.0f} s")
        try:
            state = json.loads(state_path.read_text())
        except (FileNotFoundError, ValueError):
            time.sleep(0.02)
    handle = Vcsim(proc=proc, url=state["url"], host=state["host"], port=int(state["port"]),
                   username=state["username"], password=state["password"], cert_file=Path(state["cert_file"]),
                   datastores=tuple(Datastore(d["name"], Path(d["dir"])) for d in state["datastores"]),
                   log_path=log_path, start_seconds=0.0)
    context = handle.ssl_context()
    while (why := _answers(handle.url, context)) is not None:
        if proc.poll() is not None:
            raise fail("exited while starting")
        if time.monotonic() > deadline:
            raise fail(f"does not answer at {handle.url} within {timeout:.0f} s: {why}")
        time.sleep(0.02)
    handle.start_seconds = time.monotonic() - started
    return handle
