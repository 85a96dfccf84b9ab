"""The contract every platform adapter passes (DESIGN.md "Platforms").

A test module binds it to one adapter by subclassing :class:`PlatformContract`
and providing the ``env`` fixture (a :class:`ContractEnv`): the adapter, a
running VM with at least one disk, a powered-off VM, a destination sink, and
a way to open the rings the adapter names.  The suite checks the promises
in :mod:`liftshift.daemon.platform` through the interface only, plus the
bytes the adapter leaves on disk.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from liftshift.daemon.errors import FailedPrecondition, NotFound
from liftshift.daemon.platform import Platform, Power, ShadowDisk
from liftshift.iofilter import FLAG_CLOSE, FLAG_WRITE, RingConsumer


@dataclass
class ContractEnv:
    """What the suite needs from a platform binding."""

    platform: Platform
    running_vm: str
    stopped_vm: str
    destination: str
    # Opens a shadow vdisk for each disk of a VM at the destination, so the
    # VM can be defined there; returns ShadowDisks.
    make_shadows: object
    # Waits until the running VM's guest is up and writing (a real guest takes
    # seconds to boot; only the tests that need its writes or its shutdown wait).
    guest_ready: Callable[[], Awaitable[None]] | None = None

    async def running_guest(self) -> str:
        """The running VM, once its guest writes."""
        if self.guest_ready is not None:
            await self.guest_ready()
        return self.running_vm


async def open_shadows(platform: Platform, destination: str, vm: str, closed: bool) -> list[ShadowDisk]:
    """Open a shadow vdisk at the sink for each disk of ``vm`` (m-contract.<vm>.<disk>);
    with ``closed`` feed each one a write and the CLOSE barrier.  Bindings use it as make_shadows."""
    from framegen import live, record
    from sinkclient import channel, close, replicate

    from liftshift.v1 import replication_pb2 as pb
    from liftshift.v1 import replication_pb2_grpc

    info = await platform.vm(vm)
    ch = channel(destination)
    stub = replication_pb2_grpc.ReplicationStub(ch)
    out = []
    for d in info.disks:
        vid = f"m-contract.{vm}.{d.name}"
        await stub.OpenVdisk(pb.OpenVdiskRequest(vdisk_id=vid, size_bytes=d.size, migration_id="m-contract"))
        if closed:
            batch = live([record(1, 0, b"x" * 512, flags=FLAG_WRITE), record(2, 0, flags=FLAG_CLOSE)], 1)
            acks = await replicate(stub, vid, [batch.frame, close(2)])
            assert acks[-1].closed
        out.append(ShadowDisk(d.name, vid))
    await ch.close()
    return out


def _records(ring: str, timeout: float = 10.0, until_close: bool = False) -> list:
    out = []
    deadline = time.monotonic() + timeout
    with RingConsumer(ring) as c:
        while time.monotonic() < deadline:
            recs = c.read()
            c.release(c.read_pos)
            out.extend(recs)
            if until_close and any(r.flags & FLAG_CLOSE for r in recs):
                break
            if not until_close and any(r.flags & FLAG_WRITE for r in out):
                break
            time.sleep(0.01)
    return out


class PlatformContract:
    """Tests every adapter must pass."""

    async def test_inventory_lists_vms_with_disks(self, env: ContractEnv) -> None:
        vms = {v.name: v for v in await env.platform.inventory()}
        assert env.running_vm in vms and env.stopped_vm in vms
        running = vms[env.running_vm]
        assert running.platform == env.platform.name
        assert running.power is Power.ON
        assert vms[env.stopped_vm].power is Power.OFF
        assert running.disks and all(d.size > 0 and 0 <= d.allocated <= d.size + 4096 for d in running.disks)
        assert not any(d.capture_attached for d in running.disks)
        one = await env.platform.vm(env.running_vm)
        assert (one.name, one.power, [(d.name, d.size, d.image) for d in one.disks]) == \
            (running.name, running.power, [(d.name, d.size, d.image) for d in running.disks])

    async def test_unknown_vm_is_not_found(self, env: ContractEnv) -> None:
        with pytest.raises(NotFound, match="no VM 'ghost'"):
            await env.platform.vm("ghost")
        with pytest.raises(NotFound):
            await env.platform.attach_capture("ghost")
        with pytest.raises(NotFound):
            await env.platform.stop_source("ghost")

    async def test_attach_captures_every_later_write_and_is_idempotent(self, env: ContractEnv) -> None:
        info = await env.platform.attach_capture(await env.running_guest())
        assert all(d.capture_attached and d.ring is not None for d in info.disks)
        again = await env.platform.attach_capture(env.running_vm)
        assert [d.ring for d in again.disks] == [d.ring for d in info.disks]
        recs = [r for d in info.disks for r in _records(str(d.ring))]
        assert any(r.flags & FLAG_WRITE for r in recs), "the guest's writes did not reach the ring"
        # Every captured write is in the image: the record's payload is what the image holds now
        # or was overwritten later by another captured write (checked at stop below).

    async def test_stop_ends_every_ring_with_close_and_leaves_disks(self, env: ContractEnv) -> None:
        info = await env.platform.attach_capture(await env.running_guest())
        images = {d.name: d.image for d in info.disks}
        await env.platform.stop_source(env.running_vm)
        await env.platform.stop_source(env.running_vm)  # idempotent
        after = await env.platform.vm(env.running_vm)
        assert after.power is Power.OFF
        for d in info.disks:
            recs = _records(str(d.ring), until_close=True)
            assert recs and recs[-1].flags & FLAG_CLOSE, f"ring of {d.name} does not end with CLOSE"
            # Every write after attach was captured: replaying the records in
            # order onto the image changes nothing.
            image = bytearray(images[d.name].read_bytes())
            replayed = bytearray(image)
            for r in recs:
                if r.flags & FLAG_WRITE:
                    replayed[r.offset : r.offset + r.length] = r.payload
            assert replayed == image, f"{d.name}: the image holds writes the ring did not capture"
            assert images[d.name].exists()

    async def test_powered_off_vm_gets_closed_rings(self, env: ContractEnv) -> None:
        info = await env.platform.attach_capture(env.stopped_vm)
        for d in info.disks:
            recs = _records(str(d.ring), until_close=True)
            assert [r.flags & FLAG_CLOSE for r in recs] == [FLAG_CLOSE]

    async def test_destination_power_on_needs_close(self, env: ContractEnv) -> None:
        vm = env.stopped_vm
        assert await env.platform.destination_power(vm, env.destination) is Power.NOT_CREATED
        shadows: list[ShadowDisk] = await env.make_shadows(vm, closed=False)  # type: ignore[operator]
        await env.platform.create_destination(vm, env.destination, "m-contract", shadows)
        await env.platform.create_destination(vm, env.destination, "m-contract", shadows)  # idempotent
        # Defined, not running (sim reports a never-started VM as not created, vCenter as off).
        assert await env.platform.destination_power(vm, env.destination) is not Power.ON
        with pytest.raises(FailedPrecondition, match="CLOSE"):
            await env.platform.power_on_destination(vm, env.destination)
        await env.make_shadows(vm, closed=True)  # type: ignore[operator]
        await env.platform.power_on_destination(vm, env.destination)
        await env.platform.power_on_destination(vm, env.destination)  # idempotent
        deadline = time.monotonic() + 10
        while await env.platform.destination_power(vm, env.destination) is not Power.ON:
            assert time.monotonic() < deadline, "destination VM did not come up"
            await asyncio.sleep(0.05)

    async def test_rollback_removes_destination_and_restarts_source(self, env: ContractEnv) -> None:
        vm = await env.running_guest()  # its stop is a guest shutdown
        shadows: list[ShadowDisk] = await env.make_shadows(vm, closed=True)  # type: ignore[operator]
        await env.platform.attach_capture(vm)
        await env.platform.stop_source(vm)
        await env.platform.create_destination(vm, env.destination, "m-contract", shadows)
        assert await env.platform.remove_destination(vm, env.destination, "m-contract") is True
        assert await env.platform.remove_destination(vm, env.destination, "m-contract") is False  # idempotent
        assert await env.platform.destination_power(vm, env.destination) is Power.NOT_CREATED
        await env.platform.start_source(vm)
        await env.platform.start_source(vm)  # idempotent
        assert (await env.platform.vm(vm)).power is Power.ON
