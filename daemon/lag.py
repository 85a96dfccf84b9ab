"""Replication lag samples: a sliding window with cheap percentiles.

Status calls come every few tens of milliseconds while the window holds up
to 100,000 samples, so percentiles come from a histogram kept in step with
the window instead of a sort.
"""

from __future__ import annotations

from collections import deque


class LagWindow:
    """The most recent ``size`` lag samples (ns) and a histogram of exactly
    those, so a status call reads percentiles in O(buckets) instead of sorting.

    Buckets are exact below 32 ns, then 16 per power of two; :meth:`quantile`
    returns a bucket's midpoint, within about 3% of the true sample.
    """

    def __init__(self, size: int = 100_000) -> None:
        self.samples: deque[int] = deque(maxlen=size)
        self._counts = [0] * (64 * 16)

    @staticmethod
    def _bucket(ns: int) -> int:
        b = ns.bit_length()
        return ns if b <= 5 else (b - 5) * 16 + (ns >> (b - 5))

    def extend(self, samples: list[int]) -> None:
        counts, window = self._counts, self.samples
        for ns in samples:
            ns = max(0, ns)
            if len(window) == window.maxlen:
                counts[self._bucket(window[0])] -= 1
            window.append(ns)
            counts[self._bucket(ns)] += 1

    def __len__(self) -> int:
        return len(self.samples)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1) of the window in seconds; 0.0 when empty."""
        rank = min(len(self.samples) - 1, int(q * len(self.samples)))
        if rank < 0:
            return 0.0
        seen = 0
        for idx, n in enumerate(self._counts):
            seen += n
            if seen > rank:
                if idx < 32:
                    return idx / 1e9
                shift, mant = idx // 16 - 1, idx % 16 + 16
                return ((mant << shift) + ((1 << shift) - 1) / 2) / 1e9
        return 0.0
