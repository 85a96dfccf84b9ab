"""Stopping a replicator (pause, abort) while a verification of its vdisk is
in flight: the caller gets a typed Unavailable, not the CancelledError that
grpc.aio raises for calls on a closed channel, and the source fd is closed
only after the hashing threads that read it are done."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from e2e import Pair

from liftshift.daemon.errors import Unavailable
from liftshift.daemon.settings import DaemonConfig, ReplicateSpec
from liftshift.daemon.sim import create_image
from liftshift.daemon.state import StateStore
from liftshift.daemon.vdisk import VdiskReplicator
from liftshift.iofilter import create_ring

MiB = 1 << 20


async def test_a_verification_in_flight_when_the_replicator_stops_ends_unavailable(tmp_path, request) -> None:
    pair = Pair(tmp_path, 64 * MiB, request.addfinalizer)
    create_image(pair.source, pair.size, pair.size, seed=3)
    create_ring(pair.ring, pair.size, capacity=pair.ring_capacity)
    sink = pair.start_sink()
    cfg = DaemonConfig(state_dir=tmp_path / "state")
    store = StateStore(cfg.state_dir / "daemon.db")
    request.addfinalizer(store.close)
    spec = ReplicateSpec(vdisk_id=pair.vdisk_id, ring=pair.ring, source=pair.source,
                         sink=f"127.0.0.1:{pair.sink_port}", migration_id="m-stop")
    r = VdiskReplicator(spec, cfg, store)
    r.start()
    for _ in range(1000):
        if r.stats.connected:
            break
        await asyncio.sleep(0.01)
    assert r.stats.connected
    fd = r.fd
    # The sink is stopped (SIGSTOP) so its answer cannot come before the replicator stops.
    ranges = [(off, MiB) for off in range(0, pair.size, MiB)]
    sink.proc.send_signal(signal.SIGSTOP)
    try:
        verifying = asyncio.ensure_future(r.mismatched(ranges, MiB))
        await asyncio.sleep(0.2)
        assert not verifying.done()
        await r.stop()
    finally:
        sink.proc.send_signal(signal.SIGCONT)
    with pytest.raises(Unavailable, match="channel was closed during the call"):
        await verifying
    assert not r._hashing  # every hashing thread ended before the fd was closed
    with pytest.raises(OSError):
        os.fstat(fd)
    # A verification asked for after the stop is refused the same way.
    with pytest.raises(Unavailable, match="replication has stopped"):
        await r.mismatched(ranges[:1], MiB)
