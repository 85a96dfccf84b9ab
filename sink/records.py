"""Parsing and checking the ring records a LiveRecords frame carries.

Design note
-----------
A LiveRecords frame is a run of raw ring records, byte for byte as
:mod:`liftshift.iofilter.ring` lays them out (56-byte header, payload padded
to 8, PAD records allowed anywhere).  :func:`parse_records` checks the whole
run before the applier touches the disk, so a bad frame changes nothing:

* layout (InvalidArgument): every word is a whole record (size a multiple of
  8, at least 8, inside the frame, BUSY clear, no unknown bits); a data
  record's size is exactly header + padded payload; flags are exactly one of
  WRITE, ZERO, TRIM, CLOSE with a payload only for WRITE (and then as long as
  the range); sequences start at 1 and are contiguous inside the frame;
* bounds (OutOfRange): every range lies inside the vdisk;
* checksums (ChecksumMismatch): every payload's XXH3-64 matches its header.

:func:`check_summary` then holds the frame's ``first_seq``, ``last_seq`` and
``count`` to what the records say.  Only the payload is covered by a
checksum in the ring format; header fields are protected by the layout checks
above and by the transport's own integrity.

The run must end exactly at the end of the frame: a consumer region cut in
the middle of a record (``Batch.data`` past ``Batch.end``) is refused rather
than guessed at.
"""

from __future__ import annotations

from typing import NamedTuple

import xxhash

from liftshift.daemon.errors import ChecksumMismatch, InvalidArgument, OutOfRange
from liftshift.iofilter.ring import (
    FLAG_CLOSE,
    FLAG_NAMES,
    FLAG_TRIM,
    FLAG_VOID,
    FLAG_WRITE,
    FLAG_ZERO,
    REC,
    RECORD_HEADER,
    WORD_BUSY,
    WORD_LEN_MASK,
    WORD_PAD,
)

_KNOWN_WORD_BITS = WORD_LEN_MASK | WORD_PAD | WORD_BUSY
_EMPTY_XXH3 = xxhash.xxh3_64_intdigest(b"")
_KINDS = (FLAG_WRITE, FLAG_ZERO, FLAG_TRIM, FLAG_CLOSE, FLAG_VOID)


class LiveRecord(NamedTuple):
    """One checked record; ``payload`` is a view into the frame (empty unless WRITE)."""

    seq: int
    offset: int
    length: int
    flags: int
    payload: memoryview


def _malformed(at: int, why: str) -> InvalidArgument:
    return InvalidArgument(f"LiveRecords: malformed record at byte {at}: {why}")


def parse_records(data: bytes | memoryview, disk_size: int) -> list[LiveRecord]:
    """Check every record of ``data`` (layout, bounds, checksums) and return
    the non-PAD ones in order; raise the first problem found.

    The hot loop handles the common case, a well-formed in-range WRITE that
    follows its predecessor, with one combined test; anything else (PAD,
    ZERO, TRIM, CLOSE, or a problem) goes to :func:`_slow_record`, which
    applies every rule one by one and names the one that failed.
    """
    mv = memoryview(data).cast("B")
    n = len(mv)
    unpack = REC.unpack_from
    xxh = xxhash.xxh3_64_intdigest
    out: list[LiveRecord] = []
    append = out.append
    expect = 0  # sequence the next record must carry; 0 before the first
    o = 0
    while o < n:
        if n - o >= RECORD_HEADER:
            word, seq, offset, length, flags, paylen, digest, _time_ns = unpack(mv, o)
            # word == size means no PAD/BUSY/unknown bits; size == header + padded payload.
            if (word == RECORD_HEADER + ((paylen + 7) & ~7) and o + word <= n and flags == FLAG_WRITE
                    and paylen == length and length and (seq == expect if expect else seq)
                    and offset + length <= disk_size):
                payload = mv[o + RECORD_HEADER : o + RECORD_HEADER + paylen]
                if xxh(payload) == digest:
                    append(LiveRecord(seq, offset, length, flags, payload))
                    expect = seq + 1
                    o += word
                    continue
        rec, size = _slow_record(mv, o, expect, disk_size)
        if rec is not None:
            append(rec)
            expect = rec.seq + 1
        o += size
    return out


