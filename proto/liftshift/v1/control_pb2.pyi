from liftshift.v1 import common_pb2 as _common_pb2
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

class MigrationType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MIGRATION_TYPE_UNSPECIFIED: _ClassVar[MigrationType]
    MIGRATION_TYPE_LIVE: _ClassVar[MigrationType]
    MIGRATION_TYPE_SEEDED: _ClassVar[MigrationType]

class MigrationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MIGRATION_STATE_UNSPECIFIED: _ClassVar[MigrationState]
    MIGRATION_STATE_CREATED: _ClassVar[MigrationState]
    MIGRATION_STATE_SYNCING: _ClassVar[MigrationState]
    MIGRATION_STATE_CONVERGED: _ClassVar[MigrationState]
    MIGRATION_STATE_PAUSED: _ClassVar[MigrationState]
    MIGRATION_STATE_CUTTING_OVER: _ClassVar[MigrationState]
    MIGRATION_STATE_COMPLETED: _ClassVar[MigrationState]
    MIGRATION_STATE_FAILED: _ClassVar[MigrationState]
    MIGRATION_STATE_ABORTED: _ClassVar[MigrationState]
    MIGRATION_STATE_ROLLED_BACK: _ClassVar[MigrationState]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_PROGRESS: _ClassVar[EventKind]
    EVENT_KIND_STATE_CHANGED: _ClassVar[EventKind]
    EVENT_KIND_CUTOVER_STEP: _ClassVar[EventKind]
    EVENT_KIND_ERROR: _ClassVar[EventKind]
REPLICATION_STATE_UNSPECIFIED: ReplicationState
REPLICATION_STATE_COPYING: ReplicationState
REPLICATION_STATE_CONVERGED: ReplicationState
REPLICATION_STATE_CLOSED: ReplicationState
MIGRATION_TYPE_UNSPECIFIED: MigrationType
MIGRATION_TYPE_LIVE: MigrationType
MIGRATION_TYPE_SEEDED: MigrationType
MIGRATION_STATE_UNSPECIFIED: MigrationState
MIGRATION_STATE_CREATED: MigrationState
MIGRATION_STATE_SYNCING: MigrationState
MIGRATION_STATE_CONVERGED: MigrationState
MIGRATION_STATE_PAUSED: MigrationState
MIGRATION_STATE_CUTTING_OVER: MigrationState
MIGRATION_STATE_COMPLETED: MigrationState
MIGRATION_STATE_FAILED: MigrationState
MIGRATION_STATE_ABORTED: MigrationState
MIGRATION_STATE_ROLLED_BACK: MigrationState
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_PROGRESS: EventKind
EVENT_KIND_STATE_CHANGED: EventKind
EVENT_KIND_CUTOVER_STEP: EventKind
EVENT_KIND_ERROR: EventKind

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

class ListVmsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VmDisk(_message.Message):
    __slots__ = ("name", "size_bytes", "allocated_bytes", "capture_attached", "image", "capture_policy", "backing_file", "datastore", "controller")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_ATTACHED_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_POLICY_FIELD_NUMBER: _ClassVar[int]
    BACKING_FILE_FIELD_NUMBER: _ClassVar[int]
    DATASTORE_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_FIELD_NUMBER: _ClassVar[int]
    name: str
    size_bytes: int
    allocated_bytes: int
    capture_attached: bool
    image: str
    capture_policy: str
    backing_file: str
    datastore: str
    controller: str
    def __init__(self, name: _Optional[str] = ..., size_bytes: _Optional[int] = ..., allocated_bytes: _Optional[int] = ..., capture_attached: _Optional[bool] = ..., image: _Optional[str] = ..., capture_policy: _Optional[str] = ..., backing_file: _Optional[str] = ..., datastore: _Optional[str] = ..., controller: _Optional[str] = ...) -> None: ...

class VmNic(_message.Message):
    __slots__ = ("label", "kind", "network")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    label: str
    kind: str
    network: str
    def __init__(self, label: _Optional[str] = ..., kind: _Optional[str] = ..., network: _Optional[str] = ...) -> None: ...

