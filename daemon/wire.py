"""Replicate frames on the wire, without protobuf objects on the hot path.

Design note
-----------
The contract is ``liftshift.v1.Frame`` (``proto/liftshift/v1/replication.proto``)
and stays so: anything that speaks protobuf can talk to either daemon.  But
a frame is mostly one big bytes field (a run of ring records, or a 1 MiB
chunk), and the generated classes copy it at every step: into the message
when a field is set, out again when it is serialized, and on the receiving
side into the parsed message and once more when the field is read.  At
hundreds of MB/s those copies were a third of both daemons' CPU.

So the source daemon encodes the two bulk frames itself
(:func:`live_frame`, :func:`chunk_frame`: a few header bytes around the
payload, one join) and sends bytes, and the sink decodes them itself
(:func:`decode_frame`): the payload comes out as a memoryview into the
received message, never copied.  Both produce and accept exactly the
protobuf encoding:

* the encoders write what ``SerializeToString`` writes (fields in number
  order, proto3 defaults left out), which the tests check byte for byte;
* the decoder takes the canonical shape and anything protobuf allows that
  is easy to read the same way (any field order, unknown fields skipped,
  the last value of a repeated scalar winning); everything else (a body
  given twice, which protobuf merges; wire types that do not match; bad
  UTF-8; truncation) goes to ``Frame.FromString`` so the answer is always
  protobuf's, and a message protobuf cannot parse is an InvalidArgument.

Hello and CloseBarrier frames are rare and small: they are built with the
generated class and serialized (:func:`encode`).
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import DecodeError

from liftshift.v1 import replication_pb2 as pb

from .errors import InvalidArgument

REPLICATE_METHOD = "/liftshift.v1.Replication/Replicate"
IMPORT_SEED_METHOD = "/liftshift.v1.Replication/ImportSeed"
_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1
_MAX_FIELD = (1 << 29) - 1
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

# Tags (field number << 3 | wire type) this module writes.
_T_FRAME_NO = b"\x08"
_T_LIVE = b"\x1a"
_T_CHUNK = b"\x22"
_T_1_LEN = b"\x0a"  # LiveRecords.records
_T_1_VARINT = b"\x08"  # Chunk.offset
_T_2_VARINT = b"\x10"  # LiveRecords.first_seq, Chunk.length
_T_3_VARINT = b"\x18"  # LiveRecords.last_seq
_T_4_VARINT = b"\x20"  # LiveRecords.count, Chunk.zero
_T_3_LEN = b"\x1a"  # Chunk.data
_T_5_VARINT = b"\x28"  # Chunk.xxh3
_T_6_VARINT = b"\x30"  # Chunk.kind


# -- encoding (source daemon) --------------------------------------------------


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _uint(tag: bytes, value: int) -> bytes:
    """A varint field, left out when zero (proto3)."""
    return tag + _varint(value) if value else b""


def live_frame(frame_no: int, records: bytes | memoryview, first_seq: int, last_seq: int, count: int) -> bytes:
    """``Frame(frame_no, live=LiveRecords(records, first_seq, last_seq, count))``, serialized."""
    head = _T_1_LEN + _varint(len(records)) if records else b""
    tail = _uint(_T_2_VARINT, first_seq) + _uint(_T_3_VARINT, last_seq) + _uint(_T_4_VARINT, count)
    body = len(head) + len(records) + len(tail)
    return b"".join((_uint(_T_FRAME_NO, frame_no) + _T_LIVE + _varint(body) + head, records, tail))


def chunk_frame(frame_no: int, offset: int, length: int, data: bytes | bytearray, zero: bool, xxh3: int,
                kind: int) -> bytes:
    """``Frame(frame_no, chunk=Chunk(offset, length, data, zero, xxh3, kind))``, serialized."""
    head = _uint(_T_1_VARINT, offset) + _uint(_T_2_VARINT, length)
    if data:
        head += _T_3_LEN + _varint(len(data))
    tail = (_T_4_VARINT + b"\x01" if zero else b"") + _uint(_T_5_VARINT, xxh3) + _uint(_T_6_VARINT, kind)
    body = len(head) + len(data) + len(tail)
    return b"".join((_uint(_T_FRAME_NO, frame_no) + _T_CHUNK + _varint(body) + head, data, tail))


def seed_chunk_piece(offset: int, data: bytes, digest: bytes) -> bytes:
    """``SeedPiece(chunk=SeedChunk(offset, data, xxh3_128))``, serialized (ImportSeed's bulk message)."""
    head = _uint(_T_1_VARINT, offset) + b"\x12" + _varint(len(data))
    tail = b"\x1a" + _varint(len(digest)) + digest
    return b"".join((b"\x12" + _varint(len(head) + len(data) + len(tail)) + head, data, tail))


def import_seed_call(channel: grpc.aio.Channel) -> Any:
    """Open an ImportSeed stream that takes SeedPieces as already-serialized bytes."""
    return channel.stream_stream(IMPORT_SEED_METHOD, request_serializer=None,
                                 response_deserializer=pb.SeedImportReply.FromString, _registered_method=True)()


def encode(frame: pb.Frame) -> bytes:
    """Any other frame (Hello, CloseBarrier), through protobuf."""
    return frame.SerializeToString()


def replicate_call(channel: grpc.aio.Channel) -> Any:
    """Open a Replicate stream that takes frames as already-serialized bytes."""
    return channel.stream_stream(REPLICATE_METHOD, request_serializer=None,
                                 response_deserializer=pb.Ack.FromString, _registered_method=True)()


# -- decoding (sink) -------------------------------------------------------------


_EMPTY = memoryview(b"")


class WireFrame:
    """A decoded Frame: ``body`` names the oneof member set (None when none is);
    ``payload`` is LiveRecords.records or Chunk.data, a view into the message."""

    __slots__ = ("frame_no", "body", "payload", "vdisk_id", "first_seq", "last_seq", "count", "offset", "length",
                 "zero", "xxh3", "kind", "final_seq")

    def __init__(self, frame_no: int = 0, body: str | None = None, payload: memoryview = _EMPTY) -> None:
        self.frame_no = frame_no
        self.body = body
        self.payload = payload
        self.vdisk_id = ""
        self.first_seq = self.last_seq = self.count = 0
        self.offset = self.length = self.xxh3 = self.kind = 0
        self.zero = False
        self.final_seq = 0

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__ if k != "payload")
        return f"WireFrame({fields}, payload={len(self.payload)} bytes)"


