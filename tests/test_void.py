"""A record that fails its checksum in the ring is voided by the daemon: the
sink keeps the sequence contiguous, applies nothing of it, and the range is
resynced from the source instead."""

from __future__ import annotations

from pathlib import Path

from liftshift.daemon.vdisk import void_corrupt
from liftshift.iofilter import RingConsumer, RingProducer, create_ring
from liftshift.iofilter.ring import RECORD_HEADER, read_geometry
from liftshift.sink.apply import VdiskApplier
from liftshift.sink.disk import MemoryDisk

MiB = 1 << 20


class _Store:
    def persist(self, vdisk_id: str, durable_seq: int, closed: bool) -> None:
        pass


def test_voided_record_keeps_sequence_and_is_not_applied(shm_dir: Path) -> None:
    ring = shm_dir / "v.ring"
    create_ring(ring, 4 * MiB, capacity=1 * MiB)
    with RingProducer(ring) as p, RingConsumer(ring) as c:
        p.write(0, b"a" * 512)
        p.write(MiB, b"b" * 512)
        p.write(4096, b"c" * 512)
        g = read_geometry(ring, ring.read_bytes()[:4096], ring.stat().st_size)
        with open(ring, "r+b") as f:  # flip a payload byte of the second record
            f.seek(g.data_offset + RECORD_HEADER + 512 + RECORD_HEADER + 3)
            f.write(b"!")
        batch = c.read_batch()
        assert batch is not None and [r.seq for r in batch.corrupt] == [2]
        data = void_corrupt(batch)
        assert c.take_dirty() == [(MiB, 64 << 10)]  # resynced from the source instead
    disk = MemoryDisk(4 * MiB)
    a = VdiskApplier("vd", disk, _Store())  # type: ignore[arg-type]
    a.apply_live(data, batch.first_seq, batch.last_seq, batch.count)
    assert a.applied_seq == 3
    assert bytes(disk.image[0:512]) == b"a" * 512 and bytes(disk.image[4096:4608]) == b"c" * 512
    assert bytes(disk.image[MiB : MiB + 512]) == bytes(512)  # nothing of the bad record
