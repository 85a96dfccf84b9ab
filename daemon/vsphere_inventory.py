"""vSphere client layer, part 2: inventory (VMs, disks, NICs) and what can be captured.

Design note
-----------
Inventory is read with the property collector over a container view: one
round trip (plus paging) for every VM's name, power, host and configuration,
however many VMs there are, instead of a call per property per VM.  What comes
back is turned into frozen dataclasses that hold no pyvmomi objects (a VM is
named by its managed object id, ``moid``), so the platform can keep them,
log them and compare them freely.

Disk capacity: ``capacityInBytes`` when set, else ``capacityInKB`` * 1024
(older hosts, and the simulator's model VMs, set only the latter).

Capture attachment is recorded twice: the storage policy assigned through
PBM (what vCenter uses to put the IO filter on a disk) and a marker in the
VM's extraConfig, ``liftshift.capture.<disk key> = <policy id>`` (see
:mod:`liftshift.daemon.vsphere_policy` for why).  :attr:`VsphereDisk.capture_policy`
is read from the marker.

:func:`capturable` is pure: it refuses disks whose writes the IO filter
cannot see, naming the disk and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyVmomi import vim, vmodl

from .errors import FailedPrecondition, NotFound
from .platform import Power

CAPTURE_MARKER = "liftshift.capture."
MIGRATION_TAG = "liftshift.migration_id"

_POWER = {"poweredOn": Power.ON, "poweredOff": Power.OFF, "suspended": Power.OFF}
CONTROLLER_KINDS: dict[type, str] = {
    vim.vm.device.ParaVirtualSCSIController: "pvscsi",
    vim.vm.device.VirtualLsiLogicController: "lsilogic",
    vim.vm.device.VirtualLsiLogicSASController: "lsilogic-sas",
    vim.vm.device.VirtualBusLogicController: "buslogic",
    vim.vm.device.VirtualIDEController: "ide",
    vim.vm.device.VirtualAHCIController: "sata",
    vim.vm.device.VirtualNVMEController: "nvme",
}


class NotCapturable(FailedPrecondition):
    """A disk whose writes the IO filter cannot capture (named, with the reason)."""


@dataclass(frozen=True)
class VsphereDisk:
    """One virtual disk of a VM."""

    key: int
    label: str
    capacity: int  # bytes
    file_name: str  # "[datastore] dir/name.vmdk"
    datastore: str
    controller: str  # the controller's label
    controller_kind: str  # pvscsi, lsilogic, lsilogic-sas, buslogic, ide, sata, nvme, or the class name
    bus: int
    unit: int
    disk_mode: str  # persistent, independent_persistent, independent_nonpersistent, ...
    rdm: str | None  # None, "physicalMode" or "virtualMode"
    capture_policy: str | None = None  # the policy id of the capture marker, if attached

    @property
    def capture_attached(self) -> bool:
        return self.capture_policy is not None


@dataclass(frozen=True)
class VsphereNic:
    """One network adapter and the name of the network it is on."""

    key: int
    label: str
    kind: str  # vmxnet3, e1000, e1000e, ...
    network: str


@dataclass(frozen=True)
class VsphereVm:
    """A VM as vCenter describes it (plain data; ``moid`` names it)."""

    moid: str
    name: str
    power: Power
    host: str
    guest_id: str
    guest_name: str
    num_cpu: int
    memory_mb: int
    firmware: str
    nics: tuple[VsphereNic, ...]
    disks: tuple[VsphereDisk, ...]
    migration_id: str | None  # the liftshift.migration_id tag (shadow VMs)
    instance_uuid: str = ""  # config.instanceUuid: names the VM's capture rings

    def disk(self, key_or_label: int | str) -> VsphereDisk:
        for d in self.disks:
            if key_or_label in (d.key, d.label):
                return d
        raise NotFound(f"VM {self.name!r} has no disk {key_or_label!r}",
                       hint=f"its disks: {', '.join(f'{d.label} (key {d.key})' for d in self.disks)}")


def capturable(vm_name: str, disk: VsphereDisk) -> None:
    """Raise NotCapturable if the IO filter cannot capture ``disk``'s writes."""
    what = f"disk {disk.label!r} ({disk.file_name}) of VM {vm_name!r}"
    if disk.rdm == "physicalMode":
        raise NotCapturable(f"{what} is a physical-mode RDM: SCSI commands go straight to the LUN and no "
                            "IO filter sees its writes", hint="migrate the LUN's data separately, or convert the "
                            "disk to a virtual disk (Storage vMotion) first")
    if disk.disk_mode == "independent_nonpersistent":
        raise NotCapturable(f"{what} is independent-nonpersistent: its writes are thrown away at power off and "
                            "IO filters do not attach to it", hint="change the disk mode to persistent "
                            "(VM powered off) or remove the disk from the VM before migrating")


