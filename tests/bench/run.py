"""Run every benchmark under tests/bench/, print a table, write JSON.

Each ``bench_*.py`` module exposes ``run() -> list[dict]`` returning result
rows ``{"name", "metric", "value", "unit", "baseline", "baseline_value",
"ratio"}`` (baseline fields None where there is none).  Baselines are
measured in the same run as the thing they are compared with, because
timings on a shared machine drift between runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIELDS = ("name", "metric", "value", "unit", "baseline", "baseline_value", "ratio")


def result(name: str, metric: str, value: float, unit: str, baseline: str | None = None,
           baseline_value: float | None = None) -> dict:
    """One result row; the ratio is value / baseline_value when there is a baseline."""
    ratio = value / baseline_value if baseline_value else None
    return {"name": name, "metric": metric, "value": round(value, 3), "unit": unit, "baseline": baseline,
            "baseline_value": round(baseline_value, 3) if baseline_value is not None else None,
            "ratio": round(ratio, 3) if ratio is not None else None}


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = mod
    spec.loader.exec_module(mod)
    return mod


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="bench-results.json")
    ap.add_argument("-k", default="", help="only modules whose name contains this")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    rows: list[dict] = []
    failed = []
    for path in sorted(HERE.glob("bench_*.py")):
        if args.k not in path.stem:
            continue
        print(f"== {path.stem}", flush=True)
        try:
            got = _load(path).run()
        except Exception:
            traceback.print_exc()
            failed.append(path.stem)
            continue
        for row in got:
            print("   " + "  ".join(f"{k}={_fmt(row[k])}" for k in FIELDS if row[k] is not None), flush=True)
        rows.extend(got)
    widths = [max(len(f), *(len(_fmt(r[f])) for r in rows)) if rows else len(f) for f in FIELDS]
    print()
    print("  ".join(f.ljust(w) for f, w in zip(FIELDS, widths, strict=True)))
    for r in rows:
        print("  ".join(_fmt(r[f]).ljust(w) for f, w in zip(FIELDS, widths, strict=True)))
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nwrote {len(rows)} results to {args.out}")
    if failed:
        print(f"FAILED benchmarks: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
