from liftshift.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DestinationDiskRef(_message.Message):
    __slots__ = ("name", "vdisk_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VDISK_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    vdisk_id: str
    def __init__(self, name: _Optional[str] = ..., vdisk_id: _Optional[str] = ...) -> None: ...

class PrepareVmRequest(_message.Message):
    __slots__ = ("vm", "migration_id", "disks", "guest")
    VM_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    GUEST_FIELD_NUMBER: _ClassVar[int]
    vm: str
    migration_id: str
    disks: _containers.RepeatedCompositeFieldContainer[DestinationDiskRef]
    guest: _common_pb2.GuestSpec
    def __init__(self, vm: _Optional[str] = ..., migration_id: _Optional[str] = ..., disks: _Optional[_Iterable[_Union[DestinationDiskRef, _Mapping]]] = ..., guest: _Optional[_Union[_common_pb2.GuestSpec, _Mapping]] = ...) -> None: ...

class DestinationVmRef(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: str
    def __init__(self, vm: _Optional[str] = ...) -> None: ...

class DestinationDisk(_message.Message):
    __slots__ = ("name", "vdisk_id", "size_bytes", "flat_path", "descriptor_path", "closed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VDISK_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FLAT_PATH_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTOR_PATH_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    name: str
    vdisk_id: str
    size_bytes: int
    flat_path: str
    descriptor_path: str
    closed: bool
    def __init__(self, name: _Optional[str] = ..., vdisk_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., flat_path: _Optional[str] = ..., descriptor_path: _Optional[str] = ..., closed: _Optional[bool] = ...) -> None: ...

class DestinationVm(_message.Message):
    __slots__ = ("vm", "migration_id", "power_state", "disks", "powered_on_at")
    VM_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    POWER_STATE_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    POWERED_ON_AT_FIELD_NUMBER: _ClassVar[int]
    vm: str
    migration_id: str
    power_state: _common_pb2.PowerState
    disks: _containers.RepeatedCompositeFieldContainer[DestinationDisk]
    powered_on_at: float
    def __init__(self, vm: _Optional[str] = ..., migration_id: _Optional[str] = ..., power_state: _Optional[_Union[_common_pb2.PowerState, str]] = ..., disks: _Optional[_Iterable[_Union[DestinationDisk, _Mapping]]] = ..., powered_on_at: _Optional[float] = ...) -> None: ...

class ListDestinationVmsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDestinationVmsResponse(_message.Message):
    __slots__ = ("vms",)
    VMS_FIELD_NUMBER: _ClassVar[int]
    vms: _containers.RepeatedCompositeFieldContainer[DestinationVm]
    def __init__(self, vms: _Optional[_Iterable[_Union[DestinationVm, _Mapping]]] = ...) -> None: ...

class RemoveVmRequest(_message.Message):
    __slots__ = ("vm", "migration_id")
    VM_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    vm: str
    migration_id: str
    def __init__(self, vm: _Optional[str] = ..., migration_id: _Optional[str] = ...) -> None: ...

class RemoveVmResponse(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: str
    def __init__(self, vm: _Optional[str] = ...) -> None: ...
