"""Estimate mode: observe VMs' writes without shipping them, then predict the migration.

Design note
-----------
``liftshift estimate start VM... --destination SINK`` attaches capture to the
VMs (the platform's ordinary attach) and consumes their rings here instead of
replicating: every record is counted and released at once, nothing is sent.
Per disk and per interval (``interval_s``) a :class:`Sample` holds the write
bytes and operations, the distinct chunks (64 KiB, the ring's dirty unit)
dirtied in the interval, and how many of those were dirtied for the first
time since the observation began (the working-set growth curve that the
model extrapolates; raw write bytes would overstate rewrites).  Ranges that
overflowed into the ring's dirty bitmap count as dirty chunks too.

The usable bandwidth is measured by a real transfer: background-copy frames
of random data to a probe vdisk on the sink (``liftshift-bandwidth-probe``,
overwritten by every probe), bounded by ``probe_bytes`` and
``probe_seconds``, counted from the sink's durable acks.

Samples, the observation's record and each disk's "seen" bitmap are kept in
daemon.db, so a daemon restart resumes the observation (the window keeps
counting from the original start) and ``estimate show`` works at any time,
during and after the window.  The model itself is pure
(:mod:`.estimator_model`); this module only feeds it.

A VM can be in one observation at a time; starting a migration of a VM
ends its observation (the ring gets one consumer only) and keeps its samples.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import xxhash

from liftshift.iofilter import FLAG_CLOSE, RingConsumer
from liftshift.v1 import replication_pb2 as pb
from liftshift.v1 import replication_pb2_grpc

from . import channels, wire
from . import estimator_model as model
from .errors import FailedPrecondition, InvalidArgument, LiftshiftError, NotFound, Unavailable, from_rpc_error
from .platform import Platform
from .state import StateStore

log = logging.getLogger("liftshift.daemon.estimator")

CHUNK = 64 << 10
PROBE_VDISK = "liftshift-bandwidth-probe"
_POLL_S = 0.05
_PROBE_FRAME = 1 << 20
_PROBE_INFLIGHT = 16


@dataclass
class EstimateRec:
    """One observation (persisted as JSON)."""

    id: str
    vms: list[str]
    destination: str
    window_s: float
    interval_s: float
    started: float  # Unix time
    state: str = "observing"  # observing, done, stopped
    ended: float = 0.0
    bandwidth_bps: float = 0.0
    probe_bytes: int = 0
    probe_seconds: float = 0.0
    probe_error: str = ""
    disks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # vm -> [{name, size, allocated}]

    def observed_s(self, now: float | None = None) -> float:
        end = self.ended or (now if now is not None else time.time())
        return max(0.0, min(end - self.started, self.window_s))


class DiskSampler:
    """Counts one disk's ring records per interval (consumes and releases them)."""

    def __init__(self, ring: str, size: int, seen: bytearray | None = None) -> None:
        self.consumer = RingConsumer(ring)
        self.size = size
        self.chunks = (size + CHUNK - 1) // CHUNK
        self.seen = seen if seen is not None and len(seen) == self.chunks else bytearray(self.chunks)
        self._reset()

    def _reset(self) -> None:
        self.write_bytes = 0
        self.write_ops = 0
        self.dirty: set[int] = set()
        self.new = 0

    def _touch(self, offset: int, length: int) -> None:
        first, last = offset // CHUNK, min(self.chunks - 1, (offset + max(length, 1) - 1) // CHUNK)
        seen = self.seen
        for c in range(first, last + 1):
            self.dirty.add(c)
            if not seen[c]:
                seen[c] = 1
                self.new += 1

    def poll(self) -> None:
        """Count what the ring holds now, release it, and harvest overflowed ranges."""
        c = self.consumer
        while (batch := c.read_batch(4 << 20)) is not None:
            for r in batch.records():
                if r.flags & FLAG_CLOSE:
                    continue
                self.write_bytes += r.length
                self.write_ops += 1
                self._touch(r.offset, r.length)
            c.release(batch.end)
        for offset, length in c.take_dirty():
            self.write_bytes += length
            self.write_ops += 1
            self._touch(offset, length)

    def cut(self, t: float, seconds: float) -> model.Sample:
        """The interval's sample; counters start again."""
        s = model.Sample(t=t, seconds=seconds, write_bytes=self.write_bytes, write_ops=self.write_ops,
                         new_chunks=self.new, dirty_chunks=len(self.dirty))
        self._reset()
        return s

    def close(self) -> None:
        self.consumer.close()


