"""QEMU/KVM end to end: the daemons as processes, disks through ``liftshift-nbd``.

* a real Linux guest (QEMU, TCG) writes a dataset with O_DIRECT and keeps
  writing while it is migrated; after the automatic cutover the destination
  QEMU boots from the shadow disk and its init reads the dataset back: the
  checksum it prints is the one the source guest printed (and the one the
  host computes for the dataset);
* headless VMs (disks only) written by third-party NBD clients during a live
  migration: ``qemu-io`` patterns (write -P, write -z, discard, aio_write)
  and ``fio --ioengine=nbd`` random 4 KiB writes at a fixed rate; after the
  cutover ``qemu-img compare`` reports source and shadow identical.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e import free_port
from guestimage import build_initramfs, dataset_sha256, guest_append, guest_kernel
from pki import Pki, make_pki
from procs import DaemonProcess, python_module, start_process
from tooling import require_tool as tool

from liftshift.daemon.errors import from_rpc_error
from liftshift.v1 import control_pb2 as cpb
from liftshift.v1 import control_pb2_grpc

MiB = 1 << 20


@dataclass
class QemuSite:
    root: Path
    sink: DaemonProcess
    daemon: DaemonProcess
    data: Path
    pki: Pki

    def call(self, method: str, request: object, timeout: float = 120) -> object:
        import grpc

        with grpc.secure_channel(self.daemon.address, self.pki.credentials()) as ch:
            try:
                return getattr(control_pb2_grpc.ControlStub(ch), method)(request, timeout=timeout)
            except grpc.RpcError as e:
                raise from_rpc_error(e) from None

    def wait(self, mid: str, state: int, timeout: float = 240) -> cpb.Migration:
        deadline = time.monotonic() + timeout
        m = None
        while time.monotonic() < deadline:
            m = self.call("GetMigration", cpb.MigrationRef(migration_id=mid))
            assert isinstance(m, cpb.Migration)
            if m.state == state:
                return m
            if m.state == cpb.MIGRATION_STATE_FAILED and state != m.state:
                break
            time.sleep(0.2)
        raise AssertionError(f"{mid} did not reach {cpb.MigrationState.Name(state)}: {m}\n"
                             f"{self.daemon.log()[-3000:]}")

    def socket(self, vm: str, disk: str) -> Path:
        return self.root / "qemu" / vm / f"{disk}.sock"

    def shadow(self, mid: str, vm: str, disk: str) -> Path:
        return self.data / f"{mid}.{vm}.{disk}-flat.vmdk"

    def dest_console(self, vm: str) -> Path:
        return self.data / ".liftshift-sink" / "vms" / vm / "console.log"


def start_site(root: Path, shm: Path, vms_toml: str, cleanup: object) -> QemuSite:
    root.mkdir(parents=True, exist_ok=True)
    pki = make_pki(root / "tls")  # the migration suite runs with mutual TLS
    data = root / "sink-data"
    sink_port, daemon_port = free_port(), free_port()
    scfg = root / "sink.toml"
    scfg.write_text(f'listen = "127.0.0.1:{sink_port}"\ndata_dir = "{data}"\nfsync_window_ms = 5\n'
                    "stop_vms_on_exit = true\n" + pki.sink_toml())
    sink = start_process(python_module("liftshift.sink.main", "--config", scfg, "--port-file", root / "sink.port"),
                         root / "sink.port", cleanup=cleanup, credentials=pki.credentials())  # type: ignore[arg-type]
    dcfg = root / "daemon.toml"
    dcfg.write_text(f'listen = "127.0.0.1:{daemon_port}"\nstate_dir = "{root / "state"}"\nreconnect_max_s = 0.5\n'
                    'progress_interval_ms = 100\nplatform = "qemu"\n'
                    f'[qemu]\ndir = "{root / "qemu"}"\nring_dir = "{shm}"\nring_capacity = "8MiB"\naccel = "tcg"\n'
                    f"powerdown_timeout_s = 60\nstop_vms_on_exit = true\n{vms_toml}\n{pki.daemon_toml()}")
    daemon = start_process(python_module("liftshift.daemon.main", "--config", dcfg, "--port-file",
                                         root / "daemon.port"), root / "daemon.port", cleanup=cleanup,
                           timeout=120, credentials=pki.credentials())  # type: ignore[arg-type]
    return QemuSite(root, sink, daemon, data, pki)


def test_real_linux_guest_is_migrated_live_and_boots_at_the_destination(tmp_path: Path, shm_dir: Path,
                                                                        request: pytest.FixtureRequest) -> None:
    seed, mib = 23, 8
    kernel, initrd = guest_kernel(), build_initramfs()
    append = guest_append("auto", seed=seed, dataset_mib=mib, churn_mib=8, pause_ms=10)
    site = start_site(tmp_path, shm_dir, f'''
[[qemu.vm]]
name = "linux-1"
memory_mb = 192
kernel = "{kernel}"
initrd = "{initrd}"
append = "{append}"
[[qemu.vm.disks]]
name = "vda"
image = "{tmp_path / "linux-1.img"}"
size = "32MiB"
''', request.addfinalizer)
    console = tmp_path / "qemu" / "linux-1" / "console.log"
    deadline = time.monotonic() + 120
    while "LIFTSHIFT-WRITING" not in (text := console.read_text(errors="replace") if console.exists() else ""):
        assert time.monotonic() < deadline and "LIFTSHIFT-ERROR" not in text, text
        time.sleep(0.1)
    (source_sum,) = [ln.split()[1] for ln in text.splitlines() if ln.startswith("LIFTSHIFT-CHECKSUM")]
    assert source_sum == dataset_sha256(seed, mib)
    # The guest keeps writing (O_DIRECT, 64 KiB) while the disk is copied and its writes shipped.
    m = site.call("CreateMigration", cpb.CreateMigrationRequest(vms=["linux-1"], destination=site.sink.address,
                                                                auto_cutover=True, start=True))
    assert isinstance(m, cpb.Migration)
    done = site.wait(m.id, cpb.MIGRATION_STATE_COMPLETED)
    assert done.vms[0].cutover.identical and sum(d.live_bytes for d in done.vms[0].vdisks) > 0, done
    text = console.read_text(errors="replace")
    assert "LIFTSHIFT-POWEROFF" in text, text  # the guest shut down through the power button
    writes = int(next(ln.split()[1] for ln in text.splitlines() if ln.startswith("LIFTSHIFT-WRITES")))
    assert writes > 0
    # The destination QEMU boots from the shadow, finds the dataset and verifies it.
    dest = site.dest_console("linux-1")
    deadline = time.monotonic() + 120
    while "LIFTSHIFT-CHECKSUM" not in (dtext := dest.read_text(errors="replace") if dest.exists() else ""):
        assert time.monotonic() < deadline and "LIFTSHIFT-ERROR" not in dtext, dtext
        time.sleep(0.1)
    assert "LIFTSHIFT-MODE verify" in dtext, dtext
    (dest_sum,) = [ln.split()[1] for ln in dtext.splitlines() if ln.startswith("LIFTSHIFT-CHECKSUM")]
    assert dest_sum == source_sum
    # And every byte, the steady writes included, is on the shadow.
    qemu_img = tool("qemu-img")
    got = subprocess.run([qemu_img, "compare", "-f", "raw", "-F", "raw", str(tmp_path / "linux-1.img"),
                          str(site.shadow(m.id, "linux-1", "vda"))], capture_output=True, text=True, check=False)
    assert got.returncode == 0, got.stdout + got.stderr


HEADLESS = '''
[[qemu.vm]]
name = "{name}"
headless = true
[[qemu.vm.disks]]
name = "disk0"
image = "{image}"
size = "{size}"
'''


def _migrate_then_cut_over(site: QemuSite, vm: str, command: list[str]) -> cpb.Migration:
    """Start a migration (capture is attached when that returns), run the writer while it copies,
    wait for convergence, cut over; the completed migration."""
    m = site.call("CreateMigration", cpb.CreateMigrationRequest(vms=[vm], destination=site.sink.address, start=True))
    assert isinstance(m, cpb.Migration) and m.vms[0].state == cpb.MIGRATION_STATE_SYNCING, m
    writer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = writer.communicate(timeout=180)
    assert writer.returncode == 0, out
    site.wait(m.id, cpb.MIGRATION_STATE_CONVERGED)
    got = site.call("Cutover", cpb.CutoverRequest(migration_id=m.id, vm=vm))
    assert isinstance(got, cpb.CutoverResponse) and not got.reports[0].error, got
    return site.wait(m.id, cpb.MIGRATION_STATE_COMPLETED)


def _compare(site: QemuSite, source: Path, mid: str, vm: str) -> None:
    got = subprocess.run([tool("qemu-img"), "compare", "-f", "raw", "-F", "raw", str(source),
                          str(site.shadow(mid, vm, "disk0"))], capture_output=True, text=True, check=False)
    assert got.returncode == 0, got.stdout + got.stderr
    assert "Images are identical" in got.stdout


def test_qemu_io_patterns_during_a_live_migration(tmp_path: Path, shm_dir: Path,
                                                  request: pytest.FixtureRequest) -> None:
    qemu_io = tool("qemu-io")
    image = tmp_path / "io-1.img"
    with open(image, "wb") as f:
        f.write(bytes(range(256)) * (16 * MiB // 256))  # a full disk to copy
        f.truncate(64 * MiB)
    site = start_site(tmp_path, shm_dir, HEADLESS.format(name="io-1", image=image, size="64MiB"),
                      request.addfinalizer)
    uri = f"nbd+unix:///default?socket={site.socket('io-1', 'disk0')}"
    script = []
    for i in range(40):  # patterns across the disk, some overwriting the copy's path, some the hole
        script.append(f"write -P {i + 1} {i * 1536}k 64k")
    script += ["write -z 1M 256k", "discard 3M 128k", "aio_write -P 0xab 40M 64k", "aio_write -P 0xcd 40M 4k",
               "aio_write -P 0xef 50M 1M", "aio_flush", "write -P 0x77 63M 1M", "flush", "read -P 0x77 63M 1M"]
    cmds = [a for line in script for a in ("-c", line)]
    done = _migrate_then_cut_over(site, "io-1", [qemu_io, "-f", "raw", *cmds, uri])
    assert done.vms[0].cutover.identical
    assert sum(d.live_bytes for d in done.vms[0].vdisks) >= 40 * 64 * 1024, done  # the writes were captured
    _compare(site, image, done.id, "io-1")


def test_fio_random_writes_during_a_live_migration(tmp_path: Path, shm_dir: Path,
                                                   request: pytest.FixtureRequest) -> None:
    fio = tool("fio")
    image = tmp_path / "fio-1.img"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    site = start_site(tmp_path, shm_dir, HEADLESS.format(name="fio-1", image=image, size="64MiB"),
                      request.addfinalizer)
    sock = site.socket("fio-1", "disk0")
    done = _migrate_then_cut_over(site, "fio-1", [
        fio, "--name=live", "--ioengine=nbd", f"--uri=nbd+unix:///default?socket={sock}", "--rw=randwrite",
        "--bs=4k", "--iodepth=8", "--size=64M", "--rate_iops=1500", "--runtime=6", "--time_based"])
    assert done.vms[0].cutover.identical
    # About 9000 writes at 1500/s for 6 s, every one captured and shipped.
    assert sum(d.live_records for d in done.vms[0].vdisks) >= 6000, done
    _compare(site, image, done.id, "fio-1")
