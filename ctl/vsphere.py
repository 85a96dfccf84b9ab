"""``liftshift vsphere``: what only the vSphere platform needs.

``attach-filter`` puts the liftshift IO filter on every disk of a VM by
assigning the capture storage policy (the daemon creates the policy if it is
missing).  A vSphere VM needs it before ``migrate create``: without the
filter no guest write is captured.  VMs are done one after another; the
first refusal ends the command (the VMs before it keep their policy).
"""

from __future__ import annotations

import argparse

from rich.table import Table
from rich.text import Text

from liftshift.daemon.errors import LiftshiftError
from liftshift.v1 import control_pb2 as cpb

from .client import Client
from .output import Output
from .units import fmt_bytes


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("vsphere", parents=[common], help="vSphere only: prepare VMs for migration",
                       description="Commands only the vsphere platform needs: attach-filter puts the liftshift "
                                   "IO filter on a VM's disks before `migrate create`.")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = acts.add_parser(
        "attach-filter", parents=[common],
        help="put the liftshift IO filter on a VM's disks (before `migrate create` of a vSphere VM)",
        description="Assign the liftshift capture storage policy to every disk of each VM (the daemon creates\n"
                    "the policy if it is missing), so that the IO filter captures the guest's writes. Needed\n"
                    "before `liftshift migrate create` of a vSphere VM; a disk that already has the policy is\n"
                    "left as it is. Prints per disk its name, size and capture policy id.\n\n"
                    "Needs the daemon's vsphere platform (refused on sim). Refused for a disk that cannot be\n"
                    "captured (independent-nonpersistent, physical RDM). VMs are done one after another; the\n"
                    "first refusal ends the command and the VMs before it keep their policy.\n\n"
                    "With --json: {\"vms\": [...]}, the VMs as the daemon answered (as in `inventory --json`).",
        epilog="example: liftshift vsphere attach-filter web-1 web-2",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("vms", nargs="+", metavar="VM", help="VM names (see `liftshift inventory`)")
    a.set_defaults(run=attach_filter)


async def attach_filter(args: argparse.Namespace, client: Client, out: Output) -> int:
    done = cpb.ListVmsResponse()
    try:
        for name in args.vms:
            vm = await client.attach_filter(name)
            done.vms.append(vm)
            if not out.json:
                out.console.print(Text.assemble("Capture policy on every disk of VM ", (vm.name, "bold"), ":"))
                out.console.print(disks_view(vm))
    except LiftshiftError:
        if out.json and done.vms:  # refused part-way: the VMs done so far are still reported
            out.emit(done)
        raise
    if out.json:
        out.emit(done)
    return 0


def disks_view(vm: cpb.Vm) -> Table:
    """A VM's disks: name, size, capture policy id."""
    table = Table()
    table.add_column("DISK", no_wrap=True)
    table.add_column("SIZE", justify="right", no_wrap=True)
    table.add_column("POLICY", no_wrap=True)
    for d in vm.disks:
        table.add_row(d.name, fmt_bytes(d.size_bytes), d.capture_policy or "-")
    if not vm.disks:
        table.add_row("-", "-", "-")
    return table
