"""Sizes and rates as people type them, and the watch's plain-line throttle (no daemon)."""

from __future__ import annotations

import asyncio
import time

import pytest
from ctlfake import FakeControl, event

from liftshift.ctl.output import FINAL_STATES, state_text
from liftshift.ctl.status import PlainLines
from liftshift.ctl.units import fmt_bytes, fmt_duration, parse_rate, parse_size, parse_when
from liftshift.v1 import control_pb2 as cpb


@pytest.mark.parametrize("text, value", [
    ("4096", 4096), ("0", 0), ("512B", 512), ("64MiB", 64 << 20), ("64M", 64 << 20), ("64mib", 64 << 20),
    ("100MB", 100_000_000), ("1.5G", 3 << 29), ("2 GiB", 2 << 30), ("1TB", 10**12), ("4k", 4096), ("4KB", 4000),
])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text, value", [
    ("100MB/s", 100_000_000), ("50MiB/s", 50 << 20), ("1G", 1 << 30), ("10mbps", 10_000_000), ("0", 0),
])
def test_parse_rate(text: str, value: int) -> None:
    assert parse_rate(text) == value


@pytest.mark.parametrize("text", ["", "fast", "12XB", "-5M", "1.2.3G", "MiB", "5 M B"])
def test_bad_sizes_and_rates_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)
    with pytest.raises(ValueError, match="is not a rate"):
        parse_rate(text)


def test_formats() -> None:
    assert [fmt_bytes(n) for n in (0, 1023, 1024, 64 << 20, 1536 << 20, 5 << 40)] == \
        ["0 B", "1023 B", "1.00 KiB", "64.0 MiB", "1.50 GiB", "5.00 TiB"]
    assert [fmt_duration(s) for s in (-1, 0.25, 42.4, 185, 7380, float("inf"))] == \
        ["-", "0.25 s", "42 s", "3m05s", "2h03m", "-"]


def test_rolled_back_is_a_coloured_final_state() -> None:
    text = state_text(cpb.MIGRATION_STATE_ROLLED_BACK)
    assert text.plain == "rolled-back" and "magenta" in str(text.style)
    assert cpb.MIGRATION_STATE_ROLLED_BACK in FINAL_STATES
    # Every state the daemon can send has a colour.
    for state in cpb.MigrationState.values():
        if state:
            assert state_text(state).style, cpb.MigrationState.Name(state)


def test_plain_lines_throttle_progress_per_vm_but_never_state_changes() -> None:
    fake = FakeControl()
    req = cpb.CreateMigrationRequest(vms=["web-1", "db-1"], destination="s:1", start=True)
    # Build the migration through the fake's own handler (no server needed).
    m = asyncio.run(fake.CreateMigration(req, None))
    lines: list[str] = []
    now = [100.0]
    plain = PlainLines(lines.append, every=2.0, now=lambda: now[0])
    for t in (100.0, 100.5, 101.9, 102.0, 102.1, 103.9, 104.0):
        now[0] = t
        plain.event(event(fake.progress(m.id, (t - 100) / 4), cpb.EVENT_KIND_PROGRESS))
        if t == 102.1:
            plain.event(event(m, cpb.EVENT_KIND_ERROR, vm="db-1", message="sink unreachable"))
    kinds = [(line.split()[2], line.split()[3]) for line in lines]
    # Each VM at t=100, 102 and 104; the error line as it came.
    assert kinds == [("web-1", "progress"), ("db-1", "progress")] * 2 + [("db-1", "error")] + \
        [("web-1", "progress"), ("db-1", "progress")]
    assert "copied 0 B / 1.56 GiB (0%)" in lines[0] and "(100%)" in lines[-1]
    # A progress event about one VM prints only that VM.
    now[0] = 200.0
    plain.event(event(m, cpb.EVENT_KIND_PROGRESS, vm="db-1"))
    assert lines[-1].split()[2] == "db-1" and len(lines) == 8


@pytest.mark.parametrize("text, expected", [
    ("6h", 1_000_000.0 - 6 * 3600),
    ("90m", 1_000_000.0 - 90 * 60),
    ("3d", 1_000_000.0 - 3 * 86400),
])
def test_when_as_a_duration_ago(text: str, expected: float) -> None:
    assert parse_when(text).resolve(1_000_000.0) == expected


def test_when_as_a_local_time() -> None:
    assert parse_when("2026-11-26T10:00").resolve(0.0) == time.mktime((2026, 11, 26, 10, 0, 0, 0, 0, -1))
    assert parse_when("2026-11-26").resolve(0.0) == time.mktime((2026, 11, 26, 0, 0, 0, 0, 0, -1))
    with pytest.raises(ValueError, match="neither a duration"):
        parse_when("yesterday")
