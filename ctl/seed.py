"""``liftshift seed``: seeded ("sneakernet") migration.

``seed export`` asks the daemon to copy a running VM's disks into a
directory (on the daemon's host) while it keeps tracking the VM's writes;
the directory travels on a drive; ``seed import`` runs at the destination,
checks the seed completely and streams it into the sink's shadow vdisks;
``migrate create --type seeded`` then sends only what changed.

:func:`import_seed` is the library form of ``seed import``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from rich.table import Table

from liftshift.daemon.errors import LiftshiftError, from_rpc_error
from liftshift.v1 import control_pb2 as cpb

from .client import Client
from .credentials import Credentials
from .output import Output
from .units import fmt_bytes, fmt_rate

if TYPE_CHECKING:  # import_seed imports them: no other command needs them (CLI start-up)
    from liftshift.daemon import seedfile
    from liftshift.v1 import replication_pb2 as rpb

_POLL_S = 0.5
MAX_MESSAGE = 80 << 20  # one 64 MiB chunk at most, and its envelope


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("seed", parents=[common], help="seeded migration: ship a copy of the disks on a drive",
                       description="Seeded (sneakernet) migration: export a running VM's disks to a directory "
                                   "while its writes keep being tracked, ship the directory, import it at the "
                                   "destination, then `migrate create --type seeded` sends only what changed.")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    e = acts.add_parser("export", parents=[common], help="copy a VM's disks into a directory",
                        description="Attach capture to the VM, then copy each disk into DIR (on the daemon's "
                                    "host) as a sparse image with per-chunk XXH3-128 hashes and a manifest. The "
                                    "VM keeps running; its writes are tracked from before the first chunk is "
                                    "read until a seeded migration starts, across daemon restarts.",
                        epilog="example: liftshift seed export web-1 --to /mnt/usb/web-1")
    e.add_argument("vm", metavar="VM", help="VM name (see `liftshift inventory`)")
    e.add_argument("--to", required=True, metavar="DIR", dest="directory",
                   help="directory on the daemon's host (created; must be empty)")
    e.add_argument("--no-wait", action="store_true", help="return once the export has started")
    e.set_defaults(run=export)
    ls = acts.add_parser("list", parents=[common], help="seeds and their state",
                         description="Every seed: its state (exporting, exported, used, dropped, failed), export "
                                     "progress and the bytes written by the guest since (sent at migration).")
    ls.add_argument("seed", nargs="?", default="", metavar="SEED", help="one seed id")
    ls.set_defaults(run=list_seeds)
    d = acts.add_parser("drop", parents=[common], help="stop tracking a seed's VM",
                        description="Stop tracking the VM's writes and detach capture; the seed can no longer "
                                    "be used. Its files are left alone.")
    d.add_argument("seed", metavar="SEED", help="seed id")
    d.set_defaults(run=drop)
    i = acts.add_parser("import", parents=[common], help="write a shipped seed into the destination sink",
                        description="Check the seed in DIR (manifest checksum, every file present and complete) "
                                    "and stream it into new shadow vdisks at the sink. Each chunk's hash is "
                                    "checked: a damaged chunk is not written, and the seeded migration sends it "
                                    "over the network instead. Run it where the drive is mounted; it does not "
                                    "need the source daemon.",
                        epilog="example: liftshift seed import /mnt/usb/web-1 --sink sink.example:50052")
    i.add_argument("directory", metavar="DIR", help="the seed directory")
    i.add_argument("--sink", required=True, metavar="HOST:PORT", help="the destination sink")
    i.set_defaults(run=import_cmd)


def _table(seeds: list[cpb.Seed]) -> Table:
    rows = []
    for s in seeds:
        size = sum(d.size_bytes for d in s.disks)
        done = sum(d.exported_bytes for d in s.disks)
        dirty = sum(d.dirty_bytes for d in s.disks)
        state = s.state + (f" ({s.migration_id})" if s.migration_id else "") + (f": {s.error}" if s.error else "")
        rows.append((s.id, s.vm, state, f"{fmt_bytes(done)}/{fmt_bytes(size)}", fmt_bytes(dirty), s.directory))
    t = Table(box=None, pad_edge=False)
    heads = ("SEED", "VM", "STATE", "EXPORTED", "CHANGED", "DIRECTORY")
    for i, head in enumerate(heads):
        if head == "DIRECTORY":
            t.add_column(head, overflow="fold")
        else:  # never cut an id or a state short; the directory folds instead
            t.add_column(head, no_wrap=True, min_width=max([len(head), *(len(r[i]) for r in rows)]))
    for r in rows:
        t.add_row(*r)
    return t


async def export(args: argparse.Namespace, client: Client, out: Output) -> int:
    s = await client.export_seed(args.vm, os.path.abspath(args.directory))
    if not out.json:
        out.line(f"Seed {s.id}: exporting VM {s.vm} to {s.directory} ({len(s.disks)} disk(s), "
                 f"{fmt_bytes(sum(d.size_bytes for d in s.disks))}); its writes are tracked from now on")
    if args.no_wait:
        if out.json:
            out.emit(s)
        return 0
    t0 = time.monotonic()
    last = 0.0
    while s.state == "exporting":
        await asyncio.sleep(_POLL_S)
        s = (await client.list_seeds(s.id))[0]
        now = time.monotonic()
        if not out.json and now - last >= 5:
            last = now
            done = sum(d.exported_bytes for d in s.disks)
            out.line(f"  {fmt_bytes(done)} of {fmt_bytes(sum(d.size_bytes for d in s.disks))} "
                     f"({fmt_rate(done / max(now - t0, 1e-9))})")
    if out.json:
        out.emit(s)
    elif s.state == "exported":
        data = sum(d.data_bytes for d in s.disks)
        out.line(f"Seed {s.id} exported in {time.monotonic() - t0:.1f} s: {fmt_bytes(data)} of data in "
                 f"{s.directory}")
        out.line(f"Ship the directory, then at the destination: liftshift seed import DIR --sink HOST:PORT; "
                 f"then: liftshift migrate create {s.vm} --type seeded --dest HOST:PORT --start")
    if s.state != "exported":
        out.fail("SeedFailed", f"seed {s.id} is {s.state}: {s.error}", "see the daemon's log")
        return 1
    return 0


async def list_seeds(args: argparse.Namespace, client: Client, out: Output) -> int:
    seeds = await client.list_seeds(args.seed)
    if out.json:
        out.emit(cpb.ListSeedsResponse(seeds=seeds))
    elif not seeds:
        out.line("No seeds (`liftshift seed export VM --to DIR` makes one)")
    else:
        out.console.print(_table(seeds))
    return 0


async def drop(args: argparse.Namespace, client: Client, out: Output) -> int:
    s = await client.drop_seed(args.seed)
    if out.json:
        out.emit(s)
    else:
        out.line(f"Seed {s.id} of VM {s.vm}: {s.state}; its files in {s.directory} were left alone")
    return 0


@dataclass
class ImportResult:
    """What ``seed import`` did."""

    manifest: seedfile.Manifest
    disks: list[rpb.ImportSeedResponse] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rejected(self) -> int:
        return sum(len(d.rejected_offsets) for d in self.disks)


async def import_seed(directory: str | os.PathLike[str], sink: str, *,
                      progress: Callable[[int, int], None] | None = None,
                      credentials: Credentials | None = None) -> ImportResult:
    """Check the seed in ``directory`` and stream each disk into ``sink``.

    Raises :class:`~liftshift.daemon.seedfile.SeedInvalid` before anything is
    sent when the seed is incomplete, damaged or altered; the sink's refusals
    (no space, a shadow that exists) arrive as their typed errors.
    ``progress(bytes_sent, bytes_total)`` is called as data goes out."""
    from liftshift.daemon import seedfile, wire
    from liftshift.iofilter.alloc import tune_malloc
    from liftshift.v1 import replication_pb2 as rpb

    tune_malloc()  # 1 MiB messages: keep their buffers in the heap (see liftshift.iofilter.alloc)
    path = Path(directory)
    m = seedfile.read_manifest(path)
    seedfile.check_files(path, m)
    result = ImportResult(m)
    t0 = time.monotonic()
    total = sum(d.data_bytes for d in m.disks)
    sent = 0
    creds = credentials if credentials is not None else Credentials.resolve()
    async with creds.channel(sink, MAX_MESSAGE) as ch:
        for disk in m.disks:
            hashes = seedfile.read_hashes(path, m, disk)
            fd = os.open(path / disk.image, os.O_RDONLY | os.O_CLOEXEC)
            try:
                offsets = seedfile.data_chunks(fd, disk.size, m.chunk_size)
                # Chunks go out serialized by hand: protobuf would copy each one twice more.
                call = wire.import_seed_call(ch)
                try:
                    await call.write(rpb.SeedPiece(header=rpb.SeedHeader(
                        seed_id=m.seed_id, vm=m.vm, vdisk_id=disk.vdisk_id, size_bytes=disk.size,
                        chunk_size=m.chunk_size, data_bytes=len(offsets) * m.chunk_size)).SerializeToString())
                    # Nothing more is sent until the sink has accepted the header.
                    first = await call.read()
                    if first is grpc.aio.EOF or first.WhichOneof("body") != "accepted":
                        raise LiftshiftError(f"the sink did not accept seed {m.seed_id} disk {disk.name}")
                    for off in offsets:
                        n = min(m.chunk_size, disk.size - off)
                        data = await asyncio.to_thread(os.pread, fd, n, off)
                        i = off // m.chunk_size
                        await call.write(wire.seed_chunk_piece(off, data, hashes[i * 16:(i + 1) * 16]))
                        sent += n
                        if progress is not None:
                            progress(sent, total)
                    await call.done_writing()
                    last = await call.read()
                except grpc.RpcError as e:
                    raise from_rpc_error(e) from None
                if last is grpc.aio.EOF or last.WhichOneof("body") != "result":
                    raise LiftshiftError(f"the sink ended the import of seed {m.seed_id} disk {disk.name} "
                                         "without a result")
                result.disks.append(last.result)
            finally:
                os.close(fd)
    result.seconds = time.monotonic() - t0
    return result


async def import_cmd(args: argparse.Namespace, client: Client, out: Output) -> int:
    last = [time.monotonic()]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if not out.json and now - last[0] >= 5:
            last[0] = now
            out.line(f"  {fmt_bytes(done)} of {fmt_bytes(total)}")

    r = await import_seed(args.directory, args.sink, progress=progress, credentials=client.credentials)
    if out.json:
        out.line(json.dumps({
            "seed_id": r.manifest.seed_id, "vm": r.manifest.vm, "seconds": round(r.seconds, 3),
            "disks": [{"vdisk_id": d.vdisk_id, "chunks_written": d.chunks_written, "bytes_written": d.bytes_written,
                       "rejected_offsets": list(d.rejected_offsets), "flat_path": d.flat_path} for d in r.disks]},
            indent=2))
    else:
        written = sum(d.bytes_written for d in r.disks)
        out.line(f"Imported seed {r.manifest.seed_id} of VM {r.manifest.vm} into {args.sink}: "
                 f"{len(r.disks)} disk(s), {fmt_bytes(written)} in {r.seconds:.1f} s "
                 f"({fmt_rate(written / max(r.seconds, 1e-9))})")
        for d in r.disks:
            out.line(f"  {d.vdisk_id}: {d.chunks_written} chunks -> {d.flat_path}")
        if r.rejected:
            out.notice(f"{r.rejected} chunk(s) failed verification and were not written; the seeded migration "
                       "sends them over the network")
        out.line(f"Next, at the source: liftshift migrate create {r.manifest.vm} --type seeded "
                 f"--dest {args.sink} --start")
    return 0
