"""liftshift ctl: the ``liftshift`` CLI and the async client library.

``from liftshift.ctl import Client`` is the library orchestration embeds (see
:mod:`liftshift.ctl.client`); :mod:`liftshift.ctl.main` is the CLI.
"""

from .client import Client

__all__ = ["Client"]
