"""HTTP/2 (issue 17 item 2): h2c with prior knowledge and ALPN h2 over TLS, on ASGI and WSGI apps; flow control
both ways; the front line's limits (fields: 431, a body too large: 413, streams at once); a client that resets
streams in a storm (rapid reset) or floods CONTINUATION frames loses its own connection only; a drain's two GOAWAYs
let the streams in flight finish; ``--no-http2`` answers the preface as HTTP/1.1 does (505)."""

from __future__ import annotations

import json
import shutil
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import h2.errors
import hyperframe.frame
import pytest

from tests.integration.h2client import H2Client, Response
from tests.support import get_json

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.fixture
def mode() -> str:
    return "preload"


@pytest.fixture
def h2pool(pool_factory: Any) -> Any:
    return pool_factory("h2_app:app", workers=1).start()


def test_h2c_prior_knowledge_serves_many_streams_on_one_connection(h2pool: Any) -> None:
    with H2Client(h2pool.port) as client:
        ids = [client.start(f"/?n={n}") for n in range(20)]  # all in flight at once
        answers = [client.wait(i) for i in ids]
    assert {a.status for a in answers} == {200}
    first = json.loads(answers[0].body)
    assert first["http_version"] == "2" and first["scheme"] == "http" and first["method"] == "GET"
    assert ["host", "127.0.0.1"] in first["headers"]  # :authority, for apps that read Host
    assert answers[0].headers["server"] == "corepool" and "date" in answers[0].headers
    assert "connection" not in answers[0].headers  # HTTP/1.1's connection fields never go out on HTTP/2
    assert get_json(h2pool.port)["http_version"] == "1.1"  # the same socket still speaks HTTP/1.1


def test_flow_control_both_ways(h2pool: Any) -> None:
    """Bodies far larger than the initial 64 KiB windows go through: the server reopens the client's window as the
    app reads, and waits for the client's window before it sends."""
    body = bytes(range(256)) * 8192  # 2 MiB
    with H2Client(h2pool.port) as client:
        echoed = client.get("/echo", method="POST", body=body)
        big = client.get("/big?size=3000000")
    assert echoed.status == 200 and echoed.body == body
    assert big.status == 200 and len(big.body) == 3_000_000


def test_a_failing_app_answers_500_and_the_connection_serves_on(h2pool: Any) -> None:
    with H2Client(h2pool.port) as client:
        assert client.get("/boom").status == 500
        assert client.get("/").status == 200
    assert "h2 view failed on purpose" in h2pool.log()


def test_wsgi_over_h2(pool_factory: Any) -> None:
    pool = pool_factory("hostile_app:wsgi", workers=1).start()
    with H2Client(pool.port) as client:
        answer = client.get("/path?q=1", method="POST", body=b"hello", headers=[("x-test", "yes")])
    assert answer.status == 200
    seen = json.loads(answer.body)
    assert seen["method"] == "POST" and seen["path"] == "/path" and seen["query"] == "q=1"
    assert seen["body"] == "hello" and ["x-test", "yes"] in seen["headers"]


def test_limits_refuse_the_stream_not_the_connection(pool_factory: Any) -> None:
    pool = pool_factory("h2_app:app", "--max-headers", "10", "--max-body-bytes", "1000", workers=1).start()
    with H2Client(pool.port) as client:
        many = client.get("/", headers=[(f"x-{n}", "v") for n in range(11)])
        large = client.get("/echo", method="POST", body=b"x" * 5000, headers=[("content-length", "5000")])
        streamed = client.get("/echo", method="POST", body=b"x" * 5000)  # no content-length: counted as it comes
        fine = client.get("/")
    assert many.status == 431 and large.status == 413 and large.body.startswith(b"Content Too Large")
    assert streamed.reset == h2.errors.ErrorCodes.REFUSED_STREAM or streamed.status == 413
    assert fine.status == 200


def test_rapid_reset_costs_the_client_its_connection(pool_factory: Any) -> None:
    pool = pool_factory("h2_app:app", "--h2-max-resets-per-second", "50", workers=1).start()
    with H2Client(pool.port) as client:
        for _ in range(200):  # CVE-2023-44487: open a stream and cancel it at once, as fast as possible
            stream_id = client.conn.get_next_available_stream_id()
            client.conn.send_headers(stream_id, [(":method", "GET"), (":path", "/slow?seconds=5"),
                                                 (":scheme", "http"), (":authority", "a")])
            client.conn.reset_stream(stream_id)
            try:
                client.flush()
            except (BrokenPipeError, ConnectionResetError):
                break
        while client.read():
            pass
    assert [g.error_code for g in client.goaways] == [h2.errors.ErrorCodes.ENHANCE_YOUR_CALM]
    with H2Client(pool.port) as other:
        assert other.get("/").status == 200  # nobody else's connection
    assert pool.status()["workers_ready"] == 1


