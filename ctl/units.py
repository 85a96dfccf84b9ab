"""Sizes, rates and durations, parsed from people and shown to them.

Parsing follows dd(1): a bare ``K``/``M``/``G``/``T`` and the IEC ``KiB``...
suffixes are powers of 1024, ``KB``/``MB``/... are powers of 1000, and a
plain number is bytes.  A rate is a size optionally followed by ``/s``.
Shown sizes always use IEC units (``64.0 MiB``), the unit a disk is sized in.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

_FACTORS: dict[str, int] = {"": 1, "b": 1}
for _i, _p in enumerate("kmgtp", start=1):
    _FACTORS[_p] = 1024**_i
    _FACTORS[f"{_p}ib"] = 1024**_i
    _FACTORS[f"{_p}b"] = 1000**_i

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$")


def parse_size(text: str) -> int:
    """Bytes in ``"64MiB"``, ``"1.5G"``, ``"100MB"`` or ``"4096"``; ValueError otherwise."""
    m = _SIZE.match(text.lower())
    if not m or m.group(2) not in _FACTORS:
        raise ValueError(f"{text!r} is not a size (examples: 4096, 64MiB, 1.5G, 100MB)")
    return int(float(m.group(1)) * _FACTORS[m.group(2)])


def parse_rate(text: str) -> int:
    """Bytes/s in ``"100MB/s"``, ``"50MiB/s"``, ``"1G"`` (``/s`` optional); ValueError otherwise."""
    body = text.strip()
    for suffix in ("/s", "ps"):
        if body.lower().endswith(suffix):
            body = body[: -len(suffix)]
            break
    try:
        return parse_size(body)
    except ValueError:
        raise ValueError(f"{text!r} is not a rate (examples: 100MB/s, 50MiB/s, 0 for none)") from None


def fmt_bytes(n: float) -> str:
    """``512 B``, ``64.0 MiB``, ``1.50 GiB``."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if n < 1024 or unit == "PiB":
            return f"{n:.2f} {unit}" if n < 10 else f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def fmt_rate(bytes_per_s: float) -> str:
    """``12.5 MiB/s``; ``-`` when nothing moves."""
    return f"{fmt_bytes(bytes_per_s)}/s" if bytes_per_s > 0 else "-"


def fmt_duration(seconds: float) -> str:
    """``0.42 s``, ``42 s``, ``3m05s``, ``2h03m``; ``-`` when unknown (negative or not finite)."""
    if seconds < 0 or not math.isfinite(seconds):
        return "-"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    s = int(round(seconds))
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``24h``, ``3d`` -> seconds (ValueError otherwise)."""
    t = text.strip().lower()
    unit = t[-1:] if t[-1:] in _DURATION else "s"
    number = t[:-1] if t[-1:] in _DURATION else t
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 15m, 24h, 3d)") from None
    if value <= 0 or value != value:
        raise ValueError(f"{text!r} is not a positive duration")
    return value * _DURATION[unit]


def fmt_percent(done: int, total: int) -> str:
    """``42%`` of the total (``100%`` for an empty total)."""
    if total <= 0:
        return "100%"
    return f"{min(100.0, 100.0 * done / total):.0f}%"


@dataclass(frozen=True)
class When:
    """A point in time from the command line: ``ago`` seconds before now, or Unix time ``at``."""

    ago: float | None = None
    at: float | None = None

    def resolve(self, now: float) -> float:
        return self.at if self.at is not None else now - (self.ago or 0.0)


def parse_when(text: str) -> When:
    """``90s``, ``15m``, ``6h``, ``3d`` (that long ago) or ``2026-11-26T10:00`` / ``2026-11-26 10:00:00`` /
    ``2026-11-26`` (local time); ValueError otherwise."""
    try:
        return When(ago=parse_duration(text))
    except ValueError:
        pass
    try:
        return When(at=datetime.fromisoformat(text.strip()).timestamp())  # naive: local time
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (90s, 15m, 6h, 3d) nor a date and time "
                         "(2026-11-26T10:00)") from None


T = TypeVar("T")


def _arg(parse: Callable[[str], T]) -> Callable[[str], T]:
    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return convert


# argparse ``type=`` converters: a bad value is a usage error naming it.
arg_size = _arg(parse_size)
arg_rate = _arg(parse_rate)
arg_duration = _arg(parse_duration)
arg_when = _arg(parse_when)
