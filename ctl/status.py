"""``liftshift status``: where migrations stand, once or live.

Without ``--watch`` it prints one table: each migration, its VMs and their
vdisks with copy progress, live bytes, backlog, bandwidth, ETA and lag.
With ``--watch`` it follows the daemon's Watch stream until the watched
migration is completed, aborted or rolled back (or Ctrl-C), in one of three
forms:

* on a terminal, the same table redrawn live with progress bars, and a line
  above it for every state change, cutover step and error;
* not on a terminal (a log, a pipe), plain lines: one per state change,
  cutover step or error, and a compact progress line per VM at most every
  ``PROGRESS_EVERY`` seconds;
* with ``--json``, every event as one JSON object per line.

A watch survives a daemon restart: it reconnects for up to a minute.

A watched migration that ends aborted or rolled back makes the command fail
(exit 1): its VMs did not move.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable

from google.protobuf.message import Message
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from liftshift.daemon.errors import LiftshiftError, Unavailable
from liftshift.v1 import control_pb2 as cpb

from .client import Client
from .output import (
    EXIT_FAILED,
    FINAL_STATES,
    Output,
    background,
    copied,
    event_label,
    replication_label,
    state_label,
    state_text,
    vm_vdisks,
)
from .throttle import summary as throttle_summary
from .units import fmt_bytes, fmt_duration, fmt_rate

PROGRESS_EVERY = 2.0
# How long a watch keeps trying to reach a daemon it lost.
RECONNECT_FOR = 60.0


def _milliseconds(text: str) -> int:
    try:
        ms = int(text)
    except ValueError:
        ms = 0
    if not 0 < ms < 1 << 32:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of milliseconds")
    return ms


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("status", parents=[common], help="progress of migrations (once, or live with --watch)",
                       description="Migrations, their VMs and vdisks: copy progress, live (foreground) bytes,\n"
                                   "backlog, bandwidth, ETA, lag and state.\n\n"
                                   "With --watch, follow them live until the migration is completed, aborted or\n"
                                   "rolled back (exit 1 if aborted or rolled back), or Ctrl-C (exit 0). When stdout\n"
                                   "is not a terminal, print one line per state change, cutover step or error and a\n"
                                   "progress line per VM at most every 2 s; with --json, one JSON object per event.\n"
                                   "A watch survives a daemon restart (it reconnects for up to 60 s).",
                       epilog="examples:\n  liftshift status\n  liftshift status m-1a2b --watch\n"
                              "  liftshift status m-1a2b --watch --json | jq .kind",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("migration", nargs="?", default="", metavar="MIGRATION",
                   help="one migration (default: every unfinished one)")
    p.add_argument("--watch", "-w", action="store_true", help="follow progress live")
    p.add_argument("--interval", type=_milliseconds, default=500, metavar="MS",
                   help="progress events at most this often, in milliseconds (default 500)")
    p.set_defaults(run=run)


async def run(args: argparse.Namespace, client: Client, out: Output) -> int:
    one: cpb.Migration | None = None
    answer: Message
    if args.migration:
        answer = one = await client.get_migration(args.migration)
        migrations = {one.id: one}
    else:
        answer = listed = await client.list_migrations()
        migrations = {m.id: m for m in listed.migrations}
    if not args.watch:
        if out.json:
            out.emit(answer)
        elif not migrations:
            out.console.print("No unfinished migrations.")
        else:
            out.console.print(progress_table(migrations.values()))
        if not out.json:
            await _throttle_line(client, out)
        return 0
    if one is not None and one.state in FINAL_STATES:
        return _already_ended(out, one)
    return await watch(args.migration, args.interval, client, out, migrations)


async def _throttle_line(client: Client, out: Output) -> None:
    """The rate limits and guest caps in force, if any (a daemon without throttling: nothing)."""
    try:
        line = throttle_summary(await client.get_throttle())
    except LiftshiftError:
        return
    if line:
        out.line(line)


def _already_ended(out: Output, m: cpb.Migration) -> int:
    """Nothing more will happen: say how it ended, in the watch's own form."""
    ev = finished_event(m)
    if out.json:
        out.emit_line(ev)
    elif out.is_terminal:
        out.console.print(progress_table([m]))
    else:
        out.line(event_line(ev))
    return _ending(out, m)


