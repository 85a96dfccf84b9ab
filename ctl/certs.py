"""``liftshift certs``: a quick-start PKI for mTLS between the CLI and the daemons.

Design note
-----------
One directory holds a small CA and the certificates it issued::

    DIR/ca.pem  ca.key        the CA (``certs init DIR``)
    DIR/NAME.pem  NAME.key    a server or client certificate (``certs issue DIR NAME``)

Keys are ECDSA P-256 (fast to make, supported by every gRPC build), written
with mode 0600; certificates are signed with SHA-256.  Nothing is ever
overwritten unless ``force`` is given, and a pair is written only once every
check has passed, so a refused command leaves the directory as it was.

* **Server certificates** (``--server``) are for ``serverAuth`` and carry
  subject alternative names: DNS names and IP addresses, by default
  ``localhost``, ``127.0.0.1`` and ``::1``.  Give ``--san`` for every name
  and address clients connect to (the defaults are then not added).
* **Client certificates** (``--client``) are for ``clientAuth`` and carry
  their role in the subject, ``OU=liftshift:<role>``, which
  :class:`liftshift.daemon.security.AuthInterceptor` reads; the identity is
  the CN (NAME).  A process that is both (the source daemon serves the CLI
  and calls the sink) gets one certificate of each kind.

Warnings.  This is a quick start, not a production CA: there is no
revocation list (lower a client with the daemon's CN -> role mapping, or
replace the CA), and ca.key must stay on the machine that issues.  A leaf
never outlives its CA (its end date is clamped to the CA's).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from liftshift.daemon.errors import AlreadyExists, ConfigError, InvalidArgument, NotFound
from liftshift.daemon.security import Role, TokenStore, role_ou

# cryptography is imported by the functions that make or read certificates: the
# `liftshift` CLI registers this command group on every start, whatever it runs.
if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
DEFAULT_CA_DAYS = 3650
DEFAULT_DAYS = 825
DEFAULT_SANS = ("localhost", "127.0.0.1", "::1")
KINDS = ("server", "client")
_BACKDATE = datetime.timedelta(minutes=5)  # clocks of peers a little behind ours
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_RE = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*\.?\Z")


@dataclass(frozen=True)
class Written:
    """A certificate and key just written, and what is in the certificate."""

    cert: Path
    key: Path
    subject: str
    not_after: datetime.datetime
    kind: str = "ca"
    role: Role | None = None
    sans: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"cert": str(self.cert), "key": str(self.key), "kind": self.kind, "subject": self.subject,
                "role": str(self.role) if self.role else "", "sans": list(self.sans),
                "not_after": self.not_after.isoformat()}


# ---- files ---------------------------------------------------------------------

def _refuse_existing(paths: list[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise AlreadyExists(f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}",
                            hint="give --force to replace them (clients of the old ones stop working)")


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` with ``mode`` from the start, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # a leftover tmp file keeps its old mode through O_CREAT
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_pair(cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    from cryptography.hazmat.primitives import serialization

    _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _days(days: int) -> datetime.timedelta:
    if not isinstance(days, int) or days < 1:
        raise InvalidArgument(f"validity must be a positive number of days, not {days!r}")
    return datetime.timedelta(days=days)


def _directory(dir: str | os.PathLike[str], create: bool) -> Path:
    d = Path(dir)
    if d.exists() and not d.is_dir():
        raise InvalidArgument(f"{d} is not a directory")
    if create:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


# ---- the CA ----------------------------------------------------------------------

def init_ca(dir: str | os.PathLike[str], *, cn: str = "liftshift CA", days: int = DEFAULT_CA_DAYS,
            force: bool = False) -> Written:
    """Create a CA in ``dir``: ca.pem and ca.key (0600); AlreadyExists unless ``force``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    validity = _days(days)
    if not cn.strip():
        raise InvalidArgument("the CA's common name is empty")
    d = _directory(dir, create=False)
    cert_path, key_path = d / CA_CERT, d / CA_KEY
    _refuse_existing([cert_path, key_path], force)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE).not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256()))
    _directory(dir, create=True)
    _write_pair(cert_path, key_path, cert, key)
    return Written(cert_path, key_path, cert.subject.rfc4514_string(), cert.not_valid_after_utc)


