"""The vSphere client layer (``daemon/vsphere*.py``) against govmomi's vCenter simulator.

Each test starts its own simulated vCenter(s) (``tests/vcsim.py``; a missing
Go toolchain skips, or fails under ``LIFTSHIFT_REQUIRE_TOOLS=1``) and drives
the client layer through its async API; pyvmomi is used directly only to set
up a source VM or to look behind the client's back (session termination,
files on the datastore directory).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from pyVim.connect import Disconnect
from pyVim.task import WaitForTask
from pyVmomi import vim
from vcsim import Vcsim, start_vcsim

from liftshift.daemon.errors import ConfigError, NotFound, Unauthenticated, Unavailable
from liftshift.daemon.platform import Power
from liftshift.daemon.vsphere import (
    NotCapturable,
    ShadowVmSpec,
    Stopped,
    TaskTimedOut,
    UntrustedCertificate,
    VsphereClient,
    VsphereFault,
    VsphereSide,
    capturable,
)
from liftshift.daemon.vsphere_inventory import Names, disk_of, vm_ref
from liftshift.sink.shadow import create_shadow

MiB = 1 << 20
MODEL_VMS = ["DC0_C0_RP0_VM0", "DC0_C0_RP0_VM1"]


def side_of(vc: Vcsim, **kw: Any) -> VsphereSide:
    base: dict[str, Any] = dict(url=f"https://{vc.host}:{vc.port}", user=vc.username, password=vc.password,
                                ca_file=vc.cert_file, task_timeout_s=30.0)
    base.update(kw)
    side = VsphereSide(**base)
    side.validate()
    return side


@pytest.fixture
def src(tmp_path: Path, request: pytest.FixtureRequest) -> Vcsim:
    return start_vcsim(tmp_path / "src", name="source", cleanup=request.addfinalizer)


@pytest.fixture
def dst(tmp_path: Path, request: pytest.FixtureRequest) -> Vcsim:
    return start_vcsim(tmp_path / "dst", name="destination", vms=0, cleanup=request.addfinalizer)


@pytest.fixture
async def source(src: Vcsim) -> AsyncIterator[VsphereClient]:
    async with VsphereClient(side_of(src), "source") as client:
        yield client


@pytest.fixture
async def destination(dst: Vcsim) -> AsyncIterator[VsphereClient]:
    async with VsphereClient(side_of(dst, network_map={"VM Network": "DC0_DVPG0"}), "destination") as client:
        yield client


def raw_vms(si: Any) -> dict[str, Any]:
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
    try:
        return {vm._moId: vm for vm in view.view}
    finally:
        view.Destroy()


def make_source_vm(vc: Vcsim, name: str, *, disk_modes: tuple[str, ...] = ("persistent", "persistent")) -> None:
    """A source VM unlike the model ones: 2 vCPU, 2 GiB, EFI, two disks on one
    PVSCSI controller (units 0 and 1), a vmxnet3 on 'VM Network' and an e1000e
    on the distributed portgroup."""
    si = vc.connect()
    try:
        dc = si.content.rootFolder.childEntity[0]
        dvpg = next(n for n in dc.network if n.name == "DC0_DVPG0")
        changes = [vim.vm.device.VirtualDeviceSpec(operation="add", device=vim.vm.device.ParaVirtualSCSIController(
            key=1000, busNumber=0, sharedBus="noSharing"))]
        for unit, (mode, size) in enumerate(zip(disk_modes, (4 * MiB, 2 * MiB), strict=False)):
            disk = vim.vm.device.VirtualDisk(
                key=-1 - unit, controllerKey=1000, unitNumber=unit, capacityInKB=size // 1024,
                backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(fileName="[LocalDS_0]", diskMode=mode))
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk))
        changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=vim.vm.device.VirtualVmxnet3(
            key=-10, backing=vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName="VM Network"))))
        port = vim.dvs.PortConnection(portgroupKey=dvpg.key, switchUuid=dvpg.config.distributedVirtualSwitch.uuid)
        changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=vim.vm.device.VirtualE1000e(
            key=-11, backing=vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(port=port))))
        config = vim.vm.ConfigSpec(name=name, guestId="ubuntu64Guest", numCPUs=2, memoryMB=2048, firmware="efi",
                                   files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"), deviceChange=changes)
        pool = dc.hostFolder.childEntity[0].resourcePool
        task = dc.vmFolder.CreateVM_Task(config=config, pool=pool)
        WaitForTask(task)
        WaitForTask(task.info.result.PowerOnVM_Task())
    finally:
        Disconnect(si)


# -- configuration -------------------------------------------------------------

def test_config_check_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good: dict[str, Any] = dict(url="https://vc.example:8443", user="u", password="p")
    VsphereSide(**good).validate()
    cases: list[tuple[dict[str, Any], str]] = [
        (dict(url=""), "vsphere.url"), (dict(url="http://vc"), "vsphere.url"),
        (dict(url="https://vc:99999"), "vsphere.url"),
        (dict(user=""), "vsphere.user"), (dict(password_env="X"), "vsphere.password"),
        (dict(password=""), "vsphere.password"), (dict(cluster="c", resource_pool="p"), "vsphere.resource_pool"),
        (dict(insecure=True, ca_file=tmp_path), "vsphere.insecure"),
        (dict(network_map={"a": 1}), "vsphere.network_map"), (dict(shadow_dir="../x"), "vsphere.shadow_dir"),
        (dict(task_timeout_s=0), "vsphere.task_timeout_s"),
    ]
    for change, key in cases:
        with pytest.raises(ConfigError) as err:
            VsphereSide(**{**good, **change}).validate()
        assert f"'{key}" in str(err.value), (change, str(err.value))
    # The password comes from exactly one place.
    monkeypatch.setenv("LS_TEST_VC_PW", "from-env")
    assert VsphereSide(url=good["url"], user="u", password_env="LS_TEST_VC_PW").resolve_password() == "from-env"
    (tmp_path / "pw").write_text("from-file\n")
    assert VsphereSide(url=good["url"], user="u", password_file=tmp_path / "pw").resolve_password() == "from-file"
    with pytest.raises(ConfigError, match="LS_TEST_UNSET"):
        VsphereSide(url=good["url"], user="u", password_env="LS_TEST_UNSET").resolve_password()


# -- sessions ------------------------------------------------------------------

async def test_tls_ca_file_insecure_and_untrusted(src: Vcsim, dst: Vcsim, caplog: pytest.LogCaptureFixture) -> None:
    async with VsphereClient(side_of(src), "source") as client:
        assert [v.name for v in await client.inventory()] == MODEL_VMS
    # No ca_file: the system CAs do not know the simulator's certificate.
    client = VsphereClient(side_of(src, ca_file=None), "source")
    with pytest.raises(UntrustedCertificate) as err:
        await client.connect()
    assert src.host in err.value.message and "ca_file" in (err.value.hint or "")
    # Another vCenter's certificate as CA: refused just the same.
    with pytest.raises(UntrustedCertificate):
        await VsphereClient(side_of(src, ca_file=dst.cert_file), "source").connect()
    # insecure connects, and says so in the log.
    with caplog.at_level(logging.WARNING, logger="liftshift.daemon.vsphere"):
        async with VsphereClient(side_of(src, ca_file=None, insecure=True), "source") as client:
            assert len(await client.inventory()) == 2
    assert any(r.levelno == logging.WARNING and "verification is OFF" in r.getMessage() for r in caplog.records)


async def test_wrong_password_and_unreachable(src: Vcsim) -> None:
    with pytest.raises(Unauthenticated) as err:
        await VsphereClient(side_of(src, password="wrong"), "source").connect()
    assert src.username in err.value.message and "password" in (err.value.hint or "")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(Unavailable) as unreachable:
        await VsphereClient(side_of(src, url=f"https://127.0.0.1:{port}"), "source").connect()
    assert f"127.0.0.1:{port}" in unreachable.value.message
    assert "ConnectionRefusedError" in unreachable.value.message


async def test_session_terminated_from_outside_logs_in_again(src: Vcsim, source: VsphereClient) -> None:
    assert source.session.logins == 1
    other = src.connect()
    try:
        key = source.session.content.sessionManager.currentSession.key
        other.content.sessionManager.TerminateSession(sessionId=[key])
    finally:
        Disconnect(other)
    # The next operation finds the session gone, logs in once and succeeds.
    vm = await source.find_vm("DC0_C0_RP0_VM0")
    assert vm.power is Power.ON
    assert source.session.logins == 2
    assert await source.state(vm) is Power.ON
    assert source.session.logins == 2
    # PBM rides on the vim session: it follows the new login too.
    policy_id = await source.ensure_policy()
    other = src.connect()
    try:
        key = source.session.content.sessionManager.currentSession.key
        other.content.sessionManager.TerminateSession(sessionId=[key])
    finally:
        Disconnect(other)
    assert await source.ensure_policy() == policy_id
    assert source.session.logins == 3


async def test_relogin_with_a_changed_password_is_unauthenticated(src: Vcsim, source: VsphereClient) -> None:
    other = src.connect()
    try:
        other.content.sessionManager.TerminateSession(
            sessionId=[source.session.content.sessionManager.currentSession.key])
    finally:
        Disconnect(other)
    source.session.side.password = "changed-meanwhile"
    with pytest.raises(Unauthenticated) as err:
        await source.inventory()
    assert "logging in again" in err.value.message and "password" in (err.value.hint or "")
    assert source.session.logins == 1


async def test_idle_session_expiry_is_transparent(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    import asyncio

    vc = start_vcsim(tmp_path / "vc", vms=1, session_idle_timeout=0.5, cleanup=request.addfinalizer)
    async with VsphereClient(side_of(vc), "source") as client:
        await asyncio.sleep(1.5)
        assert [v.name for v in await client.inventory()] == ["DC0_C0_RP0_VM0"]
        assert client.session.logins == 2


async def test_task_fault_fields_and_task_timeout(source: VsphereClient) -> None:
    vm = await source.find_vm("DC0_C0_RP0_VM0")
    s = source.session

    def power_on_again() -> None:
        s.wait_task_sync(vm_ref(s.si, vm.moid).PowerOnVM_Task(), "powering on VM0 again")

    with pytest.raises(VsphereFault) as err:
        await s.run(power_on_again, doing="test")
    fault = err.value
    assert fault.fault == "vim.fault.InvalidPowerState"
    assert fault.fields["requestedState"] == "poweredOn" and fault.fields["existingState"] == "poweredOn"
    assert "requestedState='poweredOn'" in fault.message and "*types." not in fault.message
    assert fault.message.startswith("powering on VM0 again on source vCenter https://")
    assert fault.task is not None and fault.task.startswith("task-") and f"(task {fault.task})" in fault.message
    assert fault.code == grpc.StatusCode.FAILED_PRECONDITION

    class RunningTask:
        """A task that never finishes (the simulator's finish at once)."""

        _moId = "task-77"
        info = vim.TaskInfo(key="task-77", state="running", descriptionId="VirtualMachine.clone",
                            entityName="big-vm", progress=42)

    with pytest.raises(TaskTimedOut) as timed_out:
        await s.wait_task(RunningTask(), "cloning big-vm", timeout=0.2)
    assert "task-77" in timed_out.value.message and "VirtualMachine.clone" in timed_out.value.message
    assert "42%" in timed_out.value.message and "cloning big-vm" in timed_out.value.message


# -- inventory -------------------------------------------------------------------

async def test_inventory_of_model_and_built_vms(src: Vcsim, source: VsphereClient) -> None:
    make_source_vm(src, "web-1")
    vms = {v.name: v for v in await source.inventory()}
    assert sorted(vms) == sorted([*MODEL_VMS, "web-1"])
    model = vms["DC0_C0_RP0_VM0"]
    assert (model.power, model.host, model.firmware) == (Power.ON, "DC0_C0_H0", "bios")
    (disk,) = model.disks
    assert disk.capacity == 1 * MiB  # only capacityInKB is set on the model VMs
    assert (disk.file_name, disk.datastore) == ("[LocalDS_0] DC0_C0_RP0_VM0/disk1.vmdk", "LocalDS_0")
    assert (disk.disk_mode, disk.rdm, disk.capture_attached, disk.controller_kind) == \
        ("persistent", None, False, "pvscsi")
    assert [n.network for n in model.nics] == ["DC0_DVPG0"]  # distributed port backing, named by its portgroup

    web = vms["web-1"]
    assert (web.num_cpu, web.memory_mb, web.firmware, web.guest_id) == (2, 2048, "efi", "ubuntu64Guest")
    assert [(n.kind, n.network) for n in web.nics] == [("vmxnet3", "VM Network"), ("e1000e", "DC0_DVPG0")]
    assert [(d.capacity, d.unit, d.bus, d.controller_kind) for d in web.disks] == \
        [(4 * MiB, 0, 0, "pvscsi"), (2 * MiB, 1, 0, "pvscsi")]
    assert all(d.file_name.startswith("[LocalDS_0] web-1/") for d in web.disks)
    assert web.migration_id is None


async def test_find_vm_not_found_lists_known_names(source: VsphereClient) -> None:
    with pytest.raises(NotFound) as err:
        await source.find_vm("no-such-vm")
    assert "no-such-vm" in err.value.message
    assert all(name in (err.value.hint or "") for name in MODEL_VMS)


# -- storage policy and capturability ------------------------------------------------

async def test_policy_ensured_once_assigned_marked_and_removed(source: VsphereClient) -> None:
    policy_id = await source.ensure_policy("liftshift-capture")
    assert await source.ensure_policy("liftshift-capture") == policy_id  # looked up, not created twice
    vm = await source.find_vm("DC0_C0_RP0_VM0")
    assert not vm.disks[0].capture_attached
    after = await source.assign_policy(vm, [vm.disks[0].key], policy_id)
    assert after.disks[0].capture_policy == policy_id
    # Inventory reads the marker back; the other VM is untouched.
    vms = {v.name: v for v in await source.inventory()}
    assert vms["DC0_C0_RP0_VM0"].disks[0].capture_policy == policy_id
    assert not vms["DC0_C0_RP0_VM1"].disks[0].capture_attached
    # Detaching capture puts the disk back on the default policy and clears the marker.
    detached = await source.unassign_policy(after, [after.disks[0].key])
    assert not detached.disks[0].capture_attached
    assert not (await source.find_vm("DC0_C0_RP0_VM0")).disks[0].capture_attached


async def test_independent_nonpersistent_disk_is_refused(src: Vcsim, source: VsphereClient) -> None:
    make_source_vm(src, "scratch", disk_modes=("persistent", "independent_nonpersistent"))
    vm = await source.find_vm("scratch")
    ok, scratch = vm.disks
    capturable(vm.name, ok)
    with pytest.raises(NotCapturable) as err:
        capturable(vm.name, scratch)
    assert scratch.label in err.value.message and "independent-nonpersistent" in err.value.message
    # Assigning the policy checks every disk first: the refusal changes nothing.
    policy_id = await source.ensure_policy()
    with pytest.raises(NotCapturable):
        await source.assign_policy(vm, [ok.key, scratch.key], policy_id)
    assert not any(d.capture_attached for d in (await source.find_vm("scratch")).disks)


def test_physical_rdm_is_refused() -> None:
    """RDM backings crash this simulator: the device is built by hand and read as inventory would."""
    ctrl = vim.vm.device.ParaVirtualSCSIController(key=1000, busNumber=0,
                                                   deviceInfo=vim.Description(label="SCSI controller 0", summary=""))
    rdm = vim.vm.device.VirtualDisk(
        key=2001, controllerKey=1000, unitNumber=1, capacityInKB=1 << 20,
        deviceInfo=vim.Description(label="Hard disk 2", summary=""),
        backing=vim.vm.device.VirtualDisk.RawDiskMappingVer1BackingInfo(
            fileName="[LocalDS_0] db/lun.vmdk", compatibilityMode="physicalMode", diskMode="independent_persistent"))
    disk = disk_of(rdm, {1000: ctrl}, Names({}, {}, {}), {})
    assert (disk.rdm, disk.datastore, disk.capacity, disk.controller) == \
        ("physicalMode", "LocalDS_0", 1 << 30, "SCSI controller 0")
    with pytest.raises(NotCapturable) as err:
        capturable("db", disk)
    assert "Hard disk 2" in err.value.message and "physical-mode RDM" in err.value.message


# -- destination VM ------------------------------------------------------------------

def shadow_files(dst: Vcsim) -> list[str]:
    return sorted(p.name for p in (dst.datastore_dir / "liftshift").iterdir())


async def test_shadow_vm_mirrors_source_found_again_and_removed_keeping_disks(
        src: Vcsim, dst: Vcsim, source: VsphereClient, destination: VsphereClient) -> None:
    make_source_vm(src, "web-1")
    vm = await source.find_vm("web-1")
    ids = {d.key: f"m-1.web-1.{i}" for i, d in enumerate(vm.disks)}
    for d in vm.disks:
        create_shadow(dst.datastore_dir / "liftshift", ids[d.key], d.capacity)
    spec = ShadowVmSpec.mirror(vm, "m-1", ids)

    shadow = await destination.create_shadow_vm(spec)
    assert (shadow.name, shadow.num_cpu, shadow.memory_mb, shadow.firmware, shadow.guest_id) == \
        ("web-1", 2, 2048, "efi", "ubuntu64Guest")
    assert shadow.migration_id == "m-1" and shadow.power is Power.OFF
    # NICs keep their adapter kind; 'VM Network' is mapped to the destination's DC0_DVPG0.
    assert [(n.kind, n.network) for n in shadow.nics] == [("vmxnet3", "DC0_DVPG0"), ("e1000e", "DC0_DVPG0")]
    assert [(d.file_name, d.capacity, d.unit, d.controller_kind, d.disk_mode) for d in shadow.disks] == [
        (f"[LocalDS_0] liftshift/{ids[d.key]}.vmdk", d.capacity, d.unit, "pvscsi", "persistent") for d in vm.disks]
    assert {d.datastore for d in shadow.disks} == {"LocalDS_0"}

    # A rerun finds the same VM: nothing is duplicated.
    again = await destination.create_shadow_vm(spec)
    assert again.moid == shadow.moid
    assert [v.moid for v in await destination.inventory()] == [shadow.moid]
    found = await destination.find_shadow_vm("m-1")
    assert found is not None and found.moid == shadow.moid

    # Power on, twice harmlessly; stop through the guest.
    await destination.power_on(shadow)
    await destination.power_on(shadow)
    assert await destination.state(shadow) is Power.ON
    assert await destination.shutdown_guest(shadow, timeout=5) is Stopped.GUEST_SHUTDOWN
    assert await destination.state(shadow) is Power.OFF
    assert await destination.shutdown_guest(shadow, timeout=5) is Stopped.ALREADY_OFF

    # Rollback: the shadow VM goes (even powered on), its disk files stay.
    await destination.power_on(shadow)
    assert await destination.remove_shadow_vm("m-1") is True
    assert await destination.inventory() == []
    assert await destination.find_shadow_vm("m-1") is None
    assert await destination.remove_shadow_vm("m-1") is False
    assert shadow_files(dst) == sorted(f"{i}{s}" for i in ids.values() for s in ("-flat.vmdk", ".vmdk"))
    assert (dst.datastore_dir / "liftshift" / f"{ids[vm.disks[0].key]}-flat.vmdk").stat().st_size == 4 * MiB


async def test_unknown_destination_network_is_refused_before_anything_is_created(
        src: Vcsim, dst: Vcsim, source: VsphereClient) -> None:
    make_source_vm(src, "web-1")
    vm = await source.find_vm("web-1")
    ids = {d.key: f"m-2.{d.key}" for d in vm.disks}
    for d in vm.disks:
        create_shadow(dst.datastore_dir / "liftshift", ids[d.key], d.capacity)
    async with VsphereClient(side_of(dst, network_map={"VM Network": "prod-vlan-42"}), "destination") as client:
        with pytest.raises(NotFound) as err:
            await client.create_shadow_vm(ShadowVmSpec.mirror(vm, "m-2", ids))
        assert "prod-vlan-42" in err.value.message and "'VM Network'" in err.value.message
        assert "DC0_DVPG0" in (err.value.hint or "")
        assert await client.inventory() == []
    assert not [p for p in dst.datastore_dir.iterdir() if p.name != "liftshift"]  # not even a VM folder


async def test_unknown_placement_is_refused_naming_the_key(src: Vcsim, dst: Vcsim, source: VsphereClient) -> None:
    vm = await source.find_vm("DC0_C0_RP0_VM0")
    create_shadow(dst.datastore_dir / "liftshift", "m-4.0", vm.disks[0].capacity)
    spec = ShadowVmSpec.mirror(vm, "m-4", {vm.disks[0].key: "m-4.0"})
    for key, value, known in (("datastore", "NoSuchDS", "LocalDS_0"), ("cluster", "NoSuchCluster", "DC0_C0"),
                              ("datacenter", "DC9", "DC0"), ("folder", "no/such/folder", None),
                              ("resource_pool", "DC0_C0/Resources/nope", None)):
        async with VsphereClient(side_of(dst, **{key: value}), "destination") as client:
            with pytest.raises(NotFound) as err:
                await client.create_shadow_vm(spec)
            assert value in err.value.message and f"'{key}'" in err.value.message
            if known:
                assert known in (err.value.hint or "")
            assert await client.inventory() == []


def test_fault_message_from_a_vcenter_style_fault() -> None:
    """A real vCenter fills msg and faultMessage (the simulator does not): both are kept."""
    from liftshift.daemon.vsphere_session import fault_error

    fault = vim.fault.NoPermission(msg="Permission to perform this operation was denied.",
                                   privilegeId="VirtualMachine.Inventory.Create", object=vim.Folder("group-v3"))
    err = fault_error(fault, "creating shadow VM 'web-1'", task="task-9 Folder.createVm")
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert err.fields["object"] == "vim.Folder:group-v3"
    assert err.fields["privilegeId"] == "VirtualMachine.Inventory.Create"
    assert err.message == ("creating shadow VM 'web-1' (task task-9 Folder.createVm): vim.fault.NoPermission "
                           "object='vim.Folder:group-v3', privilegeId='VirtualMachine.Inventory.Create': "
                           "Permission to perform this operation was denied.")


async def test_failure_after_create_leaves_no_vm_and_keeps_the_disk_files(
        src: Vcsim, dst: Vcsim, source: VsphereClient, destination: VsphereClient) -> None:
    make_source_vm(src, "web-1")
    vm = await source.find_vm("web-1")
    first, second = vm.disks
    ids = {first.key: "m-3.a", second.key: "m-3.b"}
    create_shadow(dst.datastore_dir / "liftshift", "m-3.a", first.capacity)  # m-3.b is missing
    with pytest.raises(VsphereFault) as err:
        await destination.create_shadow_vm(ShadowVmSpec.mirror(vm, "m-3", ids))
    assert err.value.fault == "vim.fault.FileNotFound"
    assert err.value.fields["file"].endswith("liftshift/m-3.b-flat.vmdk")
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert "attaching" in err.value.message
    assert await destination.inventory() == []
    assert await destination.find_shadow_vm("m-3") is None
    assert shadow_files(dst) == ["m-3.a-flat.vmdk", "m-3.a.vmdk"]
    # The same call succeeds once the missing shadow exists.
    create_shadow(dst.datastore_dir / "liftshift", "m-3.b", second.capacity)
    shadow = await destination.create_shadow_vm(ShadowVmSpec.mirror(vm, "m-3", ids))
    assert len(shadow.disks) == 2


async def test_source_stop_and_restart_for_rollback(source: VsphereClient) -> None:
    vm = await source.find_vm("DC0_C0_RP0_VM1")
    assert await source.shutdown_guest(vm) is Stopped.GUEST_SHUTDOWN
    assert (await source.refresh(vm)).power is Power.OFF
    await source.restart_source(vm)
    assert await source.state(vm) is Power.ON
