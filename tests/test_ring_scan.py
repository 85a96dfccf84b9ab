"""The consumer's C scan (``ls_ring_scan``) decides exactly what the Python rules decide.

Rings are filled by the Python producer (writes, zeroes, trims, a wrap with
its PAD, sometimes CLOSE), then damaged at random in the data area: a payload
byte flipped (a corrupt record), a sequence changed (a gap), a record word
made odd or BUSY.  Two consumers read the same ring with the same batch
sizes, one checking records in C, one in Python; every batch's summary, the
corrupt records and the dirty ranges, or the error, must be the same.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from cbuild import c_library

from liftshift.iofilter import RingConsumer, RingCorruptError, RingProducer, cproducer, create_ring
from liftshift.iofilter.ring import HEADER, REC, RECORD_HEADER, WORD_LEN_MASK, WORD_PAD, read_geometry

MiB = 1 << 20
CAPACITY = 256 << 10


@pytest.fixture(autouse=True)
def c_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFTSHIFT_RING_LIB", str(c_library()))
    monkeypatch.delenv("LIFTSHIFT_RING_CONSUMER", raising=False)
    monkeypatch.setattr(cproducer, "_lib", None)
    monkeypatch.setattr(cproducer, "_problem", None)
    assert cproducer.available(), cproducer.problem()


def _consumer(ring: Path, kind: str) -> RingConsumer:
    c = RingConsumer(ring)
    if kind == "python":
        c._scan = None
    assert (c._scan is not None) == (kind == "c")
    return c


def _fill(ring: Path, rng: random.Random, close: bool) -> None:
    """Records that end with a wrap of the data area: a first part is read and
    released by a helper consumer, so the second part wraps (a PAD)."""
    with RingProducer(ring) as p, RingConsumer(ring) as helper:
        for phase in range(2):
            used = 0
            while used < CAPACITY * 5 // 8:
                kind = rng.random()
                off = rng.randrange(0, 3 * MiB // 512) * 512
                if kind < 0.8:
                    n = rng.choice((512, 4096, rng.randrange(1, 20_000)))
                    p.write(off, rng.randbytes(n))
                    used += RECORD_HEADER + n + 8
                elif kind < 0.9:
                    p.write_zeroes(off, 4096)
                    used += RECORD_HEADER
                else:
                    p.trim(off, 8192)
                    used += RECORD_HEADER
            if phase == 0:
                while (b := helper.read_batch()) is not None:
                    helper.release(b.end)
        if close:
            p.close()


def _records(ring: Path) -> list[tuple[int, int]]:
    """(file offset, size) of every record and PAD from the release position on."""
    raw = ring.read_bytes()
    g = read_geometry(ring, raw[:4096], len(raw))
    release = struct.unpack_from("<Q", raw, _header_offset("release"))[0]
    commit = struct.unpack_from("<Q", raw, _header_offset("commit"))[0]
    out = []
    pos = release
    while pos < commit:
        at = g.data_offset + (pos & (g.capacity - 1))
        size = struct.unpack_from("<Q", raw, at)[0] & WORD_LEN_MASK
        out.append((at, size))
        pos += size
    return out


def _header_offset(name: str) -> int:
    return HEADER[name][0]


def _damage(ring: Path, rng: random.Random) -> list[str]:
    recs = _records(ring)
    done = []
    with open(ring, "r+b") as f:
        for _ in range(rng.randrange(0, 4)):
            at, size = rng.choice(recs)
            f.seek(at)
            head = bytearray(f.read(RECORD_HEADER))
            word, seq, offset, length, flags, paylen, digest, time_ns = REC.unpack_from(head)
            if word & WORD_PAD:
                continue
            what = rng.choice(("payload", "payload", "digest", "seq", "odd", "busy"))
            if what == "payload" and paylen:
                where = at + RECORD_HEADER + rng.randrange(paylen)
                f.seek(where)
                byte = f.read(1)[0]
                f.seek(where)
                f.write(bytes((byte ^ 0x5A,)))
            elif what == "digest":
                REC.pack_into(head, 0, word, seq, offset, length, flags, paylen, digest ^ 1, time_ns)
            elif what == "seq":
                REC.pack_into(head, 0, word, seq + rng.choice((1, -1, 1000)), offset, length, flags, paylen, digest,
                              time_ns)
            elif what == "odd":
                REC.pack_into(head, 0, word | 4, seq, offset, length, flags, paylen, digest, time_ns)
            elif what == "busy":
                REC.pack_into(head, 0, word | 1 << 63, seq, offset, length, flags, paylen, digest, time_ns)
            f.seek(at)
            f.write(head)
            done.append(what)
    return done


def _outcome(ring: Path, kind: str, sizes: list[int]) -> list[object]:
    out: list[object] = []
    with _consumer(ring, kind) as c:
        for max_bytes in sizes:
            try:
                b = c.read_batch(max_bytes)
            except RingCorruptError as e:
                out.append(("error", str(e)))
                break
            if b is None:
                break
            out.append((b.start, b.end, b.first_seq, b.last_seq, b.count, b.payload_bytes, b.close_seq,
                        b.first_time_ns, b.last_time_ns, [(r.seq, r.offset, r.expected, r.actual) for r in b.corrupt],
                        [(r.seq, r.offset, r.length, r.flags) for r in b.records()]))
        out.append(("dirty", c.take_dirty(), c.next_seq))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_c_and_python_checks_agree(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    ring = tmp_path / "vdisk.ring"
    create_ring(ring, 4 * MiB, capacity=CAPACITY, chunk_size=64 << 10, max_record=64 << 10)
    _fill(ring, rng, close=seed % 3 == 0)
    damage = _damage(ring, rng)
    sizes = [rng.choice((4096, 30_000, 64 << 10, 1 << 20)) for _ in range(200)]
    c_out = _outcome(ring, "c", sizes)
    py_out = _outcome(ring, "python", sizes)
    assert c_out == py_out, damage
    assert len(c_out) > 1  # something was read


def test_undamaged_ring_is_accepted_in_c_whole(tmp_path: Path) -> None:
    """Plain records go through the C scan in one call: the Python loop sees none of them."""
    ring = tmp_path / "vdisk.ring"
    create_ring(ring, 4 * MiB, capacity=1 * MiB, chunk_size=64 << 10, max_record=64 << 10)
    with RingProducer(ring) as p:
        for i in range(20):
            p.write(i * 4096, bytes([i]) * 4096)
    with _consumer(ring, "c") as c:
        calls = []
        scan = c._scan
        assert scan is not None

        def counting(blob: bytes, expect: int | None) -> tuple[int, int, int, tuple[int, int, int]]:
            got = scan(blob, expect)
            calls.append(got[:3])
            return got

        c._scan = counting
        b = c.read_batch()
        assert b is not None and (b.first_seq, b.last_seq, b.count) == (1, 20, 20)
        assert calls == [(20 * (RECORD_HEADER + 4096), 20, 20 * 4096)]
