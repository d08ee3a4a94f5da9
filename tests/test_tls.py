"""HTTPS on the proxy (`[proxy.tls]`), with a real nginx and HAProxy, locally and over SSH:
redirects and ACME challenges on plain HTTP, the switch verified through the TLS listener,
health requests that pass an app forcing https, websockets over wss, certificate expiry in
`check`, and a certificate renewal + reload under load that never moves traffic."""

from __future__ import annotations

import datetime
import hashlib
import http.client
import socket
import ssl
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.sync.client import connect

from conftest import SERVER_NAME, Project, free_port
from loadclient import LoadClient


class CertificateAuthority:
    """A certificate authority for the test, as Let's Encrypt is for a real site."""

    def __init__(self, path: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bluegreen test CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256()))
        self.path = path
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cert: Path, key: Path, days: int, name: str = SERVER_NAME) -> str:
        """A certificate for ``name`` valid ``days`` more days, and its key (as certbot
        leaves them: fullchain and privkey); returns the SHA-256 of its DER (16 hex)."""
        private = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.name)
            .public_key(private.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=30))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(self.key, hashes.SHA256()))
        key.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        key.chmod(0o600)
        der = certificate.public_bytes(serialization.Encoding.DER)
        cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM)
                         + self.cert.public_bytes(serialization.Encoding.PEM))
        return hashlib.sha256(der).hexdigest()[:16]


def https_get(port: int, path: str, ca: Path) -> http.client.HTTPResponse:
    """GET over TLS with SNI and the Host = SERVER_NAME, trusting only ``ca``, checking
    the name as a browser would."""
    context = ssl.create_default_context(cafile=str(ca))
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                               server_hostname=SERVER_NAME)
    conn = http.client.HTTPConnection(SERVER_NAME)
    conn.sock = sock
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read()
    return resp


