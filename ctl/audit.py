"""``liftshift audit``: who did what to which VM, and whether the record is intact.

``list`` asks the daemon for its audit log's entries; ``verify`` has the
daemon check the hash chain, or with ``--file`` checks a log file here,
without any daemon (a stopped daemon's state directory, or a copy).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from liftshift.daemon.errors import NotFound
from liftshift.v1 import control_pb2 as cpb

from .client import Client
from .output import EXIT_FAILED, Output, clock
from .units import arg_when


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("audit", parents=[common], help="the audit log: who did what, and is it intact",
                       description="The daemon records every control action that changes something (and every "
                                   "call it refuses to an unauthenticated or unauthorised caller) in a "
                                   "hash-chained, append-only audit log: who, from where, what was asked, which "
                                   "VMs, and the result.")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = acts.add_parser("list", parents=[common], help="entries, oldest first",
                         description="Entries of the daemon's audit log, oldest first: sequence number, time, who, "
                                     "peer, action, VMs and result (--json: every field, the request's parameters "
                                     "too, as in the log file).",
                         epilog="examples: liftshift audit list --since 6h; "
                                "liftshift audit list --since 2026-11-26T10:00 --vm web-1 --json")
    ls.add_argument("--since", type=arg_when, default=None, metavar="WHEN",
                    help="only entries from this long ago (90m, 6h, 3d) or from this local time "
                         "(2026-11-26T10:00) on")
    ls.add_argument("--vm", default="", metavar="VM", help="only entries that touched this VM")
    ls.set_defaults(run=list_entries)
    v = acts.add_parser("verify", parents=[common], help="check the hash chain (exit 1 naming the first bad entry)",
                        description="Check that no entry was edited, removed, reordered or inserted: through the "
                                    "daemon, or with --file offline on a log file (the daemon stopped, or a copy; "
                                    "its head record audit.head beside it shows entries removed from the end). "
                                    "Exit 0 when intact, 1 naming the first bad entry.")
    v.add_argument("--file", type=Path, metavar="PATH", help="verify this audit.log here, without the daemon")
    v.add_argument("--head", type=Path, metavar="PATH", help="with --file: its head record (default: audit.head "
                                                             "beside it)")
    v.add_argument("--no-head", action="store_true",
                   help="with --file: check the chain alone, for a copy shipped without its head record "
                        "(entries removed from its end then go unnoticed)")
    v.set_defaults(run=verify, validate=functools.partial(_validate_verify, parser=v))


def _validate_verify(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.file is None and (args.head is not None or args.no_head):
        parser.error("--head and --no-head go with --file")
    if args.head is not None and args.no_head:
        parser.error("--head and --no-head exclude each other")


def entry_dict(e: cpb.AuditEntry) -> dict[str, Any]:
    """An entry with the fields and values of its line in the log file."""
    return {"seq": e.seq, "time": e.time, "who": e.who, "peer": e.peer, "action": e.action,
            "params": json.loads(e.params_json or "{}"), "vms": list(e.vms), "result": e.result, "prev": e.prev,
            "hash": e.hash}


async def list_entries(args: argparse.Namespace, client: Client, out: Output) -> int:
    entries = await client.list_audit(since=args.since.resolve(time.time()) if args.since else 0.0, vm=args.vm)
    if out.json:
        out.line(json.dumps({"entries": [entry_dict(e) for e in entries]}, indent=2, ensure_ascii=False))
        return 0
    if not entries:
        out.console.print("No audit entries" + (" for that VM" if args.vm else "")
                          + (" in that time" if args.since else "") + ".")
        return 0
    table = Table(show_lines=False)
    table.add_column("SEQ", justify="right", no_wrap=True)
    table.add_column("TIME", no_wrap=True)
    for col in ("WHO", "PEER"):
        table.add_column(col)  # wrapped, not cut, on a narrow terminal
    table.add_column("ACTION", no_wrap=True)
    for col in ("VMS", "RESULT"):
        table.add_column(col)
    for e in entries:
        table.add_row(str(e.seq), clock(e.time), Text(e.who), Text(e.peer), Text(e.action),
                      Text(", ".join(e.vms) or "-"), Text(e.result, style="green" if e.result == "ok" else "red"))
    out.console.print(table)
    return 0


async def verify(args: argparse.Namespace, client: Client, out: Output) -> int:
    extra: dict[str, Any] = {}
    if args.file is not None:
        from liftshift.daemon.audit import default_head_path, verify_file  # only offline (CLI start-up)

        if not args.file.is_file():
            return out.error(NotFound(f"no audit log at {args.file}",
                                      hint="the daemon keeps it as audit.log in its state_dir"))
        r = verify_file(args.file, head_path=args.head, check_head=not args.no_head)
        ok, count, first_bad, reason = r.ok, r.count, r.first_bad_seq or 0, str(r)
        extra = {"file": str(args.file), "head": None if args.no_head else str(args.head or
                                                                                default_head_path(args.file)),
                 "line": r.line}
    else:
        resp = await client.verify_audit()
        ok, count, first_bad, reason = resp.ok, resp.entries, resp.first_bad_seq, resp.reason
    if out.json:
        out.line(json.dumps({"ok": ok, "entries": count, "first_bad_seq": first_bad, "reason": reason, **extra},
                            indent=2))
    elif ok:
        out.line(reason)
    else:
        out.line(f"FAILED: {reason}")
        if first_bad:
            out.line(f"  first bad entry: {first_bad}; {count} {'entry' if count == 1 else 'entries'} before it "
                     "verified")
    return 0 if ok else EXIT_FAILED
