"""Both daemons answer standard gRPC tooling: health checking and reflection."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from e2e import MiB, Pair
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


@pytest.mark.parametrize("which,service", [("daemon", "liftshift.v1.Control"), ("sink", "liftshift.v1.Replication")])
def test_health_and_reflection(shm_dir: Path, request: pytest.FixtureRequest, which: str, service: str) -> None:
    pair = Pair(shm_dir / which, 4 * MiB, request.addfinalizer)
    pair.prepare()
    proc = pair.start_sink() if which == "sink" else pair.start_daemon()
    with grpc.insecure_channel(proc.address) as ch:
        services = set(ProtoReflectionDescriptorDatabase(ch).get_services())
        assert {service, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
