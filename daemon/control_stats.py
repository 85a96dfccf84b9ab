"""GetStats: the statistics RPC of the Control service.

A mixin of :class:`~liftshift.daemon.control.ControlServicer`: the daemon
hands it the :class:`~liftshift.daemon.stats.StatsStore` with
:meth:`StatsRpcs.enable_stats`.  The request is checked field by field (an
error names the field), the query runs in a worker thread, and an answer
that would not fit in one gRPC message is refused with a hint instead of
failing in transport.  1 s rows travel without ``peaks`` (they equal the
values); minute rows carry both.
"""

from __future__ import annotations

import asyncio
import math
import time

import grpc

from liftshift.v1 import control_pb2 as cpb

from .errors import FailedPrecondition, InvalidArgument, TooLarge
from .stats import METRICS, SCOPES, Row, StatsStore

DEFAULT_WINDOW_S = 3600.0  # since = 0: the last hour
_RESOLUTIONS = ("auto", "1s", "1m")


def row_pb(r: Row) -> cpb.StatsRow:
    """A stored row on the wire."""
    out = cpb.StatsRow(t=r.t, scope=r.scope, key=r.key, resolution="1s" if r.resolution == 1 else "1m",
                       seconds=r.seconds, values=r.values)
    if r.resolution != 1:
        out.peaks.update(r.peaks)
    return out


def row_from_pb(p: cpb.StatsRow) -> Row:
    """The inverse of :func:`row_pb` (a 1 s row's peaks are its gauges' values)."""
    resolution = 1 if p.resolution == "1s" else 60
    values = dict(p.values)
    peaks = dict(p.peaks) if resolution != 1 else {n: v for n, v in values.items() if METRICS[n].kind == "gauge"}
    return Row(p.t, p.scope, p.key, resolution, p.seconds, values, peaks)


def check_request(req: cpb.StatsRequest, now: float) -> tuple[float, float | None, str | None, str | None,
                                                                list[str] | None, str]:
    """(since, until, scope, key, metrics, resolution) for :meth:`StatsStore.query`.

    Raises InvalidArgument naming the field.
    """
    for name in ("since", "until"):
        v = getattr(req, name)
        if not math.isfinite(v) or v < 0:
            raise InvalidArgument(f"field '{name}': {v} is not a Unix time", hint="seconds since 1970, 0 for the "
                                  + ("last hour" if name == "since" else "present"))
    since = req.since or now - DEFAULT_WINDOW_S
    until = req.until or None
    if until is not None and until <= since:
        raise InvalidArgument(f"field 'until': {until} is not after since ({since})")
    if req.scope and req.scope not in SCOPES:
        raise InvalidArgument(f"field 'scope': {req.scope!r} is not a statistics scope",
                              hint=f"one of {', '.join(SCOPES)}, or empty for every scope")
    unknown = [n for n in req.metrics if n not in METRICS]
    if unknown:
        raise InvalidArgument(f"field 'metrics': {unknown[0]!r} is not a metric",
                              hint=f"known: {', '.join(METRICS)}")
    resolution = req.resolution or "auto"
    if resolution not in _RESOLUTIONS:
        raise InvalidArgument(f"field 'resolution': {req.resolution!r} is not a resolution",
                              hint="auto, 1s or 1m")
    return since, until, req.scope or None, req.key or None, list(req.metrics) or None, resolution


class StatsRpcs:
    """The statistics RPCs; the Control servicer inherits them."""

    stats_store: StatsStore | None = None
    stats_max_bytes: int = 16 << 20

    def enable_stats(self, store: StatsStore, max_message: int) -> None:
        """Answer GetStats from ``store``, in messages of at most ``max_message`` bytes."""
        self.stats_store = store
        self.stats_max_bytes = max_message

    async def GetStats(self, request: cpb.StatsRequest, context: grpc.aio.ServicerContext) -> cpb.StatsResponse:
        store = self.stats_store
        if store is None:
            raise FailedPrecondition("this daemon keeps no statistics")
        since, until, scope, key, metrics, resolution = check_request(request, time.time())
        rows = await asyncio.to_thread(store.query, since, until, scope, key, metrics, resolution)
        resp = cpb.StatsResponse(rows=[row_pb(r) for r in rows])
        size = resp.ByteSize()
        if size > self.stats_max_bytes - 4096:
            raise TooLarge(f"{len(rows)} statistics rows ({size} bytes) do not fit in one answer "
                           f"(max_message {self.stats_max_bytes})",
                           hint="ask for a shorter time range, one scope or key, fewer metrics, or resolution 1m")
        return resp
