"""The vCenter simulator fixture (``tests/vcsim.py``) works with pyvmomi.

These tests pin what the ``vsphere`` platform's tests stand on: TLS with the
simulator's own certificate as CA (and the ``insecure`` switch), inventory
with disks, two simulated vCenters at once, refused credentials, a VM whose
disk is an existing shadow vdisk written on the datastore's directory,
task faults, injected faults, session loss and re-login, and PBM at ``/pbm``.  Where this
govmomi version (0.24) simulates less than a vCenter does, the test says so
and asserts the simulator's behaviour, so an upgrade that changes it shows up
here first.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import SoapStubAdapter, VmomiSupport, pbm, vim, vmodl
from vcsim import Vcsim, start_vcsim

from liftshift.sink.shadow import create_shadow

MiB = 1 << 20


@pytest.fixture
def vc(tmp_path: Path, request: pytest.FixtureRequest) -> Vcsim:
    return start_vcsim(tmp_path / "vc", cleanup=request.addfinalizer)


@pytest.fixture
def si(vc: Vcsim) -> Iterator[Any]:
    conn = vc.connect()
    yield conn
    Disconnect(conn)


def vms_by_name(si: Any) -> dict[str, Any]:
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
    try:
        return {vm.name: vm for vm in view.view}
    finally:
        view.Destroy()


def disks(vm: Any) -> list[Any]:
    return [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]


def datacenter(si: Any) -> Any:
    return si.content.rootFolder.childEntity[0]


def cluster_pool(si: Any) -> Any:
    return datacenter(si).hostFolder.childEntity[0].resourcePool


def shadow_vm_spec(name: str, backing_path: str, *, size: int, file_operation: str | None = None) -> Any:
    """A VM with 2 vCPU, 1 GiB, EFI, one vmxnet3 on 'VM Network' and one disk
    on ``backing_path``; tagged with a migration id in extraConfig."""
    scsi = vim.vm.device.ParaVirtualSCSIController(key=1000, busNumber=0, sharedBus="noSharing")
    disk = vim.vm.device.VirtualDisk(
        key=-1, controllerKey=1000, unitNumber=0, capacityInBytes=size, capacityInKB=size // 1024,
        backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(fileName=backing_path, diskMode="persistent"))
    disk_change = vim.vm.device.VirtualDeviceSpec(operation="add", device=disk)
    if file_operation is not None:
        disk_change.fileOperation = file_operation
    nic = vim.vm.device.VirtualVmxnet3(
        key=-2, addressType="generated",
        backing=vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName="VM Network"))
    return vim.vm.ConfigSpec(
        name=name, guestId="otherLinux64Guest", numCPUs=2, memoryMB=1024, firmware="efi",
        files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"),
        deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="add", device=scsi), disk_change,
                      vim.vm.device.VirtualDeviceSpec(operation="add", device=nic)],
        extraConfig=[vim.option.OptionValue(key="liftshift.migration", value="m-1")])


def test_verified_tls_inventory_with_disks(vc: Vcsim, si: Any) -> None:
    assert vc.start_seconds < 10, f"vcsim took {vc.start_seconds:.1f} s to answer"
    assert si.content.about.apiType == "VirtualCenter"
    vms = vms_by_name(si)
    assert sorted(vms) == ["DC0_C0_RP0_VM0", "DC0_C0_RP0_VM1"]
    for name, vm in vms.items():
        assert vm.runtime.powerState == "poweredOn"
        assert vm.runtime.host.name == "DC0_C0_H0"
        (disk,) = disks(vm)
        # The model sets only capacityInKB (capacityInBytes is unset): read both.
        assert (disk.capacityInBytes or disk.capacityInKB * 1024) == 1 * MiB
        assert disk.backing.fileName == f"[LocalDS_0] {name}/disk1.vmdk"
        assert disk.backing.datastore.name == vc.datastore.name == "LocalDS_0"
        # A datastore path is a path under the datastore's directory.
        assert (vc.datastore_dir / name / "disk1-flat.vmdk").is_file()
        assert (vc.datastore_dir / name / "disk1.vmdk").is_file()
    assert datacenter(si).datastore[0].info.url == str(vc.datastore_dir)


def test_insecure_switch_and_unknown_certificate(vc: Vcsim) -> None:
    conn = SmartConnect(host=vc.host, port=vc.port, user=vc.username, pwd=vc.password, disableSslCertValidation=True)
    try:
        assert sorted(vms_by_name(conn)) == ["DC0_C0_RP0_VM0", "DC0_C0_RP0_VM1"]
    finally:
        Disconnect(conn)
    # Verification on, without the simulator's certificate as CA: refused.
    with pytest.raises(ssl.SSLCertVerificationError):
        SmartConnect(host=vc.host, port=vc.port, user=vc.username, pwd=vc.password,
                     sslContext=ssl.create_default_context())


def test_wrong_password_is_invalid_login(vc: Vcsim) -> None:
    with pytest.raises(vim.fault.InvalidLogin) as err:
        vc.connect(password="not-the-password")
    assert err.value.msg == "Login failure"
    with pytest.raises(vim.fault.InvalidLogin):
        vc.connect(user="someone-else")


def test_two_simulators_at_once(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = start_vcsim(tmp_path / "src", name="source", cleanup=request.addfinalizer)
    dst = start_vcsim(tmp_path / "dst", name="destination", vms=0, datastore_dir=tmp_path / "dst-data",
                      cleanup=request.addfinalizer)
    assert src.port != dst.port
    assert src.cert_file.read_bytes() != dst.cert_file.read_bytes()
    assert dst.datastore_dir.parent == tmp_path / "dst-data"
    s, d = src.connect(), dst.connect()
    try:
        assert sorted(vms_by_name(s)) == ["DC0_C0_RP0_VM0", "DC0_C0_RP0_VM1"]
        assert vms_by_name(d) == {}
        # Each trusts only its own simulator.
        with pytest.raises(ssl.SSLCertVerificationError):
            SmartConnect(host=dst.host, port=dst.port, user=dst.username, pwd=dst.password,
                         sslContext=src.ssl_context())
    finally:
        Disconnect(s)
        Disconnect(d)
    assert src.stop() == 0
    with pytest.raises(OSError):
        socket.create_connection((src.host, src.port), timeout=1).close()
    # The destination outlives the source, and a datastore directory the caller chose is left in place.
    assert sorted(vms_by_name(dst.connect())) == []
    assert dst.stop() == 0
    assert dst.datastore_dir.is_dir()


def test_shadow_vm_on_an_existing_shadow_vdisk(vc: Vcsim, si: Any) -> None:
    """The destination's way of creating a VM: its disk backing names the
    flat + descriptor pair the sink wrote on the datastore's directory."""
    create_shadow(vc.datastore_dir / "liftshift", "vd-1", 8 * MiB)
    dc, pool = datacenter(si), cluster_pool(si)
    task = dc.vmFolder.CreateVM_Task(config=shadow_vm_spec("shadow", "[LocalDS_0] liftshift/vd-1.vmdk", size=8 * MiB),
                                     pool=pool)
    WaitForTask(task)
    vm = task.info.result
    assert (vm.config.hardware.numCPU, vm.config.hardware.memoryMB, vm.config.firmware) == (2, 1024, "efi")
    (disk,) = disks(vm)
    assert disk.backing.fileName == "[LocalDS_0] liftshift/vd-1.vmdk"
    assert disk.backing.datastore.name == "LocalDS_0"
    assert disk.capacityInBytes == 8 * MiB
    (nic,) = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)]
    assert nic.backing.deviceName == "VM Network"
    # The shadow files are used as they are (the simulator only checks that the flat file exists).
    assert (vc.datastore_dir / "liftshift" / "vd-1-flat.vmdk").stat().st_size == 8 * MiB

    # Found again by its migration id (read all of extraConfig: the simulator
    # ignores property paths like config.extraConfig["key"]).
    tagged = [v for v in vms_by_name(si).values()
              if any(o.key == "liftshift.migration" and o.value == "m-1" for o in v.config.extraConfig)]
    assert tagged == [vm]

    assert vm.runtime.powerState == "poweredOff"
    WaitForTask(vm.PowerOnVM_Task())
    assert vm.runtime.powerState == "poweredOn"
    # Task faults surface as vim.fault classes; msg is the Go type name, the facts are in the fields.
    with pytest.raises(vim.fault.InvalidPowerState) as err:
        WaitForTask(vm.PowerOnVM_Task())
    assert (err.value.requestedState, err.value.existingState) == ("poweredOn", "poweredOn")
    vm.ShutdownGuest()  # accepted without VMware Tools running, and immediate
    assert vm.runtime.powerState == "poweredOff"

    # fileOperation "create" refuses an existing disk; a missing flat file is FileNotFound.
    task = dc.vmFolder.CreateVM_Task(config=shadow_vm_spec("again", "[LocalDS_0] liftshift/vd-1.vmdk", size=8 * MiB,
                                                           file_operation="create"), pool=pool)
    with pytest.raises(vim.fault.FileAlreadyExists):
        WaitForTask(task)
    task = dc.vmFolder.CreateVM_Task(config=shadow_vm_spec("nodisk", "[LocalDS_0] liftshift/gone.vmdk", size=8 * MiB),
                                     pool=pool)
    with pytest.raises(vim.fault.FileNotFound) as missing:
        WaitForTask(task)
    assert missing.value.file == str(vc.datastore_dir / "liftshift" / "gone-flat.vmdk")
    assert missing.value.msg == "*types.FileNotFound"
    assert sorted(vms_by_name(si)) == ["DC0_C0_RP0_VM0", "DC0_C0_RP0_VM1", "shadow"]

    # Destroy_Task deletes the disks still attached (as vSphere does): detach first to keep the shadow.
    WaitForTask(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=[
        vim.vm.device.VirtualDeviceSpec(operation="remove", device=d) for d in disks(vm)])))
    WaitForTask(vm.Destroy_Task())
    assert sorted(p.name for p in (vc.datastore_dir / "liftshift").iterdir()) == ["vd-1-flat.vmdk", "vd-1.vmdk"]


