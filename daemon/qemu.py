"""QEMU pieces shared by the ``qemu`` platform (source) and the sink (destination VM).

Design note
-----------
* **Command line.**  :func:`command` builds one QEMU invocation for a VM:
  direct kernel boot or boot from the first disk, raw virtio drives with
  ``cache=none`` (the guest's flushes reach the disk, and at the source every
  write goes through ``liftshift-nbd``), serial console to a file, a QMP
  socket, no display, ``-no-reboot`` (a guest that reboots has stopped).
* **Acceleration.**  ``auto`` uses KVM only where it works.  Opening
  ``/dev/kvm`` is not enough: on hosts with nested virtualisation KVM can
  create VMs that never get far (seen here: the kernel hangs after the BIOS).
  The probe runs QEMU with KVM on a 64 KiB firmware whose reset vector writes
  to the ``isa-debug-exit`` port, so QEMU exits with a known status when the
  vCPU really ran; QEMU's warnings that the host lacks CPU features the
  default CPU model needs also rule KVM out.  The answer is cached per
  process.  Anything else (no ``/dev/kvm``, a timeout, another status) means
  TCG, and the reason is logged once.
* **QMP.**  :func:`qmp` sends one command over the VM's QMP socket (greeting,
  ``qmp_capabilities``, command; events are skipped) with a timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .errors import FailedPrecondition, LiftshiftError, Unavailable

log = logging.getLogger("liftshift.daemon.qemu")

MARKER = "qemu-system"
_PROBE_EXIT = 0x2A
_probe_cache: dict[str, tuple[str, str]] = {}


def _probe_firmware() -> bytes:
    """64 KiB whose reset vector (F000:FFF0) does ``mov al, 0x2a; out 0xf4, al; hlt``."""
    fw = bytearray(b"\xf4" * 65536)
    fw[0xFFF0:0xFFF5] = bytes([0xB0, _PROBE_EXIT, 0xE6, 0xF4, 0xF4])
    return bytes(fw)


def kvm_problem(binary: str = "qemu-system-x86_64", timeout: float = 10.0) -> str | None:
    """Why KVM cannot run guests here, or None if it can."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is missing or not accessible"
    with tempfile.NamedTemporaryFile(prefix="liftshift-kvm-probe-", suffix=".bin") as fw:
        fw.write(_probe_firmware())
        fw.flush()
        try:
            got = subprocess.run([binary, "-accel", "kvm", "-bios", fw.name, "-nodefaults", "-display", "none",
                                  "-monitor", "none", "-serial", "none", "-no-reboot",
                                  "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
                                 capture_output=True, text=True, timeout=timeout, check=False)
        except FileNotFoundError:
            return f"{binary} is not installed"
        except subprocess.TimeoutExpired:
            return f"a KVM probe guest did not finish within {timeout:g} s"
    if got.returncode != (_PROBE_EXIT << 1) | 1:
        return f"a KVM probe guest ended with status {got.returncode}: {got.stderr.strip()[:200]}"
    if "doesn't support requested feature" in got.stderr:
        return f"KVM lacks CPU features guests need ({got.stderr.strip().splitlines()[0][:160]})"
    return None


def accel(choice: str, binary: str = "qemu-system-x86_64") -> str:
    """``kvm`` or ``tcg`` for ``choice`` (``auto`` probes once per process)."""
    if choice in ("kvm", "tcg"):
        return choice
    if choice != "auto":
        raise FailedPrecondition(f"accel {choice!r} is not one of auto, kvm, tcg")
    if binary not in _probe_cache:
        why = kvm_problem(binary)
        _probe_cache[binary] = ("tcg", why) if why else ("kvm", "")
        if why:
            log.warning("QEMU runs with TCG (no hardware acceleration): %s", why)
    return _probe_cache[binary][0]


def drive(path: str | Path, *, nbd_socket: bool = False) -> list[str]:
    """A raw virtio disk: a file, or an NBD export on a Unix socket."""
    target = f"nbd:unix:{path}" if nbd_socket else str(path)
    if "," in target:
        raise FailedPrecondition(f"disk path {target!r} contains a comma, which QEMU's -drive cannot take")
    return ["-drive", f"file={target},format=raw,if=virtio,cache=none,discard=unmap"]


def check_socket_path(path: Path) -> None:
    """Unix socket paths are limited to 107 bytes: refuse a longer one up front, with its key."""
    if len(os.fsencode(path)) > 107:
        raise FailedPrecondition(f"socket path {path} is {len(os.fsencode(path))} bytes, Unix sockets allow 107",
                                 hint="choose a shorter qemu.dir")


def command(*, binary: str, accel_name: str, memory_mb: int, drives: list[list[str]], console: Path,
            qmp_socket: Path | None = None, kernel: str = "", initrd: str = "", append: str = "",
            extra: list[str] | None = None) -> list[str]:
    """The QEMU command line of one VM (see the module's design note)."""
    cmd = [binary, "-accel", accel_name, "-m", str(memory_mb), "-display", "none", "-no-reboot",
           "-nodefaults", "-serial", f"file:{console}", "-monitor", "none", "-nic", "none"]
    if qmp_socket is not None:
        cmd += ["-qmp", f"unix:{qmp_socket},server=on,wait=off"]
    if kernel:
        cmd += ["-kernel", kernel]
        if initrd:
            cmd += ["-initrd", initrd]
        if append:
            cmd += ["-append", append]
    for d in drives:
        cmd += d
    return cmd + list(extra or [])


async def qmp(socket_path: Path, name: str, arguments: dict[str, Any] | None = None,
              timeout: float = 10.0) -> Any:
    """Run one QMP command; its ``return`` value, or a LiftshiftError with QEMU's error."""
    async def run() -> Any:
        reader, writer = await asyncio.open_unix_connection(str(socket_path))
        try:
            async def reply() -> dict[str, Any]:
                while True:
                    line = await reader.readline()
                    if not line:
                        raise Unavailable(f"QMP socket {socket_path} closed")
                    msg = json.loads(line)
                    if "event" not in msg:
                        return msg  # type: ignore[no-any-return]

            await reply()  # greeting
            for cmd in ({"execute": "qmp_capabilities"}, {"execute": name, "arguments": arguments or {}}):
                writer.write(json.dumps(cmd).encode() + b"\n")
                await writer.drain()
                got = await reply()
                if "error" in got:
                    raise LiftshiftError(f"QMP {cmd['execute']}: {got['error'].get('desc', got['error'])}")
            return got.get("return")
        finally:
            writer.close()

    try:
        return await asyncio.wait_for(run(), timeout)
    except (TimeoutError, OSError) as e:
        raise Unavailable(f"QMP {name} on {socket_path}: {e or 'timed out'}") from None
