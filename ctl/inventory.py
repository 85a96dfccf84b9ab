"""``liftshift inventory``: the VMs the daemon's platform knows, with their disks."""

from __future__ import annotations

import argparse

from rich.table import Table
from rich.text import Text

from liftshift.daemon.errors import NotFound
from liftshift.v1 import control_pb2 as cpb

from .client import Client
from .output import Output, power_label, yes_no
from .units import fmt_bytes


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("inventory", parents=[common], help="list VMs and their disks",
                       description="VMs the daemon's platform knows (name, platform, power state, migration) "
                                   "with their disks (size, allocated bytes, whether write capture is attached). "
                                   "When there are vSphere VMs, a POLICY column shows each disk's capture storage "
                                   "policy id (\"-\": none yet; see `liftshift vsphere attach-filter`). "
                                   "With VM names: everything known about those VMs (host, guest OS, CPU, memory, "
                                   "firmware, NICs and networks; per disk its backing file, datastore and "
                                   "controller).")
    p.add_argument("vms", nargs="*", metavar="VM", help="show these VMs in detail")
    p.set_defaults(run=run)


async def run(args: argparse.Namespace, client: Client, out: Output) -> int:
    resp = await client.list_vms()
    if args.vms:
        known = {vm.name: vm for vm in resp.vms}
        missing = [n for n in args.vms if n not in known]
        if missing:
            return out.error(NotFound(f"no VM {missing[0]!r}",
                                      hint=f"known VMs: {', '.join(sorted(known)) or 'none'}"))
        picked = cpb.ListVmsResponse(vms=[known[n] for n in args.vms])
        if out.json:
            out.emit(picked)
        else:
            for vm in picked.vms:
                _detail(out, vm)
        return 0
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


def _detail(out: Output, vm: cpb.Vm) -> None:
    """One VM, everything the platform said about it."""
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("VM", Text(vm.name, style="bold"))
    for label, value in (("platform", vm.platform), ("power", power_label(vm.power_state)),
                         ("migration", vm.migration_id or "-"), ("host", vm.host), ("guest OS", vm.guest_os),
                         ("CPUs", str(vm.num_cpu) if vm.num_cpu else ""),
                         ("memory", fmt_bytes(vm.memory_mb << 20) if vm.memory_mb else ""),
                         ("firmware", vm.firmware)):
        if value:
            facts.add_row(label, Text(value))  # Text: names like "[ds1] x.vmdk" are not markup
    for n in vm.nics:
        facts.add_row("NIC", Text(f"{n.label} ({n.kind}) on {n.network or '-'}"))
    out.console.print(facts)
    disks = Table(show_lines=False)
    for col in ("DISK", "SIZE", "ALLOCATED", "CAPTURE", "POLICY", "CONTROLLER", "DATASTORE", "BACKING"):
        disks.add_column(col, no_wrap=True, justify="right" if col in ("SIZE", "ALLOCATED") else "left")
    for d in vm.disks:
        disks.add_row(Text(d.name), fmt_bytes(d.size_bytes), fmt_bytes(d.allocated_bytes), yes_no(d.capture_attached),
                      Text(d.capture_policy or "-"), Text(d.controller or "-"), Text(d.datastore or "-"),
                      Text(d.backing_file or d.image))
    out.console.print(disks)