async def watch(mid: str, interval_ms: int, client: Client, out: Output, migrations: dict[str, cpb.Migration]) -> int:
    """Follow the Watch stream until ``mid`` ends (or until Ctrl-C for "")."""
    events = follow(client, mid, interval_ms, out.notice)
    if out.json or not out.is_terminal:
        plain = PlainLines(out.line)
        async for ev in events:
            if out.json:
                out.emit_line(ev)
            else:
                plain.event(ev)
            if mid and _ended(ev, mid):
                return _ending(out, ev.migration)
        return 0
    out.console.print(Text.assemble("Watching ", ("migration " + mid if mid else "every migration", "bold"),
                                    " (Ctrl-C to stop)", style="dim"))
    with Live(progress_table(migrations.values()), console=out.console, refresh_per_second=4) as live:
        async for ev in events:
            if ev.HasField("migration"):
                migrations[ev.migration.id or ev.migration_id] = ev.migration
            if ev.kind != cpb.EVENT_KIND_PROGRESS:
                live.console.print(event_text(ev))
            live.update(progress_table(migrations.values()))
            if mid and _ended(ev, mid):
                return _ending(out, ev.migration)
    return 0


async def follow(client: Client, mid: str, interval_ms: int,
                 notice: Callable[[str], None]) -> AsyncIterator[cpb.MigrationEvent]:
    """The Watch stream, re-opened while the daemon cannot be reached.

    A daemon restart resumes every migration, so a watch outlives one: for
    up to ``RECONNECT_FOR`` seconds it retries (with backoff), then gives up
    with the last error.  With an id it ends after the event that shows the
    migration completed, aborted or rolled back (the caller stops there).
    """
    lost_since: float | None = None
    last: Unavailable | None = None
    delay = 0.25
    while True:
        try:
            if lost_since is not None and mid:
                m = await client.get_migration(mid)
                if m.state in FINAL_STATES:  # it ended while we were away
                    yield finished_event(m)
                    return
            async for ev in client.watch(mid, interval_ms):
                if lost_since is not None:
                    notice(f"reconnected to the daemon at {client.address}")
                    lost_since, last, delay = None, None, 0.25
                yield ev
            if not mid:
                return
            why = f"the daemon at {client.address} ended the watch of {mid} before it finished"
        except Unavailable as e:
            last, why = e, e.message
        now = time.monotonic()
        if lost_since is None:
            lost_since = now
            notice(f"{why}; reconnecting for up to {RECONNECT_FOR:.0f} s")
        elif now - lost_since > RECONNECT_FOR:
            raise last or Unavailable(why, hint=f"see `liftshift migrate show {mid}`")
        await asyncio.sleep(delay)
        delay = min(2 * delay, 5.0)


def finished_event(m: cpb.Migration) -> cpb.MigrationEvent:
    """A state-changed event for a migration found already in a final state."""
    return cpb.MigrationEvent(time=time.time(), migration_id=m.id, kind=cpb.EVENT_KIND_STATE_CHANGED,
                              state=m.state, message=f"already {state_label(m.state)}", migration=m)


def _ended(ev: cpb.MigrationEvent, mid: str) -> bool:
    return ev.HasField("migration") and ev.migration.id == mid and ev.migration.state in FINAL_STATES


def _ending(out: Output, m: cpb.Migration) -> int:
    """Exit code of a watch that saw ``m`` end: 1 unless its VMs moved."""
    if m.state == cpb.MIGRATION_STATE_ABORTED:
        out.fail("Aborted", f"migration {m.id} was aborted", None)
        return EXIT_FAILED
    if m.state == cpb.MIGRATION_STATE_ROLLED_BACK:
        out.fail("RolledBack", f"migration {m.id} was rolled back: its source VMs run again", None)
        return EXIT_FAILED
    return 0


# ---- the table ----------------------------------------------------------------

def _bar(done: int, total: int) -> ProgressBar:
    return ProgressBar(total=max(total, 1), completed=done if total else 1, width=20)


