"""Authenticated access end to end: real daemons with mutual TLS, certificates and tokens of each role.

The Control service admits a caller by its client certificate (role in the
certificate) or a bearer token on top of one; a viewer may read but not act;
a caller without a certificate, or with one from another CA, is refused in
the TLS handshake; nothing a refused call asked for happens.  A sink refuses
a daemon whose certificate it does not trust.  Plain text is refused on a
non-loopback address.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from pki import make_pki
from procs import python_module, start_process
from simsite import SimVmDef, Site

from liftshift.daemon.errors import LiftshiftError, PermissionDenied, Unauthenticated, from_rpc_error
from liftshift.daemon.security import TokenStore
from liftshift.v1 import control_pb2 as cpb
from liftshift.v1 import control_pb2_grpc, replication_pb2_grpc
from liftshift.v1 import replication_pb2 as rpb

MiB = 1 << 20


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

    # No client certificate, or one from another CA: refused in the TLS handshake.
    no_cert = grpc.ssl_channel_credentials(pki.ca.read_bytes())
    other = make_pki(tmp_path / "other-ca")
    foreign = grpc.ssl_channel_credentials(pki.ca.read_bytes(), other.key("client").read_bytes(),
                                           other.pem("client").read_bytes())
    for creds in (no_cert, foreign):
        with pytest.raises(LiftshiftError) as e:
            call(site.address, creds, "CreateMigration", create)
        assert type(e.value).__name__ == "Unavailable", e.value

    # None of it changed anything; the admin CLI (LIFTSHIFT_TLS_DIR) sees no migration.
    listed = site.call("ListMigrations", cpb.ListMigrationsRequest(all=True))
    assert isinstance(listed, cpb.ListMigrationsResponse) and not listed.migrations
    # Every refusal past the handshake is in the audit log, with who tried and why.
    audit = site.call("ListAudit", cpb.ListAuditRequest())
    assert isinstance(audit, cpb.ListAuditResponse)
    got = [(e.who, e.action, e.result.split(":")[0]) for e in audit.entries]
    assert got == [("viewer", "CreateMigration", "PermissionDenied"), ("viewer", "Cutover", "PermissionDenied"),
                   ("carol", "Cutover", "PermissionDenied"), ("anonymous", "ListVms", "Unauthenticated")], got
    assert all(e.peer.startswith("ipv4:127.0.0.1:") for e in audit.entries)
    verified = site.call("VerifyAudit", cpb.VerifyAuditRequest())
    assert isinstance(verified, cpb.VerifyAuditResponse) and verified.ok and verified.entries == 4

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
