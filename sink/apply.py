"""Applying replication frames to one shadow vdisk, with no networking.

Design note
-----------
A :class:`VdiskApplier` owns one open shadow (through a
:class:`~liftshift.sink.disk.Disk`) and its position: ``applied_seq``, the
highest record sequence written to the shadow, and ``durable_seq``, the
highest one both fdatasync'ed and recorded (through a
:class:`ProgressStore`).  The gRPC stream (:mod:`liftshift.sink.stream`)
only feeds it frames and decides when to sync; every rule lives here, so
the in-memory tests cover them all.

Rules
  * Check first, then apply: a LiveRecords frame is parsed and every record's
    layout, range and XXH3-64 checked (:mod:`liftshift.sink.records`), and
    its sequence checked against the stream, before the first byte is
    written.  A refused frame changes nothing.
  * Idempotent resends: records with ``seq <= applied_seq`` are skipped.
  * Stream continuity: the first LiveRecords frame of a stream may start
    anywhere up to ``applied_seq + 1`` (a reconnecting source re-sends from
    what it knows to be durable); every later frame must start exactly at
    the previous frame's ``last_seq + 1``, else a "gap" or "replay" error.
  * CLOSE: the CLOSE record ends the sequence (nothing may follow it); the
    CloseBarrier frame is accepted once everything up to its sequence is
    applied, and ``closed`` is reported once that is durable.  Background
    (repair) chunks are still accepted after it.
  * Durability order: :meth:`sync` fdatasyncs the data first and records the
    position second (only when it moved, or CLOSE became durable), so a
    crash between them loses only the claim, never data that was claimed.
    After a restart ``applied_seq = durable_seq``.
    The position is snapshotted when the sync *starts* (:meth:`begin_sync`),
    so frames may go on being applied while the fdatasync runs in a thread.
  * A failed fdatasync poisons the applier (the kernel may have dropped the
    unwritten pages, so "applied" can no longer be trusted); the owner
    reopens the vdisk from its durable position.

``applied_seq`` advances record by record as writes complete, so an I/O
error half-way through a frame leaves it naming exactly what was written.

Fast path: when ``libliftshift_apply.so`` is built (:mod:`.capply`), a live
frame is checked in C, and on a :class:`~.disk.FileDisk` its WRITE runs are
``pwritev``'d from C too; ZERO / TRIM / CLOSE / VOID records still go
through the code here.  A frame the C check refuses is parsed again by
:func:`~.records.parse_records`, which raises the typed error, so every
refusal reads the same on either path.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import xxhash

from liftshift.daemon.errors import (
    ChecksumMismatch,
    FailedPrecondition,
    InvalidArgument,
    OutOfRange,
    SequenceError,
    TooLarge,
)
from liftshift.iofilter.ring import FLAG_CLOSE, FLAG_VOID, FLAG_WRITE, REC, WORD_LEN_MASK

from . import capply
from .disk import Buffer, Disk, FileDisk
from .records import FrameScan, LiveRecord, check_summary, parse_records, scan_records

log = logging.getLogger("liftshift.sink.apply")

_EMPTY_XXH3 = xxhash.xxh3_64_intdigest(b"")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class ProgressStore(Protocol):
    """Where durable progress is recorded (:class:`~liftshift.sink.state.SinkState`)."""

    def persist(self, vdisk_id: str, durable_seq: int, closed: bool) -> None:
        """Record that everything up to ``durable_seq`` is on disk."""


@dataclass(frozen=True)
class LiveApplied:
    """A LiveRecords frame was applied (``skipped`` records were already applied)."""

    first_seq: int
    last_seq: int
    applied: int
    skipped: int
    bytes_written: int
    applied_seq: int


@dataclass(frozen=True)
class ChunkApplied:
    """A background / resync / repair chunk was written (or punched when ``zero``)."""

    offset: int
    length: int
    zero: bool


@dataclass(frozen=True)
class SyncPoint:
    """What a sync about to start may claim (see :meth:`VdiskApplier.begin_sync`)."""

    seq: int
    barrier: bool
    needed: bool


@dataclass(frozen=True)
class Synced:
    """Everything up to ``durable_seq`` is durable; ``fsync_ns`` is 0 when
    there was nothing to sync."""

    durable_seq: int
    closed: bool
    fsync_ns: int


class VdiskApplier:
    """Applies frames to one shadow vdisk in order and makes them durable."""

    def __init__(self, vdisk_id: str, disk: Disk, store: ProgressStore, *, durable_seq: int = 0,
                 closed: bool = False) -> None:
        self.vdisk_id = vdisk_id
        self.disk = disk
        self.size = disk.size
        self._store = store
        self.applied_seq = durable_seq
        self.durable_seq = durable_seq
        self.closed = closed  # the CLOSE barrier is durable
        self.close_seq: int | None = durable_seq if closed else None
        self._barrier = closed  # accepted, maybe not yet durable
        self._dirty = False  # chunks written since the last sync
        self._stream_next: int | None = None
        self._broken: str | None = None
        self._sync_mu = threading.Lock()

    # -- state ------------------------------------------------------------

    @property
    def broken(self) -> str | None:
        """Why the applier is unusable (a failed fdatasync), or None."""
        return self._broken

    @property
    def needs_sync(self) -> bool:
        """True when something applied is not yet durable."""
        return self._dirty or self.applied_seq != self.durable_seq or self._barrier != self.closed

    def begin_stream(self) -> None:
        """A new stream starts: its first frame may re-send what was applied."""
        self._check_usable()
        self._stream_next = None

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise FailedPrecondition(f"vdisk {self.vdisk_id!r} hit an I/O error ({self._broken}); its stream must "
                                     "restart from the durable position", hint="reopen the vdisk with OpenVdisk")

    # -- frames -----------------------------------------------------------

    def apply_live(self, data: bytes | memoryview, first_seq: int, last_seq: int, count: int) -> LiveApplied:
        """Check a LiveRecords frame completely, then apply its new records."""
        self._check_usable()
        if capply.AVAILABLE and isinstance(self.disk, FileDisk) and self._continues_stream(first_seq, last_seq):
            # The common case in one C call: check, then write (see capply).
            before = self.applied_seq
            stop = capply.check_and_write(self.disk.fd, data, self.size, first_seq, last_seq, count, before)
            if stop is not None:
                skipped = min(max(before - first_seq + 1, 0), count)
                written = self._write_checked(data, self.disk, stop)
                self._stream_next = last_seq + 1
                return LiveApplied(first_seq, last_seq, count - skipped, skipped, written, self.applied_seq)
        records: list[LiveRecord] | None = None
        scan = capply.check(data, self.size) if capply.AVAILABLE else None
        if scan is None:
            # No C helper, or it refused the frame: the reference parser
            # raises the typed error naming the problem.
            records = parse_records(data, self.size)
            scan = scan_records(records)
            if capply.AVAILABLE:
                log.error("vdisk %s: the C frame check refused a frame the Python parser accepts; applying it "
                          "with the Python path (please report this)", self.vdisk_id)
        check_summary(scan, first_seq, last_seq, count)
        self._check_sequence(scan, first_seq, last_seq)
        skipped = min(max(self.applied_seq - first_seq + 1, 0), count)
        if records is None and isinstance(self.disk, FileDisk):
            written = self._write_checked(data, self.disk)
        else:
            if records is None:
                records = parse_records(data, self.size)
            written = self._apply_records([r for r in records if r.seq > self.applied_seq])
        self._stream_next = last_seq + 1
        return LiveApplied(first_seq, last_seq, count - skipped, skipped, written, self.applied_seq)

    def _check_sequence(self, scan: FrameScan, first_seq: int, last_seq: int) -> None:
        vd = self.vdisk_id
        if self._stream_next is None:
            if first_seq > self.applied_seq + 1:
                raise SequenceError(f"gap: vdisk {vd!r} has applied up to seq {self.applied_seq}, the stream's "
                                    f"first frame starts at seq {first_seq}",
                                    hint="re-send from durable_seq + 1 as OpenVdisk reports it")
        elif first_seq != self._stream_next:
            kind = "gap" if first_seq > self._stream_next else "replay"
            raise SequenceError(f"{kind}: frame for vdisk {vd!r} starts at seq {first_seq}, the previous frame of "
                                f"this stream ended at seq {self._stream_next - 1}")
        if scan.inner_close_seq:
            seq = scan.inner_close_seq
            raise SequenceError(f"record seq {seq + 1} follows the CLOSE record seq {seq} of vdisk {vd!r}")
        if self.close_seq is not None and last_seq > self.close_seq:
            raise SequenceError(f"vdisk {vd!r} was closed at seq {self.close_seq}; record seq "
                                f"{max(first_seq, self.close_seq + 1)} follows it")

    def _continues_stream(self, first_seq: int, last_seq: int) -> bool:
        """True when :meth:`_check_sequence` has nothing to say about a frame
        with these header fields (and no CLOSE before its last record)."""
        if self._stream_next is None:
            if first_seq > self.applied_seq + 1:
                return False
        elif first_seq != self._stream_next:
            return False
        return self.close_seq is None or last_seq <= self.close_seq

    def _write_checked(self, data: bytes | memoryview, disk: FileDisk, stop: capply.WriteStop | None = None) -> int:
        """Apply a frame the C check accepted: WRITE runs in C, the rare other
        records here; ``applied_seq`` advances exactly as in :meth:`_apply_records`.
        ``stop`` is where a first C write already got to."""
        written = 0
        pos = 0
        end = len(data)
        while True:
            if stop is None:
                stop = capply.write(disk.fd, data, self.applied_seq, pos, self.applied_seq)
            self.applied_seq = stop.applied_seq
            written += stop.written
            if stop.errno:
                e = OSError(stop.errno, os.strerror(stop.errno))
                self._raise_no_space(e, "applying live records")
                raise e
            if stop.pos >= end:
                return written
            word, seq, offset, length, flags, _paylen, _digest, _time_ns = REC.unpack_from(data, stop.pos)
            try:
                if flags == FLAG_CLOSE:
                    self.close_seq = seq
                elif flags != FLAG_VOID:
                    disk.zero(offset, length)
            except OSError as e:
                self._raise_no_space(e, "applying live records")
                raise
            self.applied_seq = seq
            pos = stop.pos + (word & WORD_LEN_MASK)
            stop = None

    def _apply_records(self, records: list[LiveRecord]) -> int:
        """Write records in order, one ``pwritev`` per run of contiguous WRITEs."""
        written = 0
        i = 0
        n = len(records)
        try:
            while i < n:
                r = records[i]
                if r.flags == FLAG_WRITE:
                    parts: list[Buffer] = [r.payload]
                    end = r.offset + r.length
                    j = i + 1
                    while j < n and records[j].flags == FLAG_WRITE and records[j].offset == end:
                        parts.append(records[j].payload)
                        end += records[j].length
                        j += 1
                    self.disk.write(r.offset, parts)
                    written += end - r.offset
                    i = j
                else:
                    if r.flags == FLAG_CLOSE:
                        self.close_seq = r.seq
                    elif r.flags != FLAG_VOID:
                        self.disk.zero(r.offset, r.length)
                    i += 1
                self.applied_seq = records[i - 1].seq
        except OSError as e:
            self._raise_no_space(e, "applying live records")
            raise
        return written

    def apply_chunk(self, offset: int, length: int, data: bytes | memoryview, zero: bool, xxh3: int) -> ChunkApplied:
        """Check a background chunk (range, shape, XXH3-64), then write or punch it."""
        self._check_usable()
        if length <= 0:
            raise InvalidArgument(f"Chunk at offset {offset} has length {length}")
        if offset + length > self.size:
            raise OutOfRange(f"Chunk [{offset}, {offset + length}) runs past the end of the {self.size}-byte "
                             f"vdisk {self.vdisk_id!r}")
        if zero:
            if len(data):
                raise InvalidArgument(f"zero Chunk at offset {offset} carries {len(data)} bytes of data")
            if xxh3 != _EMPTY_XXH3:
                raise ChecksumMismatch(f"zero Chunk at offset {offset}: xxh3 {xxh3:#018x} is not the XXH3-64 of "
                                       f"empty data ({_EMPTY_XXH3:#018x})")
        else:
            if len(data) != length:
                raise InvalidArgument(f"Chunk at offset {offset} says length {length} but carries {len(data)} bytes")
            actual = xxhash.xxh3_64_intdigest(data)
            if actual != xxh3:
                raise ChecksumMismatch(f"Chunk at offset {offset} ({length} bytes): XXH3-64 is {actual:#018x}, "
                                       f"the frame says {xxh3:#018x}; nothing was applied")
        try:
            if zero:
                self.disk.zero(offset, length)
            else:
                self.disk.write(offset, [data])
        except OSError as e:
            self._dirty = True  # part of it may have been written
            self._raise_no_space(e, "writing a chunk")
            raise
        self._dirty = True
        return ChunkApplied(offset, length, zero)

    def close_barrier(self, final_seq: int) -> None:
        """Accept the source's final sequence; ``closed`` turns true at the next sync."""
        self._check_usable()
        vd = self.vdisk_id
        if final_seq > self.applied_seq:
            raise SequenceError(f"close barrier at seq {final_seq} for vdisk {vd!r}, but only seq "
                                f"{self.applied_seq} is applied: records are missing")
        if self.close_seq is not None and final_seq != self.close_seq:
            raise SequenceError(f"close barrier at seq {final_seq} for vdisk {vd!r}, but the CLOSE record was "
                                f"seq {self.close_seq}")
        self.close_seq = final_seq
        self._barrier = True

    # -- durability -------------------------------------------------------

    def sync(self) -> Synced:
        """fdatasync the shadow, then record the position (:meth:`begin_sync`
        and :meth:`complete_sync` in one call)."""
        return self.complete_sync(self.begin_sync())

    def begin_sync(self) -> SyncPoint:
        """Snapshot what the next sync may claim: everything applied so far.

        Call on the thread that applies; :meth:`complete_sync` may then run in
        a worker thread while more frames are applied, since a sync only ever
        claims what was written before it started.
        """
        self._check_usable()
        point = SyncPoint(self.applied_seq, self._barrier, self.needs_sync)
        self._dirty = False
        return point

    def complete_sync(self, point: SyncPoint) -> Synced:
        """fdatasync, then record ``point`` as durable (safe from any thread)."""
        with self._sync_mu:
            if not point.needed:
                return Synced(self.durable_seq, self.closed, 0)
            self._check_usable()
            t0 = time.perf_counter_ns()
            try:
                self.disk.datasync()
            except OSError as e:
                self._dirty = True
                self._broken = f"fdatasync failed: {e.strerror or e}"
                self._raise_no_space(e, "syncing")
                raise
            # Only a new claim is recorded: chunks carry no sequence, so during a
            # background copy most syncs change nothing in the state database,
            # and each commit there is one more fsync (synchronous=FULL).
            if point.seq > self.durable_seq or (point.barrier and not self.closed):
                try:
                    self._store.persist(self.vdisk_id, point.seq, point.barrier)
                except BaseException:
                    self._dirty = True  # the data is durable, the claim is not: sync again later
                    raise
            self.durable_seq = max(self.durable_seq, point.seq)
            self.closed = self.closed or point.barrier
            return Synced(self.durable_seq, self.closed, time.perf_counter_ns() - t0)

    def _raise_no_space(self, e: OSError, doing: str) -> None:
        """Out of space is the operator's to fix: say so with a typed error; other
        I/O errors propagate as they are (reported as internal errors)."""
        if e.errno in _NO_SPACE:
            raise TooLarge(f"no space left for vdisk {self.vdisk_id!r} on the sink while {doing}",
                           hint="free space in the sink's data_dir; the stream resumes from durable_seq") from e
