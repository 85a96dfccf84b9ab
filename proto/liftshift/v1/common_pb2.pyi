from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
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
    __slots__ = ("sim",)
    SIM_FIELD_NUMBER: _ClassVar[int]
    sim: SimGuest
    def __init__(self, sim: _Optional[_Union[SimGuest, _Mapping]] = ...) -> None: ...
