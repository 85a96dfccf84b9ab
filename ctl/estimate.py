"""``liftshift estimate``: observe VMs without migrating them, and predict the migration."""

from __future__ import annotations

import argparse

from rich.table import Table
from rich.text import Text

from liftshift.v1 import control_pb2 as cpb

from .client import Client
from .output import Output, clock
from .units import arg_duration, arg_rate, arg_size, fmt_bytes, fmt_duration, fmt_rate


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("estimate", parents=[common], help="predict a migration before doing it",
                       description="The Migration Estimator: watch VMs' writes for a while (nothing is shipped), "
                                   "measure the bandwidth to the destination with a real transfer, and predict the "
                                   "migration: time to copy and converge, steady lag, cutover downtime, whether it "
                                   "converges at all, waves for a group, and shipping a disk instead.")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = acts.add_parser("start", parents=[common], help="start observing VMs",
                        description="Attach capture to the VMs and count their writes per interval (write bytes, "
                                    "IOPS, distinct chunks newly dirtied); probe the bandwidth to the sink first.",
                        epilog="example: liftshift estimate start web-1 db-1 --destination sink.example:50052 "
                               "--window 24h")
    s.add_argument("vms", nargs="+", metavar="VM", help="VM names (see `liftshift inventory`)")
    s.add_argument("--destination", "--dest", required=True, metavar="HOST:PORT", help="the destination sink")
    s.add_argument("--window", type=arg_duration, default=0, metavar="DURATION",
                   help="how long to observe, e.g. 30m, 24h (default 24h: a full daily cycle)")
    s.add_argument("--interval", type=arg_duration, default=0, metavar="DURATION",
                   help="sample interval (default 10s)")
    s.add_argument("--probe-bytes", type=arg_size, default=0, metavar="SIZE",
                   help="most data the bandwidth probe sends (default 256MiB)")
    s.add_argument("--probe-time", type=arg_duration, default=0, metavar="DURATION",
                   help="longest the bandwidth probe runs (default 10s)")
    s.add_argument("--bandwidth", type=arg_rate, default=0, metavar="RATE",
                   help="use this usable bandwidth (e.g. 100MB/s) instead of probing")
    s.set_defaults(run=start)
    st = acts.add_parser("stop", parents=[common], help="end an observation early (its samples stay)")
    st.add_argument("estimate", nargs="?", default="", metavar="ESTIMATE", help="estimate id (default: the latest)")
    st.set_defaults(run=stop)
    sh = acts.add_parser("show", parents=[common], help="the prediction from what was observed so far",
                         description="Per VM and for the group: time to copy and converge, steady lag, verdict, "
                                     "cutover downtime, waves, the sneakernet alternative, with ranges that "
                                     "narrow as the observation window grows.")
    sh.add_argument("estimate", nargs="?", default="", metavar="ESTIMATE", help="estimate id (default: the latest)")
    sh.set_defaults(run=show)


def _estimate_line(e: cpb.Estimate) -> str:
    return (f"Estimate {e.id}: {', '.join(e.vms)} -> {e.destination}, {e.state}, observed "
            f"{fmt_duration(e.observed_seconds)} of {fmt_duration(e.window_seconds)} (since {clock(e.started_at)}); "
            f"usable bandwidth {fmt_rate(e.bandwidth_bytes_per_s)}")


async def start(args: argparse.Namespace, client: Client, out: Output) -> int:
    e = await client.start_estimate(args.vms, args.destination, window_s=args.window, interval_s=args.interval,
                                    probe_bytes=args.probe_bytes, probe_seconds=args.probe_time,
                                    bandwidth_bps=args.bandwidth)
    if out.json:
        out.emit(e)
    else:
        out.line(_estimate_line(e))
        out.line(f"See the prediction at any time: liftshift estimate show {e.id}")
    return 0


async def stop(args: argparse.Namespace, client: Client, out: Output) -> int:
    e = await client.stop_estimate(args.estimate)
    if out.json:
        out.emit(e)
    else:
        out.line(_estimate_line(e))
    return 0


def _span(r: cpb.Range) -> str:
    return f"{fmt_duration(r.estimate)} ({fmt_duration(r.low)} - {fmt_duration(r.high)})"


async def show(args: argparse.Namespace, client: Client, out: Output) -> int:
    rep = await client.get_estimate(args.estimate)
    if out.json:
        out.emit(rep)
        return 0
    con = out.console
    con.print(Text(_estimate_line(rep.estimate)))
    for note in rep.notes:
        con.print(Text(f"  note: {note}", style="yellow"))
    for v in rep.vms:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()
        verdict = Text(v.verdict, style="green" if v.converges else "bold red")
        if not v.converges and v.throttle_to_converge_bytes_per_s:
            verdict.append(f"; throttling guest writes to {fmt_rate(v.throttle_to_converge_bytes_per_s)} would "
                           "make it converge")
        for label, value in (
                ("VM", Text(v.vm, style="bold")),
                ("disks", Text(f"{fmt_bytes(v.size_bytes)}, {fmt_bytes(v.allocated_bytes)} allocated")),
                ("writes", Text(f"{fmt_rate(v.write_bytes_per_s)}, {v.write_iops:,.0f} IOPS; distinct dirty "
                                f"{fmt_rate(v.distinct_dirty_bytes_per_s)}")),
                ("background copy", Text(fmt_duration(v.background_seconds))),
                ("until cutover", Text(_span(v.total_seconds))),
                ("steady lag", Text(fmt_duration(v.steady_lag_seconds))),
                ("cutover downtime", Text(_span(v.cutover_downtime_seconds))),
                ("verdict", verdict)):
            grid.add_row(label, value)
        con.print(grid)
    con.print(Text("Group plan", style="bold"))
    con.print(Text(f"  all at once: {fmt_duration(rep.all_at_once_seconds)}"))
    con.print(Text(f"  in {len(rep.waves)} wave(s) [{' | '.join(rep.waves)}]: {fmt_duration(rep.waves_seconds)}"))
    con.print(Text(f"  recommended: {rep.recommended}"))
    s = rep.sneakernet
    con.print(Text("Sneakernet (seeded migration)", style="bold"))
    con.print(Text(f"  ship {fmt_duration(s.ship_seconds)}, then replay {fmt_bytes(s.replay_bytes)} dirtied "
                   f"meanwhile ({fmt_duration(s.replay_seconds)}): {fmt_duration(s.total_seconds)} in all, against "
                   f"{fmt_duration(s.network_total_seconds)} over the network: {s.faster} is faster"))
    return 0
