"""``liftshift migrate``: create, start, pause, resume, abort, roll back, list and show migrations."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from liftshift.v1 import control_pb2 as cpb

from .client import Client
from .cutover import reports_view
from .output import Output, background, clock, copied, replication_label, state_text, vm_vdisks, yes_no
from .units import arg_rate, arg_size, fmt_bytes, fmt_duration, fmt_rate


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("migrate", parents=[common], help="create and drive migrations",
                       description="Create, start, pause, resume, abort, roll back, list and show migrations.")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    c = acts.add_parser("create", parents=[common], help="define a migration of one or more VMs",
                        description="Define a live migration of VMs to a destination sink. The daemon checks "
                                    "that the VMs exist, are in no other migration, and that the sink answers.",
                        epilog="example: liftshift migrate create web-1 web-2 --dest sink.example:50052 "
                               "--throttle 100MB/s --start")
    c.add_argument("vms", nargs="+", metavar="VM", help="VM names (see `liftshift inventory`)")
    c.add_argument("--dest", required=True, metavar="HOST:PORT", help="the destination sink")
    c.add_argument("--name", default="", help="a label for people (default: the id)")
    c.add_argument("--auto-cutover", action="store_true",
                   help="cut each VM over as soon as it converges, one after another")
    c.add_argument("--converge-threshold", type=arg_size, default=0, metavar="SIZE",
                   help="a VM has converged when at most this much waits to be shipped "
                        "(e.g. 64MiB; default: the daemon's)")
    c.add_argument("--throttle", type=arg_rate, default=0, metavar="RATE",
                   help="throttle guest writes per disk until converged (e.g. 100MB/s; default: none)")
    c.add_argument("--type", choices=("live", "seeded"), default="live",
                   help="live (default), or seeded: start from each VM's seed (see `liftshift seed`), so only "
                        "what changed since the export crosses the network")
    c.add_argument("--start", action="store_true", help="start right away")
    c.set_defaults(run=create)

    for action, fn, text in (("start", start, "start a created migration"),
                             ("pause", pause, "stop shipping (the guest keeps running, writes stay captured)"),
                             ("resume", resume, "resume a paused migration, or retry a failed one"),
                             ("abort", abort, "stop for good (the source VMs keep running untouched)")):
        a = acts.add_parser(action, parents=[common], help=text, description=text[0].upper() + text[1:] + ".")
        a.add_argument("migration", metavar="MIGRATION", help="migration id")
        a.set_defaults(run=fn)

    rb = acts.add_parser("rollback", parents=[common],
                         help="after a failed cutover: remove the destination VM, power the source VM on again",
                         description="After a failed cutover: remove the VM at the destination (its shadow vdisks "
                                     "are kept) and power the source VM on again; the VM ends rolled-back. Needs a "
                                     "VM whose cutover failed (see `liftshift migrate show`); a migration that has "
                                     "not reached cutover is stopped with `migrate abort` instead.",
                         epilog="example: liftshift migrate rollback m-1a2b --vm web-1")
    rb.add_argument("migration", metavar="MIGRATION", help="migration id")
    rb.add_argument("--vm", default="", metavar="VM",
                    help="roll back this VM of the migration (default: every VM whose cutover failed)")
    rb.set_defaults(run=rollback)

    lst = acts.add_parser("list", parents=[common], help="list migrations",
                          description="Unfinished migrations (with --all, completed, aborted and rolled-back "
                                      "ones too).")
    lst.add_argument("--all", action="store_true", help="include completed, aborted and rolled-back migrations")
    lst.set_defaults(run=list_)

    show = acts.add_parser("show", parents=[common], help="one migration in detail",
                           description="One migration per VM and per vdisk, its cutover reports and what can "
                                       "be asked of it now.")
    show.add_argument("migration", metavar="MIGRATION", help="migration id")
    show.set_defaults(run=show_)


# ---- commands ---------------------------------------------------------------

async def create(args: argparse.Namespace, client: Client, out: Output) -> int:
    m = await client.create_migration(args.vms, args.dest, name=args.name, auto_cutover=args.auto_cutover,
                                      converge_threshold_bytes=args.converge_threshold,
                                      throttle_bytes_per_s=args.throttle, start=args.start,
                                      seeded=args.type == "seeded")
    if out.json:
        out.emit(m)
        return 0
    out.console.print(Text.assemble("Created migration ", (m.id, "bold"), f" of {len(m.vms)} VM(s) to {m.destination}"
                                    ": ", state_text(m.state)))
    out.console.print(summary_view(m))
    return 0


async def _act(out: Output, m: cpb.Migration, verb: str, lines: Sequence[Text] = ()) -> int:
    if out.json:
        out.emit(m)
        return 0
    out.console.print(Text.assemble(f"{verb} migration ", (m.id, "bold"), ": ", state_text(m.state)))
    for line in lines:
        out.console.print(line)
    if m.allowed:
        out.console.print(f"Allowed now: {', '.join(m.allowed)}")
    return 0


async def start(args: argparse.Namespace, client: Client, out: Output) -> int:
    return await _act(out, await client.start(args.migration), "Started")


async def pause(args: argparse.Namespace, client: Client, out: Output) -> int:
    return await _act(out, await client.pause(args.migration), "Paused")


async def resume(args: argparse.Namespace, client: Client, out: Output) -> int:
    return await _act(out, await client.resume(args.migration), "Resumed")


async def abort(args: argparse.Namespace, client: Client, out: Output) -> int:
    return await _act(out, await client.abort(args.migration), "Aborted")


async def rollback(args: argparse.Namespace, client: Client, out: Output) -> int:
    m = await client.rollback(args.migration, args.vm)
    # The answer does not say which VMs this request rolled back: with --vm
    # that one, otherwise every VM now rolled back.
    done = [vm.vm for vm in m.vms if vm.state == cpb.MIGRATION_STATE_ROLLED_BACK and vm.vm == (args.vm or vm.vm)]
    style = state_text(cpb.MIGRATION_STATE_ROLLED_BACK).style
    return await _act(out, m, "Rolled back", [
        Text.assemble("VM ", (vm, "bold"), ": ", ("rolled back", style),
                      " — destination VM removed, source VM powered on") for vm in done])


async def list_(args: argparse.Namespace, client: Client, out: Output) -> int:
    resp = await client.list_migrations(all=args.all)
    if out.json:
        out.emit(resp)
        return 0
    if not resp.migrations:
        out.console.print("No migrations." if args.all else
                          "No unfinished migrations (--all shows completed, aborted and rolled-back ones).")
        return 0
    table = Table()
    table.add_column("ID", no_wrap=True, overflow="fold")
    for col in ("NAME", "STATE", "DESTINATION"):
        table.add_column(col)
    for col in ("VMS", "COPIED", "BANDWIDTH", "ETA"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("CREATED", no_wrap=True)
    for m in resp.migrations:
        done, total = background(vm_vdisks(m))
        table.add_row(m.id, m.name or "-", state_text(m.state), m.destination, str(len(m.vms)),
                      copied(done, total), fmt_rate(m.bandwidth_bytes_per_s), fmt_duration(m.eta_seconds),
                      clock(m.created_at))
    out.console.print(table)
    return 0


async def show_(args: argparse.Namespace, client: Client, out: Output) -> int:
    m = await client.get_migration(args.migration)
    if out.json:
        out.emit(m)
        return 0
    out.console.print(detail_view(m))
    return 0


# ---- views ------------------------------------------------------------------

def summary_view(m: cpb.Migration) -> Table:
    """Key facts of a migration, one per line."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("id", m.id)
    grid.add_row("name", m.name or "-")
    grid.add_row("state", state_text(m.state))
    grid.add_row("type", "seeded" if m.type == cpb.MIGRATION_TYPE_SEEDED else "live")
    grid.add_row("destination", m.destination)
    grid.add_row("VMs", ", ".join(vm.vm for vm in m.vms) or "-")
    grid.add_row("auto-cutover", yes_no(m.auto_cutover))
    grid.add_row("converge at", fmt_bytes(m.converge_threshold_bytes) if m.converge_threshold_bytes
                 else "daemon default")
    grid.add_row("throttle", fmt_rate(m.throttle_bytes_per_s) if m.throttle_bytes_per_s else "none")
    grid.add_row("allowed now", ", ".join(m.allowed) or "-")
    return grid