def _load_ca(d: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    cert_path, key_path = d / CA_CERT, d / CA_KEY
    missing = [p.name for p in (cert_path, key_path) if not p.exists()]
    if missing:
        raise NotFound(f"no CA in {d} ({' and '.join(missing)} missing)",
                       hint=f"create one first: liftshift certs init {d}")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError(f"CA certificate {cert_path}: cannot load it ({e})") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"CA key {key_path}: cannot load it ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"CA key {key_path}: not an EC key (not made by `liftshift certs init`)")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != \
            cert.public_key().public_bytes(serialization.Encoding.DER, spki):
        raise ConfigError(f"CA key {key_path} does not match the CA certificate {cert_path}")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ConfigError(f"{cert_path} is not a CA certificate")
    return cert, key


# ---- leaf certificates -------------------------------------------------------------

def _san(text: str) -> x509.GeneralName:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    if not _DNS_RE.match(text):
        raise InvalidArgument(f"subject alternative name {text!r} is neither an IP address nor a DNS name")
    return x509.DNSName(text.lower().rstrip("."))


def issue(dir: str | os.PathLike[str], name: str, *, kind: str = "server", role: str | Role | None = None,
          sans: list[str] | tuple[str, ...] | None = None, days: int = DEFAULT_DAYS, force: bool = False) -> Written:
    """Issue ``name``.pem / ``name``.key in ``dir``, signed by its CA.

    ``kind="server"``: for serverAuth, with ``sans`` (DNS names and IP
    addresses; default localhost, 127.0.0.1, ::1).  ``kind="client"``: for
    clientAuth, with ``role`` in ``OU=liftshift:<role>`` (required).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if kind not in KINDS:
        raise InvalidArgument(f"unknown certificate kind {kind!r}: server or client")
    if not _NAME_RE.match(name) or name.lower() == "ca":
        raise InvalidArgument(f"bad certificate name {name!r}: letters, digits, '.', '_', '-' (no path "
                              "separators, at most 64, not 'ca')")
    validity = _days(days)
    parsed_role = None
    if kind == "client":
        if role is None:
            raise InvalidArgument("a client certificate needs a role (viewer, operator or admin)")
        parsed_role = Role.parse(role)
        if sans:
            raise InvalidArgument("subject alternative names are for server certificates")
    elif role is not None:
        raise InvalidArgument("a role is for client certificates; a server certificate has none")
    san_texts = tuple(sans) if sans else DEFAULT_SANS
    general_names = [_san(s) for s in san_texts] if kind == "server" else []
    d = _directory(dir, create=False)
    ca_cert, ca_key = _load_ca(d)
    cert_path, key_path = d / f"{name}.pem", d / f"{name}.key"
    _refuse_existing([cert_path, key_path], force)

    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
    if parsed_role is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role_ou(parsed_role)))
    now = datetime.datetime.now(datetime.UTC)
    not_after = min(now + validity, ca_cert.not_valid_after_utc)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if kind == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name(attrs)).issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - _BACKDATE).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False, key_agreement=False,
                                            key_cert_sign=False, crl_sign=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if general_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(general_names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_pair(cert_path, key_path, cert, key)
    return Written(cert_path, key_path, cert.subject.rfc4514_string(), cert.not_valid_after_utc, kind, parsed_role,
                   san_texts if kind == "server" else ())


# ---- the command line ------------------------------------------------------------------

def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser | None = None) -> None:
    """Register ``certs init DIR`` and ``certs issue DIR NAME`` (the ``ctl.main`` pattern).

    Each sets ``run`` (``async run(args, client, out) -> exit code``; the
    client is not used) and ``validate``.
    """
    parents = [common] if common is not None else []
    p = sub.add_parser("certs", parents=parents, help="make a CA and certificates for mTLS (quick start)",
                       description="A quick-start PKI: a CA, server certificates for the daemons, and client "
                                   "certificates carrying a role (viewer, operator, admin) for the CLI and the "
                                   "source daemon.  Works offline; the daemon is not contacted.",
                       epilog="example:\n  liftshift certs init /etc/liftshift/pki\n"
                              "  liftshift certs issue /etc/liftshift/pki daemon --server --san src.example\n"
                              "  liftshift certs issue /etc/liftshift/pki alice --client --role operator",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    i = acts.add_parser("init", parents=parents, help="create the CA (ca.pem, ca.key)")
    i.add_argument("dir", metavar="DIR", help="directory for the CA and the certificates (created if missing)")
    i.add_argument("--cn", default="liftshift CA", help="the CA's common name (default: liftshift CA)")
    i.add_argument("--days", type=int, default=DEFAULT_CA_DAYS, help=f"validity (default {DEFAULT_CA_DAYS})")
    i.add_argument("--force", action="store_true", help="replace an existing CA (every certificate it issued "
                                                        "stops working)")
    i.set_defaults(run=run_init)
    s = acts.add_parser("issue", parents=parents, help="issue a server or client certificate (NAME.pem, NAME.key)")
    s.add_argument("dir", metavar="DIR", help="the CA's directory (see `certs init`)")
    s.add_argument("name", metavar="NAME", help="the certificate's CN: a client's identity, or the server's name")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--server", dest="kind", action="store_const", const="server",
                       help="a daemon's server certificate")
    which.add_argument("--client", dest="kind", action="store_const", const="client",
                       help="a client certificate (needs --role)")
    s.add_argument("--role", choices=[str(r) for r in Role], help="the client's role")
    s.add_argument("--san", action="append", default=[], metavar="NAME_OR_IP",
                   help="a DNS name or IP address clients connect to (repeatable; default localhost, 127.0.0.1, ::1)")
    s.add_argument("--days", type=int, default=DEFAULT_DAYS, help=f"validity (default {DEFAULT_DAYS})")
    s.add_argument("--force", action="store_true", help="replace an existing NAME.pem / NAME.key")
    s.set_defaults(run=run_issue, validate=functools.partial(validate_issue, parser=s))
    t = acts.add_parser("token", parents=parents, help="make a bearer token for a daemon's tokens_file",
                        description="Print a new random bearer token for NAME with ROLE, and add its hash to "
                                    "FILE (the daemon's tls.tokens_file or the sink's tokens_file; created with "
                                    "mode 0600). Only the hash is stored: give the token to its user now. The "
                                    "daemon reads the file at start.")
    t.add_argument("name", metavar="NAME", help="who the token is for (what the audit log records)")
    t.add_argument("--role", required=True, choices=[str(r) for r in Role], help="the token's role")
    t.add_argument("--file", required=True, metavar="FILE", help="the tokens file to add the hash to")
    t.set_defaults(run=run_token)


add_parser = register  # the name the task asked for; ctl.main calls register(sub, common)


def validate_issue(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Usage errors the parser cannot express (exit 2 via ``parser.error``)."""
    if args.kind == "client" and not args.role:
        parser.error("--client needs --role (viewer, operator or admin)")
    if args.kind == "server" and args.role:
        parser.error("--role is for client certificates")
    if args.kind == "client" and args.san:
        parser.error("--san is for server certificates")


def _report(out: Any, w: Written) -> None:
    if out.json:
        print(json.dumps(w.to_dict(), indent=2), file=out.stdout, flush=True)
        return
    what = {"ca": "CA certificate", "server": "server certificate", "client": "client certificate"}[w.kind]
    detail = f"{w.subject}, valid until {w.not_after:%Y-%m-%d}"
    if w.role is not None:
        detail += f", role {w.role}"
    if w.sans:
        detail += f", for {', '.join(w.sans)}"
    out.line(f"wrote {w.cert} ({what}: {detail})")
    out.line(f"wrote {w.key} (private key, mode 0600: keep it on this host)")


async def run_init(args: argparse.Namespace, client: Any, out: Any) -> int:
    w = init_ca(args.dir, cn=args.cn, days=args.days, force=args.force)
    _report(out, w)
    if not out.json:
        out.line(f"next: liftshift certs issue {args.dir} NAME --server|--client --role ROLE")
    return 0


async def run_token(args: argparse.Namespace, client: Any, out: Any) -> int:
    token, line = TokenStore.generate(args.name, args.role)
    path = Path(args.file)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
    if out.json:
        print(json.dumps({"name": args.name, "role": args.role, "token": token, "file": str(path)}), file=out.stdout)
    else:
        out.line(token)
        out.notice(f"added {args.name} ({args.role}) to {path}; the token above is shown only now "
                   "(clients pass it in LIFTSHIFT_TOKEN); restart the daemon to load it")
    return 0


async def run_issue(args: argparse.Namespace, client: Any, out: Any) -> int:
    w = issue(args.dir, args.name, kind=args.kind, role=args.role, sans=args.san or None, days=args.days,
              force=args.force)
    _report(out, w)
    return 0
