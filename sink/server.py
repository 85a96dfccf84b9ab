"""The sink's gRPC face: the Replication service and the server around it.

Design note
-----------
A thin adapter.  Each RPC checks its request, delegates to the registry
(:mod:`liftshift.sink.registry`), a stream session
(:mod:`liftshift.sink.stream`) or the hashing helper, and converts the result
to protobuf.  It never picks a status code: problems are raised as
:mod:`liftshift.daemon.errors` classes and the server's ErrorInterceptor maps
them, so every refusal has a typed error and a message naming the problem.

Blocking file work (creating shadows, hashing) runs in worker threads so the
event loop keeps serving every other stream.  :class:`SinkServer` assembles
the grpc.aio server (explicit message limits, health, reflection) and owns
the order of a graceful stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc

from liftshift.daemon import access, service, wire
from liftshift.daemon.config import host_port
from liftshift.daemon.errors import InvalidArgument, OutOfRange, TooLarge, Unavailable
from liftshift.daemon.hashing import hash_ranges
from liftshift.daemon.metrics import MetricsExporter
from liftshift.v1 import destination_pb2_grpc, replication_pb2_grpc
from liftshift.v1 import replication_pb2 as pb

from . import destination
from .config import SinkConfig
from .meters import SinkMeters
from .registry import VdiskRegistry
from .seed import import_seed
from .shadow import check_migration_id, check_size, check_vdisk_id
from .state import SEED_IMPORTED, SinkState
from .stream import ReplicateSession

log = logging.getLogger("liftshift.sink.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Replication"].full_name
# Bytes one ChunkHash takes in a response at most (tags, varints, 16-byte digest).
_HASH_ENTRY_BYTES = 48


def add_to_server(servicer: ReplicationServicer, server: grpc.aio.Server) -> None:
    """Register the Replication service as the generated
    ``add_ReplicationServicer_to_server`` does, except that Replicate's frames
    are handed over serialized: :mod:`liftshift.daemon.wire` decodes them
    without copying their payloads (protobuf would copy each one twice)."""
    def unary(fn: Any, request: Any, response: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=request.FromString,
                                                   response_serializer=response.SerializeToString)

    handlers = {
        "OpenVdisk": unary(servicer.OpenVdisk, pb.OpenVdiskRequest, pb.OpenVdiskResponse),
        "Replicate": grpc.stream_stream_rpc_method_handler(servicer.Replicate, request_deserializer=None,
                                                           response_serializer=pb.Ack.SerializeToString),
        "HashRanges": unary(servicer.HashRanges, pb.HashRangesRequest, pb.HashRangesResponse),
        "ListVdisks": unary(servicer.ListVdisks, pb.ListVdisksRequest, pb.ListVdisksResponse),
        "ImportSeed": grpc.stream_stream_rpc_method_handler(servicer.ImportSeed,
                                                            request_deserializer=pb.SeedPiece.FromString,
                                                            response_serializer=pb.SeedImportReply.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class ReplicationServicer(replication_pb2_grpc.ReplicationServicer):
    """liftshift.v1.Replication on top of a :class:`VdiskRegistry`."""

    def __init__(self, registry: VdiskRegistry, config: SinkConfig, meters: SinkMeters | None = None) -> None:
        self.registry = registry
        self.config = config
        self.meters = meters or SinkMeters()

    async def OpenVdisk(self, request: pb.OpenVdiskRequest, context: grpc.aio.ServicerContext) -> pb.OpenVdiskResponse:
        """Create the shadow, or reopen it with the same size and migration."""
        vdisk_id = check_vdisk_id(request.vdisk_id)
        size = check_size(request.size_bytes)
        migration_id = check_migration_id(request.migration_id)
        shadow, created = await self.registry.open(vdisk_id, size, migration_id, request.seed_id,
                                                   request.seed_base_seq)
        a = shadow.applier
        return pb.OpenVdiskResponse(vdisk_id=vdisk_id, size_bytes=size, applied_seq=a.applied_seq,
                                    durable_seq=a.durable_seq, created=created, closed=a.closed,
                                    flat_path=str(shadow.row.flat_path),
                                    descriptor_path=str(shadow.row.descriptor_path))

    async def Replicate(self, request_iterator: AsyncIterator[bytes],
                        context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Ack]:
        """Hello, then frames applied in order; acks as they become durable.
        Frames arrive serialized (see :func:`add_to_server`)."""
        frames = request_iterator.__aiter__()
        try:
            hello = wire.decode_frame(await frames.__anext__())
        except StopAsyncIteration:
            raise InvalidArgument("the Replicate stream ended before its Hello") from None
        kind = hello.body
        if kind != "hello":
            raise InvalidArgument(f"the first frame of a Replicate stream must be a Hello, got {kind or 'no body'}")
        if hello.frame_no != 1:
            raise InvalidArgument(f"the Hello is frame_no {hello.frame_no}; frames are numbered from 1")
        shadow = await self.registry.get(hello.vdisk_id)
        session = ReplicateSession(shadow.applier, fsync_window_s=self.config.fsync_window_ms / 1000,
                                   buffer_bytes=self.config.stream_buffer, peer=context.peer(),
                                   meter=self.meters.vdisk(shadow.row.vdisk_id, shadow.row.migration_id))
        log.info("vdisk %s: stream from %s", shadow.row.vdisk_id, session.peer)
        try:
            await shadow.take_over(session, self.registry.reopen)
            # aclosing: the session's cleanup runs now, not whenever the
            # garbage collector finalises an abandoned generator.
            async with contextlib.aclosing(session.run(frames)) as acks:
                async for ack in acks:
                    yield ack
        except asyncio.CancelledError:
            # gRPC ended the call itself (the request stream just stops, then
            # the handler is cancelled): nothing reaches the error interceptor,
            # so say here what the usual causes are.
            log.warning("vdisk %s: stream from %s was cancelled: the peer went away, sent a message over "
                        "max_message=%d bytes, or did not stop after a takeover or shutdown",
                        shadow.row.vdisk_id, session.peer, self.config.max_message)
            raise
        finally:
            session.finished.set()  # its cleanup is done (or it never ran): a waiting takeover may go on
            shadow.release(session)
            log.info("vdisk %s: stream from %s ended after %d frames, %d bytes; applied %d durable %d",
                     shadow.row.vdisk_id, session.peer, session.frames, session.bytes,
                     session.applier.applied_seq, session.applier.durable_seq)

    async def HashRanges(self, request: pb.HashRangesRequest,
                         context: grpc.aio.ServicerContext) -> pb.HashRangesResponse:
        """XXH3-128 of each ``chunk_size`` piece of a range of the shadow."""
        shadow = await self.registry.get(request.vdisk_id)
        size = shadow.row.size_bytes
        chunk = request.chunk_size
        if chunk == 0:
            raise InvalidArgument("HashRanges chunk_size must be positive")
        ranges = [(r.offset, r.length) for r in request.ranges] or [(request.offset, request.length)]
        pieces = 0
        for offset, length in ranges:
            if offset + length > size:
                raise OutOfRange(f"HashRanges [{offset}, {offset + length}) runs past the end of the {size}-byte "
                                 f"vdisk {request.vdisk_id!r}")
            pieces += -(-length // chunk)
        limit = min(self.config.max_hash_chunks, self.config.max_message // _HASH_ENTRY_BYTES)
        if pieces > limit:
            raise TooLarge(f"HashRanges asks for {pieces} chunks; this sink answers at most {limit} per call",
                           hint="split the range or use a larger chunk_size")
        hashes = await asyncio.to_thread(_hash_ranges, shadow.row.flat_path, ranges, chunk)
        return pb.HashRangesResponse(hashes=[pb.ChunkHash(offset=o, length=n, xxh3_128=d) for o, n, d in hashes])

    async def ImportSeed(self, request_iterator: AsyncIterator[pb.SeedPiece],
                         context: grpc.aio.ServicerContext) -> AsyncIterator[pb.SeedImportReply]:
        """Write a seed into a new (or still unbound) shadow; see :mod:`liftshift.sink.seed`."""
        async with contextlib.aclosing(import_seed(self.registry, self.config.reserve_free_bytes, request_iterator,
                                                   context.peer())) as replies:
            async for reply in replies:
                yield reply

    async def ListVdisks(self, request: pb.ListVdisksRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListVdisksResponse:
        """Every shadow on record, with live positions for the open ones."""
        infos = []
        described = await asyncio.to_thread(self.registry.describe)
        for row, applier, allocated in described:
            applied = applier.applied_seq if applier else row.applied_seq
            durable = applier.durable_seq if applier else row.durable_seq
            closed = applier.closed if applier else row.closed
            infos.append(pb.VdiskInfo(vdisk_id=row.vdisk_id, size_bytes=row.size_bytes, applied_seq=applied,
                                      durable_seq=durable, closed=closed, migration_id=row.migration_id,
                                      allocated_bytes=allocated, seed_id=row.seed_id,
                                      seed_imported=row.seed_state == SEED_IMPORTED))
        return pb.ListVdisksResponse(vdisks=infos)


def _hash_ranges(path: os.PathLike[str], ranges: list[tuple[int, int]], chunk: int) -> list[tuple[int, int, bytes]]:
    # A descriptor of its own: the applier's may be replaced while we read.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return [h for offset, length in ranges for h in hash_ranges(fd, offset, length, chunk)]
    finally:
        os.close(fd)


class SinkServer:
    """The running sink: state, registry, gRPC server; :meth:`stop` in the right order."""

    def __init__(self, config: SinkConfig) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.state = SinkState(config.state_path)
        self.registry = VdiskRegistry(self.state, config.data_dir)
        self.access = access.server_access("the sink", config.listen, access.SINK_ROLES, insecure=config.insecure,
                                           cert=config.tls_cert, key=config.tls_key, ca=config.tls_ca,
                                           tokens_file=config.tokens_file)
        self.server = service.make_server(config.max_message, outer=[self.access.interceptor])
        self.meters = SinkMeters()
        self.metrics: MetricsExporter | None = None
        add_to_server(ReplicationServicer(self.registry, config, self.meters), self.server)
        self.destination = destination.DestinationServicer(self.registry, config.state_path / "vms")
        destination_pb2_grpc.add_DestinationServicer_to_server(self.destination, self.server)
        self.services = [SERVICE_NAME, destination.SERVICE_NAME]
        self.health = service.add_health_and_reflection(self.server, self.services)
        self.port = 0

    async def start(self) -> int:
        """Listen, start serving, report SERVING; return the bound port."""
        try:
            self.port = access.add_port(self.server, self.config.listen, self.access.server_credentials)
        except RuntimeError as e:  # grpc raises when it cannot bind
            raise Unavailable(f"cannot listen on {self.config.listen}: {e}",
                              hint="check the 'listen' key; is another process on that port?") from None
        if self.port == 0:
            raise Unavailable(f"cannot listen on {self.config.listen}")
        if self.config.metrics_listen:
            self._serve_metrics()
        await self.server.start()
        await service.mark_serving(self.health, self.services)
        log.info("sink serving on %s (port %d, %s), data in %s", self.config.listen, self.port,
                 "plain text" if self.config.insecure else "mutual TLS", self.config.data_dir)
        return self.port

    async def stop(self) -> None:
        """Stop gracefully: NOT_SERVING, end streams (each acks what it applied),
        stop the server with the grace period, then sync every shadow."""
        grace = self.config.shutdown_grace_s
        await self.health.enter_graceful_shutdown()
        await self.registry.stop_streams(Unavailable("the sink is shutting down", hint="reconnect and resume "
                                                     "from durable_seq"), grace)
        await self.server.stop(grace)
        if self.config.stop_vms_on_exit:
            await self.destination.power_off_all()
        await self.registry.close()
        if self.metrics is not None:
            self.metrics.stop()
        log.info("sink stopped")

    def _serve_metrics(self) -> None:
        """Prometheus /metrics on ``metrics_listen``, from the stream meters."""
        host, port = host_port(self.config.metrics_listen, "metrics_listen")
        self.metrics = MetricsExporter(sink=self.meters.snapshot)
        try:
            server, _ = self.metrics.start_http(host, port)
        except OSError as e:
            raise Unavailable(f"cannot serve metrics on {self.config.metrics_listen}: {e}",
                              hint="check the 'metrics_listen' key; is another process on that port?") from None
        log.info("Prometheus metrics on %s", server.url)
