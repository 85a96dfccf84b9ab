"""Build the C ring producer for tests, with the Makefile's exact commands.

``c_library()`` and ``stress_binary()`` return ``build/lib/libliftshift_ring.so``
and ``build/bin/ring_stress`` when those are newer than their sources (what
``make`` left behind), and otherwise compile fresh copies into a private
temporary directory, so tests never use a stale artefact and never write into
the work tree.  A missing compiler or ``xxhash.h`` skips the calling test with
a reason, except under ``LIFTSHIFT_REQUIRE_TOOLS=1`` (CI), where it fails it
(the policy of :mod:`tooling`).  A compile error always fails: it is a bug,
not a missing tool.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from tooling import missing

REPO = Path(__file__).resolve().parent.parent
IOFILTER = REPO / "iofilter"

CFLAGS = ("-O2", "-g", "-Wall", "-Wextra", "-Werror", "-std=gnu11")
LIBS = ("-lxxhash", "-lpthread")
LIB_SOURCES = ("iofilter/liftshift_ring.c", "iofilter/liftshift_nbd.c")
APPLY_SOURCES = ("sink/liftshift_apply.c",)
STRESS_SOURCES = ("iofilter/ring_stress.c", "iofilter/liftshift_ring.c")
HEADERS = ("iofilter/liftshift_ring.h", "iofilter/liftshift_nbd.h")


@functools.cache
def _toolchain_problem() -> str | None:
    """Why C cannot be built here, or None when it can."""
    if shutil.which("cc") is None:
        return "no C compiler: `cc` is not on PATH"
    probe = subprocess.run(
        ["cc", "-std=gnu11", "-fsyntax-only", "-x", "c", "-"],
        input="#include <xxhash.h>\nint main(void) { return (int)XXH3_64bits(\"\", 0); }\n",
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return "xxhash.h not found (install libxxhash-dev)"
    return None


def require_toolchain() -> None:
    """Skip (or fail under LIFTSHIFT_REQUIRE_TOOLS=1) when C cannot be built."""
    problem = _toolchain_problem()
    if problem:
        missing(problem)


@functools.cache
def _scratch() -> Path:
    d = Path(tempfile.mkdtemp(prefix="liftshift-cbuild-"))
    atexit.register(shutil.rmtree, d, True)
    return d


def _fresh(artefact: Path, sources: tuple[str, ...]) -> bool:
    if not artefact.is_file():
        return False
    built = artefact.stat().st_mtime_ns
    return all((REPO / s).stat().st_mtime_ns <= built for s in sources + HEADERS)


def _compile(args: list[str], what: str) -> None:
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"building {what} failed:\n$ {' '.join(args)}\n{proc.stdout}{proc.stderr}")


@functools.cache
def _build(kind: str) -> Path:
    sources: tuple[str, ...]
    extra: tuple[str, ...]
    if kind == "lib":
        rel, sources, extra = "lib/libliftshift_ring.so", LIB_SOURCES, ("-fPIC", "-shared")
    elif kind == "apply":
        rel, sources, extra = "lib/libliftshift_apply.so", APPLY_SOURCES, ("-fPIC", "-shared")
    else:
        rel, sources, extra = "bin/ring_stress", STRESS_SOURCES, ()
    made = REPO / "build" / rel
    if _fresh(made, sources):
        return made
    require_toolchain()
    out = _scratch() / rel
    out.parent.mkdir(parents=True, exist_ok=True)
    _compile(["cc", *CFLAGS, *extra, "-o", str(out), *sources, *LIBS], rel)
    return out


def c_library() -> Path:
    """``libliftshift_ring.so``, fresh."""
    return _build("lib")


def apply_library() -> Path | None:
    """``libliftshift_apply.so`` (the sink's C fast path), fresh; None when C
    cannot be built here (the sink then runs its Python path)."""
    if _toolchain_problem() is not None and not _fresh(REPO / "build/lib/libliftshift_apply.so", APPLY_SOURCES):
        return None
    return _build("apply")


def stress_binary() -> Path:
    """The ``ring_stress`` program, fresh."""
    return _build("bin")


def compile_program(name: str, source: str | None = None, *, sources: tuple[str, ...] = (),
                    extra_flags: tuple[str, ...] = ()) -> Path:
    """Compile a test program from C text ``source`` and/or repo-relative ``sources``.

    ``liftshift_ring.h`` is on the include path; ``extra_flags`` come after
    the Makefile's flags (a sanitizer build adds its ``-fsanitize=`` here).
    """
    require_toolchain()
    d = _scratch() / "programs"
    d.mkdir(exist_ok=True)
    files = [str(REPO / s) for s in sources]
    if source is not None:
        src = d / f"{name}.c"
        src.write_text(source)
        files.insert(0, str(src))
    out = d / name
    _compile(["cc", *CFLAGS, *extra_flags, "-I", str(IOFILTER), "-o", str(out), *files, *LIBS], name)
    return out
