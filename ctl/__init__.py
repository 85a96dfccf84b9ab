"""liftshift ctl: the ``liftshift`` CLI and the async client library.

``from liftshift.ctl import Client`` is the library orchestration embeds (see
:mod:`liftshift.ctl.client`); :mod:`liftshift.ctl.main` is the CLI.  The
client is imported on first use, so that the CLI can configure gRPC before
gRPC is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Client"]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from .client import Client

        return Client
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
