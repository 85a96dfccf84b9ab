"""``liftshift replications`` and ``liftshift verify``: the vdisk-level view, for low-level use."""

from __future__ import annotations

import argparse

from rich.table import Table
from rich.text import Text

from .client import Client
from .output import EXIT_FAILED, Output, copied, replication_label, yes_no
from .units import fmt_bytes, fmt_duration


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return n


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    r = sub.add_parser("replications", parents=[common], help="replication state of every vdisk (low level)",
                       description="Replication state of every vdisk the daemon ships: copy progress, live "
                                   "writes, lag and its percentiles, re-sent bytes, ring overflows.")
    r.set_defaults(run=replications)
    v = sub.add_parser("verify", parents=[common], help="compare a vdisk with its shadow (low level)",
                       description="Compare source and shadow by XXH3-128 per chunk, re-send what differs and "
                                   "compare again. Meaningful once the source has stopped writing. Exits 1 "
                                   "unless the vdisk was proven identical.")
    v.add_argument("vdisk_id", metavar="VDISK_ID", help="vdisk id (see `liftshift replications`)")
    v.add_argument("--max-rounds", type=_positive_int, default=3, metavar="N",
                   help="give up after this many compare/repair rounds (default 3)")
    v.set_defaults(run=verify)


async def replications(args: argparse.Namespace, client: Client, out: Output) -> int:
    resp = await client.list_replications()
    if out.json:
        out.emit(resp)
        return 0
    if not resp.vdisks:
        out.console.print("No vdisks are replicated.")
        return 0
    table = Table()
    table.add_column("VDISK ID", no_wrap=True, overflow="fold")
    table.add_column("SINK", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    table.add_column("CONN", no_wrap=True)
    for col in ("COPIED", "LIVE", "DIRTY", "LAG", "LAG p50 / p99", "RESENT", "OVERFLOWS"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("LAST ERROR")
    for d in resp.vdisks:
        table.add_row(d.vdisk_id, d.sink, replication_label(d.state), yes_no(d.connected),
                      copied(d.background_done_bytes, d.background_total_bytes),
                      f"{fmt_bytes(d.live_bytes)} ({d.live_records} writes)", fmt_bytes(d.dirty_bytes),
                      fmt_duration(d.lag_seconds),
                      f"{fmt_duration(d.lag_p50_seconds)} / {fmt_duration(d.lag_p99_seconds)}"
                      if d.lag_samples else "-",
                      fmt_bytes(d.resent_bytes), str(d.ring_overflows), Text(d.last_error, style="red"))
    out.console.print(table)
    return 0


async def verify(args: argparse.Namespace, client: Client, out: Output) -> int:
    resp = await client.verify_vdisk(args.vdisk_id, args.max_rounds)
    if out.json:
        out.emit(resp)
    else:
        verdict = Text("identical", style="bold green") if resp.identical else Text("NOT identical", style="bold red")
        out.console.print(Text.assemble(f"vdisk {resp.vdisk_id}: ", verdict))
        out.console.print(f"  {resp.chunks_compared} chunks compared, {resp.chunks_mismatched} mismatched, "
                          f"{resp.chunks_repaired} repaired in {resp.rounds} round(s), "
                          f"{fmt_duration(resp.seconds)}")
    if not resp.identical:
        out.fail("NotIdentical", f"vdisk {resp.vdisk_id} is not identical to its shadow after {resp.rounds} "
                 "round(s)", "retry with more --max-rounds once the source has stopped writing")
        return EXIT_FAILED
    return 0
