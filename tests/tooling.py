"""External-tool policy shared by every test.

A test that needs an external tool calls :func:`require_tool`: the test skips
with a reason when the tool is missing, except when
``LIFTSHIFT_REQUIRE_TOOLS=1`` (CI), where it fails instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import xxhash

REPO = Path(__file__).resolve().parent.parent


def tools_required() -> bool:
    """True when a missing tool must fail the test (CI)."""
    return os.environ.get("LIFTSHIFT_REQUIRE_TOOLS") == "1"


def missing(reason: str) -> None:
    """Skip, or fail under LIFTSHIFT_REQUIRE_TOOLS=1."""
    if tools_required():
        pytest.fail(f"required tool missing: {reason}")
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """Return the path of executable ``name`` or skip/fail with a reason."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed")
    assert path is not None
    return path


def file_digest(path: Path) -> bytes:
    """XXH3-128 of a whole file."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while block := f.read(4 << 20):
            h.update(block)
    return h.digest()
