"""Behind a proxy: etc/nginx-example.conf run against a real nginx (TLS), in front of a pool on a unix socket
and on TCP; forwarded headers trusted from forwarded_allow_ips and from unix-socket peers only."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corepool.engines.front import ProxyHeaders
from tests.integration.conftest import WSGI_ENGINES, engine_param
from tests.support import free_port

EXAMPLE = Path(__file__).parents[2] / "etc" / "nginx-example.conf"
APPS = {"asgi": "http_asgi:app", "wsgi": "http_wsgi:app"}


@pytest.fixture
def mode() -> str:
    """Proxy handling is the same in both pool modes: these tests run in preload mode only."""
    return "preload"


@pytest.fixture(params=WSGI_ENGINES)
def wsgi_engine(request: pytest.FixtureRequest) -> str:
    """Every WSGI case here runs on both WSGI engines."""
    return engine_param(request)


@pytest.fixture(params=["asgi", "wsgi"])
def app(request: pytest.FixtureRequest, wsgi_engine: str) -> str:
    return APPS[str(request.param)]


class Nginx:
    """etc/nginx-example.conf with its upstream, ports and certificate replaced, run as our own nginx."""

    def __init__(self, tmp: Path, upstream: str) -> None:
        self.tmp = tmp
        self.http_port, self.https_port = free_port(), free_port()
        cert, key = tmp / "cert.pem", tmp / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
        site = EXAMPLE.read_text()
        site = site.replace("server unix:/run/corepool/myapp.sock;", f"server {upstream};")
        site = re.sub(r"\n\s*listen \[::\]:\d+[^;]*;", "", site)  # loopback IPv4 only in the test
        site = site.replace("listen 80;", f"listen 127.0.0.1:{self.http_port};")
        site = site.replace("listen 443 ssl", f"listen 127.0.0.1:{self.https_port} ssl")
        site = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", site)
        site = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", site)
        assert str(self.https_port) in site and upstream in site, "etc/nginx-example.conf changed shape"
        (tmp / "site.conf").write_text(site)
        temp = "".join(f"{kind}_temp_path {tmp / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                         "scgi"))
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach the socket in our tmp dir
        (tmp / "nginx.conf").write_text(
            f"{user}worker_processes 1;\nerror_log {tmp / 'error.log'} warn;\nevents {{ worker_connections 256; }}\n"
            f"http {{\naccess_log off;\n{temp}include {tmp / 'site.conf'};\n}}\n"
        )
        self.proc = subprocess.Popen(
            ["nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp), "-g", f"daemon off; pid {tmp / 'nginx.pid'};"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.https_port), timeout=1):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"nginx did not start: {self.proc.stderr.read() if self.proc.stderr else ''}")
            time.sleep(0.05)

    def get(self, path: str = "/", headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", self.https_port, timeout=10, context=context)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            return response.status, json.loads(data) if response.status == 200 else {}
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGQUIT)  # nginx's graceful stop; its workers exit with it
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Any]:
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed (scripts/setup --test installs it)")
    started: list[Nginx] = []

    def start(upstream: str) -> Nginx:
        (tmp_path / f"nginx{len(started)}").mkdir()
        proxy = Nginx(tmp_path / f"nginx{len(started)}", upstream)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def test_behind_nginx_on_the_unix_socket_the_app_sees_the_client_and_https(
        pool_factory: Any, nginx: Any, app: str, tmp_path: Path) -> None:
    sock = tmp_path / "myapp.sock"
    # The test client is on loopback, so loopback must not count as a proxy hop here: the unix-socket peer is
    # trusted whatever forwarded_allow_ips says.
    pool = pool_factory(app, "--bind", f"unix:{sock}", "--forwarded-allow-ips", "192.0.2.1", workers=1).start()
    proxy = nginx(f"unix:{sock}")
    status, seen = proxy.get("/who")
    assert status == 200
    assert (seen["client"], seen["scheme"]) == ("127.0.0.1", "https")  # nginx's view of the client, not None/http
    # A client cannot make up its address: nginx appends the real one, the rightmost untrusted entry wins.
    status, seen = proxy.get("/who", headers={"X-Forwarded-For": "203.0.113.9"})
    assert seen["client"] == "127.0.0.1"
    # The plain-HTTP server block only redirects to https.
    conn = http.client.HTTPConnection("127.0.0.1", proxy.http_port, timeout=10)
    conn.request("GET", "/x")
    assert conn.getresponse().status == 301
    conn.close()
    assert pool.pids()


def test_behind_nginx_on_tcp_the_app_sees_the_client_and_https(pool_factory: Any, nginx: Any, app: str) -> None:
    pool = pool_factory(app, workers=1).start()
    proxy = nginx(f"127.0.0.1:{pool.port}")
    status, seen = proxy.get("/who")
    assert status == 200 and (seen["client"], seen["scheme"]) == ("127.0.0.1", "https")


def test_a_websocket_through_nginx_sees_wss_and_is_closed_with_1001_on_stop(
        pool_factory: Any, nginx: Any, tmp_path: Path) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosedOK

    sock = tmp_path / "ws.sock"
    pool = pool_factory(APPS["asgi"], "--bind", f"unix:{sock}", workers=1).start()
    proxy = nginx(f"unix:{sock}")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    async def run() -> tuple[dict[str, Any], int | None]:
        async with connect(f"wss://127.0.0.1:{proxy.https_port}/ws", ssl=context) as ws:
            hello = json.loads(await ws.recv())
            pool.signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(ws.recv(), 30)
            except ConnectionClosedOK as exc:
                return hello, exc.rcvd.code if exc.rcvd else None
        return hello, None

    hello, code = asyncio.run(run())
    assert (hello["client"], hello["scheme"]) == ("127.0.0.1", "wss")
    assert code == 1001  # nginx passes the close frame through
    assert pool.wait_exit(timeout=30) == 0


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(pool_factory: Any, app: str) -> None:
    pool = pool_factory(app, "--forwarded-allow-ips", "10.1.2.3", workers=1).start()
    conn = http.client.HTTPConnection("127.0.0.1", pool.port, timeout=10)
    conn.request("GET", "/", headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"})
    seen = json.loads(conn.getresponse().read())
    conn.close()
    assert (seen["client"], seen["scheme"]) == ("127.0.0.1", "http")


def test_forwarded_headers_can_be_turned_off(pool_factory: Any, tmp_path: Path) -> None:
    sock = tmp_path / "off.sock"
    pool = pool_factory(APPS["asgi"], "--bind", f"unix:{sock}", "--no-proxy-headers", workers=1).start()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n"
                  b"Connection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    seen = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert (seen["client"], seen["scheme"]) == (None, "http")
    assert pool.pids()


# The trust rules themselves (pure).


def _scope(client: tuple[str, int] | None, xff: str, proto: str = "https", kind: str = "http") -> dict[str, Any]:
    server = ("127.0.0.1", 8000) if client else ("/run/app.sock", None)
    return {"type": kind, "client": client, "server": server, "scheme": "http" if kind == "http" else "ws",
            "headers": [(b"x-forwarded-for", xff.encode()), (b"x-forwarded-proto", proto.encode())]}


def _seen(allow: str, scope: dict[str, Any]) -> tuple[Any, str]:
    out: list[dict[str, Any]] = []

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        out.append(scope)

    asyncio.run(ProxyHeaders(inner, allow)(scope, None, None))
    client = out[0]["client"]
    return (client[0] if client else None), out[0]["scheme"]


@pytest.mark.parametrize(("allow", "client", "xff", "want"), [
    ("127.0.0.1", ("127.0.0.1", 5), "1.2.3.4", ("1.2.3.4", "https")),
    ("127.0.0.1", ("10.0.0.9", 5), "1.2.3.4", ("10.0.0.9", "http")),  # untrusted peer: ignored
    ("10.0.0.0/8", ("10.0.0.9", 5), "6.6.6.6, 1.2.3.4, 10.0.0.7", ("1.2.3.4", "https")),  # skip trusted hops
    ("*", ("10.0.0.9", 5), "6.6.6.6, 1.2.3.4", ("6.6.6.6", "https")),  # uvicorn's "*": the first entry
    ("127.0.0.1", None, "6.6.6.6, 1.2.3.4", ("1.2.3.4", "https")),  # unix peer: trusted, not its whole chain
    ("127.0.0.1", ("::1", 5), "[2001:db8::1]:443", ("::1", "http")),  # ::1 not in the list: untrusted
    ("::1", ("::1", 5), "[2001:db8::1]:443", ("2001:db8::1", "https")),
])
def test_trust_rules(allow: str, client: tuple[str, int] | None, xff: str, want: tuple[Any, str]) -> None:
    assert _seen(allow, _scope(client, xff)) == want


def test_websocket_scheme_follows_the_forwarded_proto() -> None:
    assert _seen("127.0.0.1", _scope(("127.0.0.1", 5), "1.2.3.4", kind="websocket")) == ("1.2.3.4", "wss")
