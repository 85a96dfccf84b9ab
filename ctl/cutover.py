"""``liftshift cutover``: cut one VM or a group over, or turn on automatic cutover.

A cutover stops the source VM, drains its last writes, proves the shadow
identical by XXH3-128 and powers the VM on at the destination.  It takes as
long as it takes, so the CLI waits without a deadline; the report per VM
says whether the disks were proven identical and where the downtime went.
A report that is not identical makes the command fail (exit 1).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence

from rich.console import Group
from rich.table import Table
from rich.text import Text

from liftshift.v1 import control_pb2 as cpb

from .client import Client
from .output import EXIT_FAILED, Output, state_text, yes_no
from .units import fmt_bytes, fmt_duration


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "cutover", parents=[common], help="cut VMs over to the destination",
        usage="liftshift cutover VM [--force] | --group MIGRATION [--force] | --auto MIGRATION",
        description="Cut over one VM (of its unfinished migration), every VM of a migration one after\n"
                    "another (--group), or turn on automatic cutover: each VM as soon as it converges (--auto).\n\n"
                    "A cutover stops the source VM, drains its last writes, proves the shadow identical by\n"
                    "XXH3-128 and powers the VM on at the destination; the command waits for it (no --timeout).\n"
                    "Prints per VM whether the disks were proven identical, the downtime and its parts; exits 1\n"
                    "if a VM's disks were not proven identical.",
        epilog="examples:\n  liftshift cutover web-1\n  liftshift cutover --group m-1a2b --force\n"
               "  liftshift cutover --auto m-1a2b",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("vm", nargs="?", metavar="VM", help="the VM to cut over")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--group", metavar="MIGRATION", help="cut over every VM of the migration not yet cut over")
    which.add_argument("--auto", metavar="MIGRATION", help="turn on automatic cutover for the migration and return")
    p.add_argument("--force", action="store_true",
                   help="cut over even if not converged (downtime grows with the backlog)")
    p.set_defaults(run=run, validate=functools.partial(validate, parser=p))


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Usage errors the parser cannot express (exit 2 via ``parser.error``)."""
    given = (args.vm is not None) + (args.group is not None) + (args.auto is not None)
    if given != 1:
        parser.error("cutover needs exactly one of VM, --group MIGRATION or --auto MIGRATION")
    if args.auto is not None and args.force:
        parser.error("--force does not apply to --auto (automatic cutover waits for convergence)")


async def run(args: argparse.Namespace, client: Client, out: Output) -> int:
    if args.auto is not None:
        resp = await client.cutover(args.auto, auto=True)
    elif args.group is not None:
        resp = await client.cutover(args.group, group=True, force=args.force)
    else:
        resp = await client.cutover(vm=args.vm, force=args.force)
    failed = [r for r in resp.reports if not r.identical or r.error]
    if out.json:
        out.emit(resp)
    else:
        m = resp.migration
        if args.auto is not None:
            out.console.print(Text.assemble("Automatic cutover is on for migration ", (m.id, "bold"),
                                            ": each VM is cut over as soon as it converges."))
            out.console.print(f"Follow it with: liftshift status {m.id} --watch")
        elif resp.reports:
            out.console.print(reports_view(resp.reports, title=f"Cutover of migration {m.id}"))
        else:
            out.console.print("No VM was cut over.")
        if m.id:
            out.console.print(Text.assemble("Migration ", (m.id, "bold"), ": ", state_text(m.state)))
    for r in failed:
        why = r.error or "the disks were not proven identical"
        out.fail("CutoverFailed", f"cutover of {r.vm} failed: {why}",
                 f"see `liftshift migrate show {resp.migration.id}`; the migration can be resumed and the "
                 f"cutover retried, or the VM rolled back (`liftshift migrate rollback {resp.migration.id} "
                 f"--vm {r.vm}`)" if resp.migration.id else None)
    return EXIT_FAILED if failed else 0


def reports_view(reports: Sequence[cpb.CutoverReport], title: str = "") -> Group:
    """One column per VM, one row per measure of its cutover."""
    table = Table(title=title or None, title_justify="left")
    table.add_column("", style="bold", no_wrap=True)
    for r in reports:
        table.add_column(r.vm, justify="right")

    def row(label: str, values: Sequence[str | Text]) -> None:
        table.add_row(label, *values)

    row("identical", [yes_no(r.identical) for r in reports])
    row("downtime", [Text(fmt_duration(r.downtime_seconds), style="bold") for r in reports])
    row("  stop", [fmt_duration(r.stop_seconds) for r in reports])
    row("  drain", [fmt_duration(r.drain_seconds) for r in reports])
    row("  verify", [fmt_duration(r.verify_seconds) for r in reports])
    row("  power-on", [fmt_duration(r.power_on_seconds) for r in reports])
    row("chunks verified", [str(r.chunks_verified) for r in reports])
    row("chunks preverified", [str(r.chunks_preverified) for r in reports])
    row("chunks repaired", [str(r.chunks_repaired) for r in reports])
    row("residual", [fmt_bytes(r.residual_bytes) for r in reports])
    row("forced", [yes_no(r.forced, good=False) for r in reports])
    if any(r.error for r in reports):
        row("error", [Text(r.error or "-", style="red") for r in reports])
    return Group(table)
