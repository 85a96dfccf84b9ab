"""``liftshift throttle``: replication rate limits and guest write caps.

``show`` prints the limits in force (global, per migration), whether each is
binding (traffic waited for it within the last second), the schedule, and
per VM the guest write cap, where it comes from and how long the guest's
writes were held back.  ``set`` changes one of them and prints the same.
"""

from __future__ import annotations

import argparse
import functools
import time

from rich.table import Table
from rich.text import Text

from liftshift.v1 import control_pb2 as cpb

from .client import Client
from .output import Output
from .units import arg_rate, fmt_duration, fmt_rate

_UNITS = (("GB", 10**9), ("GiB", 1 << 30), ("MB", 10**6), ("MiB", 1 << 20), ("KB", 10**3), ("KiB", 1 << 10))


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("throttle", parents=[common], help="replication rate limits and guest write caps",
                       description="Replication rate limits: one for the whole daemon (by hand, or from the "
                                   "[throttle] schedule) and optionally one per migration; live writes go first, "
                                   "the background copy gets what is left.  Guest write caps: hold a VM's writes "
                                   "to a rate and/or IOPS through its capture rings.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    sh = acts.add_parser("show", parents=[common], help="limits in force, schedule, guest caps")
    sh.set_defaults(run=show)
    s = acts.add_parser(
        "set", parents=[common], help="change a rate limit, the schedule, or a VM's guest cap",
        description="Replication (global unless --migration): --rate overrides the schedule by hand until "
                    "--clear (0 or 'unlimited': no limit); with --migration the limit is that migration's own "
                    "(--clear removes it; it goes when the migration finishes).  --schedule replaces the "
                    "schedule in the running daemon ('-' removes its windows; restart or SIGHUP brings back "
                    "the configured one).\n\n"
                    "Guest (--vm): cap the VM's writes, over all its disks, at --guest-rate and/or --guest-iops; "
                    "0 for both (or --clear) removes the cap.  The cap is kept across daemon restarts, wins over "
                    "a migration's --throttle, and is in force while a migration or seed holds the VM's rings.",
        epilog="examples:\n"
               "  liftshift throttle set --rate 100MB/s\n"
               "  liftshift throttle set --clear\n"
               "  liftshift throttle set --migration m-1a2b3c4d --rate 20MB/s\n"
               "  liftshift throttle set --schedule 'mon-fri 08:00-18:00 100MB/s; sat,sun 00:00-24:00 1GB/s'\n"
               "  liftshift throttle set --vm web-1 --guest-rate 20MB/s --guest-iops 2000\n"
               "  liftshift throttle set --vm web-1 --guest-rate 0 --guest-iops 0",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    rate = s.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=_arg_limit, default=None, metavar="RATE",
                      help="replication limit, e.g. 100MB/s, 50MiB/s; 0 or 'unlimited' for none")
    rate.add_argument("--clear", action="store_true",
                      help="remove the limit set by hand (global: the schedule rules again) or the VM's cap")
    s.add_argument("--migration", default="", metavar="MIGRATION", help="the limit of this migration only")
    s.add_argument("--schedule", default="", metavar="SPEC",
                   help="replace the schedule: 'DAYS HH:MM-HH:MM RATE; ...' (local time, 'default RATE' for "
                        "outside the windows), '-' to remove it")
    s.add_argument("--vm", default="", metavar="VM", help="cap this VM's guest writes instead")
    s.add_argument("--guest-rate", type=_arg_limit, default=None, metavar="RATE",
                   help="with --vm: bytes/s over all its disks (0: no rate cap)")
    s.add_argument("--guest-iops", type=_arg_count, default=None, metavar="N",
                   help="with --vm: write operations/s over all its disks (0: no IOPS cap)")
    s.set_defaults(run=set_, validate=functools.partial(validate, parser=s))


def _arg_limit(text: str) -> int:
    if text.strip().lower() in ("unlimited", "none", "off"):
        return 0
    return int(arg_rate(text))


def _arg_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of operations per second (0: no cap)")
    return n


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    guest = args.guest_rate is not None or args.guest_iops is not None
    if args.vm:
        other = [f for f, v in (("--rate", args.rate is not None), ("--migration", args.migration),
                                ("--schedule", args.schedule)) if v]
        if other:
            parser.error(f"{other[0]} is a replication limit; --vm caps a guest's writes (use two commands)")
        if not guest and not args.clear:
            parser.error("--vm needs --guest-rate and/or --guest-iops (0 for both, or --clear, removes the cap)")
        if guest and args.clear:
            parser.error("--clear removes the VM's cap: leave out --guest-rate/--guest-iops")
    elif guest:
        parser.error("--guest-rate and --guest-iops need --vm VM")
    elif args.rate is None and not args.clear and not args.schedule:
        parser.error("say what to change: --rate RATE, --clear, --schedule SPEC, or --vm VM")
    elif args.migration and args.schedule:
        parser.error("--schedule is global: leave out --migration")


async def show(args: argparse.Namespace, client: Client, out: Output) -> int:
    _render(out, await client.get_throttle())
    return 0


async def set_(args: argparse.Namespace, client: Client, out: Output) -> int:
    if args.vm:
        if args.clear:
            st = await client.set_guest_cap(args.vm)
        else:
            st = await client.set_guest_cap(args.vm, bytes_per_s=args.guest_rate or 0, iops=args.guest_iops or 0)
    else:
        st = await client.set_throttle(rate_bps=args.rate, clear=args.clear, migration_id=args.migration,
                                       schedule=args.schedule)
    _render(out, st)
    return 0


# ---- rendering -------------------------------------------------------------------------

def fmt_limit(bps: int) -> str:
    """A limit in the unit it was most likely given in (``20 MB/s``, ``50 MiB/s``); ``unlimited`` for 0."""
    if not bps:
        return "unlimited"
    for unit, factor in _UNITS:
        if bps % factor == 0:
            return f"{bps // factor} {unit}/s"
    return fmt_rate(bps)


def _yes(flag: bool) -> Text:
    return Text("yes", style="yellow") if flag else Text("no")


def _render(out: Output, st: cpb.ThrottleStatus) -> None:
    if out.json:
        out.emit(st)
        return
    con = out.console
    con.print(Text("Replication rate limits", style="bold"))
    t = Table(box=None, padding=(0, 2), header_style="bold")
    for col in ("SCOPE", "LIMIT", "EFFECTIVE", "SOURCE", "BINDING"):
        t.add_column(col, no_wrap=True)
    for lim in st.limits:
        t.add_row(lim.migration_id or "global", fmt_limit(lim.rate_bytes_per_s),
                  fmt_limit(lim.effective_bytes_per_s), lim.source, _yes(lim.binding))
    con.print(t)
    if st.schedule:
        when = ""
        if any(lim.source == "manual" for lim in st.limits if not lim.migration_id):
            when = " (not in force: a rate set by hand overrides it until --clear)"
        elif st.next_change_at:
            when = f" (next change {time.strftime('%a %Y-%m-%d %H:%M', time.localtime(st.next_change_at))})"
        con.print(Text(f"Schedule: {st.schedule}{when}"), soft_wrap=True)
    else:
        con.print(Text("Schedule: none"))
    if not st.guests:
        con.print(Text("Guest write caps: none"))
        return
    con.print(Text("Guest write caps", style="bold"))
    g = Table(box=None, padding=(0, 2), header_style="bold")
    for col in ("VM", "RATE", "IOPS", "SOURCE", "THROTTLED", "BINDING"):
        g.add_column(col, no_wrap=True)
    for c in st.guests:
        g.add_row(c.vm, fmt_limit(c.bytes_per_s) if c.bytes_per_s else "-", f"{c.iops:,}" if c.iops else "-",
                  c.source, fmt_duration(c.throttled_seconds), _yes(c.binding))
    con.print(g)


def summary(st: cpb.ThrottleStatus) -> str | None:
    """One line for ``liftshift status``: the limits in force and whether they bind (None: nothing limited)."""
    parts = []
    for lim in st.limits:
        if lim.rate_bytes_per_s:
            who = f"migration {lim.migration_id}" if lim.migration_id else f"replication ({lim.source})"
            parts.append(f"{who} {fmt_limit(lim.rate_bytes_per_s)}" + (" binding" if lim.binding else ""))
    for c in st.guests:
        cap = " ".join(x for x in (fmt_limit(c.bytes_per_s) if c.bytes_per_s else "",
                                   f"{c.iops:,} IOPS" if c.iops else "") if x)
        parts.append(f"guest {c.vm} {cap} ({c.source})" + (" binding" if c.binding else ""))
    return "Throttle: " + "; ".join(parts) if parts else None