class _Unusual(Exception):
    """Not the shape the fast decoder reads: let protobuf decide."""


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    if pos >= end:
        raise _Unusual
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    value = b & 0x7F
    shift = 7
    pos += 1
    while True:
        if pos >= end or shift > 63:
            raise _Unusual
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes, pos: int, end: int, schema: dict[int, int]) -> dict[int, Any]:
    """Known fields of one message: varints as ints, length-delimited as
    (start, end); unknown fields skipped."""
    out: dict[int, Any] = {}
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        value: Any
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos, end)
        elif wire == _LEN:
            n, pos = _read_varint(buf, pos, end)
            if n > end - pos:
                raise _Unusual
            value = (pos, pos + n)
            pos += n
        elif wire == _I64 or wire == _I32:
            pos += 8 if wire == _I64 else 4
            if pos > end:
                raise _Unusual
            value = None
        else:
            raise _Unusual  # groups, or not a wire type at all
        if field == 0 or field > _MAX_FIELD:
            raise _Unusual
        want = schema.get(field)
        if want is None:
            continue
        if want != wire:
            raise _Unusual
        out[field] = value
    return out


_FRAME = {1: _VARINT, 2: _LEN, 3: _LEN, 4: _LEN, 5: _LEN}
_BODIES = {2: "hello", 3: "live", 4: "chunk", 5: "close"}
_HELLO = {1: _LEN}
_LIVE = {1: _LEN, 2: _VARINT, 3: _VARINT, 4: _VARINT}
_CHUNK = {1: _VARINT, 2: _VARINT, 3: _LEN, 4: _VARINT, 5: _VARINT, 6: _VARINT}
_CLOSE = {1: _VARINT}


def _int32(value: int) -> int:
    value &= _U32
    return value - (1 << 32) if value >> 31 else value


