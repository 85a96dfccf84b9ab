from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplicationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLICATION_STATE_UNSPECIFIED: _ClassVar[ReplicationState]
    REPLICATION_STATE_COPYING: _ClassVar[ReplicationState]
    REPLICATION_STATE_CONVERGED: _ClassVar[ReplicationState]
    REPLICATION_STATE_CLOSED: _ClassVar[ReplicationState]
REPLICATION_STATE_UNSPECIFIED: ReplicationState
REPLICATION_STATE_COPYING: ReplicationState
REPLICATION_STATE_CONVERGED: ReplicationState
REPLICATION_STATE_CLOSED: ReplicationState

class ListReplicationsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VdiskReplication(_message.Message):
    __slots__ = ("vdisk_id", "sink", "state", "connected", "size_bytes", "background_total_bytes", "background_done_bytes", "live_bytes", "live_records", "dirty_bytes", "lag_seconds", "shipped_seq", "durable_seq", "resent_bytes", "discarded_chunks", "reconnects", "ring_overflows", "last_error", "chunk_bytes_sent", "lag_p50_seconds", "lag_p99_seconds", "lag_samples")
    VDISK_ID_FIELD_NUMBER: _ClassVar[int]
    SINK_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_DONE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LIVE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LIVE_RECORDS_FIELD_NUMBER: _ClassVar[int]
    DIRTY_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SHIPPED_SEQ_FIELD_NUMBER: _ClassVar[int]
    DURABLE_SEQ_FIELD_NUMBER: _ClassVar[int]
    RESENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISCARDED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    RECONNECTS_FIELD_NUMBER: _ClassVar[int]
    RING_OVERFLOWS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    LAG_P50_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LAG_P99_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LAG_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    vdisk_id: str
    sink: str
    state: ReplicationState
    connected: bool
    size_bytes: int
    background_total_bytes: int
    background_done_bytes: int
    live_bytes: int
    live_records: int
    dirty_bytes: int
    lag_seconds: float
    shipped_seq: int
    durable_seq: int
    resent_bytes: int
    discarded_chunks: int
    reconnects: int
    ring_overflows: int
    last_error: str
    chunk_bytes_sent: int
    lag_p50_seconds: float
    lag_p99_seconds: float
    lag_samples: int
    def __init__(self, vdisk_id: _Optional[str] = ..., sink: _Optional[str] = ..., state: _Optional[_Union[ReplicationState, str]] = ..., connected: _Optional[bool] = ..., size_bytes: _Optional[int] = ..., background_total_bytes: _Optional[int] = ..., background_done_bytes: _Optional[int] = ..., live_bytes: _Optional[int] = ..., live_records: _Optional[int] = ..., dirty_bytes: _Optional[int] = ..., lag_seconds: _Optional[float] = ..., shipped_seq: _Optional[int] = ..., durable_seq: _Optional[int] = ..., resent_bytes: _Optional[int] = ..., discarded_chunks: _Optional[int] = ..., reconnects: _Optional[int] = ..., ring_overflows: _Optional[int] = ..., last_error: _Optional[str] = ..., chunk_bytes_sent: _Optional[int] = ..., lag_p50_seconds: _Optional[float] = ..., lag_p99_seconds: _Optional[float] = ..., lag_samples: _Optional[int] = ...) -> None: ...

class ListReplicationsResponse(_message.Message):
    __slots__ = ("vdisks",)
    VDISKS_FIELD_NUMBER: _ClassVar[int]
    vdisks: _containers.RepeatedCompositeFieldContainer[VdiskReplication]
    def __init__(self, vdisks: _Optional[_Iterable[_Union[VdiskReplication, _Mapping]]] = ...) -> None: ...

class VerifyVdiskRequest(_message.Message):
    __slots__ = ("vdisk_id", "max_rounds")
    VDISK_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    vdisk_id: str
    max_rounds: int
    def __init__(self, vdisk_id: _Optional[str] = ..., max_rounds: _Optional[int] = ...) -> None: ...

class VerifyVdiskResponse(_message.Message):
    __slots__ = ("vdisk_id", "identical", "chunks_compared", "chunks_mismatched", "chunks_repaired", "rounds", "seconds")
    VDISK_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTICAL_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_COMPARED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_MISMATCHED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_REPAIRED_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    vdisk_id: str
    identical: bool
    chunks_compared: int
    chunks_mismatched: int
    chunks_repaired: int
    rounds: int
    seconds: float
    def __init__(self, vdisk_id: _Optional[str] = ..., identical: _Optional[bool] = ..., chunks_compared: _Optional[int] = ..., chunks_mismatched: _Optional[int] = ..., chunks_repaired: _Optional[int] = ..., rounds: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...
