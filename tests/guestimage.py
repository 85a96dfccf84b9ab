"""A real Linux guest under QEMU that writes to its virtio disk.

Design note
-----------
Migrations must be proven with a real guest kernel issuing real block
requests, not only with our simulated workload.  The guest is as small as a
Linux guest gets: Debian's cloud kernel (``linux-image-*-cloud-amd64``, the
smallest Debian kernel with virtio and ACPI) booted directly by QEMU
(``-kernel``/``-initrd``, no bootloader, no root filesystem) with an
initramfs holding static busybox, the few modules it needs and
``tests/guest/init.sh`` as ``/init``.  The guest's whole program is that
script; it reports over the serial console in ``LIFTSHIFT-*`` lines (listed
at the top of the script) and powers off when done, so a boot is a process
that ends.  TCG only (``/dev/kvm`` may be unusable) and always under a
timeout: the QEMU process runs under coreutils ``timeout`` and every wait
here is bounded as well.

What the guest writes is deterministic: rotations of a fixed 1 MiB pool
(SHAKE-256 of a constant, written into the initramfs) picked by an LCG
seeded by ``seed``.  :func:`expected_dataset` computes the same bytes on the
host, so a test can check the disk holds exactly what the guest meant to
write, not only that two checksums agree.

Caching, all under ``build/guest/``: the kernel package is found in
``build/guest/`` or apt's cache or fetched with ``apt-get download`` (the
``linux-image-cloud-amd64`` metapackage resolved to its versioned kernel
package), extracted once with ``dpkg-deb -x``; the initramfs is named by the
hash of everything in it and built only when that name is missing.  As with
every external tool (:mod:`tooling`), a kernel that cannot be had or a
missing QEMU/busybox skips the test with the reason, except under
``LIFTSHIFT_REQUIRE_TOOLS=1`` where it fails.

Typical use::

    run = boot(["-drive", f"file={img},format=raw,if=virtio,cache=none"], "write", seed=1,
               dataset_mib=16, console=tmp_path / "console.log", timeout=120, qmp=tmp_path / "qmp.sock")
    run.wait_for("LIFTSHIFT-WRITING")
    run.powerdown()
    run.wait()
    assert run.checksum() == dataset_sha256(1, 16)
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import json
import lzma
import math
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tooling import REPO, missing, require_tool

GUEST_DIR = REPO / "build" / "guest"
INIT_SCRIPT = REPO / "tests" / "guest" / "init.sh"
KERNEL_META = "linux-image-cloud-amd64"
APT_ARCHIVES = Path("/var/cache/apt/archives")
DEB_GLOB = "linux-image-*-cloud-amd64_*_amd64.deb"  # versioned packages only: not the metapackage, -dbg, -unsigned
DOWNLOAD_TIMEOUT_S = 300.0
BUSYBOX = Path("/bin/busybox")
# Loaded in this order (dependencies first) unless built in; button + evdev give the power button.
MODULES = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "virtio_blk",
           "button", "evdev")
POOL_BYTES = 1 << 20
POOL_SEED = b"liftshift guest pool v1"
MIB = 1 << 20
INITRAMFS_FORMAT = b"liftshift-initramfs 1"  # bump when the layout below changes
QMP_TIMEOUT_S = 10.0


class GuestError(AssertionError):
    """The guest reported ``LIFTSHIFT-ERROR``, did not say what was expected, or ran out of time."""


# --- kernel ---------------------------------------------------------------------------------------


def _version_key(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _run(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, **kw)


def _download_deb() -> Path:
    """``apt-get download`` the versioned cloud kernel package into ``build/guest/``."""
    for tool in ("apt-cache", "apt-get"):
        if shutil.which(tool) is None:
            missing(f"no guest kernel in {GUEST_DIR} and no {tool} to download one")
    try:
        deps = _run(["apt-cache", "depends", KERNEL_META], timeout=60)
        found = re.search(r"Depends:\s+(linux-image-\S+-cloud-amd64)\s*$", deps.stdout, re.M)
        if not found:
            missing(f"`apt-cache depends {KERNEL_META}` names no kernel package (apt-get update?): "
                    f"{deps.stdout.strip()} {deps.stderr.strip()}")
        assert found is not None
        with tempfile.TemporaryDirectory(dir=GUEST_DIR) as tmp:  # never a half-downloaded .deb in GUEST_DIR
            got = _run(["apt-get", "download", found.group(1)], cwd=tmp, timeout=DOWNLOAD_TIMEOUT_S)
            debs = list(Path(tmp).glob("*.deb"))
            if got.returncode != 0 or len(debs) != 1:
                missing(f"`apt-get download {found.group(1)}` failed: {got.stderr.strip()[-2000:]}")
            os.replace(debs[0], GUEST_DIR / debs[0].name)
            return GUEST_DIR / debs[0].name
    except subprocess.TimeoutExpired as e:
        missing(f"downloading the guest kernel timed out: {e}")
        raise  # not reached: missing() raises


def _find_deb() -> Path | None:
    debs = [*GUEST_DIR.glob(DEB_GLOB), *APT_ARCHIVES.glob(DEB_GLOB)]
    return max(debs, key=lambda p: _version_key(p.name)) if debs else None


@dataclass(frozen=True)
class KernelTree:
    """An extracted kernel package."""

    vmlinuz: Path
    modules: Path  # lib/modules/<release>
    release: str  # e.g. 6.1.0-56-cloud-amd64
    deb: str  # the package file it came from


def _tree_at(root: Path) -> KernelTree | None:
    kernels = sorted(root.glob("boot/vmlinuz-*"))
    if not kernels:
        return None
    release = kernels[-1].name.removeprefix("vmlinuz-")
    modules = root / "lib" / "modules" / release
    if not (modules / "modules.builtin").is_file():
        return None
    deb = (root / ".deb").read_text().strip() if (root / ".deb").is_file() else "?"
    return KernelTree(vmlinuz=kernels[-1], modules=modules, release=release, deb=deb)


@functools.cache
def kernel_tree() -> KernelTree:
    """The guest kernel and its modules, extracted under ``build/guest/kernel/`` once.

    The newest package in ``build/guest/`` or apt's cache is used (extracted
    unless it already is); with none, an extracted tree is reused, and with
    none of those either the package is downloaded (skip/fail when it cannot be)."""
    deb = _find_deb()
    if deb is None:
        trees = [t for d in sorted(GUEST_DIR.glob("kernel/*"), key=lambda p: _version_key(p.name))
                 if (t := _tree_at(d)) is not None]
        if trees:
            return trees[-1]
        GUEST_DIR.mkdir(parents=True, exist_ok=True)
        deb = _download_deb()
    target = GUEST_DIR / "kernel" / deb.name.split("_")[0].removeprefix("linux-image-")
    if (tree := _tree_at(target)) is not None:
        return tree
    if shutil.which("dpkg-deb") is None:
        missing(f"dpkg-deb is needed to unpack {deb}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extract-"))
    try:
        got = _run(["dpkg-deb", "-x", str(deb), str(tmp)], timeout=300)
        if got.returncode != 0:
            pytest.fail(f"dpkg-deb -x {deb} failed: {got.stderr}")
        (tmp / ".deb").write_text(deb.name + "\n")
        with contextlib.suppress(OSError):  # a parallel run may have won the race: use its tree
            os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tree = _tree_at(target)
    if tree is None:
        pytest.fail(f"{deb} holds no boot/vmlinuz-* with lib/modules/<release>/modules.builtin")
    assert tree is not None
    return tree


def guest_kernel() -> Path:
    """The guest kernel image (``vmlinuz``)."""
    return kernel_tree().vmlinuz


def guest_modules() -> Path:
    """The guest kernel's ``lib/modules/<release>`` directory."""
    return kernel_tree().modules