def decode_fast(raw: bytes) -> WireFrame:
    """The canonical-enough shapes (see the module note); raises _Unusual otherwise."""
    end = len(raw)
    # The top level, by hand: a body given twice must go to protobuf (it merges).
    frame_no = 0
    body: tuple[int, int, int] | None = None
    pos = 0
    while pos < end:
        key, pos = _read_varint(raw, pos, end)
        field, wire = key >> 3, key & 7
        if field == 1 and wire == _VARINT:
            frame_no, pos = _read_varint(raw, pos, end)
            continue
        if field in _BODIES and wire == _LEN:
            n, pos = _read_varint(raw, pos, end)
            if n > end - pos or body is not None:
                raise _Unusual
            body = (field, pos, pos + n)
            pos += n
            continue
        # Anything else: skip it as an unknown field would be skipped.
        pos = _skip(raw, pos, end, field, wire)
    f = WireFrame(frame_no & _U64)
    if body is None:
        return f
    field, start, stop = body
    mv = memoryview(raw)
    if field == 3:
        v = _fields(raw, start, stop, _LIVE)
        f.body = "live"
        if 1 in v:
            f.payload = mv[v[1][0] : v[1][1]]
        f.first_seq, f.last_seq = v.get(2, 0) & _U64, v.get(3, 0) & _U64
        f.count = v.get(4, 0) & _U32
    elif field == 4:
        v = _fields(raw, start, stop, _CHUNK)
        f.body = "chunk"
        if 3 in v:
            f.payload = mv[v[3][0] : v[3][1]]
        f.offset, f.length = v.get(1, 0) & _U64, v.get(2, 0) & _U64
        f.zero, f.xxh3, f.kind = bool(v.get(4, 0) & _U64), v.get(5, 0) & _U64, _int32(v.get(6, 0))
    elif field == 2:
        v = _fields(raw, start, stop, _HELLO)
        f.body = "hello"
        if 1 in v:
            try:
                f.vdisk_id = raw[v[1][0] : v[1][1]].decode("utf-8")
            except UnicodeDecodeError:
                raise _Unusual from None
    else:
        v = _fields(raw, start, stop, _CLOSE)
        f.body = "close"
        f.final_seq = v.get(1, 0) & _U64
    return f


def _skip(raw: bytes, pos: int, end: int, field: int, wire: int) -> int:
    if field == 0 or field > _MAX_FIELD or field in _FRAME:
        raise _Unusual  # invalid, or a known field with another wire type
    if wire == _VARINT:
        return _read_varint(raw, pos, end)[1]
    if wire == _LEN:
        n, pos = _read_varint(raw, pos, end)
        if n > end - pos:
            raise _Unusual
        return pos + n
    if wire in (_I64, _I32):
        pos += 8 if wire == _I64 else 4
        if pos > end:
            raise _Unusual
        return pos
    raise _Unusual


def from_message(frame: pb.Frame) -> WireFrame:
    """A parsed protobuf Frame as a :class:`WireFrame` (its payload copied once)."""
    body = frame.WhichOneof("body")
    f = WireFrame(frame.frame_no, body)
    if body == "live":
        live = frame.live
        f.payload = memoryview(live.records)
        f.first_seq, f.last_seq, f.count = live.first_seq, live.last_seq, live.count
    elif body == "chunk":
        c = frame.chunk
        f.payload = memoryview(c.data)
        f.offset, f.length, f.zero, f.xxh3, f.kind = c.offset, c.length, c.zero, c.xxh3, c.kind
    elif body == "hello":
        f.vdisk_id = frame.hello.vdisk_id
    elif body == "close":
        f.final_seq = frame.close.final_seq
    return f


def decode_frame(raw: bytes) -> WireFrame:
    """Decode one serialized Frame; InvalidArgument when it is not one."""
    try:
        return decode_fast(raw)
    except _Unusual:
        pass
    try:
        return from_message(pb.Frame.FromString(raw))
    except DecodeError as e:
        raise InvalidArgument(f"a {len(raw)}-byte message on the Replicate stream is not a liftshift.v1.Frame: "
                              f"{e}") from None
