"""Which chunks of a vdisk are proven identical, and still are (no I/O).

Design note
-----------
Cutover must prove source and shadow identical (DESIGN.md invariant 5), but
hashing a whole disk while the VM is stopped makes downtime grow with disk
size.  So chunks are verified *ahead* of cutover, while the VM runs, and a
chunk stays verified only as long as nothing that could change it has been
shipped since.

Each chunk has a generation, bumped whenever anything touching it is
shipped to the sink (a live record, a background / resync / repair chunk).
A verification of chunk ``c`` notes ``gen[c]`` *before* reading either side
(:meth:`VerifyMap.begin`), and counts only if the hashes matched and the
generation is unchanged when the result comes back (:meth:`confirm`):

* a write the source already held but that was not shipped yet makes the
  hashes differ (or be equal because the bytes are equal, which is fine);
* a write shipped during the verification bumps the generation;
* a write shipped after it bumps the generation and un-verifies the chunk.

Every change to the source reaches the sink by being shipped (ring records,
or overflow ranges resynced from the source), so once the source has
stopped and everything is drained, a chunk still verified at its current
generation is identical, and only the others need hashing at cutover.

Which chunks to verify next: first the ones never verified (the first pass,
which automatic cutover waits for), then re-written ones, oldest write
first, but only once they have been quiet for ``quiet_s``.  A chunk the
guest keeps rewriting would be un-verified again right after each proof:
re-verifying it costs a read and a hash on both sides every time and saves
nothing at cutover.  What the guest wrote lately is proven in rounds just
before the stop instead (cutover.verify_before_stop).
"""

from __future__ import annotations

import time
from array import array


class VerifyMap:
    """Verification state of ``size`` bytes in ``chunk``-byte chunks.

    ``_pending`` holds one byte per chunk (1: not verified at its current
    generation) so that the questions asked on every tick and at cutover
    are answered by C-speed scans, whatever the disk size.
    """

    def __init__(self, size: int, chunk: int) -> None:
        self.size = size
        self.chunk = chunk
        self.chunks = -(-size // chunk)
        # Generations start at 1; _verified holds the generation a chunk was
        # verified at (0 = never).
        self._gen = array("Q", [1]) * self.chunks
        self._verified = array("Q", bytes(8 * self.chunks))
        self._pending = bytearray(b"\x01") * self.chunks
        self._npending = self.chunks
        self._never = bytearray(b"\x01") * self.chunks  # 1: never verified yet
        self._cursor = 0
        # Pending chunks that were verified before (written since): chunk -> time
        # of its last write, oldest first (a write moves its chunk to the end).
        # Invariant: c in _recent <=> pending[c] and not never[c].
        self._recent: dict[int, float] = {}
        self._ever = 0  # chunks verified at least once

    def touched(self, offset: int, length: int, now: float | None = None) -> None:
        """Something covering ``[offset, offset+length)`` was shipped (at ``now``, monotonic)."""
        if length <= 0:
            return
        first = offset // self.chunk
        last = min((offset + length - 1) // self.chunk, self.chunks - 1)
        gen, pending, never, recent = self._gen, self._pending, self._never, self._recent
        for c in range(first, last + 1):
            if not pending[c]:
                pending[c] = 1
                self._npending += 1
            if not never[c]:
                if now is None:
                    now = time.monotonic()
                recent.pop(c, None)
                recent[c] = now
            gen[c] += 1

    def begin(self, chunks: list[int]) -> list[int]:
        """Generations of ``chunks`` now, before either side is read."""
        return [self._gen[c] for c in chunks]

    def confirm(self, chunk: int, gen_at_begin: int) -> bool:
        """The chunk's hashes matched; it counts if nothing was shipped since begin."""
        if self._gen[chunk] != gen_at_begin:
            return False
        if self._never[chunk]:
            self._never[chunk] = 0
            self._ever += 1
        self._verified[chunk] = gen_at_begin
        if self._pending[chunk]:
            self._pending[chunk] = 0
            self._npending -= 1
            self._recent.pop(chunk, None)
        return True

    def first_pass_done(self) -> bool:
        """Every chunk has been proven identical at least once (what is left
        pending now is what the guest wrote since)."""
        return self._ever == self.chunks

    def is_verified(self, chunk: int) -> bool:
        return not self._pending[chunk]

    def pending(self) -> list[int]:
        """Chunks not verified at their current generation."""
        out = []
        find = self._pending.find
        c = find(1)
        while c >= 0:
            out.append(c)
            c = find(1, c + 1)
        return out

    def verified_count(self) -> int:
        return self.chunks - self._npending

    def pending_count(self) -> int:
        """Chunks not verified at their current generation."""
        return self._npending

    def next_unverified(self, limit: int, quiet_s: float = 0.0, now: float | None = None) -> list[int]:
        """Up to ``limit`` unverified chunks: never-verified ones first (round-robin
        from where the last call stopped), then re-written ones whose last write
        is at least ``quiet_s`` old, oldest first."""
        out: list[int] = []
        find, n = self._never.find, self.chunks
        pos, scanned = self._cursor, 0
        while self._ever < n and len(out) < limit and scanned < n:  # at most one lap
            c = find(1, pos)
            if c < 0:
                scanned += n - pos
                pos = 0
                continue
            scanned += c - pos + 1
            pos = c + 1 if c + 1 < n else 0
            if out and c == out[0]:
                break  # came round to the first one again
            out.append(c)
        self._cursor = pos
        if self._recent and len(out) < limit:
            horizon = (time.monotonic() if now is None else now) - quiet_s
            for c, written in self._recent.items():
                if len(out) >= limit or written > horizon:
                    break
                out.append(c)
        return out

    def runs(self, chunks: list[int]) -> list[tuple[int, int]]:
        """Sorted chunk indexes as contiguous byte ranges (offset, length)."""
        out: list[tuple[int, int]] = []
        for c in sorted(chunks):
            off = c * self.chunk
            n = min(self.chunk, self.size - off)
            if out and out[-1][0] + out[-1][1] == off:
                out[-1] = (out[-1][0], out[-1][1] + n)
            else:
                out.append((off, n))
        return out
