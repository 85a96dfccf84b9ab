"""The real-guest harness (guestimage.py): a Linux guest under QEMU (TCG) writes
a known dataset to its virtio disk with O_DIRECT, keeps writing until its ACPI
power button is pressed, and a second boot reads the dataset back, on a raw
image file and on the same file served by nbdkit over a unix socket.  Boot
times are printed (``pytest -s``)."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from guestimage import INIT_SCRIPT, GuestError, GuestRun, boot, dataset_sha256, kernel_tree, region_sha256
from tooling import require_tool

SEED = 424242
DATASET_MIB = 8
CHURN_MIB = 8
DISK_MIB = 64
BOOT_TIMEOUT_S = 90.0  # a boot takes about 10 s under TCG here; the target is under 60
STEADY_WRITES_S = 1.0  # how long the guest writes before the power button


def _image(tmp_path: Path) -> Path:
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(DISK_MIB << 20)  # sparse: reads as zeros
    return image


def _file_disk(image: Path) -> list[str]:
    return ["-drive", f"file={image},format=raw,if=virtio,cache=none"]


def _serve_nbd(image: Path, sock: Path, cleanup: Callable[[Callable[[], object]], object]) -> list[str]:
    """Serve ``image`` with ``nbdkit file`` on unix socket ``sock``; the QEMU disk arguments for it."""
    nbdkit = require_tool("nbdkit")
    log = sock.with_name("nbdkit.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen([nbdkit, "--foreground", "--exit-with-parent", "--unix", str(sock), "file",
                                 str(image)], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    cleanup(stop)
    deadline = time.monotonic() + 10
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop()
            pytest.fail(f"nbdkit did not listen on {sock}: {log.read_text(errors='replace')}")
        time.sleep(0.02)
    return ["-drive", f"file=nbd:unix:{sock},format=raw,if=virtio,cache=none"]


def _finish(run: GuestRun) -> int:
    try:
        return run.wait()
    finally:
        run.kill()  # no-op once it has exited


def _write_then_verify(disk_args: list[str], image: Path, tmp_path: Path, label: str) -> None:
    run = boot(disk_args, "write", seed=SEED, dataset_mib=DATASET_MIB, churn_mib=CHURN_MIB,
               console=tmp_path / f"{label}-write.console", timeout=BOOT_TIMEOUT_S, qmp=tmp_path / "qmp.sock")
    try:
        run.wait_for("LIFTSHIFT-READY")
        run.wait_for("LIFTSHIFT-WRITING")
        time.sleep(STEADY_WRITES_S)
        pressed = time.monotonic() - run.started
        run.powerdown()
    finally:
        status = _finish(run)
    assert status == 0, run.console_text()
    assert run.lines("LIFTSHIFT-POWEROFF"), f"the power button did not stop the guest:\n{run.console_text()}"
    writes = int(run.lines("LIFTSHIFT-WRITES ")[0].split()[1])
    assert writes > 0, run.console_text()

    guest_sum = run.checksum()
    assert guest_sum == dataset_sha256(SEED, DATASET_MIB), "the guest wrote other data than expected_dataset()"
    assert region_sha256(image, DATASET_MIB) == guest_sum, "the image does not hold what the guest read back"
    zeros = hashlib.sha256(bytes(CHURN_MIB << 20)).hexdigest()
    assert region_sha256(image, CHURN_MIB, DATASET_MIB) != zeros, "no steady write reached the image"
    # Right after the steady region: the dataset marker (mode=auto verifies when it is there), then zeros.
    marker = f"LIFTSHIFT-DATASET seed={SEED} mib={DATASET_MIB}\n".encode()
    with open(image, "rb") as f:
        f.seek((DATASET_MIB + CHURN_MIB) << 20)
        assert f.read(4096) == marker + bytes(4096 - len(marker)), "the dataset marker is not where init.sh puts it"
    rest = DISK_MIB - DATASET_MIB - CHURN_MIB - 1
    assert region_sha256(image, rest, DATASET_MIB + CHURN_MIB + 1) == hashlib.sha256(bytes(rest << 20)).hexdigest(), \
        "a write landed past the steady region"

    verify = boot(disk_args, "verify", seed=SEED, dataset_mib=DATASET_MIB,
                  console=tmp_path / f"{label}-verify.console", timeout=BOOT_TIMEOUT_S)
    assert _finish(verify) == 0, verify.console_text()
    assert verify.checksum() == guest_sum
    print(f"\n{label}, kernel {kernel_tree().release}: write boot: READY at {run.marks['LIFTSHIFT-READY']:.1f} s "
          f"(dataset written and read back by {run.marks['LIFTSHIFT-WRITING']:.1f} s), "
          f"power button at {pressed:.1f} s after {writes} steady writes, exit at {run.marks['exit']:.1f} s; "
          f"verify boot: exit at {verify.marks['exit']:.1f} s")


def test_init_script_is_valid_sh() -> None:
    busybox = require_tool("busybox")
    got = subprocess.run([busybox, "sh", "-n", str(INIT_SCRIPT)], capture_output=True, text=True)
    assert got.returncode == 0, got.stderr


def test_guest_writes_and_reads_back_a_raw_image(tmp_path: Path) -> None:
    image = _image(tmp_path)
    _write_then_verify(_file_disk(image), image, tmp_path, "raw file")


def test_guest_writes_and_reads_back_over_nbd(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    image = _image(tmp_path)
    disk = _serve_nbd(image, tmp_path / "nbd.sock", request.addfinalizer)
    _write_then_verify(disk, image, tmp_path, "nbdkit file over a unix socket")


def test_guest_failure_is_reported_and_powers_off(tmp_path: Path) -> None:
    image = _image(tmp_path)
    run = boot(_file_disk(image), "no-such-mode", seed=SEED, dataset_mib=DATASET_MIB,
               console=tmp_path / "bad.console", timeout=BOOT_TIMEOUT_S)
    with pytest.raises(GuestError, match="unknown liftshift.mode 'no-such-mode'"):
        run.wait_for("LIFTSHIFT-CHECKSUM")
    assert _finish(run) == 0  # powered off by itself, not killed
    print(f"\nfailing guest: exit at {run.marks['exit']:.1f} s")