def test_injected_fault_fails_one_vms_power_on_once(vc: Vcsim, si: Any) -> None:
    vms = vms_by_name(si)
    vm, other = vms["DC0_C0_RP0_VM0"], vms["DC0_C0_RP0_VM1"]
    vc.inject_fault("PowerOnVM_Task", message="no room for the shadow", match=vm._moId)
    # Other methods on the same VM, and the same method on another VM, pass.
    WaitForTask(vm.PowerOffVM_Task())
    WaitForTask(other.PowerOffVM_Task())
    WaitForTask(other.PowerOnVM_Task())
    assert other.runtime.powerState == "poweredOn"
    assert vc.faults()[0]["fired"] == 0

    # The call itself fails (an HTTP 500 SOAP fault): no task is created.  A
    # vCenter may fail the task instead, so the platform handles both.
    with pytest.raises(vim.fault.InsufficientResourcesFault) as err:
        vm.PowerOnVM_Task()
    assert err.value.msg == "no room for the shadow"
    assert vm.runtime.powerState == "poweredOff"
    assert vc.faults() == [{"method": "PowerOnVM_Task", "fault": "InsufficientResourcesFault",
                            "message": "no room for the shadow", "count": 1, "match": vm._moId, "fired": 1}]
    assert "fault injected: PowerOnVM_Task answered with InsufficientResourcesFault" in vc.log()

    # Exhausted: the next power-on is the simulator's own.
    WaitForTask(vm.PowerOnVM_Task())
    assert vm.runtime.powerState == "poweredOn"
    assert vc.faults()[0]["fired"] == 1