def progress_table(migrations: Iterable[cpb.Migration]) -> Table:
    """Migrations, VMs and vdisks, one row each, with progress bars."""
    table = Table(box=None, padding=(0, 1), header_style="bold")
    table.add_column("MIGRATION / VM / DISK", no_wrap=True, overflow="fold")
    table.add_column("STATE", no_wrap=True)
    table.add_column("BACKGROUND COPY", no_wrap=True)
    table.add_column("", justify="right", no_wrap=True)
    for col in ("LIVE", "BACKLOG", "BANDWIDTH", "ETA", "LAG"):
        table.add_column(col, justify="right", no_wrap=True)
    for m in migrations:
        done, total = background(vm_vdisks(m))
        label = Text(m.id, style="bold")
        if m.name and m.name != m.id:
            label.append(f" ({m.name})", style="")
        table.add_row(label, state_text(m.state), _bar(done, total), copied(done, total),
                      fmt_bytes(sum(d.live_bytes for d in vm_vdisks(m))),
                      fmt_bytes(sum(vm.backlog_bytes for vm in m.vms)), fmt_rate(m.bandwidth_bytes_per_s),
                      fmt_duration(m.eta_seconds), "")
        for vm in m.vms:
            vdone, vtotal = background(vm.vdisks)
            table.add_row(f"  {vm.vm}", state_text(vm.state), _bar(vdone, vtotal), copied(vdone, vtotal),
                          fmt_bytes(sum(d.live_bytes for d in vm.vdisks)), fmt_bytes(vm.backlog_bytes),
                          fmt_rate(sum(d.bandwidth_bytes_per_s for d in vm.vdisks)),
                          fmt_duration(vm.eta_seconds), fmt_duration(max((d.lag_seconds for d in vm.vdisks),
                                                                         default=0)))
            for d in vm.vdisks:
                state = Text(replication_label(d.state))
                if not d.connected:
                    state.append(" (disconnected)", style="red")
                table.add_row(Text(f"    {d.name}", style="dim"), state,
                              _bar(d.background_done_bytes, d.background_total_bytes),
                              copied(d.background_done_bytes, d.background_total_bytes), fmt_bytes(d.live_bytes),
                              fmt_bytes(d.backlog_bytes), fmt_rate(d.bandwidth_bytes_per_s),
                              fmt_duration(d.eta_seconds), fmt_duration(d.lag_seconds))
    return table


# ---- lines ----------------------------------------------------------------------

def _stamp(ev: cpb.MigrationEvent) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ev.time or time.time()))


def event_line(ev: cpb.MigrationEvent) -> str:
    """``12:00:01 m-1 web-1 state-changed converged: message``."""
    line = f"{_stamp(ev)} {ev.migration_id} {ev.vm or '-'} {event_label(ev.kind)} {state_label(ev.state)}"
    return f"{line}: {ev.message}" if ev.message else line


def event_text(ev: cpb.MigrationEvent) -> Text:
    """The event line, coloured for a terminal."""
    style = "red" if ev.kind == cpb.EVENT_KIND_ERROR else "magenta" if ev.kind == cpb.EVENT_KIND_CUTOVER_STEP else ""
    return Text(event_line(ev), style=style)


def progress_line(stamp: str, m: cpb.Migration, vm: cpb.VmMigration) -> str:
    """One compact line of a VM's progress."""
    done, total = background(vm.vdisks)
    lag = max((d.lag_seconds for d in vm.vdisks), default=0)
    return (f"{stamp} {m.id} {vm.vm} progress {state_label(vm.state)} copied {copied(done, total)} "
            f"live {fmt_bytes(sum(d.live_bytes for d in vm.vdisks))} backlog {fmt_bytes(vm.backlog_bytes)} "
            f"bw {fmt_rate(sum(d.bandwidth_bytes_per_s for d in vm.vdisks))} eta {fmt_duration(vm.eta_seconds)} "
            f"lag {fmt_duration(lag)}")


class PlainLines:
    """Events as plain lines; progress per VM at most every ``every`` seconds."""

    def __init__(self, write: Callable[[str], None], every: float = PROGRESS_EVERY,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.write = write
        self.every = every
        self.now = now
        self.last: dict[tuple[str, str], float] = {}

    def event(self, ev: cpb.MigrationEvent) -> None:
        if ev.kind != cpb.EVENT_KIND_PROGRESS:
            self.write(event_line(ev))
            return
        t = self.now()
        for vm in ev.migration.vms:
            if ev.vm and vm.vm != ev.vm:
                continue
            key = (ev.migration.id, vm.vm)
            if t - self.last.get(key, float("-inf")) >= self.every:
                self.last[key] = t
                self.write(progress_line(_stamp(ev), ev.migration, vm))
