"""``liftshift inventory``: the VMs the daemon's platform knows, with their disks."""

from __future__ import annotations

import argparse

from rich.table import Table
from rich.text import Text

from .client import Client
from .output import Output, power_label, yes_no
from .units import fmt_bytes


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("inventory", parents=[common], help="list VMs and their disks",
                       description="VMs the daemon's platform knows (name, platform, power state, migration) "
                                   "with their disks (size, allocated bytes, whether write capture is attached). "
                                   "When there are vSphere VMs, a POLICY column shows each disk's capture storage "
                                   "policy id (\"-\": none yet; see `liftshift vsphere attach-filter`).")
    p.set_defaults(run=run)


async def run(args: argparse.Namespace, client: Client, out: Output) -> int:
    resp = await client.list_vms()
    if out.json:
        out.emit(resp)
        return 0
    if not resp.vms:
        out.console.print("No VMs.")
        return 0
    table = Table(title=None, show_lines=False)
    for col in ("VM", "PLATFORM", "POWER", "MIGRATION", "DISK"):
        table.add_column(col, no_wrap=True)
    for col in ("SIZE", "ALLOCATED"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("CAPTURE")
    # Only vSphere disks carry a capture policy: without vSphere VMs the
    # column would only ever say "-".
    policy = any(vm.platform == "vsphere" for vm in resp.vms)
    if policy:
        table.add_column("POLICY", no_wrap=True)
    for vm in sorted(resp.vms, key=lambda v: v.name):
        head = [Text(vm.name, style="bold"), vm.platform, power_label(vm.power_state), vm.migration_id or "-"]
        if not vm.disks:
            table.add_row(*head, "-", "-", "-", "-", *(["-"] if policy else []), end_section=True)
        for i, d in enumerate(vm.disks):
            row = head if i == 0 else ["", "", "", ""]
            table.add_row(*row, d.name, fmt_bytes(d.size_bytes), fmt_bytes(d.allocated_bytes),
                          yes_no(d.capture_attached), *([d.capture_policy or "-"] if policy else []),
                          end_section=i == len(vm.disks) - 1)
    out.console.print(table)
    return 0
