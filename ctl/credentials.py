"""How the CLI (and the Python client) authenticate to a liftshift daemon or sink.

Mutual TLS by default: the CA the server's certificate chains to, and this
client's certificate and key (its role is in the certificate, see
``liftshift certs``), optionally a bearer token on top.  Each comes from its
option, else its environment variable, else the TLS directory
(``--tls-dir``, env ``LIFTSHIFT_TLS_DIR``, default ``~/.config/liftshift``)
holding ``ca.pem``, ``client.pem`` and ``client.key``.  With no CA found
anywhere the client speaks plain text, which only a daemon set to
``insecure`` on loopback accepts.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from liftshift.daemon.security import load_channel_credentials
from liftshift.daemon.service import grpc_options

DEFAULT_TLS_DIR = Path("~/.config/liftshift")


@dataclass(frozen=True)
class Credentials:
    """What a client presents (all None: plain text)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    token: str | None = None
    looked_in: Path | None = None  # the TLS directory searched, for error hints

    @classmethod
    def resolve(cls, *, tls_dir: str | None = None, ca: str | None = None, cert: str | None = None,
                key: str | None = None, token: str | None = None, insecure: bool = False,
                environ: dict[str, str] | None = None) -> Credentials:
        """Options first, then LIFTSHIFT_CA/_CERT/_KEY/_TOKEN, then the TLS directory's files."""
        env = os.environ if environ is None else environ
        if insecure:
            return cls()
        d = Path(tls_dir or env.get("LIFTSHIFT_TLS_DIR") or DEFAULT_TLS_DIR).expanduser()

        def pick(given: str | None, var: str, name: str) -> Path | None:
            value = given or env.get(var)
            if value:
                return Path(value).expanduser()
            return d / name if (d / name).is_file() else None

        return cls(ca=pick(ca, "LIFTSHIFT_CA", "ca.pem"), cert=pick(cert, "LIFTSHIFT_CERT", "client.pem"),
                   key=pick(key, "LIFTSHIFT_KEY", "client.key"), token=token or env.get("LIFTSHIFT_TOKEN") or None,
                   looked_in=d)

    @property
    def tls(self) -> bool:
        return self.ca is not None

    def channel(self, address: str, max_message: int) -> grpc.aio.Channel:
        """A channel to ``address`` with these credentials (ConfigError naming a bad file)."""
        if not self.tls:
            return grpc.aio.insecure_channel(address, options=grpc_options(max_message))
        creds = load_channel_credentials(self.ca, self.cert, self.key, token=self.token)
        return grpc.aio.secure_channel(address, creds, options=grpc_options(max_message))

    def hint(self) -> str:
        """What to check when a connection fails."""
        if self.tls:
            mine = f", certificate {self.cert}" if self.cert else ", no client certificate"
            return (f"TLS with CA {self.ca}{mine}: check that the server's certificate names this address and "
                    "that your certificate is issued by the server's CA")
        return (f"no TLS credentials found (options, LIFTSHIFT_CA, or {self.looked_in}/ca.pem): if the server uses "
                "mutual TLS, give --tls-dir or --ca/--cert/--key")


def add_options(p: argparse.ArgumentParser, defaults: bool) -> None:
    """The credential options (before the command, or SUPPRESSed after it)."""
    def d(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    p.add_argument("--tls-dir", default=d(None), metavar="DIR",
                   help="directory with ca.pem, client.pem, client.key (env LIFTSHIFT_TLS_DIR; default "
                        "~/.config/liftshift)")
    p.add_argument("--ca", default=d(None), metavar="FILE", help="CA certificate the server must chain to "
                                                                  "(env LIFTSHIFT_CA)")
    p.add_argument("--cert", default=d(None), metavar="FILE", help="client certificate (env LIFTSHIFT_CERT)")
    p.add_argument("--key", default=d(None), metavar="FILE", help="client private key (env LIFTSHIFT_KEY)")
    p.add_argument("--token", default=d(None), metavar="TOKEN",
                   help="bearer token (prefer env LIFTSHIFT_TOKEN: options show in process lists)")
    p.add_argument("--insecure", action="store_true", default=d(False),
                   help="plain text (only daemons set to insecure on loopback accept it)")


def from_args(args: argparse.Namespace) -> Credentials:
    return Credentials.resolve(tls_dir=getattr(args, "tls_dir", None), ca=getattr(args, "ca", None),
                               cert=getattr(args, "cert", None), key=getattr(args, "key", None),
                               token=getattr(args, "token", None), insecure=getattr(args, "insecure", False))