# --- initramfs ------------------------------------------------------------------------------------


@functools.cache
def guest_pool() -> bytes:
    """The 1 MiB the guest's data are cut from (``/lib/liftshift/pool``)."""
    return hashlib.shake_256(POOL_SEED).digest(POOL_BYTES)


def expected_dataset(seed: int, mib: int) -> Iterator[bytes]:
    """The dataset ``write`` mode puts at the start of the disk, one MiB at a time.

    MiB ``i`` is the pool rotated left by ``x_i >> 11`` bytes, where
    ``x_{i+1} = (1103515245 x_i + 12345) mod 2^31`` and ``x_0 = seed mod 2^31``
    (init.sh does the same with two dd's per MiB)."""
    pool = guest_pool()
    x = seed % (1 << 31)
    for _ in range(mib):
        x = (x * 1103515245 + 12345) % (1 << 31)
        o = x >> 11
        yield pool[o:] + pool[:o]


def dataset_sha256(seed: int, mib: int) -> str:
    """The ``LIFTSHIFT-CHECKSUM`` a correct guest prints for ``seed`` and ``mib``."""
    h = hashlib.sha256()
    for block in expected_dataset(seed, mib):
        h.update(block)
    return h.hexdigest()


def region_sha256(path: Path, mib: int, offset_mib: int = 0) -> str:
    """SHA-256 of ``mib`` MiB of a raw image file from ``offset_mib`` MiB (short files read as zeros)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset_mib * MIB)
        for _ in range(mib):
            block = f.read(MIB)
            h.update(block + bytes(MIB - len(block)))
    return h.hexdigest()


def _static_elf(path: Path) -> bool:
    """True when ``path`` is an x86-64 ELF without a program interpreter (statically linked)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:5] != b"\x7fELF\x02" or struct.unpack_from("<H", head, 18)[0] != 62:
            return False
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))  # 3 = PT_INTERP


