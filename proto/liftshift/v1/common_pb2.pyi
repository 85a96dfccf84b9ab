from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PowerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POWER_STATE_UNSPECIFIED: _ClassVar[PowerState]
    POWER_STATE_POWERED_ON: _ClassVar[PowerState]
    POWER_STATE_POWERED_OFF: _ClassVar[PowerState]
    POWER_STATE_NOT_CREATED: _ClassVar[PowerState]
POWER_STATE_UNSPECIFIED: PowerState
POWER_STATE_POWERED_ON: PowerState
POWER_STATE_POWERED_OFF: PowerState
POWER_STATE_NOT_CREATED: PowerState

class SimGuest(_message.Message):
    __slots__ = ("rate_ops", "block_size", "working_set_bytes", "read_fraction", "seed", "boot_digest")
    RATE_OPS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    WORKING_SET_BYTES_FIELD_NUMBER: _ClassVar[int]
    READ_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    BOOT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    rate_ops: float
    block_size: int
    working_set_bytes: int
    read_fraction: float
    seed: int
    boot_digest: bool
    def __init__(self, rate_ops: _Optional[float] = ..., block_size: _Optional[int] = ..., working_set_bytes: _Optional[int] = ..., read_fraction: _Optional[float] = ..., seed: _Optional[int] = ..., boot_digest: _Optional[bool] = ...) -> None: ...

class GuestSpec(_message.Message):
    __slots__ = ("sim", "qemu")
    SIM_FIELD_NUMBER: _ClassVar[int]
    QEMU_FIELD_NUMBER: _ClassVar[int]
    sim: SimGuest
    qemu: QemuGuest
    def __init__(self, sim: _Optional[_Union[SimGuest, _Mapping]] = ..., qemu: _Optional[_Union[QemuGuest, _Mapping]] = ...) -> None: ...

class QemuGuest(_message.Message):
    __slots__ = ("memory_mb", "kernel", "initrd", "append", "extra_args", "accel", "headless", "binary")
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    INITRD_FIELD_NUMBER: _ClassVar[int]
    APPEND_FIELD_NUMBER: _ClassVar[int]
    EXTRA_ARGS_FIELD_NUMBER: _ClassVar[int]
    ACCEL_FIELD_NUMBER: _ClassVar[int]
    HEADLESS_FIELD_NUMBER: _ClassVar[int]
    BINARY_FIELD_NUMBER: _ClassVar[int]
    memory_mb: int
    kernel: str
    initrd: str
    append: str
    extra_args: _containers.RepeatedScalarFieldContainer[str]
    accel: str
    headless: bool
    binary: str
    def __init__(self, memory_mb: _Optional[int] = ..., kernel: _Optional[str] = ..., initrd: _Optional[str] = ..., append: _Optional[str] = ..., extra_args: _Optional[_Iterable[str]] = ..., accel: _Optional[str] = ..., headless: _Optional[bool] = ..., binary: _Optional[str] = ...) -> None: ...
