"""The daemon's lag window: bucketed percentiles over the most recent samples."""

from __future__ import annotations

import random

from liftshift.daemon.lag import LagWindow


def _exact(samples: list[int], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] / 1e9


def test_empty_window_reports_zero() -> None:
    w = LagWindow()
    assert len(w) == 0 and w.quantile(0.5) == 0.0 and w.quantile(0.99) == 0.0


def test_quantiles_are_within_bucket_precision_of_the_recent_samples() -> None:
    rng = random.Random(3)
    samples = [int(rng.lognormvariate(15, 2)) for _ in range(5000)]
    w = LagWindow(size=1000)
    w.extend(samples[:2500])
    w.extend(samples[2500:])
    recent = samples[-1000:]  # older samples left the window and its histogram
    assert len(w) == 1000 and sum(w._counts) == 1000
    for q in (0.0, 0.5, 0.9, 0.99, 1.0):
        assert abs(w.quantile(q) - _exact(recent, q)) <= 0.035 * _exact(recent, q)


def test_small_values_are_exact_and_negative_ones_clamp_to_zero() -> None:
    w = LagWindow()
    w.extend([-5, 0, 7, 31])
    assert [w.quantile(q) for q in (0.0, 0.25, 0.5, 0.75)] == [0.0, 0.0, 7e-9, 31e-9]
