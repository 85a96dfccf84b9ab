"""Authenticated access end to end: real daemons with mutual TLS, certificates and tokens of each role.

The Control service admits a caller by its client certificate (role in the
certificate) or a bearer token (with or without a certificate); a viewer may
read but not act; a caller without credentials is refused UNAUTHENTICATED; a
certificate from another CA, or an expired one, is refused in the TLS
handshake, which the daemon's TLS front audits; a connection to the front's
internal back end is refused; nothing a refused call asked for happens.  A
sink refuses a daemon whose certificate it does not trust.  Plain text is
refused on a non-loopback address.
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pki import make_pki
from procs import python_module, start_process
from simsite import SimVmDef, Site

from liftshift.daemon.errors import LiftshiftError, PermissionDenied, Unauthenticated, from_rpc_error
from liftshift.daemon.security import TokenStore
from liftshift.v1 import control_pb2 as cpb
from liftshift.v1 import control_pb2_grpc, replication_pb2_grpc
from liftshift.v1 import replication_pb2 as rpb

MiB = 1 << 20


def expired_client(pki_dir: Path, out: Path) -> tuple[bytes, bytes]:
    """An operator client certificate signed by the site's CA that expired yesterday: (key PEM, cert PEM)."""
    ca_cert = x509.load_pem_x509_certificate((pki_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((pki_dir / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old-operator"),
                                     x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "liftshift:operator")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=30)).not_valid_after(now - datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()), cert.public_bytes(serialization.Encoding.PEM))


def call(address: str, creds: grpc.ChannelCredentials, method: str, request: object) -> object:
    with grpc.secure_channel(address, creds) as ch:
        try:
            return getattr(control_pb2_grpc.ControlStub(ch), method)(request, timeout=15)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None


def test_roles_certificates_and_tokens(tmp_path: Path, shm_dir: Path, request: pytest.FixtureRequest) -> None:
    viewer_token, viewer_line = TokenStore.generate("carol", "viewer")
    tokens = tmp_path / "tokens"
    tokens.write_text(viewer_line + "\n")
    site = Site(tmp_path / "site", shm_dir, [SimVmDef("web-1", [("disk0", 8 * MiB, 4 * MiB)], rate_ops=20)],
                request.addfinalizer, tls_extra=f'tokens_file = "{tokens}"\n').start()
    pki = site.pki
    create = cpb.CreateMigrationRequest(vms=["web-1"], destination=site.destination)

    # A viewer certificate reads, and may not act.
    vms = call(site.address, pki.credentials("viewer"), "ListVms", cpb.ListVmsRequest())
    assert isinstance(vms, cpb.ListVmsResponse) and [v.name for v in vms.vms] == ["web-1"]
    with pytest.raises(PermissionDenied, match="operator"):
        call(site.address, pki.credentials("viewer"), "CreateMigration", create)
    with pytest.raises(PermissionDenied):
        call(site.address, pki.credentials("viewer"), "Cutover", cpb.CutoverRequest(vm="web-1"))

    # A token decides who calls, even over an operator's certificate.
    with_token = grpc.composite_channel_credentials(pki.credentials("operator"),
                                                    grpc.access_token_call_credentials(viewer_token))
    with pytest.raises(PermissionDenied, match="carol"):
        call(site.address, with_token, "Cutover", cpb.CutoverRequest(vm="web-1"))
    forged = grpc.composite_channel_credentials(pki.credentials("operator"),
                                                grpc.access_token_call_credentials(viewer_token[:-4] + "AAAA"))
    with pytest.raises(Unauthenticated):
        call(site.address, forged, "ListVms", cpb.ListVmsRequest())

    # A token alone (no client certificate) is enough; no credentials at all is UNAUTHENTICATED.
    no_cert = grpc.ssl_channel_credentials(pki.ca.read_bytes())
    token_only = grpc.composite_channel_credentials(no_cert, grpc.access_token_call_credentials(viewer_token))
    vms = call(site.address, token_only, "ListVms", cpb.ListVmsRequest())
    assert isinstance(vms, cpb.ListVmsResponse) and [v.name for v in vms.vms] == ["web-1"]
    with pytest.raises(Unauthenticated, match="no credentials"):
        call(site.address, no_cert, "CreateMigration", create)

    # A certificate from another CA, or our CA's but expired: refused in the handshake.
    other = make_pki(tmp_path / "other-ca")
    foreign = grpc.ssl_channel_credentials(pki.ca.read_bytes(), other.key("client").read_bytes(),
                                           other.pem("client").read_bytes())
    expired = grpc.ssl_channel_credentials(pki.ca.read_bytes(), *expired_client(pki.dir, tmp_path))
    for creds in (foreign, expired):
        with pytest.raises(LiftshiftError) as e:
            call(site.address, creds, "CreateMigration", create)
        assert type(e.value).__name__ == "Unavailable", e.value

    # The gRPC back end behind the TLS front admits nobody who did not come through it.
    assert site.daemon is not None
    backend = re.search(r"back end 127\.0\.0\.1:(\d+)", site.daemon.log())
    assert backend, site.daemon.log()[-3000:]
    with grpc.insecure_channel(f"127.0.0.1:{backend[1]}") as ch:
        with pytest.raises(grpc.RpcError) as rpc:
            control_pb2_grpc.ControlStub(ch).CreateMigration(create, timeout=15)
    assert rpc.value.code() == grpc.StatusCode.UNAUTHENTICATED and "TLS front" in (rpc.value.details() or "")

    # None of it changed anything; the admin CLI (LIFTSHIFT_TLS_DIR) sees no migration.
    listed = site.call("ListMigrations", cpb.ListMigrationsRequest(all=True))
    assert isinstance(listed, cpb.ListMigrationsResponse) and not listed.migrations
    # Every refusal is in the audit log, with who tried, from where and why -- the
    # handshakes too (the same CA problem from the same host would be recorded once a minute).
    audit = site.call("ListAudit", cpb.ListAuditRequest())
    assert isinstance(audit, cpb.ListAuditResponse)
    # gRPC may retry a refused connection and abandon the retry mid-handshake when the call
    # ends: that is recorded too ("closed the connection during the handshake"), as an
    # extra entry this comparison leaves out.
    every = list(audit.entries)
    entries = [e for e in every if "closed the connection during the handshake" not in e.result]
    got = [(e.who, e.action, e.result.split(":")[0]) for e in entries]
    assert got == [("viewer", "CreateMigration", "PermissionDenied"), ("viewer", "Cutover", "PermissionDenied"),
                   ("carol", "Cutover", "PermissionDenied"), ("anonymous", "ListVms", "Unauthenticated"),
                   ("anonymous", "CreateMigration", "Unauthenticated"),
                   ("anonymous", "TlsHandshake", "Unauthenticated"), ("anonymous", "TlsHandshake", "Unauthenticated"),
                   ("anonymous", "CreateMigration", "Unauthenticated")], got
    handshakes = [e.result for e in entries if e.action == "TlsHandshake"]
    assert "unable to get local issuer certificate" in handshakes[0], handshakes
    assert "certificate has expired" in handshakes[1], handshakes
    # The peer is the client's own address and port, never the front's back-end connection...
    assert all(re.fullmatch(r"ipv4:127\.0\.0\.1:\d+", e.peer) for e in every), every
    assert {int(e.peer.rsplit(":", 1)[1]) for e in entries[:-1]}.isdisjoint({int(backend[1])})
    # ...except for the direct call to the back end, refused as not having come through the front.
    assert "TLS front" in entries[-1].result
    verified = site.call("VerifyAudit", cpb.VerifyAuditRequest())
    assert isinstance(verified, cpb.VerifyAuditResponse) and verified.ok and verified.entries == len(every)

    # The CLI as a viewer: refused with its error line and exit code; as an operator: done.
    def cli(who: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "liftshift.ctl", "--address", site.address,
                               "--cert", str(pki.pem(who)), "--key", str(pki.key(who)), *args],
                              capture_output=True, text=True, timeout=60, check=False)

    r = cli("viewer", "migrate", "create", "web-1", "--dest", site.destination)
    assert r.returncode != 0 and "needs the operator role" in r.stderr, r
    r = cli("operator", "migrate", "create", "web-1", "--dest", site.destination)
    assert r.returncode == 0, r
    last = site.call("ListAudit", cpb.ListAuditRequest()).entries[-2:]
    assert [(e.who, e.action, e.result) for e in last] == [
        ("viewer", "CreateMigration", last[0].result), ("operator", "CreateMigration", "ok")]
    assert last[0].result.startswith("PermissionDenied")

    # The CLI with a token and the CA only (no certificate anywhere): the token decides.
    empty = tmp_path / "no-certs"
    empty.mkdir()
    r = subprocess.run([sys.executable, "-m", "liftshift.ctl", "--address", site.address, "--tls-dir", str(empty),
                        "--ca", str(pki.ca), "migrate", "list", "--json"], capture_output=True, text=True, timeout=60,
                       check=False, env={**os.environ, "LIFTSHIFT_TOKEN": viewer_token})
    assert r.returncode == 0 and '"web-1"' in r.stdout, r


