"""Transport security (issue #17): ``dictation web`` serves HTTPS with a certificate and key,
cookies are Secure and HSTS is sent under HTTPS, and plain HTTP on a network address is
refused unless ``--insecure-http``."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pipeline import cli
from pipeline.core.errors import ConfigError
from pipeline.core.settings import Settings, get_settings
from pipeline.core.store import open_store
from pipeline.review.users import create_user
from pipeline.web.tls import is_loopback, server_options

Capsys = pytest.CaptureFixture[str]

PASSWORD = "correct-horse-9"


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    env = {"DICTATION_DATA_DIR": str(tmp_path / "var"),
           "DICTATION_PHYSICIANS": '["dr-smith"]',
           "DICTATION_AUDIT_KEY_FILE": str(tmp_path / "keys" / "audit.key")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    yield env
    get_settings.cache_clear()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_https_request_against_dictation_web(cli_env: dict[str, str], tmp_path: Path) -> None:
    """A real TLS handshake with a self-signed certificate made here: the log-in cookie is
    Secure and HSTS is sent."""
    with open_store(get_settings()).session() as s:
        create_user(s, "admin", PASSWORD, "admin")
    cert, key = _self_signed(tmp_path)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "web", "--host", "127.0.0.1", "--port",
         str(port), "--certfile", str(cert), "--keyfile", str(key)],
        env={**os.environ, **cli_env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    stdout = proc.stdout
    assert stdout is not None
    try:
        base = f"https://127.0.0.1:{port}"
        with httpx.Client(verify=str(cert), base_url=base, timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    page = client.get("/login")
                    break
                except httpx.ConnectError:
                    assert proc.poll() is None, stdout.read().decode()
                    assert time.monotonic() < deadline, "dictation web did not start"
                    time.sleep(0.3)
            assert page.status_code == 200
            assert page.headers["strict-transport-security"].startswith("max-age=")
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
            assert token
            r = client.post("/login", data={"csrf_token": token.group(1), "username": "admin",
                                            "password": PASSWORD}, follow_redirects=False)
            assert r.status_code == 303
            cookie = r.headers["set-cookie"].lower()
            assert "dictation_session=" in cookie and "; secure" in cookie
        # plain HTTP to the TLS port gets no page
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/login", timeout=5)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    out = stdout.read().decode()
    assert f"workbench: https://127.0.0.1:{port}/" in out


def test_plain_http_on_a_network_address_is_refused(cli_env: dict[str, str],
                                                    capsys: Capsys) -> None:
    assert cli.main(["web", "--host", "0.0.0.0", "--port", str(_free_port())]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Refusing plain HTTP on 0.0.0.0") and len(err.splitlines()) == 1


def test_run_refuses_plain_http_before_starting(cli_env: dict[str, str],
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: Capsys) -> None:
    monkeypatch.setenv("DICTATION_WEB_HOST", "192.168.1.20")
    get_settings.cache_clear()
    assert cli.main(["run", "--no-live", "--once"]) == 1
    assert "Refusing plain HTTP on 192.168.1.20" in capsys.readouterr().err


def test_server_options(settings: Settings, tmp_path: Path) -> None:
    assert server_options(settings, "127.0.0.1") == {"proxy_headers": False}
    with pytest.raises(ConfigError, match="Refusing plain HTTP"):
        server_options(settings, "10.0.0.2")
    insecure = settings.model_copy(update={"web_insecure_http": True,
                                           "web_forwarded_allow_ips": "127.0.0.1"})
    assert server_options(insecure, "10.0.0.2") == {"proxy_headers": True,
                                                    "forwarded_allow_ips": "127.0.0.1"}
    cert, key = _self_signed(tmp_path)
    tls = settings.model_copy(update={"web_certfile": cert, "web_keyfile": key})
    assert server_options(tls, "0.0.0.0")["ssl_certfile"] == str(cert)
    with pytest.raises(ConfigError, match="without its key"):
        server_options(settings.model_copy(update={"web_certfile": cert}), "127.0.0.1")
    assert is_loopback("localhost") and is_loopback("::1") and not is_loopback("0.0.0.0")