def plain_get(port: int, path: str) -> tuple[int, str | None, bytes]:
    """Status, Location and body of a plain-HTTP GET with Host = SERVER_NAME."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path, headers={"Host": SERVER_NAME})
    resp = conn.getresponse()
    return resp.status, resp.getheader("Location"), resp.read()


def served_digest(port: int) -> str:
    """The SHA-256 (16 hex) of the certificate the TLS listener serves now."""
    pem = ssl.get_server_certificate(("127.0.0.1", port))
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()[:16]


def wss_echo(port: int, ca: Path, message: str) -> str:
    """A websocket over TLS (wss://) to the sample app's echo, through the proxy."""
    context = ssl.create_default_context(cafile=str(ca))
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    with ExitStack() as stack:
        ws = stack.enter_context(connect(f"wss://{SERVER_NAME}/ws", sock=sock, ssl=context,
                                         open_timeout=5))
        ws.send(message)
        return str(ws.recv(timeout=5))


def tls_project(p: Project, tmp_path: Path, ca: CertificateAuthority, days: int,
                **tls: object) -> tuple[Path, Path, int]:
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    ca.issue(cert, key, days)
    port = free_port()
    p.extra_proxy = {"tls": {"certificate": str(cert), "certificate_key": str(key),
                             "listen": f"127.0.0.1:{port}", **tls}}
    p.write_config()
    return cert, key, port


def check_row(p: Project, port: int) -> str:
    """`bluegreen check`'s row for the certificate served on ``port``."""
    out = p.bg("check", check=False).stdout
    rows = [line for line in out.splitlines() if f"certificate on 127.0.0.1:{port} " in line]
    assert len(rows) == 1, out
    return " ".join(rows[0].split())


def test_https_site_switches_verified_over_tls_and_renewal_never_moves_traffic(
        project: Project, tmp_path: Path) -> None:
    p = project
    acme = tmp_path / "acme"
    (acme / ".well-known" / "acme-challenge").mkdir(parents=True)
    (acme / ".well-known" / "acme-challenge" / "token1").write_text("token1.thumbprint")
    ca = CertificateAuthority(tmp_path / "ca.pem")
    cert, key, port = tls_project(p, tmp_path, ca, days=10, acme_root=str(acme), hsts=True)
    # The app forces https (as Django's SECURE_SSL_REDIRECT): its health check passes only
    # because health requests say X-Forwarded-Proto: https, as the proxy does.
    p.extra_run = {"health_status": "200"}
    p.write_config()
    before_setup = p.bg("check", check=False)
    assert "not served yet" in before_setup.stdout, before_setup.stdout
    p.bg("setup")
    p.artifact("1.0.0", "https-only")
    p.bg("deploy", "--version", "1.0.0")

    # Plain HTTP: 301 to https on the TLS port, except the ACME challenge and /deployment_id.
    assert plain_get(p.nginx.port, "/some/page?x=1")[:2] == (
        301, f"https://{SERVER_NAME}:{port}/some/page?x=1")
    assert plain_get(p.nginx.port, "/.well-known/acme-challenge/token1") == (
        200, None, b"token1.thumbprint")
    assert plain_get(p.nginx.port, "/deployment_id")[2] == b"blue"
    # HTTPS with SNI, the certificate trusted and its name checked; HSTS on.
    resp = https_get(port, "/", ca.path)
    assert resp.status == 200 and resp.getheader("X-App-Version") == "1.0.0"
    assert resp.getheader("Strict-Transport-Security") == "max-age=31536000"
    # `check` reads the served certificate: 10 days left is a warning, not a failure.
    row = check_row(p, port)
    assert "renew soon" in row and SERVER_NAME in row and "(10 days)" in row, row

    # A deploy under load over https; then certbot's renewal: new files, `nginx -s reload`.
    p.artifact("2.0.0", "https-only")
    new_cert, new_key = tmp_path / "new-fullchain.pem", tmp_path / "new-privkey.pem"
    new_digest = ca.issue(new_cert, new_key, days=90)
    old_digest = served_digest(port)
    client = LoadClient(tmp_path / "load.json", SERVER_NAME, [f"https://127.0.0.1:{port}"],
                        ca=ca.path)
    try:
        p.bg("deploy", "--version", "2.0.0")
        assert https_get(port, "/", ca.path).getheader("X-App-Version") == "2.0.0"
        cert.write_bytes(new_cert.read_bytes())
        key.write_bytes(new_key.read_bytes())
        subprocess.run(p.nginx.command("-s", "reload"), check=True)  # certbot's deploy hook
        deadline = time.monotonic() + 10
        while served_digest(port) != new_digest and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # load on the new certificate too
        assert https_get(port, "/", ca.path).getheader("X-Deployment-Id") == "green"
    finally:
        report = client.stop()
    assert report["failures"] == [], report
    assert report["requests"] > 50 and set(report["versions"]) <= {"1.0.0", "2.0.0"}
    assert report["certificates"].get(old_digest) and report["certificates"].get(new_digest), \
        report["certificates"]
    st = p.status()
    assert st["live"] == "green" and st["proxy_answer"] == "green"
    row = check_row(p, port)
    assert "renew soon" not in row and "(90 days)" in row, row

    assert wss_echo(port, ca.path, "hi") == "hi from 2.0.0 (green)"


def test_haproxy_serves_https_and_verifies_the_switch_over_tls(hx_project: Project,
                                                                tmp_path: Path) -> None:
    """HAProxy: `bind ... ssl crt` with the key beside the certificate (`<cert>.key`), the
    redirect, HSTS, and deploys verified through the TLS listener under https load."""
    p = hx_project
    ca = CertificateAuthority(tmp_path / "ca.pem")
    cert = tmp_path / "site.pem"
    ca.issue(cert, tmp_path / "site.pem.key", days=60)
    port = free_port()
    p.extra_proxy = {"tls": {"certificate": str(cert), "listen": f"127.0.0.1:{port}",
                             "hsts": True}}
    p.write_config()
    p.bg("setup")
    p.deploy("1.0.0")
    assert plain_get(p.nginx.port, "/a?b=c")[:2] == (301, f"https://{SERVER_NAME}:{port}/a?b=c")
    resp = https_get(port, "/", ca.path)
    assert (resp.status, resp.getheader("X-App-Version")) == (200, "1.0.0")
    assert resp.getheader("Strict-Transport-Security") == "max-age=31536000"
    assert "(60 days)" in check_row(p, port)
    client = LoadClient(tmp_path / "load.json", SERVER_NAME, [f"https://127.0.0.1:{port}"],
                        ca=ca.path)
    try:
        p.deploy("2.0.0")
        p.bg("rollback")
    finally:
        report = client.stop()
    assert report["failures"] == [], report
    assert report["versions"].get("1.0.0") and report["versions"].get("2.0.0"), report
    assert p.status()["proxy_answer"] == "blue"
    assert wss_echo(port, ca.path, "hi") == "hi from 1.0.0 (blue)"


def test_check_fails_a_certificate_that_is_expired_or_for_another_name(tmp_path: Path) -> None:
    from bluegreen.proxies.base import certificate_finding

    ca = CertificateAuthority(tmp_path / "ca.pem")
    cert = tmp_path / "c.pem"

    def finding(days: int, name: str, asked: str) -> tuple[bool | None, str]:
        ca.issue(cert, tmp_path / "k.pem", days, name)
        leaf = cert.read_text().split("-----END CERTIFICATE-----")[0]
        der = ssl.PEM_cert_to_DER_cert(leaf + "-----END CERTIFICATE-----\n")
        _, ok, detail = certificate_finding("certificate", der, asked)
        return ok, detail

    assert finding(30, "shop.example.com", "shop.example.com")[0] is True
    assert finding(30, "*.example.com", "shop.example.com")[0] is True
    ok, detail = finding(30, "other.example.com", "shop.example.com")
    assert ok is False and "does not name 'shop.example.com'" in detail
    ok, detail = finding(-2, "shop.example.com", "shop.example.com")
    assert ok is False and detail.startswith("EXPIRED")
    assert finding(5, "shop.example.com", "shop.example.com")[0] is None