class Vm(_message.Message):
    __slots__ = ("name", "platform", "power_state", "disks", "migration_id", "host", "guest_os", "num_cpu", "memory_mb", "firmware", "nics")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    POWER_STATE_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    GUEST_OS_FIELD_NUMBER: _ClassVar[int]
    NUM_CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    FIRMWARE_FIELD_NUMBER: _ClassVar[int]
    NICS_FIELD_NUMBER: _ClassVar[int]
    name: str
    platform: str
    power_state: _common_pb2.PowerState
    disks: _containers.RepeatedCompositeFieldContainer[VmDisk]
    migration_id: str
    host: str
    guest_os: str
    num_cpu: int
    memory_mb: int
    firmware: str
    nics: _containers.RepeatedCompositeFieldContainer[VmNic]
    def __init__(self, name: _Optional[str] = ..., platform: _Optional[str] = ..., power_state: _Optional[_Union[_common_pb2.PowerState, str]] = ..., disks: _Optional[_Iterable[_Union[VmDisk, _Mapping]]] = ..., migration_id: _Optional[str] = ..., host: _Optional[str] = ..., guest_os: _Optional[str] = ..., num_cpu: _Optional[int] = ..., memory_mb: _Optional[int] = ..., firmware: _Optional[str] = ..., nics: _Optional[_Iterable[_Union[VmNic, _Mapping]]] = ...) -> None: ...

class ListVmsResponse(_message.Message):
    __slots__ = ("vms",)
    VMS_FIELD_NUMBER: _ClassVar[int]
    vms: _containers.RepeatedCompositeFieldContainer[Vm]
    def __init__(self, vms: _Optional[_Iterable[_Union[Vm, _Mapping]]] = ...) -> None: ...

class CreateMigrationRequest(_message.Message):
    __slots__ = ("name", "vms", "destination", "type", "auto_cutover", "converge_threshold_bytes", "throttle_bytes_per_s", "start")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VMS_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    AUTO_CUTOVER_FIELD_NUMBER: _ClassVar[int]
    CONVERGE_THRESHOLD_BYTES_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    name: str
    vms: _containers.RepeatedScalarFieldContainer[str]
    destination: str
    type: MigrationType
    auto_cutover: bool
    converge_threshold_bytes: int
    throttle_bytes_per_s: int
    start: bool
    def __init__(self, name: _Optional[str] = ..., vms: _Optional[_Iterable[str]] = ..., destination: _Optional[str] = ..., type: _Optional[_Union[MigrationType, str]] = ..., auto_cutover: _Optional[bool] = ..., converge_threshold_bytes: _Optional[int] = ..., throttle_bytes_per_s: _Optional[int] = ..., start: _Optional[bool] = ...) -> None: ...

class MigrationRef(_message.Message):
    __slots__ = ("migration_id",)
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    def __init__(self, migration_id: _Optional[str] = ...) -> None: ...

class VdiskProgress(_message.Message):
    __slots__ = ("name", "vdisk_id", "size_bytes", "state", "connected", "background_total_bytes", "background_done_bytes", "live_bytes", "live_records", "dirty_bytes", "backlog_bytes", "lag_seconds", "bandwidth_bytes_per_s", "eta_seconds", "resent_bytes", "ring_overflows", "last_error", "verified_bytes", "verified_once", "chunk_bytes_sent")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VDISK_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_DONE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LIVE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LIVE_RECORDS_FIELD_NUMBER: _ClassVar[int]
    DIRTY_BYTES_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RESENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    RING_OVERFLOWS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_BYTES_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_ONCE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    vdisk_id: str
    size_bytes: int
    state: ReplicationState
    connected: bool
    background_total_bytes: int
    background_done_bytes: int
    live_bytes: int
    live_records: int
    dirty_bytes: int
    backlog_bytes: int
    lag_seconds: float
    bandwidth_bytes_per_s: float
    eta_seconds: float
    resent_bytes: int
    ring_overflows: int
    last_error: str
    verified_bytes: int
    verified_once: bool
    chunk_bytes_sent: int
    def __init__(self, name: _Optional[str] = ..., vdisk_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., state: _Optional[_Union[ReplicationState, str]] = ..., connected: _Optional[bool] = ..., background_total_bytes: _Optional[int] = ..., background_done_bytes: _Optional[int] = ..., live_bytes: _Optional[int] = ..., live_records: _Optional[int] = ..., dirty_bytes: _Optional[int] = ..., backlog_bytes: _Optional[int] = ..., lag_seconds: _Optional[float] = ..., bandwidth_bytes_per_s: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., resent_bytes: _Optional[int] = ..., ring_overflows: _Optional[int] = ..., last_error: _Optional[str] = ..., verified_bytes: _Optional[int] = ..., verified_once: _Optional[bool] = ..., chunk_bytes_sent: _Optional[int] = ...) -> None: ...