def test_clear_faults_disarms(vc: Vcsim, si: Any) -> None:
    vm = vms_by_name(si)["DC0_C0_RP0_VM0"]
    with pytest.raises(ValueError, match="NoSuchFault"):
        vc.inject_fault("PowerOffVM_Task", fault="NoSuchFault")
    vc.inject_fault("PowerOffVM_Task", fault="TaskInProgress", message="busy", count=3)
    # The method is the SOAP Body's first element, not any mention of it in the request.
    WaitForTask(vm.Rename_Task(newName="PowerOffVM_Task"))
    assert vm.name == "PowerOffVM_Task"
    with pytest.raises(vim.fault.TaskInProgress, match="busy"):
        vm.PowerOffVM_Task()
    assert [f["fired"] for f in vc.faults()] == [1]

    vc.clear_faults()
    assert vc.faults() == []
    WaitForTask(vm.PowerOffVM_Task())
    assert vm.runtime.powerState == "poweredOff"


def test_session_terminated_from_outside_then_relogin(vc: Vcsim, si: Any) -> None:
    vm = vms_by_name(si)["DC0_C0_RP0_VM0"]
    key = si.content.sessionManager.currentSession.key
    other = vc.connect()
    other.content.sessionManager.TerminateSession(sessionId=[key])
    Disconnect(other)
    with pytest.raises(vim.fault.NotAuthenticated):
        vm.runtime.powerState  # noqa: B018 - a property read is a call
    # Logging in again on the same stub revives every object reference taken before.
    si.content.sessionManager.Login(userName=vc.username, password=vc.password)
    assert vm.runtime.powerState == "poweredOn"


