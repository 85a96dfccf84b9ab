"""The Migration Estimator's model: pure functions from observed samples to predictions.

Design note
-----------
Input: per disk, one :class:`Sample` per interval (raw write bytes and ops,
distinct chunks dirtied in the interval, chunks dirtied for the first time
since the observation began).  Output: when each VM converges, how long its
cutover stops it, with a confidence range, sneakernet vs network, and how a
group should be scheduled.  No I/O, no clock: the same samples give the same
answer.  Notation: ``B`` usable bandwidth for the VM (link x share), ``c``
chunk size, ``A`` allocated bytes, ``theta`` the convergence threshold.

**Working-set curve.**  ``N(t)`` = cumulative ``new_chunks`` (distinct chunks
dirtied in ``[0, t]``); ``Dirt(t)`` = cumulative ``dirty_chunks`` (per-interval
distinct counts, phase-local "activity").  Both are interpolated linearly
between sample ends.  A curve measured from the start of the observation is
phase-biased (it started by day or by night), so it is normalised by its
activity and replayed at a *reference activity* ``A_ref``::

    D(h) = N(h) * A_ref * h / Dirt(h)                       h within the window W
    D(h) = A_ref * (N(W) * W / Dirt(W) + nu_late * (h - W))   h beyond W
    D(h) = min(N_1, touch_1 * h) * A_ref / a_1               h inside the first interval

``nu_late`` = new per dirtied chunk over the last quarter of the window: a
hot set that saturated early has ``nu_late ~ 0`` and is not extrapolated from
its steep start; a growing set keeps growing linearly.  Inside the first
interval every touched chunk (``max(bytes / c, ops)`` per second) is taken as
new (conservative).  ``D`` is capped at the disk's chunk count (saturation).

**Daily patterns.**  ``A_ref`` (and the raw write rate ``w`` the model uses)
is the whole window's mean when the window covers ``good_window_s`` (a full
day); for a shorter window it is the busiest stretch of
``min(1 h, W / 4)``: a short window cannot know whether it saw the busy or the
quiet part of the day, so it plans for the busiest part it saw.  Reported
``write_bps``/``write_iops`` are plain window means.

**Migration.**  Live writes ship as records while the ring keeps up and
degrade to distinct chunks when it overflows, so the live load is
``L(H) = min(w, D(H) c / H)`` over the horizon ``H`` = the migration's own
duration (rewrites within it coalesce), found as the fixed point ``T(H) = H``::

    background_s = A / (B - L)
    backlog X    = max(0, min(D(Tb) c, w Tb) - L Tb) + Xs   (front-loaded dirtying + steady queue)
    converge_s   = background_s + max(0, X - theta) / (B - L)   (= total_s)

**Steady state once converged** (``Xs`` backlog, ``steady_lag_s``): if
``w < B`` records queue as ~1 MiB frames: lag = ``F / (B - w) + rtt``,
``Xs = w F / (B - w)`` (Little).  If ``w >= B`` the bitmap coalesces: the
backlog sits where the data dirtied while it drains fits the link, the
smallest ``h*`` with ``D(h*) c <= B h*``: lag = ``h* + rtt``, ``Xs = B h*``.
A VM converges only if ``L < B`` *and* ``Xs <= theta``: a hot set bigger than
the threshold and rewritten faster than the link never gets its backlog under
the threshold, however well it coalesces over hours.

Verdicts: ``converges``; ``NOT CONVERGING: distinct dirty rate X at or above
usable bandwidth Y`` (over the copy's horizon, or over the threshold's drain
time for a hot set that is too big); ``write rate X too close to ...`` (ring
regime, backlog above the threshold).  Caveat: charging live writes at their
distinct rate over the whole horizon assumes dirty ranges may wait to
coalesce while the copy runs; shipping them sooner costs more bandwidth.

**Cutover** = ``stop_s + drain + verify + power_on_s`` with drain =
``min(Xs, theta) / B + rtt`` and verify = ``D(stop_s + drain) c / verify_bps``
(chunks dirtied since the preverify pass last proved them).

**Throttle**: a guest cap of ``0.8 B`` makes any VM converge (ring regime,
``Xs = 4 F``); suggested only for VMs that do not converge.

**Confidence.**  The model is re-run with the workload (``w`` and ``D``)
scaled by ``1 - u`` and ``1 + u``, where
``u = min(1, 0.1 sqrt(good_window_s / min(W, good_window_s)) + CV / sqrt(max(1, W / 1 h)))``
and CV is the time-weighted coefficient of variation of the per-interval
activity: 10 % for a full day of a steady workload, ~50 % for one hour, wider
when intervals differ a lot.  Bandwidth is measured, not ranged.  The low end
may be finite when the point estimate does not converge (a lighter workload
would).

**Sneakernet**: ``ship_s = ship_days d + 2 A / seed_write_bps`` (write the
seed, import it); ``replay_bytes = D(ship_s) c``; ``replay_s`` = the same
convergence model with ``A = replay_bytes``.

**Group.**  Within a batch each VM gets its own live load plus an equal split
of what the batch's live loads leave (``B_i = L_i + (B - sum L) / k``);
a batch lasts ``max converge_s + sum cutover_downtime_s`` (cutovers one after
another).  Waves: first-fit decreasing by live load, each wave's summed live
load at most 70 % of the link (a VM above that alone gets its own wave).
Finished VMs do not hand their share on (conservative for all-at-once).
Group sneakernet: one shipment of every disk (``ship_days`` + ``2 sum A /
seed_write_bps``), then the replays scheduled like the network (the faster of
all at once and waves).
Times that never end are ``math.inf``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

FRAME_BYTES = 1 << 20  # a live frame; the unit the link queues in
THROTTLE_MARGIN = 0.8  # suggested guest cap, fraction of the usable bandwidth
WAVE_CAP = 0.7  # summed live load of one wave, fraction of the link
PEAK_STRETCH_S = 3600.0  # short windows plan for their busiest stretch of up to this long
H_MIN, H_MAX = 1.0, 10 * 365 * 86400.0  # horizons searched


@dataclass(frozen=True)
class Sample:
    """One interval of one disk."""

    t: float  # end of the interval, seconds since observation start
    seconds: float  # interval length
    write_bytes: int  # bytes the guest wrote in the interval (raw)
    write_ops: int  # write operations in the interval
    new_chunks: int  # chunks dirtied for the FIRST time since observation start
    dirty_chunks: int  # distinct chunks dirtied within this interval


@dataclass(frozen=True)
class DiskObservation:
    """One disk: its geometry and its samples (any order; sorted by ``t``)."""

    name: str
    size: int
    allocated: int
    chunk_size: int
    samples: tuple[Sample, ...]


@dataclass(frozen=True)
class VmObservation:
    name: str
    disks: tuple[DiskObservation, ...]


@dataclass(frozen=True)
class Link:
    bandwidth_bps: float  # usable bytes/s measured by a real transfer to the sink
    rtt_s: float = 0.001


@dataclass(frozen=True)
class Assumptions:
    """What the samples cannot tell; the daemon passes its config."""

    converge_threshold: int = 64 << 20  # backlog under which a VM has converged
    ship_days: float = 3.0  # sneakernet: days to ship a disk physically
    seed_write_bps: float = 500e6  # how fast a seed is written / imported (disk speed)
    verify_bps: float = 1.5e9  # hashing speed at cutover (both sides in parallel)
    stop_s: float = 5.0  # guest shutdown time at cutover
    power_on_s: float = 2.0
    good_window_s: float = 86400  # 24 h gives a good estimate
    # Automatic cutover first proves every chunk identical once, at up to this
    # rate (the daemon's preverify_bytes_per_s; 0: no such pass).  It reads
    # whole disks, holes included, after convergence: it adds to total_s.
    preverify_bps: float = 0.0
    # The replication path moves less than a raw transfer over the same link
    # (it reads the source, interleaves live frames and zero ranges, and the
    # sink syncs what it applies): the usable bandwidth is the probed one
    # times this.  0.8 is what tests/test_estimator_e2e.py measures over a
    # throttled loopback link (copy 18.7-19 MB/s where the probe saw 23.2-23.4);
    # the daemon passes its estimate_copy_efficiency.
    copy_efficiency: float = 1.0


@dataclass(frozen=True)
class Sneakernet:
    """Seed by shipping the disks, then replay what was dirtied meanwhile over the link."""

    ship_s: float
    replay_bytes: int
    replay_s: float
    total_s: float
    network_total_s: float
    faster: str  # "network" or "sneakernet"


@dataclass(frozen=True)
class VmEstimate:
    name: str
    window_s: float  # observed
    write_bps: float  # window mean
    write_iops: float  # window mean
    distinct_dirty_bps: float  # distinct chunks x chunk size per second over the migration's horizon
    live_bps: float  # what live writes put on the link: min(raw, distinct)
    background_s: float
    converge_s: float
    total_s: float  # converge_s + the pre-cutover verification pass: until cutover can start
    steady_lag_s: float
    converges: bool
    verdict: str
    throttle_to_converge_bps: float | None
    cutover_downtime_s: float
    drain_s: float
    verify_s: float
    uncertainty: float  # u: the workload was re-run at (1 - u) and (1 + u)
    total_low_s: float
    total_high_s: float
    downtime_low_s: float
    downtime_high_s: float
    sneakernet: Sneakernet


@dataclass(frozen=True)
class GroupEstimate:
    vms: tuple[VmEstimate, ...]  # each as if alone on the link
    all_at_once_s: float
    waves: list[list[str]]
    waves_s: float
    recommended: str  # "all at once" or "waves"
    network_total_s: float  # the recommended schedule
    sneakernet_ship_s: float
    sneakernet_total_s: float
    faster: str  # "network" or "sneakernet"


# -- curves ----------------------------------------------------------------------------


def _interp(ts: list[float], ys: list[float], x: float) -> float:
    if x >= ts[-1]:
        return ys[-1]
    i = bisect.bisect_right(ts, x)
    t0, t1 = ts[i - 1], ts[i]
    return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - t0) / (t1 - t0)


def _busiest(ts: list[float], cum: list[float], stretch: float) -> float:
    """Highest rate over any run of consecutive samples spanning at least ``stretch``."""
    best, i = cum[-1] / ts[-1], 0
    for j in range(1, len(ts)):
        while i + 1 < j and ts[j] - ts[i + 1] >= stretch:
            i += 1
        if ts[j] - ts[i] >= stretch:
            best = max(best, (cum[j] - cum[i]) / (ts[j] - ts[i]))
    return best


class _DiskCurve:
    """One disk's working-set curve ``D(h)`` and reference rates (see the design note)."""

    def __init__(self, d: DiskObservation, a: Assumptions) -> None:
        self.c = d.chunk_size
        self.total = -(-d.size // d.chunk_size) if d.chunk_size > 0 else 0
        self.allocated = d.allocated
        ss = sorted(d.samples, key=lambda s: s.t)
        t0 = ss[0].t - ss[0].seconds if ss else 0.0
        ts, new, dirt, raw, ops = [0.0], [0.0], [0.0], [0.0], [0.0]
        for s in ss:
            if s.t - t0 <= ts[-1]:
                continue  # a zero-length or repeated interval adds no time
            ts.append(s.t - t0)
            new.append(new[-1] + s.new_chunks)
            dirt.append(dirt[-1] + s.dirty_chunks)
            raw.append(raw[-1] + s.write_bytes)
            ops.append(ops[-1] + s.write_ops)
        self.ts, self.new, self.dirt = ts, new, dirt
        w = self.window = ts[-1]
        self.raw_total, self.ops_total = raw[-1], ops[-1]
        self.activity_cv = 0.0
        if w <= 0:
            self.a_ref = self.w_ref = 0.0
            return
        if w >= a.good_window_s:
            self.a_ref, self.w_ref = dirt[-1] / w, raw[-1] / w
        else:
            stretch = min(PEAK_STRETCH_S, w / 4)
            self.a_ref, self.w_ref = _busiest(ts, dirt, stretch), _busiest(ts, raw, stretch)
        mean = dirt[-1] / w
        if mean > 0:
            var = sum((dirt[i] - dirt[i - 1] - mean * (ts[i] - ts[i - 1])) ** 2 / (ts[i] - ts[i - 1])
                      for i in range(1, len(ts))) / w
            self.activity_cv = math.sqrt(var) / mean
        # the first interval: every touched chunk is new
        self.t1, self.n1, self.a1 = ts[1], new[1], dirt[1] / ts[1]
        touches = max((raw[1] / self.c) if self.c else 0.0, ops[1]) / ts[1]
        self.touch1 = max(touches, self.n1 / ts[1])
        # the late segment's novelty (new per dirtied chunk), for extrapolation
        late = max(w / 4, ts[-1] - ts[-2])
        d_late = dirt[-1] - _interp(ts, dirt, w - late)
        n_late = new[-1] - _interp(ts, new, w - late)
        self.nu_late = n_late / d_late if d_late > 0 else (new[-1] / dirt[-1] if dirt[-1] > 0 else 1.0)
        self.n_norm = new[-1] * w / dirt[-1] if dirt[-1] > 0 else w  # N(W) W / Dirt(W)

    def distinct(self, h: float) -> float:
        """Chunks dirtied over a horizon of ``h`` seconds, at the reference activity (uncapped)."""
        if self.window <= 0 or h <= 0 or self.a_ref <= 0:
            return 0.0
        if h < self.t1:
            if self.a1 <= 0:
                return self.a_ref * h
            return min(self.n1, self.touch1 * h) * self.a_ref / self.a1
        if h <= self.window:
            dirt = _interp(self.ts, self.dirt, h)
            if dirt <= 0:
                return self.a_ref * h
            return _interp(self.ts, self.new, h) * self.a_ref * h / dirt
        return self.a_ref * (self.n_norm + self.nu_late * (h - self.window))

    def dbytes(self, h: float, k: float) -> float:
        d = k * self.distinct(h)
        return (min(d, self.total) if self.total else d) * self.c


class _VmCurve:
    def __init__(self, vm: VmObservation, a: Assumptions) -> None:
        self.name = vm.name
        self.disks = [_DiskCurve(d, a) for d in vm.disks]
        self.allocated = sum(d.allocated for d in self.disks)
        self.size = sum(d.size for d in vm.disks)
        self.window = max((d.window for d in self.disks), default=0.0)
        self.w_ref = sum(d.w_ref for d in self.disks)
        self.write_bps = sum(d.raw_total / d.window for d in self.disks if d.window > 0)
        self.write_iops = sum(d.ops_total / d.window for d in self.disks if d.window > 0)
        u_window = 1.0 if self.window <= 0 else 0.1 * math.sqrt(a.good_window_s / min(self.window, a.good_window_s))
        weights = sum(d.dirt[-1] for d in self.disks)
        cv = sum(d.activity_cv * d.dirt[-1] for d in self.disks) / weights if weights > 0 else 0.0
        self.u = min(1.0, u_window + cv / math.sqrt(max(1.0, self.window / 3600)))

    def dbytes(self, h: float, k: float) -> float:
        return sum(d.dbytes(h, k) for d in self.disks)


# -- one run of the convergence model ---------------------------------------------------


@dataclass(frozen=True)
class _Run:
    converge_s: float
    background_s: float
    live_bps: float
    distinct_bps: float
    steady_lag_s: float
    converges: bool
    verdict: str
    downtime_s: float
    drain_s: float
    verify_s: float


def _mbps(bps: float) -> str:
    return f"{bps / 1e6:.1f} MB/s"


def _first(pred: Callable[[float], bool], lo: float = 1e-3, hi: float = H_MAX) -> float:
    """Smallest h in [lo, hi] with pred(h) (pred false then true), or inf; log bisection."""
    if pred(lo):
        return lo
    if not pred(hi):
        return math.inf
    for _ in range(64):
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if pred(mid) else (mid, hi)
    return hi


def _run(cv: _VmCurve, bw: float, a: Assumptions, rtt: float, allocated: float, k: float) -> _Run:
    theta = a.converge_threshold
    w = cv.w_ref * k

    def dist(h: float) -> float:
        return cv.dbytes(h, k)

    if bw <= 0:
        return _Run(math.inf, math.inf, 0.0, 0.0, math.inf, False, "NOT CONVERGING: no usable bandwidth",
                    math.inf, math.inf, 0.0)
    # steady state once converged
    if w < bw:
        lag = FRAME_BYTES / (bw - w)
        steady = w * lag
    else:
        lag = _first(lambda h: dist(h) <= bw * h)
        steady = bw * lag
    lag += rtt

    def load(h: float) -> float:
        h = max(h, H_MIN)
        return min(w, dist(h) / h)

    def total(h: float) -> float:
        live = load(h)
        if live >= bw:
            return math.inf
        tb = allocated / (bw - live)
        backlog = max(0.0, min(dist(tb), w * tb) - live * tb) + steady
        return tb + max(0.0, backlog - theta) / (bw - live)

    horizon = _first(lambda h: total(h) <= h, H_MIN)
    t = total(horizon) if math.isfinite(horizon) and steady <= theta else math.inf
    drain = min(steady, theta) / bw + rtt
    verify = dist(a.stop_s + drain) / a.verify_bps
    downtime = a.stop_s + drain + verify + a.power_on_s
    if math.isfinite(t):
        h = max(t, H_MIN)
        live = load(h)
        return _Run(t, allocated / (bw - live), live, dist(h) / h, lag, True, "converges", downtime, drain, verify)
    h = max(allocated / bw, cv.window, H_MIN)
    rate = dist(h) / h
    live = min(w, rate)
    verdict = f"NOT CONVERGING: distinct dirty rate {_mbps(rate)} at or above usable bandwidth {_mbps(bw)}"
    if live < bw and steady > theta and w >= bw:
        h = theta / bw
        rate = dist(h) / h
        verdict = (f"NOT CONVERGING: distinct dirty rate {_mbps(rate)} at or above usable bandwidth {_mbps(bw)}"
                   f" over the {h:.1f} s a {theta >> 20} MiB backlog takes to drain: rewrites coalesce over"
                   f" longer spans, but the backlog settles at {steady / 1e6:.0f} MB, above the threshold")
    elif live < bw and steady > theta:
        verdict = (f"NOT CONVERGING: write rate {_mbps(w)} too close to usable bandwidth {_mbps(bw)}"
                   f" (the steady backlog of {steady / 1e6:.0f} MB stays above the threshold)")
    elif live < bw:
        verdict = f"NOT CONVERGING within {H_MAX / 86400 / 365:.0f} years at usable bandwidth {_mbps(bw)}"
    if live >= bw:
        lag = math.inf  # no steady state: the backlog only grows
    background = allocated / (bw - live) if live < bw else math.inf
    return _Run(math.inf, background, live, rate, lag, False, verdict, downtime, drain, verify)


# -- estimates ----------------------------------------------------------------------------


def _estimate(cv: _VmCurve, link: Link, a: Assumptions, share: float) -> VmEstimate:
    bw = link.bandwidth_bps * share * a.copy_efficiency
    mid = _run(cv, bw, a, link.rtt_s, cv.allocated, 1.0)
    low = _run(cv, bw, a, link.rtt_s, cv.allocated, 1.0 - cv.u)
    high = _run(cv, bw, a, link.rtt_s, cv.allocated, 1.0 + cv.u)
    ship = a.ship_days * 86400 + 2 * cv.allocated / a.seed_write_bps
    replay_bytes = int(cv.dbytes(ship, 1.0))
    replay = _run(cv, bw, a, link.rtt_s, replay_bytes, 1.0).converge_s
    sneaker = ship + replay
    pre = cv.size / min(a.preverify_bps, a.verify_bps) if a.preverify_bps > 0 else 0.0
    return VmEstimate(
        name=cv.name, window_s=cv.window, write_bps=cv.write_bps, write_iops=cv.write_iops,
        distinct_dirty_bps=mid.distinct_bps, live_bps=mid.live_bps, background_s=mid.background_s,
        converge_s=mid.converge_s, total_s=mid.converge_s + pre, steady_lag_s=mid.steady_lag_s,
        converges=mid.converges, verdict=mid.verdict,
        throttle_to_converge_bps=None if mid.converges else THROTTLE_MARGIN * bw,
        cutover_downtime_s=mid.downtime_s, drain_s=mid.drain_s, verify_s=mid.verify_s, uncertainty=cv.u,
        total_low_s=min(low.converge_s, mid.converge_s) + pre,
        total_high_s=max(high.converge_s, mid.converge_s) + pre,
        downtime_low_s=min(low.downtime_s, mid.downtime_s), downtime_high_s=max(high.downtime_s, mid.downtime_s),
        sneakernet=Sneakernet(ship_s=ship, replay_bytes=replay_bytes, replay_s=replay, total_s=sneaker,
                              network_total_s=mid.converge_s,
                              faster="sneakernet" if sneaker < mid.converge_s else "network"),
    )


def estimate_vm(vm: VmObservation, link: Link, a: Assumptions, share: float = 1.0) -> VmEstimate:
    """Predict one VM's migration with ``share`` of the link (see the design note)."""
    return _estimate(_VmCurve(vm, a), link, a, share)


def _batch_s(cvs: Sequence[_VmCurve], loads: Sequence[float], link: Link, a: Assumptions,
             allocated: Sequence[float] | None = None) -> float:
    """VMs migrated together: live load plus an equal split of the rest each; cutovers in a row."""
    bw = link.bandwidth_bps * a.copy_efficiency
    spare = bw - sum(loads)
    if not cvs:
        return 0.0
    if spare <= 0:
        return math.inf
    longest = cutovers = 0.0
    for i, cv in enumerate(cvs):
        r = _run(cv, loads[i] + spare / len(cvs), a, link.rtt_s,
                 cv.allocated if allocated is None else allocated[i], 1.0)
        longest, cutovers = max(longest, r.converge_s), cutovers + r.downtime_s
    return longest + cutovers


def _pack(names: list[str], loads: dict[str, float], sizes: dict[str, float], cap: float) -> list[list[str]]:
    """First-fit decreasing by load (then size, then name) into waves of summed load <= cap."""
    waves: list[list[str]] = []
    sums: list[float] = []
    for n in sorted(names, key=lambda n: (-loads[n], -sizes[n], n)):
        for i, s in enumerate(sums):
            if s + loads[n] <= cap:
                waves[i].append(n)
                sums[i] += loads[n]
                break
        else:
            waves.append([n])
            sums.append(loads[n])
    return waves


def estimate_group(vms: Sequence[VmObservation], link: Link, a: Assumptions) -> GroupEstimate:
    """Estimate each VM alone, then all at once vs in waves, and the group's sneakernet."""
    cvs = {vm.name: _VmCurve(vm, a) for vm in vms}
    ests = tuple(_estimate(cv, link, a, 1.0) for cv in cvs.values())
    loads = {e.name: e.live_bps for e in ests}
    names = list(cvs)
    waves = _pack(names, loads, {n: float(cv.allocated) for n, cv in cvs.items()},
                  WAVE_CAP * link.bandwidth_bps * a.copy_efficiency)

    def schedule(groups: list[list[str]], allocated: dict[str, float] | None = None) -> float:
        return sum(_batch_s([cvs[n] for n in g], [loads[n] for n in g], link, a,
                            None if allocated is None else [allocated[n] for n in g]) for g in groups)

    all_at_once = schedule([names])
    in_waves = schedule(waves)
    recommended = "waves" if in_waves < all_at_once else "all at once"
    network = min(all_at_once, in_waves)
    ship = a.ship_days * 86400 + 2 * sum(cv.allocated for cv in cvs.values()) / a.seed_write_bps
    replay = {n: cv.dbytes(ship, 1.0) for n, cv in cvs.items()}
    sneaker = ship + min(schedule([names], replay), schedule(waves, replay))
    return GroupEstimate(vms=ests, all_at_once_s=all_at_once, waves=waves, waves_s=in_waves, recommended=recommended,
                         network_total_s=network, sneakernet_ship_s=ship, sneakernet_total_s=sneaker,
                         faster="sneakernet" if sneaker < network else "network")
