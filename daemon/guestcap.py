"""Guest write caps: holding a VM's writes to a rate through its rings.

Design note
-----------
The IO filter admits every guest write through the ring's control words
``throttle_bps`` / ``throttle_iops`` (a GCRA virtual clock per ring, see
:mod:`liftshift.iofilter.ring`); whoever holds a VM's rings writes them.  Two
things want a value there:

* the *converging* throttle: a migration's ``--throttle`` while the VM is
  syncing (:meth:`Migrations._throttle`, lifted when the VM converges);
* a cap *set by hand* (``liftshift throttle set --vm``), which wins over the
  converging throttle for as long as it exists.

A cap set by hand is a VM's total: it is split evenly over the VM's disks
(each ring has its own clock).  It is stored in daemon.db, so it survives a
restart, and written into the VM's rings whenever a migration's replicators
(through :attr:`Migrations.guest_cap`) or a seed's trackers (every
:data:`SAMPLE_S`) hold them; while nobody holds them the cap waits.  A
cutover lifts every cap: the source is being stopped.

The rings count the time writes were held back (``throttled_ns``), so status
reports it per VM; a cap is *binding* when that count grew within the last
:data:`BINDING_S` seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from liftshift.iofilter import RingConsumer

from .lifecycle import FINAL, State
from .state import StateStore

if TYPE_CHECKING:
    from .migrations import Migrations
    from .seed import Seeds

log = logging.getLogger("liftshift.daemon.guestcap")

SAMPLE_S = 1.0  # how often throttled time is sampled and seed-held rings are brought up to date
BINDING_S = 2.0  # a cap whose ring held writes back this recently is binding
_PREFIX = "vm/"


@dataclass(frozen=True)
class Cap:
    """A VM's guest write cap (0 in a field: no cap on that)."""

    bytes_per_s: int
    iops: int

    def per_disk(self, disks: int) -> tuple[int, int]:
        """(bytes/s, IOPS) for each of ``disks`` rings: the cap split evenly, rounded up."""
        n = max(1, disks)
        return -(-self.bytes_per_s // n), -(-self.iops // n)


@dataclass(frozen=True)
class CapStatus:
    """One VM's cap as status shows it."""

    vm: str
    bytes_per_s: int  # over the whole VM; 0 = none
    iops: int
    source: str  # "manual", "converging" or "" (a manual cap of a VM whose rings nobody holds yet: "manual")
    throttled_s: float  # seconds the VM's writes were held back (its current rings, since capture began)
    binding: bool
    held: bool  # a replicator or seed tracker holds the VM's rings, so the cap is in force


class GuestCaps:
    """Caps set by hand, persisted, and written into the rings that are held."""

    def __init__(self, store: StateStore, migrations: Migrations | None = None, seeds: Seeds | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.migrations = migrations
        self.seeds = seeds
        self._clock = clock
        self.manual: dict[str, Cap] = {}
        for key, body in store.load_throttles(_PREFIX).items():
            d = json.loads(body)
            self.manual[key.removeprefix(_PREFIX)] = Cap(int(d["bytes_per_s"]), int(d["iops"]))
        self._seen: dict[str, tuple[int, float]] = {}  # vm -> (throttled ns, when it last grew)
        self._task: asyncio.Task[None] | None = None

    # -- the hook Migrations calls -------------------------------------------------

    def per_disk(self, vm: str, disks: int) -> tuple[int, int] | None:
        """The manual cap of ``vm`` per disk, or None (then the converging throttle applies)."""
        cap = self.manual.get(vm)
        return None if cap is None else cap.per_disk(disks)

    # -- changes -----------------------------------------------------------------

    def set(self, vm: str, cap: Cap | None) -> None:
        """Set (or with None / all zeros, remove) ``vm``'s manual cap and write it into its rings now."""
        if cap is not None and not (cap.bytes_per_s or cap.iops):
            cap = None
        key = _PREFIX + vm
        if cap is None:
            self.store.save_throttle(key, None)
            self.manual.pop(vm, None)
            log.info("guest write cap of VM %s removed", vm)
        else:
            self.store.save_throttle(key, json.dumps({"bytes_per_s": cap.bytes_per_s, "iops": cap.iops}))
            self.manual[vm] = cap
            log.info("guest write cap of VM %s: %d bytes/s, %d IOPS", vm, cap.bytes_per_s, cap.iops)
        self.apply(vm)

    def apply(self, vm: str) -> None:
        """Write ``vm``'s cap (or, without one, what the migration wants) into the rings held now."""
        if self.migrations is not None and self.migrations.migration_of(vm) is not None:
            self.migrations.rethrottle(vm)
            return
        rings = self._seed_rings(vm)
        if rings:
            bps, iops = self.per_disk(vm, len(rings)) or (0, 0)
            for c in rings:
                words = c.counters()
                if (words["throttle_bps"], words["throttle_iops"]) != (bps, iops):
                    c.set_control(throttle_bps=bps, throttle_iops=iops)

    # -- the rings ---------------------------------------------------------------

    def _seed_rings(self, vm: str) -> list[RingConsumer]:
        seeds = self.seeds
        rec = seeds.tracking(vm) if seeds is not None else None
        if seeds is None or rec is None:
            return []
        return [t.consumer for t in seeds.trackers.get(rec.id, {}).values()]

    def rings(self, vm: str) -> list[RingConsumer]:
        """The rings of ``vm`` held now by a migration's replicators or a seed's trackers."""
        mig = self.migrations
        m = mig.migration_of(vm) if mig is not None else None
        if mig is not None and m is not None:
            out = []
            for v in m.vms:
                if v.vm == vm and v.state is not State.PAUSED:
                    out += [r.consumer for d in v.disks if (r := mig.replicators.get(d.vdisk_id)) is not None]
            return out
        return self._seed_rings(vm)

    def _held_vms(self) -> list[str]:
        vms: list[str] = []
        if self.migrations is not None:
            vms += [v.vm for m in self.migrations.recs.values() if m.state not in FINAL for v in m.vms]
        if self.seeds is not None:
            vms += [r.vm for r in self.seeds.recs.values() if self.seeds.tracking(r.vm) is r]
        return vms

    # -- the loop and reporting ------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="guest-caps")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # a ring going away under us must not end the loop
                log.exception("sampling guest caps")
            await asyncio.sleep(SAMPLE_S)

    def sample(self) -> None:
        """Note whose writes were held back since last time; bring seed-held rings up to date."""
        now = self._clock()
        if self.seeds is not None:
            for vm in {r.vm for r in self.seeds.recs.values()}:
                if self._seed_rings(vm):
                    self.apply(vm)
        for vm in set(self._held_vms()):
            total = sum(c.counters()["throttled_ns"] for c in self.rings(vm))
            last = self._seen.get(vm)
            if last is None or total != last[0]:
                self._seen[vm] = (total, now if last is not None and total > last[0] else float("-inf"))

    def report(self) -> list[CapStatus]:
        """Every VM with a cap: set by hand, or a converging throttle in its rings now."""
        now = self._clock()
        out = []
        for vm in sorted(set(self.manual) | set(self._held_vms())):
            rings = self.rings(vm)
            words = [c.counters() for c in rings]
            cap = self.manual.get(vm)
            if cap is not None:
                bps, iops, source = cap.bytes_per_s, cap.iops, "manual"
            else:
                bps, iops = sum(w["throttle_bps"] for w in words), sum(w["throttle_iops"] for w in words)
                if not (bps or iops):
                    continue
                source = "converging"
            seen = self._seen.get(vm)
            binding = bool(rings) and seen is not None and now - seen[1] <= BINDING_S
            out.append(CapStatus(vm, bps, iops, source, sum(w["throttled_ns"] for w in words) / 1e9, binding,
                                 bool(rings)))
        return out
