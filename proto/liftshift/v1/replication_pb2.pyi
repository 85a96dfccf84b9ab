from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChunkKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHUNK_KIND_UNSPECIFIED: _ClassVar[ChunkKind]
    CHUNK_KIND_BACKGROUND: _ClassVar[ChunkKind]
    CHUNK_KIND_RESYNC: _ClassVar[ChunkKind]
    CHUNK_KIND_REPAIR: _ClassVar[ChunkKind]
CHUNK_KIND_UNSPECIFIED: ChunkKind
CHUNK_KIND_BACKGROUND: ChunkKind
CHUNK_KIND_RESYNC: ChunkKind
CHUNK_KIND_REPAIR: ChunkKind

class OpenVdiskRequest(_message.Message):
    __slots__ = ("vdisk_id", "size_bytes", "migration_id", "seed_id", "seed_base_seq")
    VDISK_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_BASE_SEQ_FIELD_NUMBER: _ClassVar[int]
    vdisk_id: str
    size_bytes: int
    migration_id: str
    seed_id: str
    seed_base_seq: int
    def __init__(self, vdisk_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., migration_id: _Optional[str] = ..., seed_id: _Optional[str] = ..., seed_base_seq: _Optional[int] = ...) -> None: ...

class OpenVdiskResponse(_message.Message):
    __slots__ = ("vdisk_id", "size_bytes", "applied_seq", "durable_seq", "created", "closed", "flat_path", "descriptor_path")
    VDISK_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    DURABLE_SEQ_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    FLAT_PATH_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTOR_PATH_FIELD_NUMBER: _ClassVar[int]
    vdisk_id: str
    size_bytes: int
    applied_seq: int
    durable_seq: int
    created: bool
    closed: bool
    flat_path: str
    descriptor_path: str
    def __init__(self, vdisk_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., applied_seq: _Optional[int] = ..., durable_seq: _Optional[int] = ..., created: _Optional[bool] = ..., closed: _Optional[bool] = ..., flat_path: _Optional[str] = ..., descriptor_path: _Optional[str] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("frame_no", "hello", "live", "chunk", "close")
    FRAME_NO_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    frame_no: int
    hello: Hello
    live: LiveRecords
    chunk: Chunk
    close: CloseBarrier
    def __init__(self, frame_no: _Optional[int] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., live: _Optional[_Union[LiveRecords, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., close: _Optional[_Union[CloseBarrier, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("vdisk_id",)
    VDISK_ID_FIELD_NUMBER: _ClassVar[int]
    vdisk_id: str
    def __init__(self, vdisk_id: _Optional[str] = ...) -> None: ...

class LiveRecords(_message.Message):
    __slots__ = ("records", "first_seq", "last_seq", "count")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    records: bytes
    first_seq: int
    last_seq: int
    count: int
    def __init__(self, records: _Optional[bytes] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("offset", "length", "data", "zero", "xxh3", "kind")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ZERO_FIELD_NUMBER: _ClassVar[int]
    XXH3_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    offset: int
    length: int
    data: bytes
    zero: bool
    xxh3: int
    kind: ChunkKind
    def __init__(self, offset: _Optional[int] = ..., length: _Optional[int] = ..., data: _Optional[bytes] = ..., zero: _Optional[bool] = ..., xxh3: _Optional[int] = ..., kind: _Optional[_Union[ChunkKind, str]] = ...) -> None: ...

class CloseBarrier(_message.Message):
    __slots__ = ("final_seq",)
    FINAL_SEQ_FIELD_NUMBER: _ClassVar[int]
    final_seq: int
    def __init__(self, final_seq: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("applied_seq", "durable_seq", "durable_frame", "closed", "apply_ns", "fsync_ns")
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    DURABLE_SEQ_FIELD_NUMBER: _ClassVar[int]
    DURABLE_FRAME_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    APPLY_NS_FIELD_NUMBER: _ClassVar[int]
    FSYNC_NS_FIELD_NUMBER: _ClassVar[int]
    applied_seq: int
    durable_seq: int
    durable_frame: int
    closed: bool
    apply_ns: int
    fsync_ns: int
    def __init__(self, applied_seq: _Optional[int] = ..., durable_seq: _Optional[int] = ..., durable_frame: _Optional[int] = ..., closed: _Optional[bool] = ..., apply_ns: _Optional[int] = ..., fsync_ns: _Optional[int] = ...) -> None: ...

class HashRangesRequest(_message.Message):
    __slots__ = ("vdisk_id", "offset", "length", "chunk_size", "ranges")
    VDISK_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    vdisk_id: str
    offset: int
    length: int
    chunk_size: int
    ranges: _containers.RepeatedCompositeFieldContainer[ByteRange]
    def __init__(self, vdisk_id: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., chunk_size: _Optional[int] = ..., ranges: _Optional[_Iterable[_Union[ByteRange, _Mapping]]] = ...) -> None: ...

class ByteRange(_message.Message):
    __slots__ = ("offset", "length")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    offset: int
    length: int
    def __init__(self, offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class ChunkHash(_message.Message):
    __slots__ = ("offset", "length", "xxh3_128")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    XXH3_128_FIELD_NUMBER: _ClassVar[int]
    offset: int
    length: int
    xxh3_128: bytes
    def __init__(self, offset: _Optional[int] = ..., length: _Optional[int] = ..., xxh3_128: _Optional[bytes] = ...) -> None: ...

class HashRangesResponse(_message.Message):
    __slots__ = ("hashes",)
    HASHES_FIELD_NUMBER: _ClassVar[int]
    hashes: _containers.RepeatedCompositeFieldContainer[ChunkHash]
    def __init__(self, hashes: _Optional[_Iterable[_Union[ChunkHash, _Mapping]]] = ...) -> None: ...

class ListVdisksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VdiskInfo(_message.Message):
    __slots__ = ("vdisk_id", "size_bytes", "applied_seq", "durable_seq", "closed", "migration_id", "allocated_bytes", "seed_id", "seed_imported")
    VDISK_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    DURABLE_SEQ_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    SEED_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_IMPORTED_FIELD_NUMBER: _ClassVar[int]
    vdisk_id: str
    size_bytes: int
    applied_seq: int
    durable_seq: int
    closed: bool
    migration_id: str
    allocated_bytes: int
    seed_id: str
    seed_imported: bool
    def __init__(self, vdisk_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., applied_seq: _Optional[int] = ..., durable_seq: _Optional[int] = ..., closed: _Optional[bool] = ..., migration_id: _Optional[str] = ..., allocated_bytes: _Optional[int] = ..., seed_id: _Optional[str] = ..., seed_imported: _Optional[bool] = ...) -> None: ...

class ListVdisksResponse(_message.Message):
    __slots__ = ("vdisks",)
    VDISKS_FIELD_NUMBER: _ClassVar[int]
    vdisks: _containers.RepeatedCompositeFieldContainer[VdiskInfo]
    def __init__(self, vdisks: _Optional[_Iterable[_Union[VdiskInfo, _Mapping]]] = ...) -> None: ...

class SeedHeader(_message.Message):
    __slots__ = ("seed_id", "vm", "vdisk_id", "size_bytes", "chunk_size", "data_bytes")
    SEED_ID_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    VDISK_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_BYTES_FIELD_NUMBER: _ClassVar[int]
    seed_id: str
    vm: str
    vdisk_id: str
    size_bytes: int
    chunk_size: int
    data_bytes: int
    def __init__(self, seed_id: _Optional[str] = ..., vm: _Optional[str] = ..., vdisk_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., chunk_size: _Optional[int] = ..., data_bytes: _Optional[int] = ...) -> None: ...

class SeedChunk(_message.Message):
    __slots__ = ("offset", "data", "xxh3_128")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    XXH3_128_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    xxh3_128: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., xxh3_128: _Optional[bytes] = ...) -> None: ...

class SeedPiece(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: SeedHeader
    chunk: SeedChunk
    def __init__(self, header: _Optional[_Union[SeedHeader, _Mapping]] = ..., chunk: _Optional[_Union[SeedChunk, _Mapping]] = ...) -> None: ...

class SeedAccepted(_message.Message):
    __slots__ = ("flat_path",)
    FLAT_PATH_FIELD_NUMBER: _ClassVar[int]
    flat_path: str
    def __init__(self, flat_path: _Optional[str] = ...) -> None: ...

class SeedImportReply(_message.Message):
    __slots__ = ("accepted", "result")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    accepted: SeedAccepted
    result: ImportSeedResponse
    def __init__(self, accepted: _Optional[_Union[SeedAccepted, _Mapping]] = ..., result: _Optional[_Union[ImportSeedResponse, _Mapping]] = ...) -> None: ...

class ImportSeedResponse(_message.Message):
    __slots__ = ("vdisk_id", "chunks_written", "bytes_written", "rejected_offsets", "flat_path")
    VDISK_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    REJECTED_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    FLAT_PATH_FIELD_NUMBER: _ClassVar[int]
    vdisk_id: str
    chunks_written: int
    bytes_written: int
    rejected_offsets: _containers.RepeatedScalarFieldContainer[int]
    flat_path: str
    def __init__(self, vdisk_id: _Optional[str] = ..., chunks_written: _Optional[int] = ..., bytes_written: _Optional[int] = ..., rejected_offsets: _Optional[_Iterable[int]] = ..., flat_path: _Optional[str] = ...) -> None: ...
