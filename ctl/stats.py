"""``liftshift stats``: what replication did over time, as a table, JSON, CSV, a PNG, or live.

The daemon keeps statistics per vdisk, VM, migration and for itself (1 s
rows for the last hour, minute rows for 30 days; see
:mod:`liftshift.daemon.stats`).  This command asks for a time range
(``--since``/``--until``: a duration ago like ``6h``, or a local date and
time like ``2024-05-01T08:00``) and a selection, then:

* by default prints one line per key: the latest background and live
  rates, lag, backlog and dirty bytes, with sparklines of the trend, and
  what the top key shipped in the range;
* ``--json`` / ``--csv`` print every row (:func:`~liftshift.daemon.stats.to_json`
  / :func:`~liftshift.daemon.stats.to_csv`, which parse back);
* ``--png FILE`` draws throughput, lag and backlog charts
  (:func:`liftshift.ctl.charts.render_png`, needs matplotlib);
* ``--watch`` redraws the table every ``--interval`` from the last minute of
  1 s rows (rich.live on a terminal; elsewhere one plain line per new row,
  or with ``--json`` one JSON object per row).

``--migration M`` selects the migration and, except for ``--png``, its VMs
and vdisks; without ``--since`` it starts when the migration was created.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from rich.live import Live
from rich.table import Table
from rich.text import Text

from liftshift.daemon.control_stats import row_from_pb
from liftshift.daemon.errors import Unavailable
from liftshift.daemon.stats import METRICS, Row, integrate, to_csv, to_json

from . import charts
from .client import Client
from .output import Output, clock
from .units import arg_duration, arg_when, fmt_bytes, fmt_duration, fmt_rate

DEFAULT_SINCE = 15 * 60.0
WATCH_WINDOW = 60.0  # seconds of 1 s rows a --watch keeps on screen
RECONNECT_FOR = 60.0  # how long a --watch keeps trying to reach a daemon it lost
_SCOPE_ORDER = {"global": 0, "migration": 1, "vm": 2, "vdisk": 3}


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("stats", parents=[common], help="replication statistics over time (table, JSON, CSV, PNG, live)",
                       description="Replication statistics kept by the daemon: per vdisk, VM, migration and for the "
                                   "daemon, every second for the last hour and every minute for 30 days. By default "
                                   "one line per key with the latest rates, lag and backlog and sparklines of their "
                                   "trend.",
                       epilog="examples:\n  liftshift stats\n  liftshift stats --migration m-1a2b --since 6h\n"
                              "  liftshift stats --vdisk m-1a2b.web-1.disk0 --csv > disk0.csv\n"
                              "  liftshift stats --png migration.png --migration m-1a2b\n"
                              "  liftshift stats --watch --interval 2s\n\n"
                              f"metrics: {', '.join(METRICS)}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--since", type=arg_when, metavar="WHEN",
                   help="start of the range: a duration ago (90s, 15m, 6h, 3d) or a local date and time "
                        "(2024-05-01T08:00); default 15m, or when the --migration was created")
    p.add_argument("--until", type=arg_when, metavar="WHEN", help="end of the range (default: now)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--migration", metavar="MIGRATION", help="one migration (and its VMs and vdisks)")
    which.add_argument("--vm", metavar="VM", help="one VM (all its disks together)")
    which.add_argument("--vdisk", metavar="VDISK", help="one vdisk (its id, as in `liftshift migrate show`)")
    which.add_argument("--global", dest="global_only", action="store_true", help="the daemon's total only")
    p.add_argument("--metric", action="append", default=[], metavar="NAME",
                   help="only this metric (repeatable; see the list below)")
    p.add_argument("--resolution", choices=("auto", "1s", "1m"), default="auto",
                   help="1 s rows, minute rows, or auto (default: 1 s within the last hour, else minutes)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--csv", action="store_true", help="every row as CSV")
    mode.add_argument("--png", metavar="FILE", help="draw throughput, lag and backlog charts into FILE")
    mode.add_argument("--watch", "-w", action="store_true", help="live view, refreshed every --interval")
    p.add_argument("--interval", type=arg_duration, metavar="DURATION",
                   help="--watch refresh interval (default 1s)")
    p.set_defaults(run=run, validate=functools.partial(validate, parser=p))


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Usage errors the parser cannot express (exit 2)."""
    if args.csv and args.json:
        parser.error("--csv and --json are two formats: pick one")
    if args.watch and (args.since or args.until):
        parser.error("--watch shows the last minute as it goes; --since/--until do not apply")
    if args.interval is not None and not args.watch:
        parser.error("--interval applies to --watch")
    unknown = [m for m in args.metric if m not in METRICS]
    if unknown:
        parser.error(f"--metric {unknown[0]!r} is not a metric (known: {', '.join(METRICS)})")


