"""vSphere end to end: two simulated vCenters, the daemons as processes, the ``liftshift`` CLI.

The source vCenter's hosts are played by :class:`esxhost.EsxHost` (a guest
writing each running VM's flat files, the IO filter on disks that carry the
capture policy); the sink writes its shadow vdisks into the destination
simulator's datastore directory, so the shadow VM's disks are exactly the
files the sink wrote.  Checked: what vCenter shows on both sides and the
bytes on disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2e import free_port
from esxhost import EsxHost, make_vm
from pki import Pki, make_pki
from procs import DaemonProcess, python_module, start_process
from pyVim.connect import Disconnect
from pyVmomi import vim
from vcsim import Vcsim, start_vcsim

from liftshift.daemon.hashing import file_xxh3_128
from liftshift.v1 import control_pb2 as cpb
from liftshift.v1 import control_pb2_grpc

MiB = 1 << 20
SCRIPT = Path(sys.executable).with_name("liftshift")


@dataclass
class Run:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class VsphereSite:
    src: Vcsim
    dst: Vcsim
    host: EsxHost
    sink: DaemonProcess
    daemon: DaemonProcess
    data: Path
    pki: Pki

    @property
    def destination(self) -> str:
        return self.sink.address

    async def cli(self, *args: str, timeout: float = 120) -> Run:
        """``liftshift --address DAEMON ARGS`` as a process (pipes, not a terminal)."""
        cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "liftshift.ctl"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIFTSHIFT_")} | self.pki.cli_env()
        proc = await asyncio.create_subprocess_exec(*cmd, "--address", self.daemon.address, *args,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                    env=env)
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        assert proc.returncode is not None
        return Run(proc.returncode, out.decode(), err.decode())

    async def wait_migration(self, mid: str, states: set[str], timeout: float = 180) -> dict[str, Any]:
        """``migrate show --json`` once its state (label, e.g. "completed") is one of ``states``
        (polled through the Control service: a CLI process per poll costs most of a second)."""
        states = {f"MIGRATION_STATE_{s.upper().replace('-', '_')}" for s in states}
        deadline = time.monotonic() + timeout
        last: Any = None
        async with grpc.aio.secure_channel(self.daemon.address, self.pki.credentials()) as channel:
            stub = control_pb2_grpc.ControlStub(channel)
            while time.monotonic() < deadline:
                try:
                    last = await stub.GetMigration(cpb.MigrationRef(migration_id=mid), timeout=10)
                except grpc.aio.AioRpcError as e:
                    last = e
                else:
                    if cpb.MigrationState.Name(last.state) in states:
                        got = await self.cli("migrate", "show", mid, "--json")
                        assert got.rc == 0 and got.json()["state"] in states, got
                        return dict(got.json())
                await asyncio.sleep(0.05)
        raise AssertionError(f"migration {mid} did not reach {states} in {timeout}s; last: {last}\n"
                             f"{self.daemon.log()[-4000:]}\nhost: {self.host.log[-20:]} {self.host.errors[-5:]}")


def power(vc: Vcsim, name: str) -> str:
    si = vc.connect()
    try:
        view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
        found = [str(vm.runtime.powerState) for vm in view.view if vm.name == name
                 and not any(o.key == "liftshift.migration_id" for o in vm.config.extraConfig or [])]
        view.Destroy()
        assert len(found) == 1, found
        return found[0]
    finally:
        Disconnect(si)


def shadow_vms(vc: Vcsim) -> list[dict[str, Any]]:
    """Every VM tagged with a migration id on ``vc``, as plain data."""
    si = vc.connect()
    try:
        view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
        out = []
        for vm in view.view:
            extra = {o.key: o.value for o in vm.config.extraConfig or []}
            if "liftshift.migration_id" not in extra:
                continue
            dev = vm.config.hardware.device
            pgs = {pg.key: pg.name for pg in si.content.rootFolder.childEntity[0].network
                   if isinstance(pg, vim.dvs.DistributedVirtualPortgroup)}
            out.append({
                "name": vm.name, "migration_id": extra["liftshift.migration_id"], "power": str(vm.runtime.powerState),
                "cpus": vm.config.hardware.numCPU, "memory_mb": vm.config.hardware.memoryMB,
                "firmware": vm.config.firmware, "guest_id": vm.config.guestId,
                "disks": sorted((d.unitNumber, d.backing.fileName, d.capacityInBytes or d.capacityInKB * 1024)
                                for d in dev if isinstance(d, vim.vm.device.VirtualDisk)),
                "controllers": sorted(type(d).__name__ for d in dev
                                      if isinstance(d, vim.vm.device.VirtualSCSIController)),
                "nics": [(type(d).__name__, pgs.get(getattr(getattr(d.backing, "port", None), "portgroupKey", ""),
                                                     getattr(d.backing, "deviceName", "")))
                         for d in dev if isinstance(d, vim.vm.device.VirtualEthernetCard)],
            })
        view.Destroy()
        return out
    finally:
        Disconnect(si)


@pytest.fixture
def site(tmp_path: Path, shm_dir: Path, request: pytest.FixtureRequest) -> VsphereSite:
    src = start_vcsim(tmp_path / "src", name="source", vms=0, cleanup=request.addfinalizer)
    dst = start_vcsim(tmp_path / "dst", name="destination", vms=0, cleanup=request.addfinalizer)
    make_vm(src, "app1", (8 * MiB, 4 * MiB))
    host = EsxHost(src, shm_dir, tmp_path / "esx", rate_ops=300)
    host.prepare(fill=0.6)
    host.start()
    request.addfinalizer(host.stop)
    data = dst.datastore_dir / "liftshift"
    pki = make_pki(tmp_path / "tls")  # the migration suite runs with mutual TLS
    sink_port, daemon_port = free_port(), free_port()
    scfg = tmp_path / "sink.toml"
    scfg.write_text(f'listen = "127.0.0.1:{sink_port}"\ndata_dir = "{data}"\nfsync_window_ms = 5\n' + pki.sink_toml())
    sink = start_process(python_module("liftshift.sink.main", "--config", scfg, "--port-file", tmp_path / "sink.port"),
                         tmp_path / "sink.port", cleanup=request.addfinalizer, credentials=pki.credentials())
    pw = tmp_path / "source.pw"
    pw.write_text(src.password + "\n")
    pw.chmod(0o600)
    dcfg = tmp_path / "daemon.toml"
    dcfg.write_text(
        f'listen = "127.0.0.1:{daemon_port}"\nstate_dir = "{tmp_path / "daemon-state"}"\nreconnect_max_s = 0.5\n'
        'progress_interval_ms = 100\nplatform = "vsphere"\n'
        f'[vsphere]\nring_dir = "{shm_dir}"\nring_capacity = "8MiB"\ncapture_wait_s = 20\nclose_wait_s = 20\n'
        f'datastores = {{ LocalDS_0 = "{src.datastore_dir}" }}\n'
        f'[vsphere.source]\nurl = "{src.url}"\nuser = "{src.username}"\npassword_file = "{pw}"\n'
        f'ca_file = "{src.cert_file}"\n'
        f'[vsphere.destination]\nurl = "{dst.url}"\nuser = "{dst.username}"\npassword_env = "LS_TEST_DST_PW"\n'
        f'ca_file = "{dst.cert_file}"\ndatastore = "LocalDS_0"\nshadow_dir = "liftshift"\n'
        'network_map = { "VM Network" = "DC0_DVPG0" }\n' + pki.daemon_toml())
    os.environ["LS_TEST_DST_PW"] = dst.password  # read by the daemon process at start
    request.addfinalizer(lambda: os.environ.pop("LS_TEST_DST_PW", None))
    daemon = start_process(python_module("liftshift.daemon.main", "--config", dcfg, "--port-file",
                                         tmp_path / "daemon.port"), tmp_path / "daemon.port",
                           cleanup=request.addfinalizer, credentials=pki.credentials())
    return VsphereSite(src, dst, host, sink, daemon, data, pki)


async def test_live_migration_with_automatic_cutover(site: VsphereSite) -> None:
    inv = await site.cli("inventory", "--json")
    assert inv.rc == 0, inv.err
    vms = {v["name"]: v for v in inv.json()["vms"]}
    assert [(d["name"], int(d["size_bytes"])) for d in vms["app1"]["disks"]] == [("scsi0-0", 8 * MiB),
                                                                                ("scsi0-1", 4 * MiB)]
    assert not any(d.get("capture_policy") for d in vms["app1"]["disks"])
    detail = await site.cli("inventory", "app1", "--json")
    (app1,) = detail.json()["vms"]
    assert {k: app1[k] for k in ("host", "num_cpu", "memory_mb", "firmware")} == {
        "host": "DC0_C0_H0", "num_cpu": 2, "memory_mb": "2048", "firmware": "efi"}
    assert [(n["kind"], n["network"]) for n in app1["nics"]] == [("vmxnet3", "VM Network")]
    assert app1["guest_os"] and app1["nics"][0]["label"]
    assert [(d["backing_file"], d["datastore"], d["controller"]) for d in app1["disks"]] == [
        ("[LocalDS_0] app1/app1.vmdk", "LocalDS_0", "pvscsi-1000 (pvscsi) 0:0"),
        ("[LocalDS_0] app1/app1_1.vmdk", "LocalDS_0", "pvscsi-1000 (pvscsi) 0:1")]
    shown = await site.cli("inventory", "app1")
    assert shown.rc == 0 and "[LocalDS_0] app1/app1_1.vmdk" in shown.out and "VM Network" in shown.out, shown
    missing = await site.cli("inventory", "ghost")
    assert missing.rc == 3 and "no VM 'ghost'" in missing.err, missing

    refused = await site.cli("migrate", "create", "app1", "--dest", site.destination, "--start")
    assert refused.rc != 0 and "liftshift vsphere attach-filter app1" in refused.err, refused
    assert not (await site.cli("migrate", "list", "--json")).json().get("migrations")

    attached = await site.cli("vsphere", "attach-filter", "app1", "--json")
    assert attached.rc == 0, attached.err
    inv = (await site.cli("inventory", "--json")).json()
    policies = {d["capture_policy"] for v in inv["vms"] if v["name"] == "app1" for d in v["disks"]}
    assert len(policies) == 1 and "" not in policies

    created = await site.cli("migrate", "create", "app1", "--dest", site.destination, "--auto-cutover", "--start",
                             "--json")
    assert created.rc == 0, created.err
    mid = created.json()["id"]
    done = await site.wait_migration(mid, {"completed", "failed"})
    assert done["state"] == "MIGRATION_STATE_COMPLETED", [v["error"] for v in done["vms"]]

    # Source: stopped by the cutover, left on its datastore.
    assert power(site.src, "app1") == "poweredOff"
    # Destination: one shadow VM mirroring the source, on the sink's files, running.
    (shadow,) = shadow_vms(site.dst)
    assert shadow | {"disks": None} == {
        "name": "app1", "migration_id": mid, "power": "poweredOn", "cpus": 2, "memory_mb": 2048,
        "firmware": "efi", "guest_id": "ubuntu64Guest", "disks": None,
        "controllers": ["vim.vm.device.ParaVirtualSCSIController"],
        "nics": [("vim.vm.device.VirtualVmxnet3", "DC0_DVPG0")]}
    vdisks = [f"{mid}.app1.scsi0-0", f"{mid}.app1.scsi0-1"]
    assert shadow["disks"] == [(0, f"[LocalDS_0] liftshift/{vdisks[0]}.vmdk", 8 * MiB),
                               (1, f"[LocalDS_0] liftshift/{vdisks[1]}.vmdk", 4 * MiB)]
    # Bytes: the source's flat files and the shadows the destination VM runs on are identical.
    sources = [site.src.datastore_dir / "app1" / n for n in ("app1-flat.vmdk", "app1_1-flat.vmdk")]
    for src_file, vid in zip(sources, vdisks, strict=True):
        assert file_xxh3_128(src_file) == file_xxh3_128(site.data / f"{vid}-flat.vmdk"), vid
        assert (site.data / f"{vid}.vmdk").read_text().count("-flat.vmdk") == 1
    # Live writes were captured and shipped while the copy ran (not just a cold copy).
    assert sum(int(d.get("live_bytes", 0)) for v in done["vms"] for d in v["vdisks"]) > 0, done
    status = json.loads((site.host.dir / "app1.status.json").read_text())
    assert status["running"] is False and status["close_seqs"], status

    again = await site.cli("inventory", "--json")
    assert "app1" in {v["name"] for v in again.json()["vms"]}  # the shadow is not listed as a source


async def test_failed_power_on_then_rollback(site: VsphereSite) -> None:
    assert (await site.cli("vsphere", "attach-filter", "app1")).rc == 0
    site.dst.inject_fault("PowerOnVM_Task", "InsufficientResourcesFault", "not enough memory in DC0_C0 (test)")
    created = await site.cli("migrate", "create", "app1", "--dest", site.destination, "--auto-cutover", "--start",
                             "--json")
    assert created.rc == 0, created.err
    mid = created.json()["id"]
    failed = await site.wait_migration(mid, {"failed", "completed"})
    assert failed["state"] == "MIGRATION_STATE_FAILED", failed
    error = failed["vms"][0]["error"]
    assert "InsufficientResourcesFault" in error and "not enough memory in DC0_C0 (test)" in error, error
    assert power(site.src, "app1") == "poweredOff"
    (shadow,) = shadow_vms(site.dst)
    assert shadow["power"] == "poweredOff"

    rolled = await site.cli("migrate", "rollback", mid, "--json")
    assert rolled.rc == 0, rolled.err
    assert rolled.json()["state"] == "MIGRATION_STATE_ROLLED_BACK"
    assert shadow_vms(site.dst) == []
    kept = sorted(p.name for p in site.data.glob(f"{mid}.*"))
    assert kept == sorted(f"{mid}.app1.{d}{s}" for d in ("scsi0-0", "scsi0-1") for s in (".vmdk", "-flat.vmdk"))
    assert power(site.src, "app1") == "poweredOn"
    deadline = time.monotonic() + 20
    while "app1" not in site.host.guests:  # the host starts the guest again
        assert time.monotonic() < deadline, site.host.log
        await asyncio.sleep(0.05)
    again = await site.cli("migrate", "rollback", mid)
    assert again.rc != 0 and "rolled-back" in again.err, again


async def test_untrusted_certificate_and_wrong_password_are_clear_errors(site: VsphereSite, tmp_path: Path,
                                                                          request: pytest.FixtureRequest) -> None:
    """A daemon whose source vCenter certificate is not trusted (no ca_file, not insecure), and one with a wrong
    password: every call says so, and nothing is created anywhere."""
    base = (tmp_path / "daemon.toml").read_text()
    cases = {
        "untrusted": (base.replace(f'ca_file = "{site.src.cert_file}"\n', ""), "certificate"),
        "password": (base.replace(f'password_file = "{tmp_path / "source.pw"}"', 'password = "wrong"'),
                     "refused the login"),
    }
    for name, (text, needle) in cases.items():
        port = free_port()
        cfg = tmp_path / f"daemon-{name}.toml"
        cfg.write_text(text.replace(f'listen = "{site.daemon.address}"', f'listen = "127.0.0.1:{port}"')
                       .replace(str(tmp_path / "daemon-state"), str(tmp_path / f"state-{name}")))
        bad = start_process(python_module("liftshift.daemon.main", "--config", cfg, "--port-file",
                                          tmp_path / f"{name}.port"), tmp_path / f"{name}.port",
                            cleanup=request.addfinalizer, credentials=site.pki.credentials())
        other = VsphereSite(site.src, site.dst, site.host, site.sink, bad, site.data, site.pki)
        got = await other.cli("inventory")
        assert got.rc != 0 and needle in got.err.lower(), (name, got)
        got = await other.cli("migrate", "create", "app1", "--dest", site.destination)
        assert got.rc != 0 and needle in got.err.lower(), (name, got)
    assert shadow_vms(site.dst) == []
    assert not (await site.cli("migrate", "list", "--json")).json().get("migrations")