def detail_view(m: cpb.Migration) -> Group:
    """Everything about one migration: summary, per VM and per vdisk, cutover reports."""
    grid = summary_view(m)
    done, total = background(vm_vdisks(m))
    grid.add_row("copied", copied(done, total))
    grid.add_row("bandwidth", fmt_rate(m.bandwidth_bytes_per_s))
    grid.add_row("ETA", fmt_duration(m.eta_seconds))
    grid.add_row("created", clock(m.created_at))
    grid.add_row("updated", clock(m.updated_at))

    # Light rules and narrow padding: this table is wide.  What is only
    # sometimes worth saying (dirty bytes, re-sent bytes, errors) goes below it.
    table = Table(title="VMs and vdisks", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    table.add_column("VM / DISK", no_wrap=True)
    table.add_column("VDISK ID", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    for col in ("COPIED", "LIVE", "BACKLOG", "BANDWIDTH", "ETA", "LAG"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("CONN", no_wrap=True)
    notes: list[Text] = []
    for vm in m.vms:
        vdone, vtotal = background(vm.vdisks)
        table.add_row(Text(vm.vm, style="bold"), "", state_text(vm.state), copied(vdone, vtotal), "",
                      fmt_bytes(vm.backlog_bytes), "", fmt_duration(vm.eta_seconds), "", "")
        if vm.error:
            notes.append(Text(f"{vm.vm}: {vm.error}", style="red"))
        for i, d in enumerate(vm.vdisks):
            table.add_row(f"  {d.name}", d.vdisk_id, replication_label(d.state),
                          copied(d.background_done_bytes, d.background_total_bytes), fmt_bytes(d.live_bytes),
                          fmt_bytes(d.backlog_bytes), fmt_rate(d.bandwidth_bytes_per_s),
                          fmt_duration(d.eta_seconds), fmt_duration(d.lag_seconds), yes_no(d.connected),
                          end_section=i == len(vm.vdisks) - 1)
            said = [f"size {fmt_bytes(d.size_bytes)}"]
            if d.dirty_bytes:
                said.append(f"dirty {fmt_bytes(d.dirty_bytes)}")
            if d.resent_bytes:
                said.append(f"re-sent {fmt_bytes(d.resent_bytes)}")
            if d.ring_overflows:
                said.append(f"{d.ring_overflows} ring overflows")
            if d.last_error:
                said.append(f"last error: {d.last_error}")
            if len(said) > 1:
                notes.append(Text(f"{vm.vm}/{d.name}: " + ", ".join(said), style="red" if d.last_error else ""))
    parts: list = [grid, table, *notes]
    reports = [vm.cutover for vm in m.vms if vm.HasField("cutover") and vm.cutover.vm]
    if reports:
        parts.append(reports_view(reports, title="Cutover reports"))
    return Group(*parts)
