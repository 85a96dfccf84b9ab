"""The one daemon skeleton both liftshift daemons run in.

Run until SIGTERM or SIGINT, reload on SIGHUP, stop the gRPC server with a
grace period in ``finally``, and tell systemd when ready (``Type=notify``:
``READY=1`` is sent only after every server is listening).  Every server gets
the error interceptor, gRPC health checking and server reflection, and
explicit message-size limits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from .errors import ErrorInterceptor

if TYPE_CHECKING:
    from grpc_health.v1 import health

log = logging.getLogger("liftshift.service")


def sd_notify(state: str) -> bool:
    """Send ``state`` to systemd's notify socket, if there is one."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError as e:
        # A stale NOTIFY_SOCKET (not started by systemd after all) must not
        # take down a daemon that is already serving.
        log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), e)
        return False
    return True


def grpc_options(max_message: int) -> list[tuple[str, int]]:
    """Channel/server options shared by every liftshift endpoint."""
    return [
        ("grpc.max_send_message_length", max_message),
        ("grpc.max_receive_message_length", max_message),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ]


def make_server(max_message: int, *, outer: Sequence[grpc.aio.ServerInterceptor] = (),
                inner: Sequence[grpc.aio.ServerInterceptor] = ()) -> grpc.aio.Server:
    """A grpc.aio server with the error interceptor and size limits.

    ``outer`` interceptors run before the error interceptor (authentication:
    a refused call never reaches it), ``inner`` ones between it and the
    handler (they see the handler's own exceptions)."""
    # gRPC turns SO_REUSEPORT on by default: a second daemon configured with
    # the same port would then bind it too and silently take half of the
    # connections.  Off, the second daemon fails to start instead.
    return grpc.aio.server(interceptors=[*outer, ErrorInterceptor(), *inner],
                           options=[*grpc_options(max_message), ("grpc.so_reuseport", 0)])


def add_health_and_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> health.aio.HealthServicer:
    """Register health checking (every service SERVING) and reflection."""
    # Imported here: clients (the CLI, through grpc_options) need none of it.
    from grpc_health.v1 import health, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    hs = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    names = list(service_names)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    return hs


async def mark_serving(hs: health.aio.HealthServicer, service_names: Iterable[str]) -> None:
    """Report the overall server ("") and each service as SERVING."""
    from grpc_health.v1 import health_pb2

    for name in ["", *service_names]:
        await hs.set(name, health_pb2.HealthCheckResponse.SERVING)


async def run(start: Callable[[], Awaitable[Callable[[], Awaitable[None]]]],
              reload: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run a daemon: ``start()`` brings it up and returns its ``stop()``.

    Blocks until SIGTERM/SIGINT; SIGHUP calls ``reload``.  ``stop`` always
    runs, so every migration is left resumable.
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    reloads: set[asyncio.Task[None]] = set()
    if reload is not None:
        def on_hup() -> None:
            # Keep a reference (the loop holds tasks weakly) and log failures,
            # which would otherwise surface only as "exception never retrieved".
            task = asyncio.ensure_future(reload())
            reloads.add(task)
            task.add_done_callback(_reload_done(reloads))

        loop.add_signal_handler(signal.SIGHUP, on_hup)
    stop = await start()
    try:
        sd_notify("READY=1")
        await stopping.wait()
        sd_notify("STOPPING=1")
        log.info("shutting down")
    finally:
        await stop()


def _reload_done(tasks: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("reload failed: %s", task.exception(), exc_info=task.exception())

    return done


def main_loop(coro_factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``coro_factory()`` on uvloop (one event loop per process)."""
    import uvloop

    uvloop.run(coro_factory())
