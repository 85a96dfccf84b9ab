"""What the CLI writes: tables and colours (rich), JSON, errors, exit codes.

Every command either renders for people (rich, on stdout) or, with
``--json``, prints the daemon's answer as JSON (proto3 JSON mapping, field
names as in the .proto, every field present).  Errors go to stderr as one
line plus an optional hint line, or as a JSON object; the exit code says what
kind of failure it was (the table below, also in ``liftshift --help``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import IO, Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.text import Text

from liftshift.daemon.errors import LiftshiftError
from liftshift.v1 import common_pb2
from liftshift.v1 import control_pb2 as cpb

from .units import fmt_bytes, fmt_percent

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_UNREACHABLE = 4

EXIT_CODES_HELP = """\
exit codes:
  0  success
  1  failure: an internal error, or a cutover/verify that did not prove the
     disks identical, or a watched migration that was aborted or rolled back,
     or an audit log that is not intact (audit verify)
  2  usage error (bad command line)
  3  refused: the daemon refused the request and nothing changed (unknown id,
     invalid argument, already exists, not allowed in the current state)
  4  the daemon is unreachable or did not answer in time"""

# The daemon's typed errors travel as gRPC status codes (one mapping, in
# liftshift.daemon.errors); the exit code follows from the code.
_EXIT_BY_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_REFUSED,
    grpc.StatusCode.NOT_FOUND: EXIT_REFUSED,
    grpc.StatusCode.ALREADY_EXISTS: EXIT_REFUSED,
    grpc.StatusCode.FAILED_PRECONDITION: EXIT_REFUSED,
    grpc.StatusCode.OUT_OF_RANGE: EXIT_REFUSED,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_REFUSED,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_REFUSED,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNREACHABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNREACHABLE,
}


def exit_code(err: LiftshiftError) -> int:
    """The CLI's exit code for a typed error."""
    return _EXIT_BY_STATUS.get(err.code, EXIT_FAILED)


def to_dict(msg: Message) -> dict[str, Any]:
    """A protobuf message as a JSON-ready dict (proto field names, all fields)."""
    return json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def make_console(file: IO[str]) -> Console:
    """A rich console; not on a terminal it is wide enough not to wrap tables."""
    width = None
    if not file.isatty() and "COLUMNS" not in os.environ:
        width = 200
    return Console(file=file, highlight=False, soft_wrap=False, width=width)


class Output:
    """Where a command writes: people or JSON on stdout, errors on stderr."""

    def __init__(self, json_mode: bool, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> None:
        self.json = json_mode
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.console = make_console(self.stdout)
        self.err_console = make_console(self.stderr)

    @property
    def is_terminal(self) -> bool:
        return self.console.is_terminal

    def emit(self, msg: Message) -> None:
        """The whole answer as indented JSON."""
        print(json.dumps(to_dict(msg), indent=2), file=self.stdout, flush=True)

    def emit_line(self, msg: Message) -> None:
        """One JSON object on one line (for streams)."""
        print(json.dumps(to_dict(msg), separators=(",", ":")), file=self.stdout, flush=True)

    def line(self, text: str) -> None:
        """A plain line, flushed (for pipes following a stream)."""
        print(text, file=self.stdout, flush=True)

    def fail(self, kind: str, message: str, hint: str | None = None) -> None:
        """Report a failure on stderr (one line and a hint line, or a JSON object)."""
        if self.json:
            obj = {"error": {"type": kind, "message": message, "hint": hint or ""}}
            print(json.dumps(obj), file=self.stderr, flush=True)
            return
        print(f"liftshift: {message}", file=self.stderr)
        if hint:
            print(f"  hint: {hint}", file=self.stderr)
        self.stderr.flush()

    def notice(self, message: str) -> None:
        """Something a person should know that is not a failure (stderr)."""
        if self.json:
            print(json.dumps({"notice": message}), file=self.stderr, flush=True)
        else:
            print(f"liftshift: {message}", file=self.stderr, flush=True)

    def error(self, err: LiftshiftError) -> int:
        """Report a typed error; returns the exit code for it."""
        self.fail(type(err).__name__, err.message, err.hint)
        return exit_code(err)


# ---- labels and styles -----------------------------------------------------

def _label(name: str, prefix: str) -> str:
    return name.removeprefix(prefix).lower().replace("_", "-")


def state_label(state: int) -> str:
    """``cutting-over`` for MIGRATION_STATE_CUTTING_OVER."""
    return _label(cpb.MigrationState.Name(state), "MIGRATION_STATE_") if state else "-"


def replication_label(state: int) -> str:
    return _label(cpb.ReplicationState.Name(state), "REPLICATION_STATE_") if state else "-"


def power_label(state: int) -> str:
    return _label(common_pb2.PowerState.Name(state), "POWER_STATE_") if state else "-"


def event_label(kind: int) -> str:
    return _label(cpb.EventKind.Name(kind), "EVENT_KIND_") if kind else "-"


_STATE_STYLES = {
    cpb.MIGRATION_STATE_CREATED: "white",
    cpb.MIGRATION_STATE_SYNCING: "cyan",
    cpb.MIGRATION_STATE_CONVERGED: "green",
    cpb.MIGRATION_STATE_PAUSED: "yellow",
    cpb.MIGRATION_STATE_CUTTING_OVER: "magenta",
    cpb.MIGRATION_STATE_COMPLETED: "bold green",
    cpb.MIGRATION_STATE_FAILED: "bold red",
    cpb.MIGRATION_STATE_ABORTED: "dim",
    cpb.MIGRATION_STATE_ROLLED_BACK: "bold magenta",
}

# Nothing more happens to a migration (or a VM) in these states.
FINAL_STATES = frozenset({cpb.MIGRATION_STATE_COMPLETED, cpb.MIGRATION_STATE_ABORTED,
                          cpb.MIGRATION_STATE_ROLLED_BACK})


def state_text(state: int) -> Text:
    """A migration/VM state, coloured."""
    return Text(state_label(state), style=_STATE_STYLES.get(state, ""))  # type: ignore[call-overload]


def yes_no(flag: bool, good: bool = True) -> Text:
    """``yes``/``no``, green when it is the good answer and red otherwise."""
    return Text("yes" if flag else "no", style="green" if flag == good else "red")


def clock(unix: float) -> str:
    """Local wall-clock time of a Unix time (``-`` for 0)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix)) if unix else "-"


def background(vdisks: Any) -> tuple[int, int]:
    """(bytes copied, bytes to copy) of the background copy over some VdiskProgress."""
    return sum(v.background_done_bytes for v in vdisks), sum(v.background_total_bytes for v in vdisks)


def vm_vdisks(m: cpb.Migration) -> list[cpb.VdiskProgress]:
    """Every vdisk of every VM of a migration."""
    return [d for vm in m.vms for d in vm.vdisks]


def copied(done: int, total: int) -> str:
    """``1.00 GiB / 4.00 GiB (25%)``."""
    return f"{fmt_bytes(done)} / {fmt_bytes(total)} ({fmt_percent(done, total)})"
