"""Importing a seed into a shadow vdisk (the ImportSeed RPC).

Design note
-----------
A seed arrives on a drive at the destination; ``liftshift seed import``
reads it there and streams it to the sink: a :class:`SeedHeader`, then the
data chunks with the XXH3-128 the seed's manifest gives for each.

Everything about the header is checked before anything is written: a valid
shadow name, a size the shadow can have, no migration already owning that
shadow, no other seed imported into it, and enough free space in the data
directory for the data that will follow (keeping ``reserve_free_bytes``
free).  A refused import leaves neither files nor a record behind.

Each chunk's digest is checked before it is written; a chunk that does not
match is skipped and reported (the seeded migration sends it over the
network), so one bad sector on the drive does not cost the whole import.
A malformed chunk (misaligned, past the end, wrong length) ends the import
with an error; the shadow stays marked ``importing`` and a seeded migration
refuses it until an import finishes.  Importing the same seed again is
allowed until a migration binds the shadow.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import xxhash

from liftshift.daemon.errors import AlreadyExists, InvalidArgument, OutOfRange
from liftshift.daemon.seedfile import InsufficientSpace, free_bytes
from liftshift.v1 import replication_pb2 as pb

from .registry import VdiskRegistry
from .shadow import ShadowPaths, allocated_bytes, check_size, check_vdisk_id, create_shadow
from .state import SEED_IMPORTED, SEED_IMPORTING

log = logging.getLogger("liftshift.sink.seed")

_SEED_ID = re.compile(r"s-[0-9a-f]{8}")
MAX_CHUNK = 64 << 20
_WRITE_DEPTH = 8


def _check_header(h: pb.SeedHeader) -> None:
    check_vdisk_id(h.vdisk_id)
    check_size(h.size_bytes)
    if not _SEED_ID.fullmatch(h.seed_id):
        raise InvalidArgument(f"seed_id {h.seed_id[:40]!r} is not a seed id (s-<8 hex digits>)")
    c = h.chunk_size
    if c <= 0 or c & (c - 1) or c > MAX_CHUNK:
        raise InvalidArgument(f"chunk_size {c} must be a power of two of at most {MAX_CHUNK} bytes")
    if h.data_bytes > h.size_bytes:
        raise InvalidArgument(f"data_bytes {h.data_bytes} exceeds the disk size {h.size_bytes}")


async def import_seed(registry: VdiskRegistry, reserve_free: int,
                      pieces: AsyncIterator[pb.SeedPiece], peer: str = "") -> AsyncGenerator[pb.SeedImportReply]:
    """Run one ImportSeed stream (see the module note): SeedAccepted once the
    header is checked, the ImportSeedResponse once the data is durable."""
    it = pieces.__aiter__()
    try:
        first = await it.__anext__()
    except StopAsyncIteration:
        raise InvalidArgument("the ImportSeed stream ended before its header") from None
    if first.WhichOneof("body") != "header":
        raise InvalidArgument("the first message of an ImportSeed stream must be a SeedHeader")
    h = first.header
    _check_header(h)
    vid = h.vdisk_id
    async with registry.importing(vid):
        row = registry.state.get(vid)
        existing = 0
        if row is not None:
            if row.migration_id:
                raise AlreadyExists(f"vdisk {vid!r} belongs to migration {row.migration_id}: a seed cannot be "
                                    "imported over it", hint="remove that migration's shadow first")
            if row.seed_id != h.seed_id:
                raise AlreadyExists(f"vdisk {vid!r} was imported from seed {row.seed_id}, not {h.seed_id}")
            if row.size_bytes != h.size_bytes:
                raise AlreadyExists(f"vdisk {vid!r} exists with size {row.size_bytes}, the seed says {h.size_bytes}")
            existing = allocated_bytes(row.flat_path)
        data_dir = registry.data_dir
        free = free_bytes(data_dir) - reserve_free
        need = max(0, h.data_bytes - existing)
        if need > free:
            raise InsufficientSpace(
                f"seed {h.seed_id}: vdisk {vid} needs {need} bytes in {data_dir}, which has {max(free, 0)} "
                f"available (keeping reserve_free_bytes={reserve_free} free)",
                hint="free space in the sink's data_dir or give it a larger one; nothing was written")
        if row is None:
            paths = await asyncio.to_thread(create_shadow, data_dir, vid, h.size_bytes)
            row = await asyncio.to_thread(registry.state.insert_seed, vid, h.size_bytes, h.seed_id, paths.flat,
                                          paths.descriptor)
        else:
            await asyncio.to_thread(registry.state.set_seed_state, vid, SEED_IMPORTING)
        registry.forget(vid)
        log.info("vdisk %s: importing seed %s of VM %r from %s (%d data bytes)", vid, h.seed_id, h.vm, peer,
                 h.data_bytes)
        # The client sends no chunk before this: a refusal above reaches it
        # as a status, not as a failed write.
        yield pb.SeedImportReply(accepted=pb.SeedAccepted(flat_path=str(row.flat_path)))
        fd = os.open(ShadowPaths.of(data_dir, vid).flat, os.O_RDWR | os.O_CLOEXEC)
        written = nbytes = 0
        rejected: list[int] = []
        # Writes go to one thread of their own, in order, up to _WRITE_DEPTH
        # behind the stream: receiving the next chunk overlaps writing this one.
        loop = asyncio.get_running_loop()
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"seed-{vid}")
        pending: deque[asyncio.Future[int]] = deque()
        try:
            async for piece in it:
                if piece.WhichOneof("body") != "chunk":
                    raise InvalidArgument("only SeedChunks may follow the SeedHeader")
                c = piece.chunk
                want = min(h.chunk_size, h.size_bytes - c.offset) if c.offset < h.size_bytes else 0
                if c.offset % h.chunk_size:
                    raise InvalidArgument(f"seed chunk offset {c.offset} is not a multiple of {h.chunk_size}")
                if c.offset >= h.size_bytes:
                    raise OutOfRange(f"seed chunk at {c.offset} lies past the end of the {h.size_bytes}-byte disk")
                if len(c.data) != want:
                    raise InvalidArgument(f"seed chunk at {c.offset} has {len(c.data)} bytes, expected {want}")
                if xxhash.xxh3_128_digest(c.data) != c.xxh3_128:
                    rejected.append(c.offset)
                    continue
                pending.append(loop.run_in_executor(writer, os.pwrite, fd, c.data, c.offset))
                while len(pending) > _WRITE_DEPTH or pending and pending[0].done():
                    await pending.popleft()  # raises the write's OSError
                written += 1
                nbytes += len(c.data)
            while pending:
                await pending.popleft()
            await loop.run_in_executor(writer, os.fdatasync, fd)
        finally:
            for f in pending:
                f.cancel()
            # Wait for a write already running before the descriptor goes.
            await asyncio.to_thread(writer.shutdown, True)
            os.close(fd)
        await asyncio.to_thread(registry.state.set_seed_state, vid, SEED_IMPORTED)
    if rejected:
        log.warning("vdisk %s: seed %s: %d chunks failed verification and were not written (first at %d)",
                    vid, h.seed_id, len(rejected), rejected[0])
    log.info("vdisk %s: seed %s imported: %d chunks, %d bytes", vid, h.seed_id, written, nbytes)
    yield pb.SeedImportReply(result=pb.ImportSeedResponse(vdisk_id=vid, chunks_written=written, bytes_written=nbytes,
                                                          rejected_offsets=rejected, flat_path=str(row.flat_path)))
