"""``liftshift``: the command line of the source daemon's Control service.

Dispatch only: every command group lives in its own module
(``inventory``, ``migrate``, ``status``, ``cutover``, ``replication``,
``vsphere``, ``audit``, ...) and registers its parser and an ``async run(args, client, out)
-> exit code``; this module parses, opens one
:class:`~liftshift.ctl.client.Client` and turns typed errors into the error
line and exit code (``output``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import traceback

# gRPC's C core logs connection events (a daemon restarting: "Got goaway")
# on stderr; the CLI's stderr is for its own error lines and JSON.  This has
# to be set before grpc is imported.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from liftshift.daemon.errors import LiftshiftError  # noqa: E402

from . import (  # noqa: E402,E501
    audit,
    certs,
    credentials,
    cutover,
    estimate,
    inventory,
    migrate,
    replication,
    seed,
    stats,
    status,
    throttle,
    vsphere,
)
from .client import DEFAULT_ADDRESS, Client  # noqa: E402
from .output import EXIT_CODES_HELP, EXIT_FAILED, Output  # noqa: E402

INTERRUPTED = 130


def _timeout(text: str) -> float:
    try:
        t = float(text)
    except ValueError:
        t = -1
    if not t > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return t


def _global_options(p: argparse.ArgumentParser, defaults: bool) -> None:
    """--address, --json, --timeout: before the command, or (SUPPRESSed defaults) after it."""
    def d(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    p.add_argument("--address", default=d(os.environ.get("LIFTSHIFT_ADDRESS", DEFAULT_ADDRESS)),
                   metavar="HOST:PORT",
                   help=f"the source daemon's control address (env LIFTSHIFT_ADDRESS; default {DEFAULT_ADDRESS})")
    p.add_argument("--json", action="store_true", default=d(False),
                   help="print the daemon's answer as JSON (errors as a JSON object on stderr)")
    p.add_argument("--timeout", type=_timeout, default=d(30.0), metavar="SECONDS",
                   help="deadline of each request (default 30; cutover, verify and --watch wait as long as needed)")
    credentials.add_options(p, defaults)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liftshift", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Live-migrate running VMs: drive the liftshift source daemon.",
        epilog="typical session:\n"
               "  liftshift inventory\n"
               "  liftshift migrate create web-1 --dest sink.example:50052 --start\n"
               "  liftshift status MIGRATION --watch\n"
               "  liftshift cutover web-1\n\n" + EXIT_CODES_HELP)
    _global_options(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, defaults=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (inventory, migrate, status, cutover, replication, vsphere, estimate, seed, stats, throttle,
                   certs, audit):
        module.register(sub, common)
    return parser


async def _run(args: argparse.Namespace, out: Output) -> int:
    async with Client(args.address, timeout=args.timeout, credentials=credentials.from_args(args)) as client:
        return int(await args.run(args, client, out))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    validate = getattr(args, "validate", None)
    if validate is not None:
        validate(args)  # usage errors beyond argparse's (exit 2)
    out = Output(args.json)
    try:
        return asyncio.run(_run(args, out))
    except LiftshiftError as e:
        return out.error(e)
    except BrokenPipeError:
        # The reader went away (`liftshift status --watch --json | head`):
        # stop quietly, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        if getattr(args, "watch", False):
            return 0  # Ctrl-C is how a watch ends
        hint = None
        if args.command == "cutover":
            hint = "the daemon finishes the cutover on its own: follow it with `liftshift status --watch`"
        out.fail("Interrupted", "interrupted", hint)
        return INTERRUPTED
    except Exception as e:  # a bug: one line, and the traceback on request
        if os.environ.get("LIFTSHIFT_DEBUG"):
            traceback.print_exc()
        out.fail("InternalError", f"internal error: {type(e).__name__}: {e}",
                 None if os.environ.get("LIFTSHIFT_DEBUG") else "set LIFTSHIFT_DEBUG=1 to see the traceback")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
