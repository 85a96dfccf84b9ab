"""The hand-written Frame codec (liftshift.daemon.wire) against protobuf itself:
the encoders write SerializeToString's bytes, and the decoder reads every
message the way Frame.FromString does (or refuses it when protobuf does)."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from liftshift.daemon import wire
from liftshift.daemon.errors import InvalidArgument
from liftshift.v1 import replication_pb2 as pb

u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)
kinds = st.sampled_from([0, 1, 2, 3, 7, 2**31 - 1])


def as_tuple(f: wire.WireFrame) -> tuple[object, ...]:
    return (f.frame_no, f.body, bytes(f.payload), f.vdisk_id, f.first_seq, f.last_seq, f.count, f.offset, f.length,
            f.zero, f.xxh3, f.kind, f.final_seq)


def reference(raw: bytes) -> tuple[object, ...]:
    return as_tuple(wire.from_message(pb.Frame.FromString(raw)))


@given(frame_no=u64, records=st.binary(max_size=300), first=u64, last=u64, count=u32)
def test_live_frames_encode_like_protobuf(frame_no: int, records: bytes, first: int, last: int, count: int) -> None:
    want = pb.Frame(frame_no=frame_no, live=pb.LiveRecords(records=records, first_seq=first, last_seq=last,
                                                           count=count)).SerializeToString()
    got = wire.live_frame(frame_no, records, first, last, count)
    assert got == want
    assert as_tuple(wire.decode_fast(got)) == reference(want)


@given(frame_no=u64, offset=u64, length=u64, data=st.binary(max_size=300), zero=st.booleans(), xxh3=u64, kind=kinds)
def test_chunk_frames_encode_like_protobuf(frame_no: int, offset: int, length: int, data: bytes, zero: bool,
                                           xxh3: int, kind: int) -> None:
    want = pb.Frame(frame_no=frame_no, chunk=pb.Chunk(offset=offset, length=length, data=data, zero=zero, xxh3=xxh3,
                                                      kind=kind)).SerializeToString()  # type: ignore[arg-type]
    got = wire.chunk_frame(frame_no, offset, length, data, zero, xxh3, kind)
    assert got == want
    assert as_tuple(wire.decode_fast(got)) == reference(want)


@given(offset=u64, data=st.binary(min_size=1, max_size=300), digest=st.binary(min_size=16, max_size=16))
def test_seed_chunk_pieces_encode_like_protobuf(offset: int, data: bytes, digest: bytes) -> None:
    want = pb.SeedPiece(chunk=pb.SeedChunk(offset=offset, data=data, xxh3_128=digest)).SerializeToString()
    assert wire.seed_chunk_piece(offset, data, digest) == want


def test_large_payloads_are_views_not_copies() -> None:
    data = bytes(range(256)) * 4096
    raw = wire.chunk_frame(9, 1 << 20, len(data), data, False, 5, pb.CHUNK_KIND_BACKGROUND)
    f = wire.decode_frame(raw)
    assert f.payload.obj is raw and f.payload == data and f.frame_no == 9


FRAMES = [
    pb.Frame(frame_no=1, hello=pb.Hello(vdisk_id="vm1-disk0")),
    pb.Frame(frame_no=2, hello=pb.Hello(vdisk_id="ünïcode")),
    pb.Frame(frame_no=3, close=pb.CloseBarrier(final_seq=2**64 - 1)),
    pb.Frame(frame_no=4, close=pb.CloseBarrier()),
    pb.Frame(frame_no=5, live=pb.LiveRecords()),
    pb.Frame(frame_no=6, chunk=pb.Chunk(zero=True)),
    pb.Frame(frame_no=7),
    pb.Frame(),
    pb.Frame(chunk=pb.Chunk(kind=-5)),  # type: ignore[arg-type]  # open enum: any int32 survives
]


@pytest.mark.parametrize("i", range(len(FRAMES)))
def test_every_body_decodes_like_protobuf(i: int) -> None:
    raw = FRAMES[i].SerializeToString()
    assert as_tuple(wire.decode_fast(raw)) == reference(raw)
    assert as_tuple(wire.decode_frame(raw)) == reference(raw)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return wire._varint(number << 3 | wire_type) + payload


UNUSUAL = [
    # field order reversed, unknown fields of every wire type, a repeated scalar
    _field(3, 2, wire._varint(4) + b"\x10\x07\x08\x01") + _field(1, 0, b"\x05"),
    _field(1, 0, b"\x05") + _field(99, 0, b"\x01") + _field(98, 1, bytes(8)) + _field(97, 5, bytes(4))
    + _field(96, 2, b"\x02zz") + _field(4, 2, wire._varint(2) + b"\x30\x01"),
    _field(1, 0, b"\x05") + _field(1, 0, b"\x06") + _field(5, 2, b"\x02\x08\x09"),
    # over-long varints (still valid protobuf)
    _field(1, 0, b"\x85\x80\x80\x80\x00"),
    # a body twice: protobuf merges the two
    _field(4, 2, b"\x02\x08\x01") + _field(4, 2, b"\x02\x10\x02"),
    # two different bodies: the last one wins
    _field(5, 2, b"\x02\x08\x01") + _field(3, 2, b"\x02\x10\x02"),
    # a known field with the wrong wire type
    _field(1, 2, b"\x01x"),
    _field(3, 0, b"\x01"),
    _field(4, 2, b"\x02\x0a\x00"),
]
BROKEN = [
    b"\x08",  # truncated varint
    b"\x22\x05\x08",  # truncated body
    _field(2, 2, b"\x02\xff\xfe"),  # a Hello whose string is not UTF-8
    b"\x00\x01",  # field number 0
    b"\x0b",  # a group start
    b"\x08" + b"\xff" * 11,  # a varint longer than 10 bytes
]


@pytest.mark.parametrize("i", range(len(UNUSUAL)))
def test_unusual_but_valid_messages_decode_like_protobuf(i: int) -> None:
    assert as_tuple(wire.decode_frame(UNUSUAL[i])) == reference(UNUSUAL[i])


@pytest.mark.parametrize("i", range(len(BROKEN)))
def test_messages_protobuf_refuses_are_invalid_arguments(i: int) -> None:
    with pytest.raises(InvalidArgument, match="not a liftshift.v1.Frame"):
        wire.decode_frame(BROKEN[i])


@settings(max_examples=500, deadline=None)
@given(base=st.sampled_from([f.SerializeToString() for f in FRAMES]
                            + [wire.chunk_frame(3, 4096, 3, b"abc", False, 77, 1),
                               wire.live_frame(8, b"r" * 70, 5, 6, 2)] + UNUSUAL),
       edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255), st.sampled_from(["set", "insert", "cut"])),
                      max_size=3))
def test_whatever_the_fast_path_accepts_protobuf_reads_the_same(base: bytes, edits: list[tuple[int, int, str]]) -> None:
    raw = bytearray(base)
    for at, value, how in edits:
        at = at % (len(raw) + 1)
        if how == "set" and at < len(raw):
            raw[at] = value
        elif how == "insert":
            raw[at:at] = bytes([value])
        else:
            del raw[at:]
    data = bytes(raw)
    try:
        want = reference(data)
    except Exception:
        want = None
    try:
        got = as_tuple(wire.decode_fast(data))
    except wire._Unusual:
        if want is None:
            with pytest.raises(InvalidArgument):
                wire.decode_frame(data)
        else:
            assert as_tuple(wire.decode_frame(data)) == want
    else:
        assert got == want, "the fast path accepted a message protobuf reads differently (or refuses)"