def test_a_continuation_flood_closes_the_connection(h2pool: Any) -> None:
    """A HEADERS frame without END_HEADERS and CONTINUATION frames without end (CVE-2024-27316's kind): h2 stops
    at its cap, the connection goes, the pool serves on."""
    with socket.create_connection(("127.0.0.1", h2pool.port), timeout=10) as sock:
        sock.sendall(PREFACE + hyperframe.frame.SettingsFrame(0).serialize())
        headers = hyperframe.frame.HeadersFrame(1)
        headers.data = b"\x82\x84\x86"  # :method GET, :path /, :scheme http (HPACK static table)
        sock.sendall(headers.serialize())
        closed = False
        try:
            for _ in range(10_000):
                piece = hyperframe.frame.ContinuationFrame(1)
                piece.data = b"\x40\x01a\x01b"  # a literal field a: b, again and again
                sock.sendall(piece.serialize())
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        if not closed:
            sock.settimeout(10)
            while True:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
    with H2Client(h2pool.port) as client:
        assert client.get("/").status == 200


def test_a_drain_lets_streams_in_flight_finish(h2pool: Any) -> None:
    """A reload: the old worker's connection gets the first GOAWAY (no new streams), its stream in flight is
    answered, then the final GOAWAY and the close; a new connection is served by the new generation."""
    client = H2Client(h2pool.port)
    try:
        slow = client.start("/slow?seconds=2")
        assert client.get("/").status == 200
        h2pool.ctl("reload")  # without --wait: the slow stream is still in flight while the worker drains
        answer = client.wait(slow)
        while client.read():
            pass
    finally:
        client.close()
    assert answer.status == 200 and json.loads(answer.body)["generation"] == 1
    assert client.goaways and client.goaways[0].last_stream_id == 2**31 - 1
    assert client.goaways[-1].error_code == h2.errors.ErrorCodes.NO_ERROR
    assert client.goaways[-1].last_stream_id >= slow
    h2pool.wait_for(lambda s: s["generation"] == 2 and s["workers_ready"] == 1, what="generation 2")
    with H2Client(h2pool.port) as fresh:
        assert json.loads(fresh.get("/").body)["generation"] == 2


def test_no_http2_answers_the_preface_as_http11_does(pool_factory: Any) -> None:
    pool = pool_factory("h2_app:app", "--no-http2", workers=1).start()
    with socket.create_connection(("127.0.0.1", pool.port), timeout=10) as sock:
        sock.sendall(PREFACE)
        assert sock.recv(4096).startswith(b"HTTP/1.1 505 ")


def test_the_preface_on_an_http2_socket_is_answered_with_settings(h2pool: Any) -> None:
    with socket.create_connection(("127.0.0.1", h2pool.port), timeout=10) as sock:
        sock.sendall(PREFACE)
        head = sock.recv(9)
        length, kind = struct.unpack(">I", b"\0" + head[:3])[0], head[3]
        assert kind == 0x4 and length % 6 == 0  # a SETTINGS frame


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl (scripts/setup --test)")
def test_alpn_h2_over_tls(pool_factory: Any, tmp_path: Path) -> None:
    from tests.integration.test_tls import client_context, make_cert

    cert, key = make_cert(tmp_path, "h2")
    pool = pool_factory("h2_app:app", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), workers=1).start()
    with H2Client(pool.port, tls=client_context(cert)) as client:
        assert client.sock.selected_alpn_protocol() == "h2"  # type: ignore[attr-defined]
        answer = client.get("/")
    seen = json.loads(answer.body)
    assert seen["http_version"] == "2" and seen["scheme"] == "https"


