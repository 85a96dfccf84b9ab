"""The platform contract suite against the ``qemu`` platform, with a real Linux guest.

The running VM is QEMU (TCG) booting Debian's cloud kernel and the test
initramfs (:mod:`guestimage`), whose init writes its disk with O_DIRECT; the
disk goes through ``liftshift-nbd``.  The destination is a real sink, which
starts QEMU on the shadow disks.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from e2e import free_port
from guestimage import build_initramfs, guest_append, guest_kernel
from platform_contract import ContractEnv, PlatformContract, open_shadows
from procs import python_module, start_process

from liftshift.daemon.platform import ShadowDisk
from liftshift.daemon.qemu_platform import QemuPlatform
from liftshift.daemon.settings import QemuConfig, QemuDisk, QemuVm

MiB = 1 << 20
BOOT_S = 120.0


def wait_console(platform: QemuPlatform, vm: str, needle: str, timeout: float = BOOT_S) -> str:
    """The guest's console once it shows ``needle``."""
    console = platform.console(platform.vms[vm])
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = console.read_text(errors="replace") if console.exists() else ""
        if needle in text:
            return text
        assert "LIFTSHIFT-ERROR" not in text, text
        time.sleep(0.1)
    raise AssertionError(f"{vm}: no {needle!r} on the console within {timeout:g} s:\n{text[-2000:]}")


def qemu_config(tmp_path: Path, shm_dir: Path, *, seed: int = 11) -> QemuConfig:
    kernel, initrd = str(guest_kernel()), str(build_initramfs())
    append = guest_append("auto", seed=seed, dataset_mib=4, churn_mib=4, pause_ms=20)
    stopped = tmp_path / "stopped-1.img"
    with open(stopped, "wb") as f:
        f.truncate(8 * MiB)
    cfg = QemuConfig(dir=tmp_path / "qemu", ring_dir=shm_dir, ring_capacity=4 * MiB, accel="tcg",
                     powerdown_timeout_s=30, vm=[
                         QemuVm(name="running-1", memory_mb=192, kernel=kernel, initrd=initrd, append=append,
                                disks=[QemuDisk("disk0", tmp_path / "running-1.img", 16 * MiB)]),
                         QemuVm(name="stopped-1", memory_mb=192, kernel=kernel, initrd=initrd, append=append,
                                power_on=False, disks=[QemuDisk("disk0", stopped)]),
                     ])
    cfg.check()
    for v in cfg.vm:
        v.check()
    return cfg


@pytest.fixture
async def env(tmp_path: Path, shm_dir: Path, request: pytest.FixtureRequest) -> AsyncIterator[ContractEnv]:
    port = free_port()
    scfg = tmp_path / "sink.toml"
    scfg.write_text(f'listen = "127.0.0.1:{port}"\ndata_dir = "{tmp_path / "sink-data"}"\nstop_vms_on_exit = true\n'
                     "insecure = true\n")
    platform = QemuPlatform(qemu_config(tmp_path, shm_dir), tmp_path / "qemu")
    request.addfinalizer(lambda: _kill_all(platform))
    await platform.power_on("running-1")  # QEMU runs; its guest boots (seconds under TCG) while the test goes on
    start_process(python_module("liftshift.sink.main", "--config", scfg, "--port-file", tmp_path / "sink.port"),
                  tmp_path / "sink.port", cleanup=request.addfinalizer)
    destination = f"127.0.0.1:{port}"
    waited = []

    async def make_shadows(vm: str, closed: bool) -> list[ShadowDisk]:
        return await open_shadows(platform, destination, vm, closed)

    async def guest_ready() -> None:
        wait_console(platform, "running-1", "LIFTSHIFT-WRITING")  # the guest writes from now on
        waited.append(True)

    yield ContractEnv(platform, "running-1", "stopped-1", destination, make_shadows, guest_ready)
    if waited:
        await platform.power_off_all()
    # else a guest that may still be booting would not see the power button (it listens once up):
    # _kill_all stops it.
    await platform.close()


def _kill_all(platform: QemuPlatform) -> None:
    """Whatever a failed test left running (QEMU and NBD servers live in their own sessions)."""
    import os
    import signal

    for vm in platform.vms.values():
        for pidfile in platform.vm_dir(vm).glob("*.pid"):
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                pass


class TestQemuPlatform(PlatformContract):
    """Every contract test, on qemu with a real Linux guest."""