def test_idle_sessions_expire(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    vc = start_vcsim(tmp_path / "vc", vms=0, session_idle_timeout=0.5, cleanup=request.addfinalizer)
    conn = vc.connect()
    time.sleep(1.5)  # the simulator checks idleness every timeout interval: expired by the second check
    with pytest.raises(vim.fault.NotAuthenticated):
        conn.content.sessionManager.currentSession  # noqa: B018 - a property read is a call


def pbm_content(vc: Vcsim, si: Any) -> Any:
    """The PBM service content over the vim session.

    vCenter takes the session from the ``vcSessionCookie`` SOAP header; the
    simulator only from the HTTP cookie, so both are sent."""
    cookie = si._stub.cookie  # "vmware_soap_session=<id>; ..." (unquoted from vcsim)
    session_id = cookie.split(";")[0].split("=", 1)[1].strip('"')
    stub = SoapStubAdapter(host=vc.host, port=vc.port, path="/pbm", version=VmomiSupport.newestVersions.GetName("pbm"),
                           sslContext=vc.ssl_context(), requestContext={"vcSessionCookie": session_id})
    stub.cookie = cookie
    return pbm.ServiceInstance("ServiceInstance", stub).RetrieveContent()


def test_pbm_profiles_and_policy_assignment(vc: Vcsim, si: Any) -> None:
    content = pbm_content(vc, si)
    pm = content.profileManager
    storage = pbm.profile.ResourceType(resourceType="STORAGE")

    def names() -> list[str]:
        return [p.name for p in pm.PbmRetrieveContent(profileIds=pm.PbmQueryProfile(resourceType=storage))]

    assert "VM Encryption Policy" in names()
    rule = pbm.capability.CapabilityInstance(
        id=pbm.capability.CapabilityMetadata.UniqueId(namespace="liftshift", id="capture"),
        constraint=[pbm.capability.ConstraintInstance(
            propertyInstance=[pbm.capability.PropertyInstance(id="capture", value=True)])])
    spec = pbm.profile.CapabilityBasedProfileCreateSpec(
        name="liftshift-capture", category="REQUIREMENT", resourceType=storage,
        constraints=pbm.profile.SubProfileCapabilityConstraints(subProfiles=[
            pbm.profile.SubProfileCapabilityConstraints.SubProfile(name="IO filter", capability=[rule])]))
    profile_id = pm.PbmCreate(createSpec=spec)
    assert names().count("liftshift-capture") == 1

    vm = vms_by_name(si)["DC0_C0_RP0_VM0"]
    (disk,) = disks(vm)
    policy = [vim.vm.DefinedProfileSpec(profileId=profile_id.uniqueId)]
    edit = vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk, profile=policy)
    WaitForTask(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(vmProfile=policy, deviceChange=[edit])))
    # govmomi 0.24 accepts the assignment but records nothing: the association
    # query answers empty for the VM and for its disk.
    uuid = si.content.about.instanceUuid
    for key, kind in ((vm._moId, "virtualMachine"), (f"{vm._moId}:{disk.key}", "virtualDiskId")):
        ref = pbm.ServerObjectRef(key=key, objectType=kind, serverUuid=uuid)
        assert pm.PbmQueryAssociatedProfile(entity=ref) == []

    pm.PbmDelete(profileId=[profile_id])
    assert "liftshift-capture" not in names()


def test_pbm_needs_the_vim_session(vc: Vcsim) -> None:
    stub = SoapStubAdapter(host=vc.host, port=vc.port, path="/pbm", version=VmomiSupport.newestVersions.GetName("pbm"),
                           sslContext=vc.ssl_context())
    content = pbm.ServiceInstance("ServiceInstance", stub).RetrieveContent()
    with pytest.raises(vim.fault.NotAuthenticated):
        content.profileManager.PbmQueryProfile(resourceType=pbm.profile.ResourceType(resourceType="STORAGE"))


def test_simulator_gaps_the_platform_must_cover(vc: Vcsim, si: Any) -> None:
    """Behaviours of this simulator a vCenter does not share; the platform
    guards against them itself rather than relying on a fault."""
    dc, pool = datacenter(si), cluster_pool(si)
    create_shadow(vc.datastore_dir / "liftshift", "vd-2", 1 * MiB)
    path = "[LocalDS_0] liftshift/vd-2.vmdk"
    # A second VM of the same name in the same folder is accepted (vCenter: DuplicateName).
    for _ in range(2):
        WaitForTask(dc.vmFolder.CreateVM_Task(config=shadow_vm_spec("twin", path, size=MiB), pool=pool))
    assert [v.name for v in dc.vmFolder.childEntity].count("twin") == 2
    # An independent-nonpersistent disk can be modelled (the "cannot be captured" case).
    spec = shadow_vm_spec("nonpersistent", path, size=MiB)
    spec.deviceChange[1].device.backing.diskMode = "independent_nonpersistent"
    task = dc.vmFolder.CreateVM_Task(config=spec, pool=pool)
    WaitForTask(task)
    assert disks(task.info.result)[0].backing.diskMode == "independent_nonpersistent"
    # Unknown VM, folder, network: the platform looks names up before CreateVM
    # (an unknown NIC network name makes the simulator fail the request midway).
    assert si.content.searchIndex.FindChild(entity=dc.vmFolder, name="no-such-vm") is None
    assert "no-such-network" not in [n.name for n in dc.network]
    with pytest.raises(vmodl.fault.MethodNotFound):
        vms_by_name(si)["DC0_C0_RP0_VM1"].RebootGuest()
