"""The sink daemon as a real process on 127.0.0.1.

Frames are built from a real ring (see framegen); the shadow is compared with
the reference image the workload maintains, by XXH3-128, by HashRanges and by
``qemu-img compare``.  Every bad input must come back with its gRPC status, a
message naming the problem, and no change to the shadow or its reported state.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import xxhash
from framegen import ChunkCopy, LiveBatch, Workload, live, record
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from procs import DaemonProcess, python_module, start_process
from sinkclient import Conversation, FrameMaker, channel, close, file_digest, hello, replicate
from tooling import require_tool

from liftshift.daemon.hashing import hash_ranges
from liftshift.v1 import replication_pb2 as pb
from liftshift.v1 import replication_pb2_grpc

MiB = 1 << 20
DISK = 16 * MiB
SINK_MAX_MESSAGE = 4 * MiB
SINK_MODULE = "liftshift.sink.main"


@dataclass
class Sink:
    """A running sink and what the tests need to restart it."""

    proc: DaemonProcess
    config: Path
    data_dir: Path
    port_file: Path
    env: dict[str, str]

    @property
    def address(self) -> str:
        return self.proc.address

    def start_again(self, cleanup: Callable[[Callable[[], None]], object]) -> Sink:
        """Start a new sink process on the same configuration (after a stop or a crash)."""
        proc = start_process(python_module(SINK_MODULE, "--config", self.config, "--port-file", self.port_file),
                             self.port_file, env=self.env, cleanup=cleanup)
        return Sink(proc, self.config, self.data_dir, self.port_file, self.env)


def start_sink(base: Path, cleanup: Callable[[Callable[[], None]], object]) -> Sink:
    base.mkdir(parents=True, exist_ok=True)
    cfg = base / "sink.toml"
    cfg.write_text(f'data_dir = "{base}/data"\nlisten = "127.0.0.1:0"\nfsync_window_ms = 5\nlog_level = "debug"\n'
                   "insecure = true\n")
    port_file = base / "port"
    # max_message comes from the environment, to prove overrides reach the running daemon.
    env = {"LIFTSHIFT_SINK_MAX_MESSAGE": "4MiB"}
    proc = start_process(python_module(SINK_MODULE, "--config", cfg, "--port-file", port_file), port_file, env=env,
                         cleanup=cleanup)
    return Sink(proc, cfg, base / "data", port_file, env)


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Sink:
    return start_sink(tmp_path_factory.mktemp("sink"), request.addfinalizer)


async def open_vdisk(stub: replication_pb2_grpc.ReplicationStub, vdisk_id: str, size: int = DISK,
                     migration: str = "mig-1") -> pb.OpenVdiskResponse:
    return await stub.OpenVdisk(pb.OpenVdiskRequest(vdisk_id=vdisk_id, size_bytes=size, migration_id=migration))


async def observed(stub: replication_pb2_grpc.ReplicationStub, vdisk_id: str,
                   size: int = DISK) -> tuple[int, int, bool, bytes]:
    """What a bad input must not change: reported position and shadow content."""
    r = await open_vdisk(stub, vdisk_id, size)
    return r.applied_seq, r.durable_seq, r.closed, file_digest(Path(r.flat_path))


Step = LiveBatch | ChunkCopy


def run_workload(w: Workload, rounds: int, chunk: int = MiB) -> list[Step]:
    """Guest IO drained into live frames, with a background copy of the disk
    interleaved (each chunk read from the reference after the live frames
    before it, as the daemon reads the source)."""
    steps: list[Step] = []
    for i in range(rounds):
        w.ops(12)
        steps += w.drain()
        offset = (i * chunk) % w.disk_size
        steps.append(w.chunk(offset, min(chunk, w.disk_size - offset)))
    return steps


def makers(steps: Sequence[Step]) -> list[FrameMaker]:
    return [s.frame for s in steps]


# -- shadows ---------------------------------------------------------------------


async def test_open_creates_sparse_shadow_and_reopen_keeps_it(sink: Sink) -> None:
    async with channel(sink.address) as ch:
        stub = replication_pb2_grpc.ReplicationStub(ch)
        r = await open_vdisk(stub, "create-1", 64 * MiB)
        assert r.created and (r.applied_seq, r.durable_seq, r.closed) == (0, 0, False)
        flat, desc = Path(r.flat_path), Path(r.descriptor_path)
        assert flat == sink.data_dir / "create-1-flat.vmdk" and desc == sink.data_dir / "create-1.vmdk"
        st = os.stat(flat)
        assert st.st_size == 64 * MiB and st.st_blocks == 0
        lines = desc.read_text().splitlines()
        assert lines[:2] == ["# Disk DescriptorFile", "version=1"]
        assert "parentCID=ffffffff" in lines and 'createType="vmfs"' in lines
        assert f'RW {64 * MiB // 512} VMFS "create-1-flat.vmdk"' in lines
        assert any(line.startswith("CID=") and len(line) == 12 for line in lines)
        assert 'ddb.geometry.heads = "255"' in lines and 'ddb.geometry.sectors = "63"' in lines

        again = await open_vdisk(stub, "create-1", 64 * MiB)
        assert not again.created and again.flat_path == r.flat_path
        for size, migration, what in [(32 * MiB, "mig-1", "size_bytes=33554432"), (64 * MiB, "mig-2", "mig-2")]:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await open_vdisk(stub, "create-1", size, migration)
            assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS and what in (e.value.details() or "")
        assert os.stat(flat).st_size == 64 * MiB

        listed = {v.vdisk_id: v for v in (await stub.ListVdisks(pb.ListVdisksRequest())).vdisks}
        assert listed["create-1"].size_bytes == 64 * MiB and listed["create-1"].migration_id == "mig-1"


async def test_descriptor_opens_in_qemu_img(sink: Sink) -> None:
    qemu_img = require_tool("qemu-img")
    async with channel(sink.address) as ch:
        r = await open_vdisk(replication_pb2_grpc.ReplicationStub(ch), "qemu-desc", 8 * MiB)
    info = json.loads(subprocess.run([qemu_img, "info", "--output=json", r.descriptor_path], check=True,
                                     capture_output=True, text=True, timeout=30).stdout)
    assert info["format"] == "vmdk" and info["virtual-size"] == 8 * MiB


# -- the data path -----------------------------------------------------------------


async def test_stream_from_a_real_ring_rebuilds_the_source(sink: Sink, shm_dir: Path, tmp_path: Path) -> None:
    w = Workload(shm_dir, DISK, seed=11)
    try:
        steps = run_workload(w, rounds=16)
        w.zero_range(3 * MiB, MiB)  # a whole chunk of zeros: shipped as a hole
        steps += w.drain()
        steps.append(w.chunk(3 * MiB, MiB))
        assert isinstance(steps[-1], ChunkCopy) and steps[-1].zero
        final_seq = w.close()
        steps += w.drain()
    finally:
        w.detach()
    frames = [*makers(steps), close(final_seq)]
    async with channel(sink.address) as ch:
        stub = replication_pb2_grpc.ReplicationStub(ch)
        opened = await open_vdisk(stub, "ring-1")
        acks = await replicate(stub, "ring-1", frames)
        last = acks[-1]
        assert (last.applied_seq, last.durable_seq, last.durable_frame, last.closed) == \
            (final_seq, final_seq, len(frames) + 1, True)
        assert all(a.durable_seq <= a.applied_seq for a in acks)
        assert [a.durable_frame for a in acks] == sorted(a.durable_frame for a in acks)
        assert sum(a.fsync_ns for a in acks) > 0 and sum(a.apply_ns for a in acks) > 0

        flat = Path(opened.flat_path)
        assert file_digest(flat) == xxhash.xxh3_128_digest(w.reference)
        ref = tmp_path / "reference.raw"
        ref.write_bytes(w.reference)
        fd = os.open(ref, os.O_RDONLY)
        try:
            for offset, length, chunk in [(0, DISK, MiB), (4096 + 512, 5 * MiB + 7, 300_000)]:
                resp = await stub.HashRanges(pb.HashRangesRequest(vdisk_id="ring-1", offset=offset, length=length,
                                                                  chunk_size=chunk))
                local = hash_ranges(fd, offset, length, chunk)
                assert [(h.offset, h.length, h.xxh3_128) for h in resp.hashes] == local
        finally:
            os.close(fd)
        reopened = await open_vdisk(stub, "ring-1")
        assert (reopened.applied_seq, reopened.durable_seq, reopened.closed) == (final_seq, final_seq, True)
        info = [v for v in (await stub.ListVdisks(pb.ListVdisksRequest())).vdisks if v.vdisk_id == "ring-1"][0]
        assert info.closed and info.durable_seq == final_seq and 0 < info.allocated_bytes < DISK


async def test_qemu_img_compare_agrees(sink: Sink, shm_dir: Path, tmp_path: Path) -> None:
    qemu_img = require_tool("qemu-img")
    w = Workload(shm_dir, 4 * MiB, seed=5)
    try:
        steps = run_workload(w, rounds=4)
    finally:
        w.detach()
    async with channel(sink.address) as ch:
        stub = replication_pb2_grpc.ReplicationStub(ch)
        r = await open_vdisk(stub, "qemu-cmp", 4 * MiB)
        await replicate(stub, "qemu-cmp", makers(steps))
    ref = tmp_path / "ref.raw"
    ref.write_bytes(w.reference)
    same = subprocess.run([qemu_img, "compare", "-f", "raw", "-F", "raw", r.flat_path, str(ref)],
                          capture_output=True, text=True, timeout=60)
    assert same.returncode == 0, same.stdout + same.stderr
    ref.write_bytes(w.reference[:-1] + bytes([w.reference[-1] ^ 1]))
    differ = subprocess.run([qemu_img, "compare", "-f", "raw", "-F", "raw", r.flat_path, str(ref)],
                            capture_output=True, text=True, timeout=60)
    assert differ.returncode == 1  # the comparison itself can tell images apart


# -- bad input ---------------------------------------------------------------------


def _chunk(offset: int, data: bytes, length: int | None = None) -> FrameMaker:
    return lambda n: pb.Frame(frame_no=n, chunk=pb.Chunk(offset=offset, length=len(data) if length is None else length,
                                                         data=data, xxh3=xxhash.xxh3_64_intdigest(data)))


BAD_STREAM = {
    # name: (bad frame, status, message regex); the stream has applied seq 1-2 and frame 2 before it.
    "bad checksum": (live([record(3, 0, b"ok" * 100), record(4, 8192, b"x" * 512, digest=42)], 3).frame,
                     grpc.StatusCode.DATA_LOSS, r"seq 4 .*XXH3-64"),
    "record past the end": (live([record(3, DISK - 512, b"y" * 1024)], 3).frame, grpc.StatusCode.OUT_OF_RANGE,
                            rf"seq 3 covers \[{DISK - 512}, {DISK + 512}\), past the end"),
    "chunk past the end": (_chunk(DISK - 4096, b"z" * 8192), grpc.StatusCode.OUT_OF_RANGE, "Chunk .* past the end"),
    "sequence gap": (live([record(5, 0, b"g")], 5).frame, grpc.StatusCode.FAILED_PRECONDITION, "gap.*seq 5"),
    "sequence replay": (live([record(2, 0, b"r"), record(3, 0, b"r")], 2).frame,
                        grpc.StatusCode.FAILED_PRECONDITION, "replay.*seq 2"),
    "malformed record": (LiveBatch(record(3, 0, b"t" * 64)[:-16], 3, 3, 1).frame, grpc.StatusCode.INVALID_ARGUMENT,
                         "malformed record at byte 0"),
    "header disagrees": (live([record(3, 0, b"h")], 3, 3, 7).frame, grpc.StatusCode.INVALID_ARGUMENT, "count=7"),
    "second hello": (hello("bad-second hello"), grpc.StatusCode.INVALID_ARGUMENT, "second Hello"),
    "oversized message": (_chunk(0, b"o" * (SINK_MAX_MESSAGE + MiB)), grpc.StatusCode.RESOURCE_EXHAUSTED,
                          "(?i)larger than max"),
}


@pytest.mark.parametrize("name", list(BAD_STREAM))
async def test_bad_frame_is_refused_and_changes_nothing(sink: Sink, name: str) -> None:
    bad, code, message = BAD_STREAM[name]
    vdisk = f"bad-{name.replace(' ', '-')}"
    async with channel(sink.address) as ch:
        stub = replication_pb2_grpc.ReplicationStub(ch)
        await open_vdisk(stub, vdisk)
        conv = Conversation(stub)
        conv.send(hello(vdisk))
        conv.send(live([record(1, 0, b"a" * 4096), record(2, MiB, b"b" * 4096)], 1).frame)
        assert (await conv.ack_for(2)).durable_seq == 2
        before = await observed(stub, vdisk)
        conv.send(bad)
        err = await conv.error()
        assert err.code() == code, err
        assert err.details() and re.search(message, err.details()), err.details()
        assert await observed(stub, vdisk) == before


async def test_frame_numbers_must_go_up_by_one(sink: Sink) -> None:
    async with channel(sink.address) as ch:
        stub = replication_pb2_grpc.ReplicationStub(ch)
        await open_vdisk(stub, "frame-no")
        conv = Conversation(stub)
        conv.send(hello("frame-no"))
        await conv.ack_for(1)
        before = await observed(stub, "frame-no")
        conv.send(live([record(1, 0, b"n" * 512)], 1).frame, frame_no=3)
        err = await conv.error()
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "frame_no 3 where 2 was expected" in err.details()
        md = dict(err.trailing_metadata() or ())
        assert md.get("liftshift-error") == "InvalidArgument"  # typed error, mapped in one place
        assert await observed(stub, "frame-no") == before


@pytest.mark.parametrize("first,code,message", [
    (hello("never-opened"), grpc.StatusCode.NOT_FOUND, "'never-opened' is not known to this sink"),
    (hello("../escape"), grpc.StatusCode.INVALID_ARGUMENT, "contains '/'"),
    (live([record(1, 0, b"x")], 1).frame, grpc.StatusCode.INVALID_ARGUMENT, "must be a Hello"),
])
async def test_stream_must_start_with_hello_for_a_known_vdisk(sink: Sink, first: FrameMaker, code: grpc.StatusCode,
                                                              message: str) -> None:
    async with channel(sink.address) as ch:
        conv = Conversation(replication_pb2_grpc.ReplicationStub(ch))
        conv.send(first)
        err = await conv.error()
        assert err.code() == code and message in (err.details() or "")


@pytest.mark.parametrize("vdisk_id,what", [("a/b", "'/'"), ("../up", "'/'"), ("..", "'..'"), ("x..y", "'..'"),
                                           ("nul\0byte", "NUL"), ("back\\slash", "'\\'"), ("", "1-128")])
async def test_path_tricks_in_ids_are_refused(sink: Sink, vdisk_id: str, what: str) -> None:
    before = sorted(p.name for p in sink.data_dir.parent.rglob("*"))
    async with channel(sink.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await open_vdisk(replication_pb2_grpc.ReplicationStub(ch), vdisk_id)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and what in (e.value.details() or "")
    assert sorted(p.name for p in sink.data_dir.parent.rglob("*")) == before


async def test_hash_ranges_bounds_and_limits(sink: Sink) -> None:
    async with channel(sink.address) as ch:
        stub = replication_pb2_grpc.ReplicationStub(ch)
        await open_vdisk(stub, "hash-lim", 4 * MiB)
        for req, code, message in [
            (pb.HashRangesRequest(vdisk_id="hash-lim", offset=MiB, length=4 * MiB, chunk_size=MiB),
             grpc.StatusCode.OUT_OF_RANGE, "past the end"),
            (pb.HashRangesRequest(vdisk_id="hash-lim", offset=0, length=4 * MiB, chunk_size=16),
             grpc.StatusCode.RESOURCE_EXHAUSTED, "262144 chunks"),
            (pb.HashRangesRequest(vdisk_id="hash-lim", offset=0, length=MiB, chunk_size=0),
             grpc.StatusCode.INVALID_ARGUMENT, "chunk_size"),
            (pb.HashRangesRequest(vdisk_id="nope", offset=0, length=MiB, chunk_size=MiB),
             grpc.StatusCode.NOT_FOUND, "not known"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.HashRanges(req)
            assert e.value.code() == code and message in (e.value.details() or ""), e.value
        empty = await stub.HashRanges(pb.HashRangesRequest(vdisk_id="hash-lim", offset=0, length=MiB,
                                                           chunk_size=MiB))
        assert [h.xxh3_128 for h in empty.hashes] == [xxhash.xxh3_128_digest(bytes(MiB))]


async def test_a_new_stream_takes_over(sink: Sink) -> None:
    async with channel(sink.address) as ch:
        stub = replication_pb2_grpc.ReplicationStub(ch)
        await open_vdisk(stub, "takeover")
        old = Conversation(stub)
        old.send(hello("takeover"))
        old.send(live([record(1, 0, b"1" * 512)], 1).frame)
        await old.ack_for(2)
        new = Conversation(stub)
        new.send(hello("takeover"))
        first = await new.ack_for(1)
        assert first.applied_seq == first.durable_seq == 1
        err = await old.error()
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "newer Replicate stream took over" in err.details()
        new.send(live([record(1, 0, b"1" * 512), record(2, 512, b"2" * 512)], 1).frame)  # resend from durable
        assert (await new.ack_for(2)).durable_seq == 2
        new.half_close()
        assert await new.call.read() is grpc.aio.EOF


# -- crashes and shutdown -------------------------------------------------------------


async def resume(stub: replication_pb2_grpc.ReplicationStub, vdisk: str, steps: list[Step], w: Workload,
                 durable_seq: int, acked_frame: int) -> None:
    """What a reconnecting source sends: live frames holding records past
    durable_seq, and every chunk not acked durable, re-read from the source."""
    again: list[Step] = [s for s in steps if isinstance(s, LiveBatch) and s.last_seq > durable_seq]
    again += [w.chunk(s.offset, s.length) for i, s in enumerate(steps)
              if isinstance(s, ChunkCopy) and i + 2 > acked_frame]
    acks = await replicate(stub, vdisk, makers(again))
    assert acks[-1].durable_seq == w.last_seq


async def test_kill_9_mid_stream_then_resume_from_durable(tmp_path: Path, shm_dir: Path,
                                                          request: pytest.FixtureRequest) -> None:
    sink = start_sink(tmp_path / "crash", request.addfinalizer)
    w = Workload(shm_dir, DISK, seed=23)
    try:
        steps = run_workload(w, rounds=40)
    finally:
        w.detach()
    async with channel(sink.address) as ch:
        stub = replication_pb2_grpc.ReplicationStub(ch)
        await open_vdisk(stub, "crash-1")
        conv = Conversation(stub)
        conv.send(hello("crash-1"))
        third = len(steps) // 3
        for make in makers(steps[:third]):
            conv.send(make)
        await conv.ack_for(third + 1)
        for make in makers(steps[third : 2 * third]):  # in flight when the sink dies
            conv.send(make)
        await conv.ack()
        sink.proc.kill()
        await conv.error()  # the last third is never sent
        acked = conv.last_ack
    assert 0 < acked.durable_seq and acked.durable_frame > third
    sink = sink.start_again(request.addfinalizer)
    async with channel(sink.address) as ch:
        stub = replication_pb2_grpc.ReplicationStub(ch)
        r = await open_vdisk(stub, "crash-1")
        assert acked.durable_seq <= r.durable_seq == r.applied_seq < w.last_seq
        await resume(stub, "crash-1", steps, w, r.durable_seq, acked.durable_frame)
        assert file_digest(Path(r.flat_path)) == xxhash.xxh3_128_digest(w.reference)


async def test_sigterm_acks_and_syncs_everything_applied(tmp_path: Path, shm_dir: Path,
                                                         request: pytest.FixtureRequest) -> None:
    sink = start_sink(tmp_path / "term", request.addfinalizer)
    w = Workload(shm_dir, DISK, seed=29)
    try:
        steps = run_workload(w, rounds=10)
    finally:
        w.detach()
    half = len(steps) // 2
    async with channel(sink.address) as ch:
        stub = replication_pb2_grpc.ReplicationStub(ch)
        await open_vdisk(stub, "term-1")
        conv = Conversation(stub)
        conv.send(hello("term-1"))
        for make in makers(steps[:half]):
            conv.send(make)
        await conv.ack_for(half + 1)
        sink.proc.proc.send_signal(signal.SIGTERM)
        err = await conv.error()
        assert err.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in (err.details() or "")
        last = conv.last_ack
    assert sink.proc.proc.wait(15) == 0, sink.proc.log()
    assert "sink stopped" in sink.proc.log()
    sink = sink.start_again(request.addfinalizer)
    async with channel(sink.address) as ch:
        stub = replication_pb2_grpc.ReplicationStub(ch)
        r = await open_vdisk(stub, "term-1")
        assert r.applied_seq == r.durable_seq == last.durable_seq == last.applied_seq > 0
        await resume(stub, "term-1", steps, w, r.durable_seq, last.durable_frame)
        assert file_digest(Path(r.flat_path)) == xxhash.xxh3_128_digest(w.reference)


# -- the daemon around it ----------------------------------------------------------------


def test_health_and_reflection(sink: Sink) -> None:
    with grpc.insecure_channel(sink.address) as ch:
        services = set(ProtoReflectionDescriptorDatabase(ch).get_services())
        health = health_pb2_grpc.HealthStub(ch)
        check = health.Check(health_pb2.HealthCheckRequest(service="liftshift.v1.Replication"), timeout=5)
        # Watch streams through the error interceptor too (it once broke coroutine-style streams).
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        first = next(watch)
        watch.cancel()
    assert {"liftshift.v1.Replication", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
    assert check.status == first.status == health_pb2.HealthCheckResponse.SERVING


def test_bad_config_exits_2_naming_key_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'data_dir = "{tmp_path}"\nfsync_window_ms = "soon"\n')
    r = subprocess.run(python_module(SINK_MODULE, "--config", cfg), capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and str(cfg) in r.stderr and "'fsync_window_ms'" in r.stderr, r.stderr
    r = subprocess.run(python_module(SINK_MODULE, "--config", cfg), capture_output=True, text=True, timeout=30,
                       env={**os.environ, "LIFTSHIFT_SINK_FSYNC_WINDOW_MS": "2", "LIFTSHIFT_SINK_LISTEN": "nope"})
    assert r.returncode == 2 and "LIFTSHIFT_SINK_LISTEN" in r.stderr and "'listen'" in r.stderr, r.stderr


def test_print_config_reference() -> None:
    r = subprocess.run(python_module(SINK_MODULE, "--print-config-reference"), capture_output=True, text=True,
                       timeout=30, check=True)
    assert r.stdout.startswith("| key | default |") and "| `max_message` | `16MiB` |" in r.stdout


def test_second_sink_on_the_same_state_is_refused(sink: Sink) -> None:
    r = subprocess.run(python_module(SINK_MODULE, "--config", sink.config), capture_output=True, text=True,
                       timeout=30, env={**os.environ, **sink.env})
    assert r.returncode == 1 and "in use by another liftshift-sink" in r.stderr, r.stderr
    with grpc.insecure_channel(sink.address) as ch:
        grpc.channel_ready_future(ch).result(timeout=5)


def test_a_port_in_use_is_refused(sink: Sink, tmp_path: Path) -> None:
    cfg = tmp_path / "clash.toml"
    cfg.write_text(f'data_dir = "{tmp_path}/data"\nlisten = "127.0.0.1:{sink.proc.port}"\ninsecure = true\n')
    r = subprocess.run(python_module(SINK_MODULE, "--config", cfg), capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and f"cannot listen on 127.0.0.1:{sink.proc.port}" in r.stderr, r.stderr
