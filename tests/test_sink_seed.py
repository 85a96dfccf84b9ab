"""The sink's ImportSeed and seeded OpenVdisk against a real sink process.

Every malformed import is refused with its typed error; a refused header
leaves nothing behind; a chunk whose hash does not match is skipped and
reported while the rest is written; an interrupted import keeps the shadow
from being used; a seeded open binds the shadow once, at the given sequence,
and only for the seed it holds.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
import xxhash
from procs import python_module, start_process

from liftshift.daemon.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LiftshiftError,
    OutOfRange,
    from_rpc_error,
)
from liftshift.v1 import replication_pb2 as pb
from liftshift.v1 import replication_pb2_grpc

MiB = 1 << 20
SIZE = 4 * MiB
CHUNK = MiB
SEED = "s-0123abcd"


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> tuple[str, Path]:
    base = tmp_path_factory.mktemp("seedsink")
    cfg = base / "sink.toml"
    cfg.write_text(f'data_dir = "{base}/data"\nlisten = "127.0.0.1:0"\nreserve_free_bytes = 0\ninsecure = true\n')
    port_file = base / "port"
    start_process(python_module("liftshift.sink.main", "--config", cfg, "--port-file", port_file), port_file,
                  cleanup=request.addfinalizer)
    return f"127.0.0.1:{port_file.read_text().strip()}", base / "data"


def header(vdisk_id: str, **kw: object) -> pb.SeedPiece:
    h = dict(seed_id=SEED, vm="vm-1", vdisk_id=vdisk_id, size_bytes=SIZE, chunk_size=CHUNK, data_bytes=SIZE)
    h.update(kw)
    return pb.SeedPiece(header=pb.SeedHeader(**h))  # type: ignore[arg-type]


def chunk(offset: int, data: bytes, digest: bytes | None = None) -> pb.SeedPiece:
    return pb.SeedPiece(chunk=pb.SeedChunk(offset=offset, data=data,
                                           xxh3_128=digest if digest is not None else xxhash.xxh3_128_digest(data)))


async def run_import(address: str, pieces: list[pb.SeedPiece]) -> pb.ImportSeedResponse:
    async with grpc.aio.insecure_channel(address) as ch:
        call = replication_pb2_grpc.ReplicationStub(ch).ImportSeed(timeout=30)
        try:
            await call.write(pieces[0])
            first = await call.read()
            assert first.WhichOneof("body") == "accepted"
            for p in pieces[1:]:
                await call.write(p)
            await call.done_writing()
            last = await call.read()
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return last.result


async def vdisks(address: str) -> dict[str, pb.VdiskInfo]:
    async with grpc.aio.insecure_channel(address) as ch:
        got = await replication_pb2_grpc.ReplicationStub(ch).ListVdisks(pb.ListVdisksRequest())
    return {v.vdisk_id: v for v in got.vdisks}


async def open_seeded(address: str, vdisk_id: str, seed_id: str, migration: str, base: int) -> pb.OpenVdiskResponse:
    async with grpc.aio.insecure_channel(address) as ch:
        try:
            return await replication_pb2_grpc.ReplicationStub(ch).OpenVdisk(pb.OpenVdiskRequest(
                vdisk_id=vdisk_id, size_bytes=SIZE, migration_id=migration, seed_id=seed_id, seed_base_seq=base))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None


@pytest.mark.parametrize("bad, error, words", [
    (header("../etc"), InvalidArgument, "contains '/'"),
    (header("v-ok", seed_id="seed-1"), InvalidArgument, "not a seed id"),
    (header("v-ok", chunk_size=3 * MiB), InvalidArgument, "power of two"),
    (header("v-ok", size_bytes=SIZE + 1), InvalidArgument, "multiple of 512"),
    (header("v-ok", data_bytes=SIZE * 2), InvalidArgument, "exceeds the disk size"),
    (chunk(0, b"x" * CHUNK), InvalidArgument, "must be a SeedHeader"),
])
async def test_a_bad_header_is_refused_and_leaves_nothing(sink: tuple[str, Path], bad: pb.SeedPiece,
                                                          error: type[LiftshiftError], words: str) -> None:
    address, data = sink
    before = set(os.listdir(data)) if data.exists() else set()
    with pytest.raises(error, match=words):
        await run_import(address, [bad])
    assert "v-ok" not in await vdisks(address)
    assert (set(os.listdir(data)) if data.exists() else set()) == before


@pytest.mark.parametrize("piece, error, words", [
    (chunk(100, b"x" * CHUNK), InvalidArgument, "not a multiple"),
    (chunk(SIZE, b"x" * CHUNK), OutOfRange, "past the end"),
    (chunk(CHUNK, b"x" * 100), InvalidArgument, "expected 1048576"),
    (header("v-again"), InvalidArgument, "only SeedChunks"),
])
async def test_a_bad_chunk_ends_the_import_and_the_shadow_stays_unusable(sink: tuple[str, Path], piece: pb.SeedPiece,
                                                                         error: type[LiftshiftError],
                                                                         words: str) -> None:
    address, _data = sink
    vid = f"v-bad-{abs(hash(words)) % 10000}"
    with pytest.raises(error, match=words):
        await run_import(address, [header(vid), chunk(0, os.urandom(CHUNK)), piece])
    info = (await vdisks(address))[vid]
    assert info.seed_id == SEED and not info.seed_imported
    with pytest.raises(FailedPrecondition, match="did not finish"):
        await open_seeded(address, vid, SEED, "m-1", 7)


async def test_import_skips_damaged_chunks_and_binds_once(sink: tuple[str, Path]) -> None:
    address, data = sink
    vid = "v-good"
    blocks = [os.urandom(CHUNK) for _ in range(3)]
    wrong = xxhash.xxh3_128_digest(b"something else")
    got = await run_import(address, [header(vid), chunk(0, blocks[0]), chunk(CHUNK, blocks[1], wrong),
                                     chunk(3 * CHUNK, blocks[2])])
    assert (got.chunks_written, got.bytes_written, list(got.rejected_offsets)) == (2, 2 * CHUNK, [CHUNK])
    flat = data / f"{vid}-flat.vmdk"
    content = flat.read_bytes()
    assert content == blocks[0] + bytes(CHUNK) + bytes(CHUNK) + blocks[2]
    info = (await vdisks(address))[vid]
    assert info.seed_imported and not info.migration_id

    # Importing the same seed again is allowed until a migration binds it.
    again = await run_import(address, [header(vid), chunk(CHUNK, blocks[1])])
    assert again.chunks_written == 1 and flat.read_bytes()[CHUNK:2 * CHUNK] == blocks[1]
    # Another seed may not land in it.
    with pytest.raises(AlreadyExists, match=f"imported from seed {SEED}"):
        await run_import(address, [header(vid, seed_id="s-99999999")])

    with pytest.raises(FailedPrecondition, match="expects seed s-99999999"):
        await open_seeded(address, vid, "s-99999999", "m-1", 42)
    with pytest.raises(FailedPrecondition, match="has not been imported"):
        await open_seeded(address, "v-never", SEED, "m-1", 42)
    opened = await open_seeded(address, vid, SEED, "m-1", 42)
    assert (opened.applied_seq, opened.durable_seq, opened.created) == (42, 42, False)
    # Reopening keeps the position; the bound shadow belongs to its migration.
    opened = await open_seeded(address, vid, SEED, "m-1", 99)
    assert opened.durable_seq == 42
    assert (await vdisks(address))[vid].migration_id == "m-1"
    with pytest.raises(AlreadyExists, match="belongs to migration m-1"):
        await run_import(address, [header(vid)])
    assert flat.read_bytes() == blocks[0] + blocks[1] + bytes(CHUNK) + blocks[2]


def test_a_version_1_state_database_gains_the_seed_columns(tmp_path: Path) -> None:
    import sqlite3

    from liftshift.sink.state import SinkState

    db = sqlite3.connect(tmp_path / "sink.db")
    db.execute("CREATE TABLE vdisks (vdisk_id TEXT PRIMARY KEY, size_bytes INTEGER NOT NULL, migration_id TEXT NOT "
               "NULL, applied_seq INTEGER NOT NULL DEFAULT 0, durable_seq INTEGER NOT NULL DEFAULT 0, closed INTEGER "
               "NOT NULL DEFAULT 0, flat_path TEXT NOT NULL, descriptor_path TEXT NOT NULL, created_ns INTEGER NOT "
               "NULL, updated_ns INTEGER NOT NULL) STRICT")
    db.execute("INSERT INTO vdisks VALUES ('old', 512, 'm-1', 5, 5, 0, '/x-flat.vmdk', '/x.vmdk', 1, 1)")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    state = SinkState(tmp_path)
    try:
        row = state.get("old")
        assert row is not None and (row.durable_seq, row.seed_id, row.seed_state) == (5, "", "")
    finally:
        state.close()