# -- reading ---------------------------------------------------------------

def collect(si: Any, kind: type, paths: list[str], root: Any = None,
            obj: Any = None) -> list[tuple[Any, dict[str, Any]]]:
    """(object, {path: value}) for every ``kind`` object under ``root`` (or just ``obj``)."""
    content = si.content
    pc = content.propertyCollector
    PC = vmodl.query.PropertyCollector
    view = None
    if obj is not None:
        objects = [PC.ObjectSpec(obj=obj, skip=False)]
    else:
        view = content.viewManager.CreateContainerView(root or content.rootFolder, [kind], True)
        traverse = PC.TraversalSpec(name="view", path="view", skip=False, type=vim.view.ContainerView)
        objects = [PC.ObjectSpec(obj=view, skip=True, selectSet=[traverse])]
    try:
        spec = PC.FilterSpec(objectSet=objects, propSet=[PC.PropertySpec(type=kind, pathSet=paths)])
        out = []
        result = pc.RetrievePropertiesEx(specSet=[spec], options=PC.RetrieveOptions())
        while result is not None:
            for oc in result.objects:
                out.append((oc.obj, {p.name: p.val for p in oc.propSet or []}))
            result = pc.ContinueRetrievePropertiesEx(token=result.token) if result.token else None
        return out
    finally:
        if view is not None:
            view.Destroy()


_VM_PATHS = ["name", "runtime.powerState", "runtime.host", "config.guestId", "config.guestFullName",
             "config.hardware.numCPU", "config.hardware.memoryMB", "config.firmware", "config.hardware.device",
             "config.extraConfig", "config.instanceUuid"]


@dataclass
class Names:
    """moid -> name of hosts, datastores and networks (and portgroup key -> name)."""

    hosts: dict[str, str]
    datastores: dict[str, str]
    portgroups: dict[str, str]  # distributed portgroup key -> name


def names(si: Any) -> Names:
    hosts = {o._moId: p.get("name", "") for o, p in collect(si, vim.HostSystem, ["name"])}
    datastores = {o._moId: p.get("name", "") for o, p in collect(si, vim.Datastore, ["name"])}
    portgroups = {p.get("key", o._moId): p.get("name", "")
                  for o, p in collect(si, vim.dvs.DistributedVirtualPortgroup, ["name", "key"])}
    return Names(hosts, datastores, portgroups)


def _controller_kind(dev: Any) -> str:
    for cls, kind in CONTROLLER_KINDS.items():
        if isinstance(dev, cls):
            return kind
    return str(type(dev).__name__)


def disk_of(dev: Any, controllers: dict[int, Any], known: Names, markers: dict[int, str]) -> VsphereDisk:
    """A VirtualDisk device as a VsphereDisk (pure: no calls)."""
    backing = dev.backing
    ctrl = controllers.get(dev.controllerKey)
    rdm = backing.compatibilityMode if isinstance(
        backing, vim.vm.device.VirtualDisk.RawDiskMappingVer1BackingInfo) else None
    ds = backing.datastore
    file_name = getattr(backing, "fileName", "") or ""
    ds_name = known.datastores.get(ds._moId, "") if ds is not None else ""
    if not ds_name and file_name.startswith("["):
        ds_name = file_name[1:file_name.find("]")]
    capacity = dev.capacityInBytes or (dev.capacityInKB or 0) * 1024
    return VsphereDisk(
        key=dev.key, label=dev.deviceInfo.label if dev.deviceInfo else f"disk-{dev.key}", capacity=capacity,
        file_name=file_name, datastore=ds_name,
        controller=ctrl.deviceInfo.label if ctrl is not None and ctrl.deviceInfo else str(dev.controllerKey),
        controller_kind=_controller_kind(ctrl) if ctrl is not None else "", bus=getattr(ctrl, "busNumber", 0) or 0,
        unit=dev.unitNumber if dev.unitNumber is not None else -1,
        disk_mode=getattr(backing, "diskMode", "") or "", rdm=rdm, capture_policy=markers.get(dev.key))


