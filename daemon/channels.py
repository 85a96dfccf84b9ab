"""Dialing other liftshift endpoints: the one place that decides TLS or plain text.

The source daemon talks to sinks from several places (replicators, seeds,
the estimator's probe, the platforms' destination calls).  They all dial
through :func:`dial`, which uses the channel credentials the daemon set at
start with :func:`configure` (its client certificate and the CA sinks must
chain to), or plain text when the daemon runs with ``tls.insecure``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import grpc

from .errors import Unavailable
from .service import grpc_options

T = TypeVar("T")

_creds: grpc.ChannelCredentials | None = None


def configure(creds: grpc.ChannelCredentials | None) -> None:
    """Credentials for every channel this process dials from now on (None: plain text)."""
    global _creds
    _creds = creds


def secure() -> bool:
    return _creds is not None


def dial(address: str, max_message: int) -> grpc.aio.Channel:
    """A channel to another liftshift endpoint, over TLS when configured."""
    if _creds is None:
        return grpc.aio.insecure_channel(address, options=grpc_options(max_message))
    return grpc.aio.secure_channel(address, _creds, options=grpc_options(max_message))


async def call(rpc: Awaitable[T], what: str) -> T:
    """Await ``rpc``; its channel closed under it (a replicator stopped) is Unavailable.

    grpc.aio ends the calls in flight on a closed channel with
    asyncio.CancelledError although the awaiting task was never cancelled:
    left alone it unwinds the caller as if it had been (once it silently
    ended the migration monitor).  A real cancellation of the caller still
    propagates as CancelledError.
    """
    try:
        return await rpc
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        raise Unavailable(f"{what}: the channel was closed during the call") from None