# -- fetching ------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Which (scope, key) pairs to ask for; ``None`` scope and key: everything."""

    parts: tuple[tuple[str | None, str | None], ...]
    title: str
    created: float = 0.0  # a migration's creation time (the default start)


async def select(args: argparse.Namespace, client: Client, *, chart: bool = False) -> Selection:
    if args.vdisk:
        return Selection((("vdisk", args.vdisk),), f"vdisk {args.vdisk}")
    if args.vm:
        return Selection((("vm", args.vm),), f"VM {args.vm}")
    if args.global_only:
        return Selection((("global", ""),), "all migrations")
    if args.migration:
        m = await client.get_migration(args.migration)  # NotFound for an unknown id
        parts: list[tuple[str | None, str | None]] = [("migration", m.id)]
        if not chart:
            parts += [("vm", v.vm) for v in m.vms]
            parts += [("vdisk", d.vdisk_id) for v in m.vms for d in v.vdisks]
        return Selection(tuple(parts), f"migration {m.id}" + (f" ({m.name})" if m.name != m.id else ""),
                         m.created_at)
    if chart:
        return Selection((("global", ""),), "all migrations")
    return Selection(((None, None),), "statistics")


async def fetch(client: Client, sel: Selection, since: float, until: float, metrics: Sequence[str],
                resolution: str) -> list[Row]:
    rows: list[Row] = []
    for scope, key in sel.parts:
        resp = await client.get_stats(since, until, scope=scope or "", key=key or "", metrics=metrics,
                                      resolution="" if resolution == "auto" else resolution)
        rows += [row_from_pb(r) for r in resp.rows]
    rows.sort(key=lambda r: (r.t, _SCOPE_ORDER.get(r.scope, 9), r.key))
    return rows


def by_key(rows: Sequence[Row]) -> dict[tuple[str, str], list[Row]]:
    """Rows per (scope, key), global first, then migrations, VMs, vdisks."""
    out: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        out.setdefault((r.scope, r.key), []).append(r)
    return dict(sorted(out.items(), key=lambda kv: (_SCOPE_ORDER.get(kv[0][0], 9), kv[0][1])))


def label(scope: str, key: str, single: bool) -> str:
    if scope == "global":
        return "all migrations"
    return key if single else f"{scope} {key}"


