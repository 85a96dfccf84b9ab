"""``liftshift-sink``: the destination daemon's command line.

Design note
-----------
Parse arguments, load and check the configuration (errors name the key and
the file, exit status 2), set up logging and the allocator, then run the
daemon skeleton (:func:`liftshift.daemon.service.run` on uvloop): start the
:class:`~liftshift.sink.server.SinkServer`, write ``--port-file`` once it
listens (atomically, so a reader never sees half a number), serve until
SIGTERM/SIGINT, stop gracefully.  SIGHUP re-reads the file and applies
``log_level``; other keys need a restart, and the log says so.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from liftshift.daemon import service
from liftshift.daemon.errors import LiftshiftError
from liftshift.iofilter.alloc import freeze_gc, tune_malloc

from .config import SinkConfig, load_config, reference_markdown
from .server import SinkServer

log = logging.getLogger("liftshift.sink")

EXIT_CONFIG = 2
EXIT_FAILED = 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(prog="liftshift-sink", description="liftshift destination daemon: applies "
                                 "replicated writes to shadow vdisks durably.")
    ap.add_argument("--config", metavar="FILE", help="TOML configuration file (LIFTSHIFT_SINK_<KEY> environment "
                    "variables override its keys)")
    ap.add_argument("--port-file", metavar="PATH", type=Path, help="write the bound port here once listening")
    ap.add_argument("--print-config-reference", action="store_true",
                    help="print the configuration keys, defaults and help as a markdown table, then exit")
    args = ap.parse_args(argv)
    if not args.print_config_reference and not args.config:
        ap.error("--config FILE is required")
    return args


def write_port_file(path: Path, port: int) -> None:
    """Write ``port`` to ``path`` via a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)


def setup_logging(level: int) -> None:
    """Log to stderr with timestamps (systemd's journal adds its own, harmlessly)."""
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


def make_start(config: SinkConfig, port_file: Path | None) -> Callable[[], Awaitable[Callable[[], Awaitable[None]]]]:
    """The ``start`` callable :func:`service.run` expects."""

    async def start() -> Callable[[], Awaitable[None]]:
        sink = SinkServer(config)
        try:
            port = await sink.start()
        except BaseException:
            await sink.stop()
            raise
        if port_file is not None:
            write_port_file(port_file, port)
        freeze_gc()

        async def stop() -> None:
            await sink.stop()
            if port_file is not None:
                port_file.unlink(missing_ok=True)

        return stop

    return start


def make_reload(config_path: str) -> Callable[[], Awaitable[None]]:
    """SIGHUP: re-read the configuration, apply what can change while running."""

    async def reload() -> None:
        try:
            new = load_config(config_path)
        except LiftshiftError as e:
            log.error("reload refused, keeping the running configuration: %s", e)
            return
        logging.getLogger().setLevel(new.log_level_number)
        log.info("reloaded %s: log_level=%s (other keys take effect at restart)", config_path, new.log_level)

    return reload


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``liftshift-sink``; returns the exit status."""
    args = parse_args(argv)
    if args.print_config_reference:
        sys.stdout.write(reference_markdown())
        return 0
    try:
        config = load_config(args.config)
    except LiftshiftError as e:
        print(f"liftshift-sink: {e}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.log_level_number)
    tune_malloc()
    start = make_start(config, args.port_file)
    try:
        service.main_loop(lambda: service.run(start, make_reload(args.config)))
    except LiftshiftError as e:
        log.error("liftshift-sink failed: %s", e)
        return EXIT_FAILED
    except OSError as e:  # data_dir or state_dir unusable: say which file, not a traceback
        log.error("liftshift-sink failed: %s", e)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
