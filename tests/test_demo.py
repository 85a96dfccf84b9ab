"""`make demo` itself: the README's main command must work and say what it proved."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from tooling import REPO


def _our_processes(marker: str) -> list[str]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd:
                out.append(cmd)
    return out


def test_make_demo_migrates_cuts_over_and_cleans_up() -> None:
    before = set(Path("/tmp").glob("liftshift-demo-*"))
    t0 = time.monotonic()
    got = subprocess.run(["make", "-s", "demo"], cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    took = time.monotonic() - t0
    out = got.stdout
    assert got.returncode == 0, f"{out[-3000:]}\n{got.stderr[-3000:]}"
    assert "demo PASSED" in out
    assert re.search(r"^verification: identical \(\d+ chunks hashed at cutover, \d+ proven before it\)", out, re.M)
    m = re.search(r"^downtime: (\d+\.\d+) s", out, re.M)
    assert m and 0 < float(m.group(1)) < 30, out[-2000:]
    # Both disks: what the destination booted from is the stopped source, byte for byte.
    assert len(re.findall(r"^  disk\d .* identical$", out, re.M)) == 2
    # The progress of the watch and the cutover steps were shown.
    assert "cutover-step" in out and "stopping the source VM" in out and "completed" in out
    assert took < 120, f"make demo took {took:.0f}s (must stay under two minutes)"
    assert _our_processes("liftshift-demo-") == [], "make demo left processes running"
    assert set(Path("/tmp").glob("liftshift-demo-*")) <= before, "make demo left its files behind"
