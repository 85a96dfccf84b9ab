"""Cutover downtime: does it stay flat as the disk grows?

Real daemon and sink processes on loopback (:class:`tests/simsite.Site`),
everything on tmpfs.  One sim VM with a 1 GiB disk, then one with an 8 GiB
disk, each a quarter full of random data and written by its guest at the
same rate (500 ops/s of 4 KiB, 30% reads, over the same 256 MiB working
set).  Once the VM has converged and every chunk has been verified once
ahead of cutover, the VM keeps running for STEADY_S seconds, then is cut
over by hand.  Downtime is the daemon's measurement, from the source VM's
stop to the destination VM powered on, verification included.  ROUNDS per
size, medians.

Targets (the issue): 8 GiB / 1 GiB downtime at most 1.2, and each downtime
at most 1.5 s + residual bytes / measured bandwidth, where the bandwidth is
the background copy rate of the same run.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from run import result  # noqa: E402
from simsite import MiB, SimVmDef, Site  # noqa: E402

from liftshift.v1 import control_pb2 as cpb  # noqa: E402

GiB = 1 << 30
ROUNDS = 5
STEADY_S = 3.0


def _once(size: int) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="bench-cutover-", dir="/dev/shm"))
    cleanups: list = []
    try:
        vm = SimVmDef("vm-1", [("disk0", size, size // 4)], rate_ops=500, working_set=256 * MiB)
        site = Site(root / "site", root / "rings", [vm], cleanups.append,
                    daemon_extra='preverify_bytes_per_s = "4GiB"\n')
        (root / "rings").mkdir()
        site.start()
        t0 = time.monotonic()
        mid = site.call("CreateMigration", cpb.CreateMigrationRequest(vms=["vm-1"], destination=site.destination,
                                                                      start=True)).id
        m = site.wait_state(mid, cpb.MIGRATION_STATE_CONVERGED, 600)
        copy_s = time.monotonic() - t0
        vd = m.vms[0].vdisks[0]
        bandwidth = vd.background_total_bytes / copy_s
        deadline = time.monotonic() + 300
        while not site.migration(mid).vms[0].vdisks[0].verified_once:  # every chunk proven once
            assert time.monotonic() < deadline, "the first verification pass did not finish"
            time.sleep(0.1)
        time.sleep(STEADY_S)
        got = site.call("Cutover", cpb.CutoverRequest(migration_id=mid, vm="vm-1"), timeout=600)
        (rep,) = got.reports
        assert rep.identical and not rep.error, rep
        return {"downtime": rep.downtime_seconds, "residual": rep.residual_bytes, "bandwidth": bandwidth,
                "verify": rep.verify_seconds, "hashed": rep.chunks_verified, "pre": rep.chunks_preverified,
                "stop": rep.stop_seconds, "drain": rep.drain_seconds, "power_on": rep.power_on_seconds}
    finally:
        for c in reversed(cleanups):
            try:
                c()
            except Exception:
                pass
        shutil.rmtree(root, ignore_errors=True)


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def run() -> list[dict]:
    rows = []
    by_size: dict[int, list[dict[str, float]]] = {}
    for _ in range(ROUNDS):
        for size in (1 * GiB, 8 * GiB):
            r = _once(size)
            print(f"   {size // GiB} GiB: downtime {r['downtime']:.3f}s (stop {r['stop']:.3f} drain {r['drain']:.3f} "
                  f"verify {r['verify']:.3f} power-on {r['power_on']:.3f}), hashed {r['hashed']:.0f} chunks, "
                  f"{r['pre']:.0f} proven earlier, residual {r['residual']:.0f} B", flush=True)
            by_size.setdefault(size, []).append(r)
    small, big = (_median(by_size[s], "downtime") for s in (1 * GiB, 8 * GiB))
    for size, label in ((1 * GiB, "1 GiB"), (8 * GiB, "8 GiB")):
        runs = by_size[size]
        d = _median(runs, "downtime")
        bound = 1.5 + _median(runs, "residual") / _median(runs, "bandwidth")
        ok = "met" if d <= bound else "TARGET MISSED"
        rows.append(result(f"cutover.downtime {label} [target <= {bound:.2f} s: {ok}]", "downtime", d, "s"))
        rows.append(result(f"cutover.verify {label} (chunks hashed at cutover: {_median(runs, 'hashed'):.0f})",
                           "verify", _median(runs, "verify"), "s"))
    ok = "met" if big / small <= 1.2 else "TARGET MISSED"
    rows.append(result(f"cutover.ratio 8 GiB / 1 GiB [target <= 1.2: {ok}]", "downtime", big, "s",
                       "1 GiB downtime", small))
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
