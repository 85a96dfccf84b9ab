"""Charts of replication statistics: PNG files, sparklines, a live terminal view.

Plan.

* **Pure functions of rows.**  Everything here takes
  :class:`liftshift.daemon.stats.Row` lists (as ``StatsStore.query`` returns
  them, or ``Row.from_dict`` of its JSON) and returns a file, a string or a
  rich renderable; fetching and refreshing is the command's job.
* **matplotlib only when drawing.**  It is an optional dependency (the
  ``charts`` extra, not needed on daemon hosts), imported inside
  :func:`render_png`; a missing one is a :class:`ChartsUnavailable` that says
  what to install.  The figure is drawn with the Agg canvas directly, never
  through pyplot, so no global backend or figure state is touched.
* **Three panels, one time axis.**  Throughput (background and live bytes/s),
  lag (seconds) and backlog/dirty (bytes), one line per metric and key.
  Minute rows are drawn at their minute's middle, gauges with a band up to
  the minute's max; a gap of more than a few intervals breaks the line.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from liftshift.daemon.errors import FailedPrecondition, InvalidArgument
from liftshift.daemon.stats import Row

from .units import fmt_bytes, fmt_duration, fmt_rate

BLOCKS = "▁▂▃▄▅▆▇█"

# (panel title, metrics, y unit): the panels of render_png, top to bottom.
PANELS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("throughput", ("background_bps", "live_bps"), "B/s"),
    ("lag", ("lag_s",), "s"),
    ("backlog", ("backlog_bytes", "dirty_bytes"), "B"),
)
_LABELS = {"background_bps": "background", "live_bps": "live", "lag_s": "lag", "backlog_bytes": "backlog",
           "dirty_bytes": "dirty"}
_GAP = 1.5  # more than this many row intervals (and 2 s) without data breaks a line


class ChartsUnavailable(FailedPrecondition):
    """matplotlib, which draws the charts, is not installed."""


def human(value: float, unit: str = "B") -> str:
    """Compact IEC axis label: ``0``, ``512 B``, ``1.5 KiB``, ``12 MiB/s`` (unit "B" or "B/s")."""
    suffix = unit[1:]  # "" or "/s"
    if value == 0:
        return "0"
    sign, n = ("-" if value < 0 else ""), abs(value)
    if n < 1024:
        return f"{sign}{n:g} B{suffix}"
    for u in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if n < 1024 or u == "PiB":
            return f"{sign}{n:.3g} {u}{suffix}" if n < 100 else f"{sign}{n:.0f} {u}{suffix}"
    raise AssertionError("unreachable")


def _by_key(rows: Iterable[Row]) -> dict[tuple[str, str], list[Row]]:
    out: dict[tuple[str, str], list[Row]] = {}
    for r in sorted(rows, key=lambda r: (r.scope, r.key, r.t)):
        out.setdefault((r.scope, r.key), []).append(r)
    return out


def _covers(r: Row) -> tuple[float, float]:
    """The time a row covers: a 1 s row the ``seconds`` before its stamp, a minute row its minute."""
    return (r.t, r.t + r.resolution) if r.resolution > 1 else (r.t - r.seconds, r.t)


def _line(rows: Sequence[Row], metric: str) -> tuple[list[datetime], list[float], list[float]]:
    """x (local time), mean and max of ``metric``, with a NaN point where the rows have a gap in time.

    A row without the metric is skipped (the line joins its neighbours): it
    was not reported then, which is not a gap in time.
    """
    xs: list[datetime] = []
    ys: list[float] = []
    tops: list[float] = []
    prev: Row | None = None
    for r in rows:
        mid = r.t + r.resolution / 2 if r.resolution > 1 else r.t
        gap = prev is not None and _covers(r)[0] - _covers(prev)[1] > max(2.0, _GAP * r.resolution)
        if gap and ys and not math.isnan(ys[-1]):
            xs.append(datetime.fromtimestamp(mid))
            ys.append(math.nan)
            tops.append(math.nan)
        prev = r
        if metric in r.values:
            v = r.values[metric]
            xs.append(datetime.fromtimestamp(mid))
            ys.append(v)
            tops.append(r.peaks.get(metric, v))
    return xs, ys, tops


def render_png(rows: Iterable[Row], path: str | Path, *, title: str, width: float = 10.0, height: float = 7.5,
               dpi: int = 100) -> Path:
    """Draw throughput, lag and backlog/dirty of ``rows`` into a PNG at ``path``; returns the path.

    Raises InvalidArgument when there are no rows, ChartsUnavailable without matplotlib.
    """
    series = _by_key(rows)
    if not series:
        raise InvalidArgument("no statistics to chart in that time range", hint="widen the range (--since)")
    try:
        import matplotlib
        import matplotlib.dates as mdates
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter, MaxNLocator
    except ImportError as e:
        raise ChartsUnavailable(f"charts need matplotlib, which cannot be imported ({e})",
                                hint="pip install 'liftshift[charts]'") from None

    class IECLocator(MaxNLocator):
        """Round ticks in the IEC unit of the axis (20 MiB, not 19.1 MiB)."""

        def tick_values(self, vmin: float, vmax: float) -> Any:
            scale = 1024.0 ** min(5, int(math.log(max(abs(vmax), 1.0), 1024)))
            return np.asarray(super().tick_values(vmin / scale, vmax / scale)) * scale

    palette = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]  # tab10 unless restyled
    banded = False
    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(PANELS), 1, sharex=True)
    fig.suptitle(title)
    several = len(series) > 1
    for ax, (panel, metrics, unit) in zip(axes, PANELS, strict=True):
        for ki, ((_, key), key_rows) in enumerate(series.items()):
            for mi, metric in enumerate(metrics):
                xs, ys, tops = _line(key_rows, metric)
                if not xs:
                    continue
                color = palette[(ki * len(metrics) + mi) % len(palette)]
                label = f"{key} {_LABELS[metric]}" if several else _LABELS[metric]
                ax.plot(xs, ys, color=color, linewidth=1.4, label=label)
                if any(t != y for t, y in zip(tops, ys, strict=True) if not math.isnan(y)):
                    ax.fill_between(xs, ys, tops, color=color, alpha=0.2, linewidth=0)  # the minutes' max
                    banded = True
                elif panel == "throughput":
                    ax.fill_between(xs, 0, ys, color=color, alpha=0.15, linewidth=0)
        ax.set_ylabel(f"{panel} ({unit})")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if unit == "s":
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g} s"))
        else:
            ax.yaxis.set_major_locator(IECLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _, u=unit: human(v, u)))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize="small")
    locator = mdates.AutoDateLocator()
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axes[-1].set_xlabel("local time" + ("; shaded above a line: up to each minute's max" if banded else ""))
    out = Path(path)
    fig.savefig(out, format="png")
    return out


def _resample(values: Sequence[float | None], width: int) -> list[float]:
    """``values`` as at most ``width`` bucket means (NaN for missing values and empty buckets)."""
    vals = [math.nan if v is None else float(v) for v in values]
    if len(vals) <= width:
        return vals
    out = []
    for i in range(width):
        bucket = [v for v in vals[i * len(vals) // width:(i + 1) * len(vals) // width] if not math.isnan(v)]
        out.append(sum(bucket) / len(bucket) if bucket else math.nan)
    return out


def sparkline(values: Sequence[float | None], width: int, *, lo: float | None = None,
              hi: float | None = None) -> str:
    """``values`` as exactly ``width`` block characters, newest on the right.

    Longer input is averaged into ``width`` buckets; shorter input is padded
    with spaces on the left.  The scale runs from ``lo`` (default: the
    smaller of 0 and the minimum) to ``hi`` (default: the maximum); a missing
    or non-finite value is a space.
    """
    if width <= 0:
        return ""
    vals = _resample(values, width)
    finite = [v for v in vals if math.isfinite(v)]
    if not finite:
        return " " * width
    lo = min(0.0, *finite) if lo is None else lo
    hi = max(finite) if hi is None else hi
    span = hi - lo
    chars = []
    for v in vals:
        if not math.isfinite(v):
            chars.append(" ")
        elif span <= 0:
            chars.append(BLOCKS[0] if v <= lo else BLOCKS[-1])
        else:
            level = round((min(max(v, lo), hi) - lo) / span * (len(BLOCKS) - 1))
            chars.append(BLOCKS[level])
    return " " * (width - len(chars)) + "".join(chars)


def _latest(rows: Sequence[Row], metric: str) -> float | None:
    for r in reversed(rows):
        if metric in r.values:
            return r.values[metric]
    return None


def dashboard(rows_by_key: Mapping[str, Sequence[Row]], *, width: int = 24, title: str | None = None) -> Table:
    """A table with one line per key: latest rates, lag, backlog and dirty, with sparklines of their trend.

    ``rows_by_key``: rows of each key, oldest first (e.g. the last minute of
    1 s rows); ``liftshift stats --watch`` re-renders it on every refresh.
    """
    scopes = {r.scope for rows in rows_by_key.values() for r in rows}
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column(scopes.pop() if len(scopes) == 1 else "key", no_wrap=True)
    table.add_column("background", justify="right")
    table.add_column("live", justify="right")
    table.add_column("throughput", no_wrap=True)
    table.add_column("lag", justify="right")
    table.add_column("lag trend", no_wrap=True)
    table.add_column("backlog", justify="right")
    table.add_column("dirty", justify="right")

    def val(rows: Sequence[Row], metric: str, fmt: Any) -> str:
        v = _latest(rows, metric)
        return "-" if v is None else fmt(v)

    for key, rows in rows_by_key.items():
        rows = sorted(rows, key=lambda r: r.t)
        through = [None if "background_bps" not in r.values and "live_bps" not in r.values
                   else r.values.get("background_bps", 0.0) + r.values.get("live_bps", 0.0) for r in rows]
        lag = [r.values.get("lag_s") for r in rows]
        table.add_row(key, val(rows, "background_bps", fmt_rate), val(rows, "live_bps", fmt_rate),
                      Text(sparkline(through, width), style="cyan"), val(rows, "lag_s", fmt_duration),
                      Text(sparkline(lag, width), style="yellow"), val(rows, "backlog_bytes", fmt_bytes),
                      val(rows, "dirty_bytes", fmt_bytes))
    return table
