"""The QEMU command line, socket-path and acceleration choices (daemon/qemu.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tooling import require_tool

from liftshift.daemon import qemu
from liftshift.daemon.errors import FailedPrecondition


def test_command_line_of_a_direct_kernel_boot(tmp_path: Path) -> None:
    cmd = qemu.command(binary="qemu-system-x86_64", accel_name="tcg", memory_mb=256,
                       drives=[qemu.drive(tmp_path / "a.sock", nbd_socket=True), qemu.drive(tmp_path / "b.img")],
                       console=tmp_path / "console.log", qmp_socket=tmp_path / "qmp.sock", kernel="/k",
                       initrd="/i", append="console=ttyS0", extra=["-smp", "2"])
    assert cmd[:5] == ["qemu-system-x86_64", "-accel", "tcg", "-m", "256"]
    joined = " ".join(cmd)
    for piece in (f"-serial file:{tmp_path}/console.log", f"-qmp unix:{tmp_path}/qmp.sock,server=on,wait=off",
                  "-kernel /k -initrd /i -append console=ttyS0", "-no-reboot",
                  f"file=nbd:unix:{tmp_path}/a.sock,format=raw,if=virtio,cache=none",
                  f"file={tmp_path}/b.img,format=raw,if=virtio,cache=none"):
        assert piece in joined, piece
    assert cmd[-2:] == ["-smp", "2"]
    # Without a kernel QEMU boots from the first disk: no -kernel/-initrd/-append at all.
    plain = qemu.command(binary="q", accel_name="kvm", memory_mb=64, drives=[], console=tmp_path / "c")
    assert "-kernel" not in plain and "-qmp" not in plain


def test_bad_paths_and_accel_values_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="comma"):
        qemu.drive("/vms/a,b.img")
    with pytest.raises(FailedPrecondition, match="Unix sockets allow 107"):
        qemu.check_socket_path(tmp_path / ("x" * 120) / "qmp.sock")
    qemu.check_socket_path(Path("/run/liftshift/qemu/web-1/vda.sock"))
    assert (qemu.accel("kvm"), qemu.accel("tcg")) == ("kvm", "tcg")
    with pytest.raises(FailedPrecondition, match="not one of auto, kvm, tcg"):
        qemu.accel("hvf")


def test_auto_accel_follows_the_kvm_probe() -> None:
    binary = require_tool("qemu-system-x86_64")
    why = qemu.kvm_problem(binary)
    assert qemu.accel("auto", binary) == ("tcg" if why else "kvm")
