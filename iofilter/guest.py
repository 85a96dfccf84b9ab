"""``liftshift-workload``: the guest of a ``sim`` VM, usable on its own.

Design note
-----------
One process stands in for a running VM: it reads and writes its disk images
at a steady rate (block size, working set, read/write mix).  While capture is
attached, every write goes through the vdisk's ring the way an IO filter
handles a guest write: admit (throttle, freeze) -> write the image ->
publish.  Without rings it just writes the images (a VM at the destination).

Capture is switched between operations, never inside one, so after the
switch every write is in the ring: SIGUSR1 attaches the ``--ring`` files,
SIGUSR2 detaches them, and the ``--status`` file (JSON, replaced atomically)
says which is in effect once the switch has happened.  The platform waits
for that before it starts copying.  SIGTERM (a VM shutdown) finishes the
operation in flight, appends CLOSE to every attached ring and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .producer import RingProducer
from .ring import RingClosedError, RingFrozenError

SECTOR = 512
_STATUS_EVERY_S = 1.0


@dataclass
class GuestStats:
    """What the guest has done (written to the status file)."""

    pid: int = 0
    attached: bool = False
    running: bool = True
    ops: int = 0
    reads: int = 0
    writes: int = 0
    bytes_written: int = 0
    overflowed: int = 0
    close_seqs: list[int] = field(default_factory=list)
    boot_digests: list[str] = field(default_factory=list)
    started: float = 0.0
    updated: float = 0.0


class Guest:
    """Reads and writes ``images`` at ``rate_ops``; captures writes when attached."""

    def __init__(self, images: list[str], rings: list[str], *, rate_ops: float, block_size: int,
                 working_set: int, read_fraction: float, seed: int, status: Path | None) -> None:
        if block_size <= 0 or block_size % SECTOR:
            raise ValueError(f"block size {block_size} is not a positive multiple of {SECTOR}")
        if rings and len(rings) != len(images):
            raise ValueError(f"{len(rings)} ring(s) for {len(images)} disk(s): give one ring per disk")
        if not 0.0 <= read_fraction <= 1.0:
            raise ValueError(f"read fraction {read_fraction} is not between 0 and 1")
        self.fds = [os.open(p, os.O_RDWR) for p in images]
        self.sizes = [os.fstat(fd).st_size for fd in self.fds]
        self.rings = rings
        self.rate = rate_ops
        self.block = block_size
        self.spans = [max(block_size, min(working_set or s, s)) // block_size for s in self.sizes]
        self.read_fraction = read_fraction
        self.rng = random.Random(seed)
        self.status_path = status
        self.producers: list[RingProducer] | None = None
        self.stats = GuestStats(pid=os.getpid(), started=time.time())
        self._want_attached: bool | None = None
        self._stop = False

    # -- signals (only set flags: the loop acts between operations) -----------

    def request_attach(self, *_: object) -> None:
        self._want_attached = True

    def request_detach(self, *_: object) -> None:
        self._want_attached = False

    def request_stop(self, *_: object) -> None:
        self._stop = True

    # -- capture ----------------------------------------------------------------

    def attach(self) -> None:
        if self.producers is None and self.rings:
            self.producers = [RingProducer(r) for r in self.rings]
            for p, size in zip(self.producers, self.sizes, strict=True):
                if p.geometry.disk_size != size:
                    raise ValueError(f"ring {p.path} is for a {p.geometry.disk_size}-byte disk, image is {size}")
            for p in self.producers:
                p.announce()  # every later write is published (the loop switches between operations)
        self.stats.attached = self.producers is not None
        self.write_status()

    def detach(self) -> None:
        if self.producers is not None:
            for p in self.producers:
                p.detach()
        self.producers = None
        self.stats.attached = False
        self.write_status()

    # -- work ---------------------------------------------------------------

    def step(self) -> None:
        """One guest operation on a random disk."""
        d = self.rng.randrange(len(self.fds))
        offset = self.rng.randrange(self.spans[d]) * self.block
        length = min(self.block, self.sizes[d] - offset)
        if self.rng.random() < self.read_fraction:
            os.pread(self.fds[d], length, offset)
            self.stats.reads += 1
        else:
            data = self.rng.randbytes(length)
            p = self.producers[d] if self.producers is not None else None
            if p is not None:
                while True:
                    try:
                        p.admit(offset, length)
                        break
                    except RingFrozenError:
                        time.sleep(0.001)  # a frozen disk stalls the guest, as in a real VM
            os.pwrite(self.fds[d], data, offset)
            if p is not None and not p.publish_write(offset, data):
                self.stats.overflowed += 1
            self.stats.writes += 1
            self.stats.bytes_written += length
        self.stats.ops += 1

    def boot_digest(self) -> None:
        """XXH3-128 of every disk as it is before the first operation (what the VM boots from)."""
        from liftshift.daemon.hashing import fd_xxh3_128

        self.stats.boot_digests = [fd_xxh3_128(fd) for fd in self.fds]

    def run(self, *, seconds: float | None = None, ops: int | None = None) -> None:
        """Run until SIGTERM (or ``seconds`` / ``ops``), then close the rings."""
        t0 = time.monotonic()
        next_at = t0
        last_status = 0.0
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        self.write_status()
        while not self._stop:
            if self._want_attached is not None:
                want, self._want_attached = self._want_attached, None
                self.attach() if want else self.detach()
            now = time.monotonic()
            if (seconds is not None and now - t0 >= seconds) or (ops is not None and self.stats.ops >= ops):
                break
            if interval:
                if now < next_at:
                    time.sleep(min(next_at - now, 0.005))
                    continue
                # Fall behind by at most a second rather than bursting to catch up.
                next_at = max(next_at + interval, now - 1.0)
            self.step()
            if now - last_status >= _STATUS_EVERY_S:
                self.write_status()
                last_status = now
        self.shutdown()

    def shutdown(self) -> None:
        """Close every attached ring (CLOSE is the guest's last record), report
        "stopped" (nothing is written after this), then flush the images."""
        if self.producers is not None:
            for p in self.producers:
                try:
                    self.stats.close_seqs.append(p.close())
                except RingClosedError:
                    pass
        self.stats.running = False
        self.write_status()
        for fd in self.fds:
            os.fsync(fd)
            os.close(fd)

    def write_status(self) -> None:
        if self.status_path is None:
            return
        self.stats.updated = time.time()
        tmp = self.status_path.with_name(f".{self.status_path.name}.tmp")
        tmp.write_text(json.dumps(asdict(self.stats)))
        os.replace(tmp, self.status_path)


def _size(text: str) -> int:
    from liftshift.daemon.config import parse_size

    return parse_size(text, "size", "command line")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``liftshift-workload``."""
    ap = argparse.ArgumentParser(prog="liftshift-workload", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    ap.add_argument("--disk", action="append", required=True, help="disk image to read and write (repeatable)")
    ap.add_argument("--ring", action="append", default=[], help="ring of the disk at the same position (repeatable)")
    ap.add_argument("--attach", choices=("now", "signal"), default="now",
                    help="with --ring: capture from the start, or only after SIGUSR1 (default: now)")
    ap.add_argument("--rate", type=float, default=100.0, help="operations per second, 0 = flat out (default 100)")
    ap.add_argument("--block-size", type=_size, default=4096, help="bytes per operation (default 4KiB)")
    ap.add_argument("--working-set", type=_size, default=0, help="bytes of each disk touched (default: all)")
    ap.add_argument("--read-fraction", type=float, default=0.0, help="share of reads, 0..1 (default 0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seconds", type=float, help="stop after this long (default: until SIGTERM)")
    ap.add_argument("--ops", type=int, help="stop after this many operations")
    ap.add_argument("--status", type=Path, help="write progress here as JSON (atomically)")
    ap.add_argument("--boot-digest", action="store_true",
                    help="hash every disk (XXH3-128) before the first operation and report it in --status")
    args = ap.parse_args(argv)
    try:
        g = Guest(args.disk, args.ring, rate_ops=args.rate, block_size=args.block_size,
                  working_set=args.working_set, read_fraction=args.read_fraction, seed=args.seed,
                  status=args.status)
    except (OSError, ValueError) as e:
        print(f"liftshift-workload: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGUSR1, g.request_attach)
    signal.signal(signal.SIGUSR2, g.request_detach)
    signal.signal(signal.SIGTERM, g.request_stop)
    signal.signal(signal.SIGINT, g.request_stop)
    if args.boot_digest:
        g.boot_digest()
    if args.ring and args.attach == "now":
        g.attach()
    g.run(seconds=args.seconds, ops=args.ops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
