"""Shared fixtures; the tests folder is importable (tooling, cbuild)."""

from __future__ import annotations

import compileall
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cbuild import apply_library  # noqa: E402
from tooling import REPO  # noqa: E402

# Bytecode, cached whatever PYTHONDONTWRITEBYTECODE says (__pycache__ is
# git-ignored).  The suite starts hundreds of Python processes (daemons,
# sinks, guests, the CLI), each importing the project afresh: without cached
# bytecode every one of them compiles every module it imports again (~0.1 s
# for the CLI alone).  compileall writes only what is stale; the flag below
# lets pytest keep the assertion-rewritten test modules too (seconds of
# collection otherwise).
for _package in ("iofilter", "daemon", "sink", "ctl", "proto/liftshift/v1"):
    compileall.compile_dir(REPO / _package, quiet=2)
sys.dont_write_bytecode = False

# Tests press Ctrl-C on CLI processes.  A suite started in the background by
# a non-interactive shell (`.ci/run &`) inherits SIGINT ignored, and Python
# leaves an ignored SIGINT ignored in every process started from here: the
# CLI would never see the Ctrl-C.  Caught here, it is default again after exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The sink's C fast path, fresh, for this process and every sink the tests
# start (liftshift.sink.capply reads the variable when first imported).
_apply_lib = apply_library()
if _apply_lib is not None:
    os.environ.setdefault("LIFTSHIFT_APPLY_LIB", str(_apply_lib))


@pytest.fixture
def shm_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh directory on tmpfs (falls back to tmp_path) for ring files."""
    base = Path("/dev/shm")
    if base.is_dir() and os.access(base, os.W_OK):
        d = Path(tempfile.mkdtemp(prefix="liftshift-test-", dir=base))
        yield d
        shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path
