"""A test CA and the certificates both daemons and the CLI need for mutual TLS.

Made with the product's own quick-start (``liftshift.ctl.certs``) in one
directory laid out as the CLI's TLS directory expects: ``ca.pem`` and the
CLI's ``client.pem``/``client.key`` (an admin), plus the source daemon's
server and client certificates, the sink's server certificate, and clients
of each role for the security tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from liftshift.ctl import certs


@dataclass(frozen=True)
class Pki:
    dir: Path

    def pem(self, name: str) -> Path:
        return self.dir / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    def daemon_toml(self, extra: str = "") -> str:
        """The source daemon's [tls] table (``extra``: more keys of it)."""
        return (f'[tls]\ncert = "{self.pem("daemon")}"\nkey = "{self.key("daemon")}"\nca = "{self.ca}"\n'
                f'client_cert = "{self.pem("daemon-client")}"\nclient_key = "{self.key("daemon-client")}"\n{extra}')

    def sink_toml(self) -> str:
        """The sink's top-level TLS keys."""
        return f'tls_cert = "{self.pem("sink")}"\ntls_key = "{self.key("sink")}"\ntls_ca = "{self.ca}"\n'

    def credentials(self, name: str = "client") -> grpc.ChannelCredentials:
        """Channel credentials of client ``name`` (default the admin the CLI uses)."""
        return grpc.ssl_channel_credentials(self.ca.read_bytes(), self.key(name).read_bytes(),
                                            self.pem(name).read_bytes())

    def cli_env(self) -> dict[str, str]:
        """Environment that makes the CLI use this PKI (as an admin)."""
        return {"LIFTSHIFT_TLS_DIR": str(self.dir)}


def make_pki(d: Path) -> Pki:
    """A fresh CA in ``d`` and every certificate the tests use."""
    certs.init_ca(d)
    certs.issue(d, "daemon", kind="server")
    certs.issue(d, "sink", kind="server")
    certs.issue(d, "daemon-client", kind="client", role="operator")
    certs.issue(d, "client", kind="client", role="admin")
    certs.issue(d, "operator", kind="client", role="operator")
    certs.issue(d, "viewer", kind="client", role="viewer")
    return Pki(d)