def table(rows: Sequence[Row], title: str, columns: int = 200) -> Table:
    """The dashboard of ``rows``, its sparklines fitted into ``columns`` characters."""
    groups = by_key(rows)
    width = max(8, min(24, (columns - 110) // 2))
    single = len({s for s, _ in groups}) == 1
    return charts.dashboard({label(s, k, single): rs for (s, k), rs in groups.items()}, width=width, title=title)


# -- the command ------------------------------------------------------------------------


async def run(args: argparse.Namespace, client: Client, out: Output) -> int:
    if args.watch:
        return await watch(args, client, out, await select(args, client))
    sel = await select(args, client, chart=bool(args.png))
    now = time.time()
    since = args.since.resolve(now) if args.since else max(sel.created, now - 30 * 86400.0) if sel.created \
        else now - DEFAULT_SINCE
    until = args.until.resolve(now) if args.until else 0.0
    rows = await fetch(client, sel, since, until, args.metric, args.resolution)
    if args.png:
        path = charts.render_png(rows, args.png, title=f"liftshift: {sel.title}, {clock(since)} - "
                                                       f"{clock(until or now)}")
        if out.json:
            print(json.dumps({"png": str(path), "rows": len(rows)}), file=out.stdout, flush=True)
        else:
            out.line(f"Wrote {path}: {sel.title}, {clock(since)} - {clock(until or now)} ({len(rows)} rows)")
        return 0
    if out.json:
        out.line(to_json(rows))
        return 0
    if args.csv:
        out.stdout.write(to_csv(rows))
        out.stdout.flush()
        return 0
    if not rows:
        out.line(f"No statistics for {sel.title} between {clock(since)} and {clock(until or now)}.")
        return 0
    out.console.print(table(rows, f"{sel.title}, {clock(since)} - {clock(until or now)}", out.console.width))
    out.console.print(Text(summary(rows), style="dim"))
    return 0


def summary(rows: Sequence[Row]) -> str:
    """What the first key (global, or the migration) shipped in the range, and the rows' resolution."""
    (scope, key), first = next(iter(by_key(rows).items()))
    tot = integrate(first).get((scope, key), {})
    kinds = sorted({r.resolution for r in rows})
    res = " and ".join("1 s" if k == 1 else "1 min" for k in kinds)
    return (f"{label(scope, key, False)} in this range: background {fmt_bytes(tot.get('background_bps', 0.0))}, "
            f"live {fmt_bytes(tot.get('live_bps', 0.0))}, {tot.get('write_iops', 0.0):,.0f} guest writes, "
            f"resent {fmt_bytes(tot.get('resent_bps', 0.0))} ({res} rows)")


def plain(r: Row) -> str:
    """One row as a line for logs and pipes."""
    v = r.values
    return (f"{time.strftime('%H:%M:%S', time.localtime(r.t))} {label(r.scope, r.key, False)}: "
            f"background {fmt_rate(v.get('background_bps', 0.0))}, live {fmt_rate(v.get('live_bps', 0.0))}, "
            f"{v.get('write_iops', 0.0):.0f} writes/s, lag {fmt_duration(v.get('lag_s', -1.0))}, "
            f"backlog {fmt_bytes(v.get('backlog_bytes', 0.0))}")


async def watch(args: argparse.Namespace, client: Client, out: Output, sel: Selection) -> int:
    """Follow the statistics until Ctrl-C (a lost daemon is retried for RECONNECT_FOR seconds)."""
    recent: collections.deque[Row] = collections.deque()
    since = time.time() - WATCH_WINDOW
    live = Live(Text("waiting for statistics..."), console=out.console, refresh_per_second=4) \
        if out.is_terminal and not out.json else None
    lost: float | None = None
    try:
        if live is not None:
            live.start()
        while True:
            try:
                rows = await fetch(client, sel, since, 0.0, args.metric, "1s")
                lost = None
            except Unavailable as e:
                if lost is None:
                    lost = time.monotonic()
                    out.notice(f"{e.message}; retrying for up to {RECONNECT_FOR:.0f} s")
                elif time.monotonic() - lost > RECONNECT_FOR:
                    raise
                rows = []
            if rows:
                since = max(r.t for r in rows) + 1e-6
            for r in rows:
                recent.append(r)
                if live is None:
                    out.line(json.dumps(r.to_dict()) if out.json else plain(r))
            while recent and recent[0].t < since - WATCH_WINDOW:
                recent.popleft()
            if live is not None and recent:
                live.update(table(list(recent), f"{sel.title}, last {WATCH_WINDOW:.0f} s (Ctrl-C to stop)",
                                  out.console.width))
            await asyncio.sleep(args.interval or 1.0)
    finally:
        if live is not None:
            live.stop()