class GoawayLoad(threading.Thread):
    """One client as RFC 9113 §6.8 wants it: 10 streams in flight on a connection; on GOAWAY no new stream there,
    the ones in flight are finished, then a new connection. Every stream it opens must end in a 200."""

    def __init__(self, port: int, until: float) -> None:
        super().__init__(daemon=True)
        self.port, self.until = port, until
        self.ok = self.connections = 0
        self.lost: list[str] = []

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # the test reads it: a thread's exception alone would not fail it
            self.lost.append(f"{type(exc).__name__}: {exc}")

    def _run(self) -> None:
        while time.monotonic() < self.until:
            self.connections += 1
            with H2Client(self.port) as client:
                open_ = {client.start("/") for _ in range(10)}
                while open_:
                    if not client.read():
                        self.lost.append(f"connection closed with {len(open_)} streams in flight")
                        break
                    for stream_id in [i for i in open_ if client.responses[i].ended or client.responses[i].reset]:
                        open_.discard(stream_id)
                        answer = client.responses[stream_id]
                        if answer.status == 200 and answer.reset is None:
                            self.ok += 1
                        else:
                            self.lost.append(f"stream {stream_id}: status {answer.status}, reset {answer.reset}")
                        if not client.goaways and time.monotonic() < self.until:
                            open_.add(client.start("/"))


def test_streams_across_two_reloads_are_all_answered(pool_factory: Any) -> None:
    """4 clients x 10 streams while the pool rolls twice (reload --wait): not one stream is refused or lost, and
    the clients move to the new workers (new connections after the GOAWAYs)."""
    pool = pool_factory("h2_app:app", "--graceful-timeout", "10", workers=2).start()
    clients = [GoawayLoad(pool.port, time.monotonic() + 6) for _ in range(4)]
    for client in clients:
        client.start()
    for _ in range(2):
        done = pool.ctl("reload", "--wait")
        assert done.returncode == 0, done.stdout + done.stderr
    for client in clients:
        client.join(60)
    assert pool.status()["generation"] == 3
    assert [c.lost for c in clients] == [[], [], [], []]
    assert all(c.ok > 0 for c in clients) and sum(c.connections for c in clients) > 4


def test_a_stream_that_never_sends_its_body_meets_body_timeout(pool_factory: Any) -> None:
    pool = pool_factory("h2_app:app", "--body-timeout", "1", workers=1).start()
    with H2Client(pool.port) as client:
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(stream_id, [(":method", "POST"), (":path", "/echo"), (":scheme", "http"),
                                             (":authority", "a")])  # and no body, ever
        client.responses[stream_id] = Response()
        client.flush()
        answer = client.wait(stream_id)
        assert answer.reset == h2.errors.ErrorCodes.CANCEL or not answer.body
        assert client.get("/").status == 200  # the connection serves on


def test_settings_and_ping_floods_cost_the_connection(h2pool: Any) -> None:
    for frame in (hyperframe.frame.SettingsFrame(0), hyperframe.frame.PingFrame(0)):
        with socket.create_connection(("127.0.0.1", h2pool.port), timeout=10) as sock:
            sock.sendall(PREFACE + hyperframe.frame.SettingsFrame(0).serialize())
            flood = frame.serialize() * 5000
            data, reset = b"", False
            try:
                sock.sendall(flood)
                while chunk := sock.recv(65536):
                    data += chunk
            except (BrokenPipeError, ConnectionResetError):
                reset = True  # closed while the flood was still coming: the kernel answers the rest with RST
            goaway = data.rfind(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00")  # a GOAWAY frame's header
            calm = goaway >= 0 and data[goaway + 13:goaway + 17] == b"\x00\x00\x00\x0b"  # ENHANCE_YOUR_CALM
            assert calm or reset, f"{type(frame).__name__} flood: the connection stayed open"
    with H2Client(h2pool.port) as client:
        assert client.get("/").status == 200


def test_a_window_update_that_overflows_closes_the_connection(h2pool: Any) -> None:
    with socket.create_connection(("127.0.0.1", h2pool.port), timeout=10) as sock:
        sock.sendall(PREFACE + hyperframe.frame.SettingsFrame(0).serialize())
        for _ in range(2):
            update = hyperframe.frame.WindowUpdateFrame(0)
            update.window_increment = 2**31 - 1
            sock.sendall(update.serialize())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert b"\x00\x00\x00\x03" in data  # GOAWAY FLOW_CONTROL_ERROR, then the close
    with H2Client(h2pool.port) as client:
        assert client.get("/").status == 200


def test_a_header_list_too_large_is_431_and_far_too_large_closes(pool_factory: Any) -> None:
    pool = pool_factory("h2_app:app", "--max-header-bytes", "4096", workers=1).start()
    with H2Client(pool.port) as client:
        assert client.get("/", headers=[(f"x-{n}", "v" * 100) for n in range(40)]).status == 431  # ~5.5 KiB
        assert client.get("/").status == 200
    with H2Client(pool.port) as client:
        client.get("/", headers=[(f"x-{n}", "v" * 100) for n in range(80)])  # ~11 KiB: over twice
        while client.read():
            pass
        assert client.goaways and client.closed