class CutoverReport(_message.Message):
    __slots__ = ("vm", "identical", "downtime_seconds", "stop_seconds", "drain_seconds", "verify_seconds", "power_on_seconds", "chunks_verified", "chunks_preverified", "chunks_repaired", "residual_bytes", "forced", "error")
    VM_FIELD_NUMBER: _ClassVar[int]
    IDENTICAL_FIELD_NUMBER: _ClassVar[int]
    DOWNTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STOP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VERIFY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    POWER_ON_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_VERIFIED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_PREVERIFIED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_REPAIRED_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    FORCED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    vm: str
    identical: bool
    downtime_seconds: float
    stop_seconds: float
    drain_seconds: float
    verify_seconds: float
    power_on_seconds: float
    chunks_verified: int
    chunks_preverified: int
    chunks_repaired: int
    residual_bytes: int
    forced: bool
    error: str
    def __init__(self, vm: _Optional[str] = ..., identical: _Optional[bool] = ..., downtime_seconds: _Optional[float] = ..., stop_seconds: _Optional[float] = ..., drain_seconds: _Optional[float] = ..., verify_seconds: _Optional[float] = ..., power_on_seconds: _Optional[float] = ..., chunks_verified: _Optional[int] = ..., chunks_preverified: _Optional[int] = ..., chunks_repaired: _Optional[int] = ..., residual_bytes: _Optional[int] = ..., forced: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class VmMigration(_message.Message):
    __slots__ = ("vm", "state", "vdisks", "backlog_bytes", "eta_seconds", "cutover", "error")
    VM_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VDISKS_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CUTOVER_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    vm: str
    state: MigrationState
    vdisks: _containers.RepeatedCompositeFieldContainer[VdiskProgress]
    backlog_bytes: int
    eta_seconds: float
    cutover: CutoverReport
    error: str
    def __init__(self, vm: _Optional[str] = ..., state: _Optional[_Union[MigrationState, str]] = ..., vdisks: _Optional[_Iterable[_Union[VdiskProgress, _Mapping]]] = ..., backlog_bytes: _Optional[int] = ..., eta_seconds: _Optional[float] = ..., cutover: _Optional[_Union[CutoverReport, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class Migration(_message.Message):
    __slots__ = ("id", "name", "type", "destination", "state", "auto_cutover", "converge_threshold_bytes", "throttle_bytes_per_s", "vms", "created_at", "updated_at", "bandwidth_bytes_per_s", "eta_seconds", "allowed")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    AUTO_CUTOVER_FIELD_NUMBER: _ClassVar[int]
    CONVERGE_THRESHOLD_BYTES_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    VMS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    type: MigrationType
    destination: str
    state: MigrationState
    auto_cutover: bool
    converge_threshold_bytes: int
    throttle_bytes_per_s: int
    vms: _containers.RepeatedCompositeFieldContainer[VmMigration]
    created_at: float
    updated_at: float
    bandwidth_bytes_per_s: float
    eta_seconds: float
    allowed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., type: _Optional[_Union[MigrationType, str]] = ..., destination: _Optional[str] = ..., state: _Optional[_Union[MigrationState, str]] = ..., auto_cutover: _Optional[bool] = ..., converge_threshold_bytes: _Optional[int] = ..., throttle_bytes_per_s: _Optional[int] = ..., vms: _Optional[_Iterable[_Union[VmMigration, _Mapping]]] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ..., bandwidth_bytes_per_s: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., allowed: _Optional[_Iterable[str]] = ...) -> None: ...

class ListMigrationsRequest(_message.Message):
    __slots__ = ("all",)
    ALL_FIELD_NUMBER: _ClassVar[int]
    all: bool
    def __init__(self, all: _Optional[bool] = ...) -> None: ...

class ListMigrationsResponse(_message.Message):
    __slots__ = ("migrations",)
    MIGRATIONS_FIELD_NUMBER: _ClassVar[int]
    migrations: _containers.RepeatedCompositeFieldContainer[Migration]
    def __init__(self, migrations: _Optional[_Iterable[_Union[Migration, _Mapping]]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("migration_id", "interval_ms")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    interval_ms: int
    def __init__(self, migration_id: _Optional[str] = ..., interval_ms: _Optional[int] = ...) -> None: ...

class MigrationEvent(_message.Message):
    __slots__ = ("time", "migration_id", "vm", "kind", "state", "message", "migration")
    TIME_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_FIELD_NUMBER: _ClassVar[int]
    time: float
    migration_id: str
    vm: str
    kind: EventKind
    state: MigrationState
    message: str
    migration: Migration
    def __init__(self, time: _Optional[float] = ..., migration_id: _Optional[str] = ..., vm: _Optional[str] = ..., kind: _Optional[_Union[EventKind, str]] = ..., state: _Optional[_Union[MigrationState, str]] = ..., message: _Optional[str] = ..., migration: _Optional[_Union[Migration, _Mapping]] = ...) -> None: ...

class CutoverRequest(_message.Message):
    __slots__ = ("migration_id", "vm", "group", "auto", "force")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    AUTO_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    vm: str
    group: bool
    auto: bool
    force: bool
    def __init__(self, migration_id: _Optional[str] = ..., vm: _Optional[str] = ..., group: _Optional[bool] = ..., auto: _Optional[bool] = ..., force: _Optional[bool] = ...) -> None: ...

class CutoverResponse(_message.Message):
    __slots__ = ("migration", "reports")
    MIGRATION_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    migration: Migration
    reports: _containers.RepeatedCompositeFieldContainer[CutoverReport]
    def __init__(self, migration: _Optional[_Union[Migration, _Mapping]] = ..., reports: _Optional[_Iterable[_Union[CutoverReport, _Mapping]]] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("migration_id", "vm")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    vm: str
    def __init__(self, migration_id: _Optional[str] = ..., vm: _Optional[str] = ...) -> None: ...

class AttachFilterRequest(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: str
    def __init__(self, vm: _Optional[str] = ...) -> None: ...

class StartEstimateRequest(_message.Message):
    __slots__ = ("vms", "destination", "window_seconds", "interval_seconds", "probe_bytes", "probe_seconds", "bandwidth_bytes_per_s")
    VMS_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROBE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROBE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    vms: _containers.RepeatedScalarFieldContainer[str]
    destination: str
    window_seconds: float
    interval_seconds: float
    probe_bytes: int
    probe_seconds: float
    bandwidth_bytes_per_s: float
    def __init__(self, vms: _Optional[_Iterable[str]] = ..., destination: _Optional[str] = ..., window_seconds: _Optional[float] = ..., interval_seconds: _Optional[float] = ..., probe_bytes: _Optional[int] = ..., probe_seconds: _Optional[float] = ..., bandwidth_bytes_per_s: _Optional[float] = ...) -> None: ...

class EstimateRef(_message.Message):
    __slots__ = ("estimate_id",)
    ESTIMATE_ID_FIELD_NUMBER: _ClassVar[int]
    estimate_id: str
    def __init__(self, estimate_id: _Optional[str] = ...) -> None: ...

class Estimate(_message.Message):
    __slots__ = ("id", "vms", "destination", "state", "started_at", "window_seconds", "observed_seconds", "interval_seconds", "bandwidth_bytes_per_s")
    ID_FIELD_NUMBER: _ClassVar[int]
    VMS_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    id: str
    vms: _containers.RepeatedScalarFieldContainer[str]
    destination: str
    state: str
    started_at: float
    window_seconds: float
    observed_seconds: float
    interval_seconds: float
    bandwidth_bytes_per_s: float
    def __init__(self, id: _Optional[str] = ..., vms: _Optional[_Iterable[str]] = ..., destination: _Optional[str] = ..., state: _Optional[str] = ..., started_at: _Optional[float] = ..., window_seconds: _Optional[float] = ..., observed_seconds: _Optional[float] = ..., interval_seconds: _Optional[float] = ..., bandwidth_bytes_per_s: _Optional[float] = ...) -> None: ...

class Range(_message.Message):
    __slots__ = ("estimate", "low", "high")
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    estimate: float
    low: float
    high: float
    def __init__(self, estimate: _Optional[float] = ..., low: _Optional[float] = ..., high: _Optional[float] = ...) -> None: ...

class Sneakernet(_message.Message):
    __slots__ = ("ship_seconds", "replay_bytes", "replay_seconds", "total_seconds", "network_total_seconds", "faster")
    SHIP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REPLAY_BYTES_FIELD_NUMBER: _ClassVar[int]
    REPLAY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FASTER_FIELD_NUMBER: _ClassVar[int]
    ship_seconds: float
    replay_bytes: int
    replay_seconds: float
    total_seconds: float
    network_total_seconds: float
    faster: str
    def __init__(self, ship_seconds: _Optional[float] = ..., replay_bytes: _Optional[int] = ..., replay_seconds: _Optional[float] = ..., total_seconds: _Optional[float] = ..., network_total_seconds: _Optional[float] = ..., faster: _Optional[str] = ...) -> None: ...

class VmEstimate(_message.Message):
    __slots__ = ("vm", "size_bytes", "allocated_bytes", "write_bytes_per_s", "write_iops", "distinct_dirty_bytes_per_s", "background_seconds", "total_seconds", "steady_lag_seconds", "converges", "verdict", "throttle_to_converge_bytes_per_s", "cutover_downtime_seconds", "sneakernet")
    VM_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    WRITE_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    WRITE_IOPS_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_DIRTY_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STEADY_LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CONVERGES_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_TO_CONVERGE_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    CUTOVER_DOWNTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SNEAKERNET_FIELD_NUMBER: _ClassVar[int]
    vm: str
    size_bytes: int
    allocated_bytes: int
    write_bytes_per_s: float
    write_iops: float
    distinct_dirty_bytes_per_s: float
    background_seconds: float
    total_seconds: Range
    steady_lag_seconds: float
    converges: bool
    verdict: str
    throttle_to_converge_bytes_per_s: float
    cutover_downtime_seconds: Range
    sneakernet: Sneakernet
    def __init__(self, vm: _Optional[str] = ..., size_bytes: _Optional[int] = ..., allocated_bytes: _Optional[int] = ..., write_bytes_per_s: _Optional[float] = ..., write_iops: _Optional[float] = ..., distinct_dirty_bytes_per_s: _Optional[float] = ..., background_seconds: _Optional[float] = ..., total_seconds: _Optional[_Union[Range, _Mapping]] = ..., steady_lag_seconds: _Optional[float] = ..., converges: _Optional[bool] = ..., verdict: _Optional[str] = ..., throttle_to_converge_bytes_per_s: _Optional[float] = ..., cutover_downtime_seconds: _Optional[_Union[Range, _Mapping]] = ..., sneakernet: _Optional[_Union[Sneakernet, _Mapping]] = ...) -> None: ...

class EstimateReport(_message.Message):
    __slots__ = ("estimate", "vms", "all_at_once_seconds", "waves", "waves_seconds", "recommended", "sneakernet", "notes")
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    VMS_FIELD_NUMBER: _ClassVar[int]
    ALL_AT_ONCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WAVES_FIELD_NUMBER: _ClassVar[int]
    WAVES_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDED_FIELD_NUMBER: _ClassVar[int]
    SNEAKERNET_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    estimate: Estimate
    vms: _containers.RepeatedCompositeFieldContainer[VmEstimate]
    all_at_once_seconds: float
    waves: _containers.RepeatedScalarFieldContainer[str]
    waves_seconds: float
    recommended: str
    sneakernet: Sneakernet
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, estimate: _Optional[_Union[Estimate, _Mapping]] = ..., vms: _Optional[_Iterable[_Union[VmEstimate, _Mapping]]] = ..., all_at_once_seconds: _Optional[float] = ..., waves: _Optional[_Iterable[str]] = ..., waves_seconds: _Optional[float] = ..., recommended: _Optional[str] = ..., sneakernet: _Optional[_Union[Sneakernet, _Mapping]] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class ExportSeedRequest(_message.Message):
    __slots__ = ("vm", "directory")
    VM_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    vm: str
    directory: str
    def __init__(self, vm: _Optional[str] = ..., directory: _Optional[str] = ...) -> None: ...

class SeedRef(_message.Message):
    __slots__ = ("seed_id",)
    SEED_ID_FIELD_NUMBER: _ClassVar[int]
    seed_id: str
    def __init__(self, seed_id: _Optional[str] = ...) -> None: ...

class SeedDisk(_message.Message):
    __slots__ = ("name", "vdisk_id", "size_bytes", "exported_bytes", "data_bytes", "dirty_bytes", "tracked_seq", "file")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VDISK_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXPORTED_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_BYTES_FIELD_NUMBER: _ClassVar[int]
    DIRTY_BYTES_FIELD_NUMBER: _ClassVar[int]
    TRACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    name: str
    vdisk_id: str
    size_bytes: int
    exported_bytes: int
    data_bytes: int
    dirty_bytes: int
    tracked_seq: int
    file: str
    def __init__(self, name: _Optional[str] = ..., vdisk_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., exported_bytes: _Optional[int] = ..., data_bytes: _Optional[int] = ..., dirty_bytes: _Optional[int] = ..., tracked_seq: _Optional[int] = ..., file: _Optional[str] = ...) -> None: ...

class Seed(_message.Message):
    __slots__ = ("id", "vm", "directory", "state", "created_at", "exported_at", "chunk_size", "disks", "error", "migration_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    vm: str
    directory: str
    state: str
    created_at: float
    exported_at: float
    chunk_size: int
    disks: _containers.RepeatedCompositeFieldContainer[SeedDisk]
    error: str
    migration_id: str
    def __init__(self, id: _Optional[str] = ..., vm: _Optional[str] = ..., directory: _Optional[str] = ..., state: _Optional[str] = ..., created_at: _Optional[float] = ..., exported_at: _Optional[float] = ..., chunk_size: _Optional[int] = ..., disks: _Optional[_Iterable[_Union[SeedDisk, _Mapping]]] = ..., error: _Optional[str] = ..., migration_id: _Optional[str] = ...) -> None: ...

class ListSeedsResponse(_message.Message):
    __slots__ = ("seeds",)
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    seeds: _containers.RepeatedCompositeFieldContainer[Seed]
    def __init__(self, seeds: _Optional[_Iterable[_Union[Seed, _Mapping]]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("since", "until", "scope", "key", "metrics", "resolution")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    since: float
    until: float
    scope: str
    key: str
    metrics: _containers.RepeatedScalarFieldContainer[str]
    resolution: str
    def __init__(self, since: _Optional[float] = ..., until: _Optional[float] = ..., scope: _Optional[str] = ..., key: _Optional[str] = ..., metrics: _Optional[_Iterable[str]] = ..., resolution: _Optional[str] = ...) -> None: ...

class StatsRow(_message.Message):
    __slots__ = ("t", "scope", "key", "resolution", "seconds", "values", "peaks")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class PeaksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    T_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    PEAKS_FIELD_NUMBER: _ClassVar[int]
    t: float
    scope: str
    key: str
    resolution: str
    seconds: float
    values: _containers.ScalarMap[str, float]
    peaks: _containers.ScalarMap[str, float]
    def __init__(self, t: _Optional[float] = ..., scope: _Optional[str] = ..., key: _Optional[str] = ..., resolution: _Optional[str] = ..., seconds: _Optional[float] = ..., values: _Optional[_Mapping[str, float]] = ..., peaks: _Optional[_Mapping[str, float]] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[StatsRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[StatsRow, _Mapping]]] = ...) -> None: ...

class SetThrottleRequest(_message.Message):
    __slots__ = ("migration_id", "rate_bytes_per_s", "clear", "schedule", "vm", "guest_bytes_per_s", "guest_iops")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    RATE_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    CLEAR_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    GUEST_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    GUEST_IOPS_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    rate_bytes_per_s: int
    clear: bool
    schedule: str
    vm: str
    guest_bytes_per_s: int
    guest_iops: int
    def __init__(self, migration_id: _Optional[str] = ..., rate_bytes_per_s: _Optional[int] = ..., clear: _Optional[bool] = ..., schedule: _Optional[str] = ..., vm: _Optional[str] = ..., guest_bytes_per_s: _Optional[int] = ..., guest_iops: _Optional[int] = ...) -> None: ...

class GetThrottleRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RateLimit(_message.Message):
    __slots__ = ("migration_id", "rate_bytes_per_s", "effective_bytes_per_s", "binding", "source")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    RATE_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    BINDING_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    rate_bytes_per_s: int
    effective_bytes_per_s: int
    binding: bool
    source: str
    def __init__(self, migration_id: _Optional[str] = ..., rate_bytes_per_s: _Optional[int] = ..., effective_bytes_per_s: _Optional[int] = ..., binding: _Optional[bool] = ..., source: _Optional[str] = ...) -> None: ...

class GuestCap(_message.Message):
    __slots__ = ("vm", "bytes_per_s", "iops", "source", "throttled_seconds", "binding")
    VM_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    IOPS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BINDING_FIELD_NUMBER: _ClassVar[int]
    vm: str
    bytes_per_s: int
    iops: int
    source: str
    throttled_seconds: float
    binding: bool
    def __init__(self, vm: _Optional[str] = ..., bytes_per_s: _Optional[int] = ..., iops: _Optional[int] = ..., source: _Optional[str] = ..., throttled_seconds: _Optional[float] = ..., binding: _Optional[bool] = ...) -> None: ...

class ThrottleStatus(_message.Message):
    __slots__ = ("limits", "schedule", "next_change_at", "guests")
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    NEXT_CHANGE_AT_FIELD_NUMBER: _ClassVar[int]
    GUESTS_FIELD_NUMBER: _ClassVar[int]
    limits: _containers.RepeatedCompositeFieldContainer[RateLimit]
    schedule: str
    next_change_at: float
    guests: _containers.RepeatedCompositeFieldContainer[GuestCap]
    def __init__(self, limits: _Optional[_Iterable[_Union[RateLimit, _Mapping]]] = ..., schedule: _Optional[str] = ..., next_change_at: _Optional[float] = ..., guests: _Optional[_Iterable[_Union[GuestCap, _Mapping]]] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("since", "vm")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    since: float
    vm: str
    def __init__(self, since: _Optional[float] = ..., vm: _Optional[str] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("seq", "time", "who", "peer", "action", "params_json", "vms", "result", "prev", "hash")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    WHO_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    VMS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    PREV_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: float
    who: str
    peer: str
    action: str
    params_json: str
    vms: _containers.RepeatedScalarFieldContainer[str]
    result: str
    prev: str
    hash: str
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[float] = ..., who: _Optional[str] = ..., peer: _Optional[str] = ..., action: _Optional[str] = ..., params_json: _Optional[str] = ..., vms: _Optional[_Iterable[str]] = ..., result: _Optional[str] = ..., prev: _Optional[str] = ..., hash: _Optional[str] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...

class VerifyAuditRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VerifyAuditResponse(_message.Message):
    __slots__ = ("ok", "entries", "first_bad_seq", "reason")
    OK_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    FIRST_BAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    entries: int
    first_bad_seq: int
    reason: str
    def __init__(self, ok: _Optional[bool] = ..., entries: _Optional[int] = ..., first_bad_seq: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...