class Estimates:
    """Every observation of this daemon (see the module's design note)."""

    def __init__(self, store: StateStore, platform: Platform, max_message: int = 16 << 20) -> None:
        self.store = store
        self.platform = platform
        self.max_message = max_message
        self.recs: dict[str, EstimateRec] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._samplers: dict[str, dict[tuple[str, str], DiskSampler]] = {}
        for body in store.load_estimates():
            rec = EstimateRec(**json.loads(body))
            self.recs[rec.id] = rec

    # -- lifecycle ------------------------------------------------------------

    async def resume(self) -> None:
        """Daemon start: observations still in their window go on."""
        for rec in self.recs.values():
            if rec.state == "observing":
                try:
                    await self._begin(rec)
                except LiftshiftError as e:
                    log.warning("estimate %s: cannot resume observing: %s", rec.id, e)

    async def stop_all(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        self._tasks.clear()

    def observing(self, vm: str) -> EstimateRec | None:
        return next((r for r in self.recs.values() if r.state == "observing" and vm in r.vms), None)

    async def release_vm(self, vm: str) -> None:
        """A migration takes over ``vm``'s rings: end the observation that holds them."""
        rec = self.observing(vm)
        if rec is not None:
            log.info("estimate %s: VM %s is being migrated: the observation ends here", rec.id, vm)
            await self.stop(rec.id)

    # -- commands -----------------------------------------------------------------

    async def start(self, vms: list[str], destination: str, window_s: float, interval_s: float,
                    probe_bytes: int, probe_seconds: float, bandwidth_bps: float = 0.0) -> EstimateRec:
        if not vms:
            raise InvalidArgument("an estimate needs at least one VM")
        if len(set(vms)) != len(vms):
            raise InvalidArgument("a VM is listed twice")
        if not 1 <= interval_s <= 3600:
            raise InvalidArgument(f"interval {interval_s:g} s must be between 1 s and 1 h")
        if not interval_s * 2 <= window_s <= 30 * 86400:
            raise InvalidArgument(f"window {window_s:g} s must be at least two intervals and at most 30 days")
        if probe_bytes < 0 or probe_seconds < 0 or bandwidth_bps < 0:
            raise InvalidArgument("probe size, probe time and bandwidth must not be negative")
        for vm in vms:
            await self.platform.preflight(vm)
            other = self.observing(vm)
            if other is not None:
                raise FailedPrecondition(f"VM {vm!r} is already observed by estimate {other.id}",
                                         hint=f"liftshift estimate stop {other.id}")
        rec = EstimateRec(id="e-" + secrets.token_hex(4), vms=list(vms), destination=destination,
                          window_s=window_s, interval_s=interval_s, started=time.time(), probe_bytes=probe_bytes,
                          probe_seconds=probe_seconds, bandwidth_bps=bandwidth_bps)
        if not bandwidth_bps:
            await self._probe(rec)  # fails (nothing recorded) when the sink does not answer at all
        self.recs[rec.id] = rec
        await self._begin(rec)
        self._save(rec)
        log.info("estimate %s: observing %s for %g s (bandwidth to %s: %.1f MB/s)", rec.id, ", ".join(vms),
                 window_s, destination, rec.bandwidth_bps / 1e6)
        return rec

    async def stop(self, eid: str) -> EstimateRec:
        rec = self.get(eid)
        if rec.state == "observing":
            rec.state, rec.ended = "stopped", time.time()
            self._save(rec)
        task = self._tasks.pop(rec.id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the loop's end
                pass
            self._close_samplers(rec.id)
            await self._detach(rec)
        return rec

    def get(self, eid: str = "") -> EstimateRec:
        if not eid:
            if not self.recs:
                raise NotFound("no estimate yet", hint="liftshift estimate start VM... --destination SINK")
            return max(self.recs.values(), key=lambda r: r.started)
        rec = self.recs.get(eid)
        if rec is None:
            raise NotFound(f"no estimate {eid!r}", hint=f"known: {', '.join(sorted(self.recs)) or 'none'}")
        return rec

    def observations(self, rec: EstimateRec) -> list[model.VmObservation]:
        """What was observed so far, as the model's input."""
        rows = self.store.estimate_samples(rec.id)
        out = []
        for vm in rec.vms:
            disks = []
            for d in rec.disks.get(vm, []):
                samples = tuple(model.Sample(t=r[3], seconds=r[4], write_bytes=r[5], write_ops=r[6],
                                             new_chunks=r[7], dirty_chunks=r[8])
                                for r in rows if r[1] == vm and r[2] == d["name"])
                disks.append(model.DiskObservation(name=d["name"], size=d["size"], allocated=d["allocated"],
                                                   chunk_size=CHUNK, samples=samples))
            out.append(model.VmObservation(name=vm, disks=tuple(disks)))
        return out

    def report(self, rec: EstimateRec, assumptions: model.Assumptions) -> model.GroupEstimate:
        link = model.Link(bandwidth_bps=max(rec.bandwidth_bps, 1.0))
        return model.estimate_group(self.observations(rec), link, assumptions)

    # -- observing ------------------------------------------------------------

    async def _begin(self, rec: EstimateRec) -> None:
        samplers: dict[tuple[str, str], DiskSampler] = {}
        try:
            for vm in rec.vms:
                info = await self.platform.attach_capture(vm)
                rec.disks[vm] = [{"name": d.name, "size": d.size, "allocated": d.allocated} for d in info.disks]
                for d in info.disks:
                    if d.ring is None:
                        raise FailedPrecondition(f"VM {vm}: disk {d.name} has no ring after attaching capture")
                    seen = self.store.estimate_seen(rec.id, vm, d.name)
                    samplers[(vm, d.name)] = DiskSampler(str(d.ring), d.size,
                                                         bytearray(zlib.decompress(seen)) if seen else None)
        except BaseException:
            for s in samplers.values():
                s.close()
            raise
        self._samplers[rec.id] = samplers
        self._tasks[rec.id] = asyncio.create_task(self._observe(rec), name=f"estimate-{rec.id}")

    async def _observe(self, rec: EstimateRec) -> None:
        samplers = self._samplers[rec.id]
        last_cut = time.time()
        try:
            while True:
                for s in samplers.values():
                    s.poll()
                now = time.time()
                if now - last_cut >= rec.interval_s:
                    t = now - rec.started
                    rows = []
                    for (vm, disk), s in samplers.items():
                        sample = s.cut(t, now - last_cut)
                        rows.append((rec.id, vm, disk, *asdict(sample).values()))
                        self.store.save_estimate_seen(rec.id, vm, disk, zlib.compress(s.seen, 1))
                    self.store.add_estimate_samples(rows)
                    last_cut = now
                    if t >= rec.window_s:
                        rec.state, rec.ended = "done", now
                        self._save(rec)
                        log.info("estimate %s: window of %g s observed", rec.id, rec.window_s)
                        break
                await asyncio.sleep(_POLL_S)
        finally:
            self._close_samplers(rec.id)
            self._tasks.pop(rec.id, None)
        await self._detach(rec)

    async def _detach(self, rec: EstimateRec) -> None:
        """Nobody reads the rings any more: detach capture (a migration attaches afresh, with new rings,
        so its sink sees sequences from the start; an unread ring would also slow the guest once full)."""
        for vm in rec.vms:
            try:
                await self.platform.detach_capture(vm)
            except LiftshiftError as e:
                log.warning("estimate %s: detaching capture of VM %s: %s", rec.id, vm, e)

    def _close_samplers(self, eid: str) -> None:
        for s in self._samplers.pop(eid, {}).values():
            s.close()

    def _save(self, rec: EstimateRec) -> None:
        self.store.save_estimate(rec.id, json.dumps(asdict(rec)))

    # -- bandwidth probe ---------------------------------------------------------

    async def _probe(self, rec: EstimateRec) -> None:
        """Send up to probe_bytes of random data (at most probe_seconds) to the sink; bytes/s made durable."""
        size = max(_PROBE_FRAME, rec.probe_bytes // _PROBE_FRAME * _PROBE_FRAME)
        channel = channels.dial(rec.destination, self.max_message)
        try:
            stub = replication_pb2_grpc.ReplicationStub(channel)
            try:
                await stub.OpenVdisk(pb.OpenVdiskRequest(vdisk_id=PROBE_VDISK, size_bytes=size), timeout=30)
            except grpc.RpcError as e:
                err = from_rpc_error(e)
                raise type(err)(f"destination {rec.destination}: {err.message}",
                                hint=err.hint or "check the sink's address and that it runs") from None
            data = [os.urandom(_PROBE_FRAME) for _ in range(4)]
            digests = [xxhash.xxh3_64_intdigest(d) for d in data]
            call = wire.replicate_call(channel)
            await call.write(wire.encode(pb.Frame(frame_no=1, hello=pb.Hello(vdisk_id=PROBE_VDISK))))
            t0 = time.monotonic()
            sent = durable = 0
            frame = 1
            deadline = t0 + rec.probe_seconds

            async def acks() -> None:
                nonlocal durable
                async for ack in call:
                    durable = max(durable, ack.durable_frame)

            reader = asyncio.create_task(acks())
            try:
                while sent < size // _PROBE_FRAME and time.monotonic() < deadline:
                    while sent - max(0, durable - 1) >= _PROBE_INFLIGHT and not reader.done():
                        await asyncio.sleep(0.001)
                    if reader.done():
                        break
                    frame += 1
                    i = sent % len(data)
                    await call.write(wire.chunk_frame(frame, sent * _PROBE_FRAME, _PROBE_FRAME, data[i], False,
                                                      digests[i], pb.CHUNK_KIND_BACKGROUND))
                    sent += 1
                await call.done_writing()
                await asyncio.wait_for(reader, max(5.0, rec.probe_seconds))
            finally:
                reader.cancel()
            seconds = time.monotonic() - t0
            moved = max(0, durable - 1) * _PROBE_FRAME
            if moved == 0:
                raise Unavailable(f"the bandwidth probe to {rec.destination} moved no data in {seconds:.1f} s")
            rec.bandwidth_bps = moved / seconds
            log.info("estimate %s: probe moved %d bytes to %s in %.2f s: %.1f MB/s", rec.id, moved, rec.destination,
                     seconds, rec.bandwidth_bps / 1e6)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        finally:
            await channel.close()