def _busybox() -> Path:
    if not BUSYBOX.is_file():
        missing(f"{BUSYBOX} is missing (apt-get install busybox-static)")
    if not _static_elf(BUSYBOX):
        missing(f"{BUSYBOX} is not a static x86-64 binary (apt-get install busybox-static)")
    return BUSYBOX


def _module_files(modules_dir: Path) -> dict[str, Path]:
    """Module name (``-`` as ``_``) -> its .ko / .ko.xz / .ko.gz file."""
    found: dict[str, Path] = {}
    for path in modules_dir.rglob("*.ko*"):
        name = re.sub(r"\.ko(\.xz|\.gz|\.zst)?$", "", path.name)
        if name != path.name:
            found[name.replace("-", "_")] = path
    return found


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        pytest.fail(f"{path}: zstd-compressed modules are not supported (no zstd in the Python standard library)")
    return data


def _modules(modules_dir: Path) -> list[tuple[str, bytes]]:
    """``MODULES`` and what they depend on, dependencies first, built-in ones left out."""
    builtin = {re.sub(r"\.ko$", "", Path(line).name).replace("-", "_")
               for line in (modules_dir / "modules.builtin").read_text().split()}
    files = _module_files(modules_dir)
    ordered: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in files:
            pytest.fail(f"guest kernel module {name} is neither built in nor in {modules_dir}")
        data = _module_bytes(files[name])
        deps = re.search(rb"(?:^|\0)depends=([^\0]*)", data)
        for dep in (deps.group(1).decode().split(",") if deps else []):
            if dep:
                visit(dep.replace("-", "_"))
        ordered.append((name, data))

    for name in MODULES:
        visit(name)
    return ordered


