"""PEP 3333 through a real pool, on both WSGI engines: the environ (checked by ``wsgiref.validate`` in the app),
``write()``, ``exc_info`` before and after the body began, ``close()`` once when an iterable raises, and app
errors logged with their traceback. tests/unit/test_wsgi_bridge.py checks the bridge's parts without a server;
these are the cases that must hold whatever serves the app."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import WSGI_ENGINES, Pool, engine_param

WAIT = 30.0  # bound on waits only a broken server reaches


class Served:
    def __init__(self, pool: Pool, engine: str, tmp: Path) -> None:
        self.pool, self.engine, self.tmp = pool, engine, tmp

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.pool.port, timeout=WAIT)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


@pytest.fixture(scope="module", params=WSGI_ENGINES)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One one-worker pool of tests/apps/wsgi_pep3333.py (root_path /app, a TCP and a unix socket) per engine,
    shared by the module."""
    engine = engine_param(request)
    tmp = tmp_path_factory.mktemp(f"pep3333-{engine}")
    pool = Pool(tmp, "wsgi_pep3333:app", "--root-path", "/app", "--bind", f"unix:{tmp / 'app.sock'}", workers=1,
                env={"WSGI_TEST_DIR": str(tmp)}, wsgi_engine=engine)  # fmt: skip
    pool.start()
    try:
        yield Served(pool, engine, tmp)
    finally:
        pool.close()


def test_the_environ_follows_pep_3333(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.pool.port), timeout=WAIT) as sock:
        sock.sendall(b"POST /app/environ/%FF%20x?q=%FF&a=1 HTTP/1.1\r\nHost: example.org:8080\r\n"
                     b"X-A: 1\r\nX-A: 2\r\nCookie: a=1\r\nCookie: b=2\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: 3\r\nConnection: close\r\n\r\nabc")  # fmt: skip
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 200
        seen = json.loads(response.read())
    env, kinds = seen["strings"], seen["kinds"]
    # The proxy in front stripped root_path: a path that starts with it again keeps it (as it was sent).
    assert env["SCRIPT_NAME"] == "/app" and env["PATH_INFO"] == "/app/environ/\xff x"
    assert env["QUERY_STRING"] == "q=%FF&a=1" and env["REQUEST_METHOD"] == "POST"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1" and env["wsgi.url_scheme"] == "http"
    assert env["SERVER_PORT"] == str(served.pool.port) and env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["CONTENT_LENGTH"] == "3" and env["CONTENT_TYPE"] == "text/plain"
    assert "HTTP_CONTENT_LENGTH" not in env and "HTTP_CONTENT_TYPE" not in env
    assert env["HTTP_HOST"] == "example.org:8080"
    # A repeated field is one list (RFC 9110 §5.3): the bridge joins with ", ", granian with ","; cookies with
    # "; " and ";" (README, Engines).
    assert [v.strip() for v in env["HTTP_X_A"].split(",")] == ["1", "2"]
    assert [v.strip() for v in env["HTTP_COOKIE"].split(";")] == ["a=1", "b=2"]
    assert kinds == {"wsgi.version": [1, 0], "multithread": True, "multiprocess": True, "run_once": False,
                     "input_terminated": True, "errors_writes": True, "body": "abc"}  # fmt: skip


def test_an_http_1_0_request_says_so(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.pool.port), timeout=WAIT) as sock:
        sock.sendall(b"GET /environ HTTP/1.0\r\nHost: x\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert json.loads(response.read())["strings"]["SERVER_PROTOCOL"] == "HTTP/1.0"


def test_on_a_unix_socket_the_host_names_the_server_and_there_is_no_remote_addr(served: Served) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAIT)
        sock.connect(str(served.tmp / "app.sock"))
        sock.sendall(b"GET /environ HTTP/1.1\r\nHost: example.org:8080\r\nConnection: close\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        env = json.loads(response.read())["strings"]
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("example.org", "8080")
    assert "REMOTE_ADDR" not in env


def test_a_chunked_body_has_no_content_length_and_reads_whole(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.pool.port), timeout=WAIT) as sock:
        sock.sendall(b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close"
                     b"\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")  # fmt: skip
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert json.loads(response.read()) == {"size": 11, "content_length": None}


def test_write_is_sent_before_the_iterable_in_order(served: Served) -> None:
    assert served.get("/write") == (200, b"abcd")


def test_a_file_wrapper_sends_the_whole_file(served: Served) -> None:
    app_file = Path(__file__).parents[1] / "apps" / "wsgi_pep3333.py"
    assert served.get("/file") == (200, app_file.read_bytes())


def test_exc_info_replaces_a_status_not_yet_sent(served: Served) -> None:
    assert served.get("/exc-before") == (500, b"replaced")


def test_exc_info_after_the_body_began_reraises_and_never_mixes_bodies(served: Served) -> None:
    try:
        status, data = served.get("/exc-after")
    except http.client.IncompleteRead as cut:  # the bridge: 7 of its 100 bytes were sent, then the connection ends
        status, data = 200, cut.partial
    # granian holds write()'s data until the app returns (README, Engines): the re-raised error is then a clean 500.
    assert (status, data) == ((500, b"Internal Server Error") if served.engine == "granian" else (200, b"partial"))
    assert "after the body began" in served.pool.log()  # the re-raised error, logged as the app's
    assert served.get("/")[0] == 200


def test_an_iterable_that_raises_is_closed_once_and_logged(served: Served) -> None:
    try:
        status, data = served.get("/raise-mid?id=1")
    except http.client.IncompleteRead as exc:  # the bridge: chunked, never ended, the client sees the cut
        status, data = 200, exc.partial
    # granian ends the chunked body as if it were whole (README, Engines): the client sees only the first block.
    assert status == 200 and data.startswith(b"first block")
    assert served.get("/")[0] == 200  # the next request comes after close(): served, so close() has run
    assert (served.tmp / "close-1").read_text() == "closed\n"
    log = served.pool.log()
    assert "mid-response failure" in log and "Traceback" in log


def test_an_app_error_is_a_500_and_its_traceback_is_logged(served: Served) -> None:
    assert served.get("/raise")[0] == 500
    log = served.pool.log()
    assert "raised before start_response" in log and "LookupError" in log
    assert served.get("/")[0] == 200