def _nic_of(dev: Any, known: Names) -> VsphereNic:
    backing = dev.backing
    if isinstance(backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
        key = str(backing.port.portgroupKey)
        network = known.portgroups.get(key, key)
    elif isinstance(backing, vim.vm.device.VirtualEthernetCard.OpaqueNetworkBackingInfo):
        network = str(backing.opaqueNetworkId)
    else:
        network = getattr(backing, "deviceName", "") or ""
    kind = type(dev).__name__.rsplit(".", 1)[-1].removeprefix("Virtual").lower()
    return VsphereNic(key=dev.key, label=dev.deviceInfo.label if dev.deviceInfo else f"nic-{dev.key}",
                      kind=kind, network=network)


def vm_of(obj: Any, props: dict[str, Any], known: Names) -> VsphereVm:
    """Collected VM properties as a VsphereVm."""
    devices = props.get("config.hardware.device") or []
    extra = {o.key: o.value for o in props.get("config.extraConfig") or []}
    markers = {}
    for k, v in extra.items():
        if k.startswith(CAPTURE_MARKER) and v:
            try:
                markers[int(k.removeprefix(CAPTURE_MARKER))] = str(v)
            except ValueError:
                pass
    controllers = {d.key: d for d in devices if isinstance(d, vim.vm.device.VirtualController)}
    host = props.get("runtime.host")
    return VsphereVm(
        moid=obj._moId, name=props.get("name", ""), power=_POWER.get(props.get("runtime.powerState", ""), Power.OFF),
        host=known.hosts.get(host._moId, host._moId) if host is not None else "",
        guest_id=props.get("config.guestId") or "", guest_name=props.get("config.guestFullName") or "",
        num_cpu=props.get("config.hardware.numCPU") or 0, memory_mb=props.get("config.hardware.memoryMB") or 0,
        firmware=props.get("config.firmware") or "bios",
        nics=tuple(_nic_of(d, known) for d in devices if isinstance(d, vim.vm.device.VirtualEthernetCard)),
        disks=tuple(disk_of(d, controllers, known, markers) for d in devices
                    if isinstance(d, vim.vm.device.VirtualDisk)),
        migration_id=str(extra[MIGRATION_TAG]) if extra.get(MIGRATION_TAG) else None,
        instance_uuid=props.get("config.instanceUuid") or obj._moId)


def inventory(si: Any) -> list[VsphereVm]:
    """Every VM (templates included only if vCenter lists them as VMs), sorted by name."""
    known = names(si)
    vms = [vm_of(o, p, known) for o, p in collect(si, vim.VirtualMachine, _VM_PATHS)]
    return sorted(vms, key=lambda v: (v.name, v.moid))


def read_vm(si: Any, moid: str) -> VsphereVm:
    """One VM by moid (NotFound if it is gone)."""
    try:
        found = collect(si, vim.VirtualMachine, _VM_PATHS, obj=vm_ref(si, moid))
    except vmodl.fault.ManagedObjectNotFound:
        found = []
    if not found:
        raise NotFound(f"VM {moid} no longer exists")
    return vm_of(found[0][0], found[0][1], names(si))


def find_vm(si: Any, name: str) -> VsphereVm:
    """The VM called ``name``; NotFound (known names as hint) or FailedPrecondition if several."""
    vms = inventory(si)
    found = [v for v in vms if v.name == name]
    if not found:
        known = [v.name for v in vms]
        shown = ", ".join(known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
        raise NotFound(f"no VM called {name!r}", hint=f"known VMs: {shown or '(none)'}")
    if len(found) > 1:
        raise FailedPrecondition(f"{len(found)} VMs are called {name!r} ({', '.join(v.moid for v in found)})",
                                 hint="rename one of them: liftshift needs VM names to be unique")
    return found[0]


def vm_ref(si: Any, moid: str) -> Any:
    """The pyvmomi VirtualMachine object of ``moid`` on this session."""
    return vim.VirtualMachine(moid, si._stub)