def _slow_record(mv: memoryview, o: int, expect: int, disk_size: int) -> tuple[LiveRecord | None, int]:
    """Check the record at byte ``o`` rule by rule; return it (None for PAD)
    and its size, or raise the error naming the first rule it breaks."""
    n = len(mv)
    if n - o < 8:
        raise _malformed(o, f"{n - o} trailing bytes are not a record")
    word = int.from_bytes(mv[o : o + 8], "little")
    size = word & WORD_LEN_MASK
    if word & ~_KNOWN_WORD_BITS:
        raise _malformed(o, f"record word {word:#x} has unknown bits set")
    if word & WORD_BUSY:
        raise _malformed(o, "record is still BUSY (never committed)")
    if size < 8 or size & 7:
        raise _malformed(o, f"record size {size} is not a positive multiple of 8")
    if o + size > n:
        raise _malformed(o, f"record of {size} bytes runs past the end of the {n}-byte frame")
    if word & WORD_PAD:
        return None, size
    if size < RECORD_HEADER:
        raise _malformed(o, f"record size {size} is shorter than the {RECORD_HEADER}-byte header")
    _w, seq, offset, length, flags, paylen, digest, _time_ns = REC.unpack_from(mv, o)
    if size != RECORD_HEADER + ((paylen + 7) & ~7) and flags != FLAG_VOID:
        # (a VOID record keeps the size of the record it replaced)
        raise _malformed(o, f"record seq {seq}: size {size} does not fit a {paylen}-byte payload")
    if flags not in _KINDS:
        raise _malformed(o, f"record seq {seq}: flags {flags:#x} are not exactly one of WRITE, ZERO, TRIM, CLOSE, VOID")
    if seq == 0:
        raise _malformed(o, "sequence 0 is not valid (sequences start at 1)")
    if expect and seq != expect:
        raise _malformed(o, f"record seq {seq} follows seq {expect - 1} in the same frame")
    name = FLAG_NAMES[flags]
    if flags == FLAG_WRITE:
        if paylen != length or length == 0:
            raise _malformed(o, f"WRITE seq {seq}: payload of {paylen} bytes for a {length}-byte range")
    elif paylen:
        raise _malformed(o, f"{name} seq {seq} carries a {paylen}-byte payload")
    elif flags == FLAG_CLOSE:
        if length:
            raise _malformed(o, f"CLOSE seq {seq} covers {length} bytes")
    elif flags == FLAG_VOID:
        # The daemon voided a record whose payload failed its checksum: it
        # only keeps the sequence; its range (possibly garbage) is not applied.
        return LiveRecord(seq, offset, 0, flags, mv[o:o]), size
    elif length == 0:
        raise _malformed(o, f"{name} seq {seq} covers no bytes")
    if offset + length > disk_size:
        raise OutOfRange(f"LiveRecords: {name} seq {seq} covers [{offset}, {offset + length}), past the end "
                         f"of the {disk_size}-byte vdisk")
    payload = mv[o + RECORD_HEADER : o + RECORD_HEADER + paylen]
    actual = xxhash.xxh3_64_intdigest(payload) if paylen else _EMPTY_XXH3
    if actual != digest:
        raise ChecksumMismatch(f"LiveRecords: {name} seq {seq} at offset {offset}: payload XXH3-64 is "
                               f"{actual:#018x}, the record says {digest:#018x}; nothing of the frame was applied")
    return LiveRecord(seq, offset, length, flags, payload), size


class FrameScan(NamedTuple):
    """What a checked frame holds, as the sequence checks need it (the C fast
    path, :mod:`liftshift.sink.capply`, returns the same without a list)."""

    first_seq: int  # 0 when there are no records
    last_seq: int
    nrecords: int
    inner_close_seq: int  # the first CLOSE record that is not the frame's last one, else 0


def scan_records(records: list[LiveRecord]) -> FrameScan:
    """The :class:`FrameScan` of a parsed frame."""
    inner_close = next((r.seq for r in records[:-1] if r.flags == FLAG_CLOSE), 0)
    if not records:
        return FrameScan(0, 0, 0, 0)
    return FrameScan(records[0].seq, records[-1].seq, len(records), inner_close)


def check_summary(scan: FrameScan, first_seq: int, last_seq: int, count: int) -> None:
    """The frame's header fields must describe its records exactly."""
    if not scan.nrecords:
        raise InvalidArgument("LiveRecords carries no records (only PAD or nothing)")
    got = (scan.first_seq, scan.last_seq, scan.nrecords)
    if got != (first_seq, last_seq, count):
        raise InvalidArgument(f"LiveRecords header says first_seq={first_seq} last_seq={last_seq} count={count}, "
                              f"the records say first_seq={got[0]} last_seq={got[1]} count={got[2]}")