def test_a_sink_refuses_a_daemon_it_does_not_trust(tmp_path: Path, shm_dir: Path,
                                                   request: pytest.FixtureRequest) -> None:
    site = Site(tmp_path / "site", shm_dir, [SimVmDef("web-1", [("disk0", 8 * MiB, 4 * MiB)], rate_ops=20)],
                request.addfinalizer).start()
    other = make_pki(tmp_path / "other-ca")
    assert site.daemon is not None
    site.daemon.stop()
    text = site.daemon_config().read_text()
    text = (text.replace(str(site.pki.pem("daemon-client")), str(other.pem("daemon-client")))
            .replace(str(site.pki.key("daemon-client")), str(other.key("daemon-client"))))
    cfg = tmp_path / "untrusted.toml"
    cfg.write_text(text)
    pf = tmp_path / "untrusted.port"
    start_process(python_module("liftshift.daemon.main", "--config", cfg, "--port-file", pf), pf,
                  cleanup=request.addfinalizer, credentials=site.pki.credentials())
    with pytest.raises(LiftshiftError, match=f"destination {site.destination} does not answer"):
        site.call("CreateMigration", cpb.CreateMigrationRequest(vms=["web-1"], destination=site.destination))
    with grpc.secure_channel(site.destination, site.pki.credentials()) as ch:
        got = replication_pb2_grpc.ReplicationStub(ch).ListVdisks(rpb.ListVdisksRequest(), timeout=10)
    assert not got.vdisks


@pytest.mark.parametrize("module, text", [
    ("liftshift.daemon.main", 'listen = "0.0.0.0:{port}"\nstate_dir = "{dir}/state"\n[tls]\ninsecure = true\n'),
    ("liftshift.sink.main", 'listen = "0.0.0.0:{port}"\ndata_dir = "{dir}/data"\ninsecure = true\n'),
])
def test_plain_text_only_on_loopback(tmp_path: Path, module: str, text: str) -> None:
    from e2e import free_port

    cfg = tmp_path / "c.toml"
    cfg.write_text(text.format(port=free_port(), dir=tmp_path))
    r = subprocess.run([sys.executable, "-m", module, "--config", str(cfg)], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode != 0, r
    assert "0.0.0.0" in r.stderr and "loopback" in r.stderr, r.stderr[-2000:]