class _Cpio:
    """A newc ("070701") cpio archive in memory, owner root, mtime 0 (reproducible)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.ino = 0

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self.ino += 1
        raw = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(raw), 0)
        self.out += b"070701" + b"".join(b"%08X" % v for v in fields) + raw
        self.out += bytes(-len(self.out) % 4) + data
        self.out += bytes(-len(self.out) % 4)

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return bytes(self.out)


def _applets(busybox: Path) -> list[str]:
    got = _run([str(busybox), "--list-full"], timeout=30)
    if got.returncode != 0 or not got.stdout.strip():
        pytest.fail(f"{busybox} --list-full failed: {got.stderr}")
    return [a for a in got.stdout.split() if a not in ("bin/busybox", "linuxrc")]


def build_initramfs(out: Path | None = None) -> Path:
    """The guest's initramfs (gzip'd newc cpio): busybox with its applet links,
    ``MODULES`` (decompressed) with ``/lib/liftshift/modules`` listing the load
    order, the data pool and ``/init``.

    Built once per content hash as ``build/guest/initramfs-<hash>.cpio.gz``;
    with ``out`` it is also copied there and ``out`` returned."""
    busybox = _busybox()
    modules = _modules(guest_modules())
    init = INIT_SCRIPT.read_bytes()
    bb = busybox.read_bytes()
    applets = _applets(busybox)
    h = hashlib.sha256(INITRAMFS_FORMAT)
    for part in (init, bb, "\n".join(applets).encode(), *(n.encode() + b"\0" + d for n, d in modules)):
        h.update(hashlib.sha256(part).digest())
    path = GUEST_DIR / f"initramfs-{h.hexdigest()[:16]}.cpio.gz"
    if not path.is_file():
        cpio = _Cpio()
        dirs = {"bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run", "tmp", "etc",
                "lib", "lib/modules", "lib/liftshift"}
        for d in sorted(dirs | {str(Path(a).parent) for a in applets} - {"."}):
            cpio.add(d, stat.S_IFDIR | 0o755)
        cpio.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
        cpio.add("bin/busybox", stat.S_IFREG | 0o755, bb)
        for applet in applets:
            cpio.add(applet, stat.S_IFLNK | 0o777, b"/bin/busybox")
        for name, data in modules:
            cpio.add(f"lib/modules/{name}.ko", stat.S_IFREG | 0o644, data)
        cpio.add("lib/liftshift/modules", stat.S_IFREG | 0o644, "".join(f"{n}\n" for n, _ in modules).encode())
        cpio.add("lib/liftshift/pool", stat.S_IFREG | 0o644, guest_pool())
        cpio.add("init", stat.S_IFREG | 0o755, init)
        GUEST_DIR.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz:
            gz.write(cpio.finish())
        os.replace(tmp, path)  # parallel builders write the same bytes
    if out is None:
        return path
    shutil.copyfile(path, out)
    return out


# --- boot -----------------------------------------------------------------------------------------


def qmp_command(sock_path: Path, command: str, timeout: float = QMP_TIMEOUT_S, **arguments: Any) -> Any:
    """Run one QMP command on QEMU's ``-qmp unix:`` socket and return its ``return``.

    Reads the greeting, negotiates (``qmp_capabilities``), sends ``command``
    and skips events until the answer.  ``quit`` may lose its answer to
    QEMU exiting: that returns None."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        while True:
            try:
                s.connect(str(sock_path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise GuestError(f"QMP socket {sock_path} does not accept within {timeout:.0f} s") from None
                time.sleep(0.05)
        s.settimeout(max(0.1, deadline - time.monotonic()))
        lines = s.makefile("rb")

        def answer() -> Any:
            while line := lines.readline():
                msg = json.loads(line)
                if "error" in msg:
                    raise GuestError(f"QMP {command}: {msg['error']}")
                if "return" in msg:
                    return msg["return"]
            if command == "quit":
                return None
            raise GuestError(f"QMP socket closed before answering {command}")

        greeting = json.loads(lines.readline() or b"null")
        if not greeting or "QMP" not in greeting:
            raise GuestError(f"no QMP greeting on {sock_path}: {greeting!r}")
        s.sendall(b'{"execute": "qmp_capabilities"}\n')
        answer()
        s.sendall(json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n")
        return answer()


@dataclass
class GuestRun:
    """A booted guest: its QEMU process (under coreutils ``timeout``), console and QMP socket."""

    proc: subprocess.Popen[bytes]
    console: Path
    qmp: Path | None
    timeout: float
    command: list[str]
    log: Path  # QEMU's own stdout and stderr
    started: float = field(default_factory=time.monotonic)
    marks: dict[str, float] = field(default_factory=dict)  # console line prefix -> seconds after start

    @property
    def deadline(self) -> float:
        return self.started + self.timeout

    def console_text(self) -> str:
        """Everything the guest printed so far (kernel messages are mostly off: ``quiet``)."""
        try:
            return self.console.read_bytes().decode(errors="replace").replace("\r", "")
        except FileNotFoundError:
            return ""

    def lines(self, prefix: str) -> list[str]:
        """Console lines starting with ``prefix`` (a ``LIFTSHIFT-`` one), from where it starts:
        the firmware's and the kernel's terminal resets may precede it on the line."""
        found = (line[line.find("LIFTSHIFT-"):].strip() for line in self.console_text().splitlines()
                 if "LIFTSHIFT-" in line)
        return [line for line in found if line.startswith(prefix)]

    def _why(self, what: str) -> GuestError:
        tail = "\n".join(self.console_text().splitlines()[-30:])
        try:
            qemu = self.log.read_text(errors="replace").strip()
        except FileNotFoundError:
            qemu = ""
        return GuestError(f"{what}; exit status {self.proc.poll()}; QEMU said: {qemu or '(nothing)'}; console:\n{tail}")

    def wait_for(self, prefix: str, timeout: float | None = None) -> float:
        """Wait until a console line starts with ``prefix``; return seconds since boot.

        Raises :class:`GuestError` on ``LIFTSHIFT-ERROR``, on QEMU exiting
        first, or after ``timeout`` (default: what is left of the run's)."""
        limit = self.deadline if timeout is None else min(self.deadline, time.monotonic() + timeout)
        while True:
            if self.lines(prefix):
                return self.marks.setdefault(prefix, time.monotonic() - self.started)
            if errors := self.lines("LIFTSHIFT-ERROR"):
                raise self._why(f"the guest failed: {errors[0]}")
            if self.proc.poll() is not None:
                if self.lines(prefix):
                    continue
                raise self._why(f"QEMU exited before the guest printed {prefix}")
            if time.monotonic() > limit:
                raise self._why(f"no {prefix} within {limit - self.started:.0f} s of boot")
            time.sleep(0.1)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for QEMU to exit (at most what is left of the run's timeout, or ``timeout``)
        and return its status; kill it and raise :class:`GuestError` when it does not."""
        limit = self.deadline if timeout is None else min(self.deadline, time.monotonic() + timeout)
        try:
            status = self.proc.wait(max(0.0, limit - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            raise self._why(f"QEMU still running {limit - self.started:.0f} s after boot; killed") from None
        self.marks.setdefault("exit", time.monotonic() - self.started)
        if status == 124:
            raise self._why(f"QEMU ran out of its {self.timeout:.0f} s (coreutils timeout)")
        return status

    def checksum(self) -> str:
        """The sha256 from the one ``LIFTSHIFT-CHECKSUM`` line (GuestError on none,
        several, or ``LIFTSHIFT-ERROR``)."""
        if errors := self.lines("LIFTSHIFT-ERROR"):
            raise self._why(f"the guest failed: {errors[0]}")
        sums = [line.split()[1] for line in self.lines("LIFTSHIFT-CHECKSUM ")]
        if len(sums) != 1 or not re.fullmatch(r"[0-9a-f]{64}", sums[0]):
            raise self._why(f"expected one LIFTSHIFT-CHECKSUM line, got {sums}")
        return sums[0]

    def powerdown(self) -> None:
        """Press the ACPI power button (QMP ``system_powerdown``)."""
        if self.qmp is None:
            raise GuestError("booted without qmp=")
        qmp_command(self.qmp, "system_powerdown")

    def quit(self) -> None:
        """Stop QEMU at once (QMP ``quit``, or SIGTERM without QMP) and wait for it."""
        if self.proc.poll() is None:
            if self.qmp is not None:
                with contextlib.suppress(GuestError, OSError):
                    qmp_command(self.qmp, "quit")
            else:
                self.proc.terminate()
        try:
            self.proc.wait(QMP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """Stop QEMU now: SIGTERM to ``timeout``, which passes it on; after 5 s
        SIGKILL to the process group ``timeout`` leads (it and QEMU)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def guest_append(mode: str, *, seed: int, dataset_mib: int, churn_mib: int = 8, pause_ms: int = 0) -> str:
    """The kernel command line of the guest (``mode``: write, verify or auto; see init.sh).

    ``cryptomgr.notests`` skips the crypto API's self-tests of its algorithms at boot (0.4 s
    of a ~4 s boot under TCG: crypto_algapi_init in initcall_debug); nothing here tests the
    guest kernel's crypto."""
    return (f"console=ttyS0 quiet liftshift.mode={mode} liftshift.seed={seed} liftshift.mib={dataset_mib} "
            f"liftshift.churn_mib={churn_mib} liftshift.pause_ms={pause_ms} panic=-1 cryptomgr.notests")


def boot(disk_args: list[str], mode: str, *, seed: int, dataset_mib: int, console: Path, timeout: float,
         extra: list[str] | None = None, qmp: Path | None = None, churn_mib: int = 8,
         pause_ms: int = 0) -> GuestRun:
    """Boot the guest in ``mode`` (``write`` or ``verify``) with ``disk_args`` as its disk.

    ``disk_args`` are QEMU arguments giving the one virtio disk, e.g.
    ``["-drive", f"file={img},format=raw,if=virtio,cache=none"]`` or
    ``file=nbd:unix:{sock}``.  The serial console goes to ``console``; with
    ``qmp`` QEMU serves QMP on that unix socket (for :meth:`GuestRun.powerdown`).
    ``churn_mib`` and ``pause_ms`` shape the steady writes after the dataset
    in ``write`` mode.  QEMU runs under ``timeout`` seconds at most."""
    qemu = require_tool("qemu-system-x86_64")
    timeout_cmd = require_tool("timeout")
    kernel = guest_kernel()
    initrd = build_initramfs()
    append = guest_append(mode, seed=seed, dataset_mib=dataset_mib, churn_mib=churn_mib, pause_ms=pause_ms)
    console.unlink(missing_ok=True)
    if qmp is not None:
        qmp.unlink(missing_ok=True)
    command = [timeout_cmd, "-k", "5", str(max(1, math.ceil(timeout))),
               qemu, "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot", "-nic", "none",
               "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
               "-serial", f"file:{console}", "-monitor", "none", "-display", "none", *disk_args,
               *([] if qmp is None else ["-qmp", f"unix:{qmp},server=on,wait=off"]), *(extra or [])]
    log = console.with_name(console.name + ".qemu")
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # timeout(1) and QEMU: one group of their own
    return GuestRun(proc=proc, console=console, qmp=qmp, timeout=timeout, command=command, log=log)
