"""TLS (issue 17 item 1): HTTPS with certificates loaded per generation, so a reload serves renewed ones under load
with no failed request, and one that does not load fails the reload (the old certificate still served) or the
start (one line, exit 1); client certificates; a handshake that never ends or is garbage costs one connection."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.support import APPS, Load

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl (scripts/setup --test)")


@pytest.fixture
def mode() -> str:
    return "preload"


def make_cert(directory: Path, name: str, ca: tuple[Path, Path] | None = None) -> tuple[Path, Path]:
    """A certificate and key (PEM) for 127.0.0.1: self-signed, or signed by ``ca`` (certificate, key)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subject = ["-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1"]
    if ca is None:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", str(key), "-out", str(cert), "-days", "2", *subject],
                       check=True, capture_output=True)  # fmt: skip
        return cert, key
    csr = directory / f"{name}.csr"
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}"], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
                    "-CAcreateserial", "-out", str(cert), "-days", "2"], check=True, capture_output=True)
    return cert, key


def client_context(*trusted: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    for cert in trusted:
        ctx.load_verify_locations(cert)
    return ctx


def served_certificate(port: int, ctx: ssl.SSLContext) -> str:
    """The CN of the certificate a fresh connection is served."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        subject = dict(item for rdn in tls.getpeercert()["subject"] for item in rdn)
        return str(subject["commonName"])


def get(port: int, ctx: ssl.SSLContext, path: str = "/") -> dict[str, Any]:
    import http.client

    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200
        return dict(json.loads(response.read()))
    finally:
        conn.close()


def test_https_is_served_and_the_scope_says_so(pool_factory: Any, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "first")
    pool = pool_factory("http_asgi:app", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), workers=1).start()
    ctx = client_context(cert)
    assert get(pool.port, ctx)["scheme"] == "https"
    with socket.create_connection(("127.0.0.1", pool.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # what an old client offers, on purpose
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError)), socket.create_connection(("127.0.0.1", pool.port)) as raw:
        old.wrap_socket(raw)  # TLS 1.2 at least


def test_a_reload_serves_a_renewed_certificate_with_no_failed_request(pool_factory: Any, tmp_path: Path) -> None:
    first = make_cert(tmp_path, "first")
    second = make_cert(tmp_path, "second")
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(first[0], live_cert)
    shutil.copy(first[1], live_key)
    pool = pool_factory("wsgiapp:app", "--ssl-certfile", str(live_cert), "--ssl-keyfile", str(live_key),
                        workers=2).start()  # fmt: skip
    ctx = client_context(first[0], second[0])
    assert served_certificate(pool.port, ctx) == "first"
    with Load(pool.port, keepalive=3, fresh=3, tls=ctx) as load:
        time.sleep(0.5)
        shutil.copy(second[0], live_cert)  # a renewal, as certbot or an operator makes it
        shutil.copy(second[1], live_key)
        out = pool.ctl("reload", "--wait", "--timeout", "60")
        assert out.returncode == 0, out.stderr
        assert served_certificate(pool.port, ctx) == "second"
        time.sleep(0.5)
    result = load.stop()
    assert result.failed == 0, result.errors[:5]
    assert result.ok > 50


def test_a_certificate_that_does_not_load_fails_the_reload_and_the_old_one_serves(pool_factory: Any,
                                                                                  tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "first")
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(cert, live_cert)
    shutil.copy(key, live_key)
    pool = pool_factory("http_asgi:app", "--ssl-certfile", str(live_cert), "--ssl-keyfile", str(live_key),
                        workers=2).start()  # fmt: skip
    before = pool.pids()
    live_key.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")  # a bad renewal
    out = pool.ctl("reload", "--wait", "--timeout", "60")
    assert out.returncode == 1
    assert "ssl_certfile" in out.stderr + out.stdout and "live.key" in out.stderr + out.stdout
    assert pool.pids() == before
    assert served_certificate(pool.port, client_context(cert)) == "first"


def test_a_start_with_a_certificate_that_does_not_load_fails_with_one_line(tmp_path: Path) -> None:
    cert, _ = make_cert(tmp_path, "first")
    argv = [sys.executable, "-m", "corepool", "serve", "http_asgi:app", "--app-dir", str(APPS), "--bind",
            "127.0.0.1:0", "--ssl-certfile", str(cert), "--ssl-keyfile", str(tmp_path / "nope"), "--control",
            str(tmp_path / "c.sock")]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [f"corepool: error: ssl_certfile {cert} / ssl_keyfile "
                                               f"{tmp_path / 'nope'}: No such file or directory"]


def test_client_certificates_are_required_when_asked(pool_factory: Any, tmp_path: Path) -> None:
    ca = make_cert(tmp_path, "ca")
    server = make_cert(tmp_path, "server", ca=ca)
    client = make_cert(tmp_path, "client", ca=ca)
    pool = pool_factory("http_asgi:app", "--ssl-certfile", str(server[0]), "--ssl-keyfile", str(server[1]),
                        "--ssl-ca-certs", str(ca[0]), "--ssl-cert-reqs", "required", workers=1).start()
    ctx = client_context(ca[0])
    ctx.check_hostname = False
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(pool.port, ctx)  # no client certificate: refused in the handshake
    ctx.load_cert_chain(client[0], client[1])
    assert get(pool.port, ctx)["scheme"] == "https"


def test_garbage_or_a_handshake_that_never_ends_costs_one_connection(pool_factory: Any, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "first")
    pool = pool_factory("http_asgi:app", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
                        "--header-timeout", "1", workers=1).start()
    before = pool.pids()
    with socket.create_connection(("127.0.0.1", pool.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP on a TLS socket: not a ClientHello
        assert sock.recv(100) == b""
    for _ in range(50):
        with socket.create_connection(("127.0.0.1", pool.port), timeout=10) as sock:
            sock.sendall(b"\x16\x03\x01\x00\x05garbage")
    with socket.create_connection(("127.0.0.1", pool.port), timeout=10) as silent:
        assert silent.recv(100) == b""  # closed by the handshake timeout (header_timeout 1 s), not our 10 s
    assert get(pool.port, client_context(cert))["scheme"] == "https"
    assert pool.pids() == before
    assert "Traceback" not in pool.log() and pool.log().count("\n") < 30


def test_credential_paths_are_read_from_systemds_credentials_directory(pool_factory: Any, tmp_path: Path) -> None:
    """``ssl_keyfile = "credential:tls.key"`` is ``$CREDENTIALS_DIRECTORY/tls.key`` (what LoadCredential= makes)."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    cert, _ = make_cert(credentials, "tls")
    pool = pool_factory("http_asgi:app", "--ssl-certfile", "credential:tls.pem", "--ssl-keyfile", "credential:tls.key",
                        workers=1, env={"CREDENTIALS_DIRECTORY": str(credentials)}).start()  # fmt: skip
    assert served_certificate(pool.port, client_context(cert)) == "tls"
