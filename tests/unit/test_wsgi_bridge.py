"""The WSGI bridge driven as an ASGI app, no server: what uvicorn would hand it and receive from it."""

from __future__ import annotations

import asyncio
import sys
import threading
import wsgiref.validate
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from corepool.engines.wsgi import BUFFERED_BODY_LIMIT, ClientDisconnected, WSGIBridge, adapt, build_environ
from corepool.settings import HttpOptions

App = Callable[[dict[str, Any], Any], Any]
WAIT = 10.0  # a bound for waits that only a broken bridge would reach (never asserted on as a time)


def scope_of(path: str = "/", raw_path: bytes | None = None, headers: list[tuple[bytes, bytes]] | None = None,
             root_path: str = "", method: str = "POST") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "raw_path": raw_path or path.encode(),
            "query_string": b"q=1", "root_path": root_path, "http_version": "1.1", "scheme": "http",
            "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000),
            "headers": headers if headers is not None else [(b"content-type", b"text/plain")]}  # fmt: skip


class Exchange:
    """One request through a bridge: the client's messages come from a queue, what the bridge sends is kept."""

    def __init__(self, app: App, parts: list[bytes] | None = None, scope: dict[str, Any] | None = None,
                 on_send: Callable[[dict[str, Any]], None] | None = None) -> None:  # fmt: skip
        self.app, self.scope, self.on_send = app, scope or scope_of(), on_send
        self.parts = parts if parts is not None else [b""]
        self.sent: list[dict[str, Any]] = []
        self.bridge = WSGIBridge(app, threads=2)
        self.queue: asyncio.Queue[dict[str, Any]] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def push(self, message: dict[str, Any]) -> None:
        """From any thread: the client sends a message (a body piece, or ``http.disconnect``)."""
        assert self.loop is not None and self.queue is not None
        self.loop.call_soon_threadsafe(self.queue.put_nowait, message)

    def run(self, feed: Callable[[Exchange], Any] | None = None) -> list[dict[str, Any]]:
        async def main() -> None:
            self.loop, self.queue = asyncio.get_running_loop(), asyncio.Queue()
            if feed is None:
                for i, p in enumerate(self.parts):
                    self.queue.put_nowait({"type": "http.request", "body": p, "more_body": i < len(self.parts) - 1})
            else:
                feeding = asyncio.ensure_future(feed(self))
            queue = self.queue

            async def receive() -> dict[str, Any]:
                return await queue.get()

            async def send(message: dict[str, Any]) -> None:
                self.sent.append(message)
                if self.on_send is not None:
                    self.on_send(message)

            await asyncio.wait_for(self.bridge(self.scope, receive, send), WAIT)
            if feed is not None:
                feeding.cancel()

        asyncio.run(main())
        return self.sent


def call(app: App, parts: list[bytes] | None = None, **scope: Any) -> list[dict[str, Any]]:
    return Exchange(app, parts, scope_of(**scope) if scope else None).run()


def body(sent: list[dict[str, Any]]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    data = environ["wsgi.input"].read()
    start_response("200 OK", [])
    return [data]


# ------------------------------------------------------------------------------------------------ the environ


def test_environ_follows_pep_3333() -> None:
    headers = [(b"host", b"example.org"), (b"x-a", b"1"), (b"x-a", b"2"), (b"cookie", b"a=1"), (b"cookie", b"b=2"),
               (b"x_user", b"spoof"), (b"content-length", b"3"), (b"content-type", b"text/plain")]  # fmt: skip
    environ = build_environ(scope_of("/app/\ufffd", b"/app/%FF%FE%20x", headers, root_path="/app"), None)
    assert environ["PATH_INFO"] == "/\xff\xfe x" and environ["SCRIPT_NAME"] == "/app"
    assert environ["HTTP_X_A"] == "1, 2" and environ["HTTP_COOKIE"] == "a=1; b=2"
    assert "HTTP_X_USER" not in environ  # an underscore name would pass for x-user
    assert environ["CONTENT_LENGTH"] == "3" and "HTTP_CONTENT_LENGTH" not in environ
    assert environ["wsgi.input_terminated"] is True and environ["QUERY_STRING"] == "q=1"
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"], environ["REMOTE_ADDR"]) == ("127.0.0.1", "80", "127.0.0.1")


def test_environ_on_a_unix_socket_names_the_host() -> None:
    scope = {**scope_of(headers=[(b"host", b"example.org:8080")]), "server": None, "client": None}
    environ = build_environ(scope, None)
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("example.org", "8080")
    assert "REMOTE_ADDR" not in environ


def test_chunked_request_has_no_content_length_and_reads_whole() -> None:
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update(environ)
        return echo(environ, start_response)

    parts = [b"a" * 1000, b"b" * 3000, b"", b"c" * 7]
    assert body(call(app, parts)) == b"".join(parts)
    assert "CONTENT_LENGTH" not in seen and seen["wsgi.input_terminated"] is True


# ------------------------------------------------------------------------------------------------ request bodies


def test_streamed_reads_never_come_back_short() -> None:
    parts = [b"li", b"ne one\nline", b" two\n", b"x" * 10, b"y" * 5, b"\nlast", b" line"]
    got: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        stream = environ["wsgi.input"]
        got["read3"] = stream.read(3)
        got["readline"] = stream.readline()
        got["readline4"] = stream.readline(4)
        got["readline_rest"] = stream.readline(100)
        got["read12"] = stream.read(12)
        got["lines"] = list(stream)
        got["after"] = stream.read(10), stream.readline(), stream.read()
        start_response("200 OK", [])
        return []

    headers = [(b"content-length", str(BUFFERED_BODY_LIMIT + 1).encode())]  # too long to be buffered: streams
    Exchange(app, parts, scope_of(headers=headers)).run()
    assert got == {"read3": b"lin", "readline": b"e one\n", "readline4": b"line", "readline_rest": b" two\n",
                   "read12": b"x" * 10 + b"yy", "lines": [b"yyy\n", b"last line"],
                   "after": (b"", b"", b"")}  # fmt: skip


def test_readlines_and_read_everything() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        lines = environ["wsgi.input"].readlines()
        start_response("200 OK", [])
        return [b"|".join(lines)]

    assert body(call(app, [b"a\nb", b"b\n", b"", b"c"])) == b"a\n|bb\n|c"


def test_small_body_with_length_is_read_before_a_thread_is_taken() -> None:
    started: list[bool] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        started.append(True)
        return echo(environ, start_response)

    async def feed(ex: Exchange) -> None:
        for piece in (b"abc", b"def"):
            ex.push({"type": "http.request", "body": piece, "more_body": True})
            await asyncio.sleep(0.05)
            assert not started and ex.bridge.busy == 0  # the client is still sending: no thread yet
        ex.push({"type": "http.request", "body": b"ghi", "more_body": False})

    ex = Exchange(app, scope=scope_of(headers=[(b"content-length", b"9")]))
    assert body(ex.run(feed)) == b"abcdefghi" and started == [True]


def test_client_leaving_mid_body_raises_in_the_app() -> None:
    raised: list[BaseException] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        try:
            environ["wsgi.input"].read()
        except OSError as exc:
            raised.append(exc)
            raise
        start_response("200 OK", [])
        return [b"unreachable"]

    async def feed(ex: Exchange) -> None:  # more than the bridge gathers on the loop: the app is reading it
        ex.push({"type": "http.request", "body": b"x" * (BUFFERED_BODY_LIMIT + 100), "more_body": True})
        await asyncio.sleep(0.05)
        ex.push({"type": "http.disconnect"})

    sent = Exchange(app).run(feed)  # the bridge ends quietly: a client that left is not an app error
    assert sent == [] and len(raised) == 1 and isinstance(raised[0], ClientDisconnected)


def test_client_leaving_a_buffered_body_never_reaches_the_app() -> None:
    called: list[bool] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        called.append(True)
        return echo(environ, start_response)

    async def feed(ex: Exchange) -> None:
        ex.push({"type": "http.request", "body": b"x", "more_body": True})
        ex.push({"type": "http.disconnect"})

    assert Exchange(app, scope=scope_of(headers=[(b"content-length", b"10")])).run(feed) == [] and not called


# ------------------------------------------------------------------------------------------------ responses


def test_list_response_is_handed_back_once() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        assert environ["QUERY_STRING"] == "q=1" and environ["CONTENT_TYPE"] == "text/plain"
        start_response("201 Created", [("X-A", "1")])
        return [b"hello ", b"world"]

    sent = call(app)
    assert sent[0] == {"type": "http.response.start", "status": 201, "headers": [(b"x-a", b"1")]}
    assert len(sent) == 2 and body(sent) == b"hello world" and not sent[1].get("more_body")


def test_generator_blocks_reach_the_client_as_they_are_yielded() -> None:
    arrived = [threading.Event() for _ in range(10)]
    late: list[int] = []

    def on_send(message: dict[str, Any]) -> None:
        if message.get("body"):
            arrived[int(message["body"])].set()

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        for i in range(10):
            yield str(i).encode()
            if not arrived[i].wait(WAIT):  # a bridge that holds blocks back never sends this one
                late.append(i)

    sent = Exchange(app, on_send=on_send).run()
    assert not late and body(sent) == b"0123456789"
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert all(m["more_body"] for m in bodies[:-1]) and not bodies[-1]["more_body"]


def test_client_leaving_stops_the_iteration_and_closes_once() -> None:
    produced: list[int] = []
    closed: list[bool] = []

    class Endless:
        def __iter__(self) -> Iterator[bytes]:
            while True:
                produced.append(1)
                yield b"x" * 65536

        def close(self) -> None:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Any) -> Endless:
        start_response("200 OK", [])
        return Endless()

    ex = Exchange(app)

    def on_send(message: dict[str, Any]) -> None:
        if len(ex.sent) == 5:
            ex.push({"type": "http.disconnect"})

    ex.on_send = on_send
    ex.run()
    assert closed == [True] and len(produced) < 50


@pytest.mark.parametrize("kind", ["list", "generator"])
def test_close_runs_once_on_an_exception(kind: str) -> None:
    closed: list[bool] = []

    class Failing:
        def __iter__(self) -> Iterator[bytes]:
            yield b"one"
            raise ValueError("app bug")

        def close(self) -> None:
            closed.append(True)

    class Listed(list[bytes]):
        def close(self) -> None:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return Failing() if kind == "generator" else Listed([b"fine"])

    if kind == "generator":
        with pytest.raises(ValueError, match="app bug"):
            call(app)
    else:
        assert body(call(app)) == b"fine"
    assert closed == [True]


def test_write_is_sent_before_the_app_returns_and_keeps_order() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [])
        write(b"early ")
        return [b"late"]

    sent = call(app)
    assert body(sent) == b"early late" and sent[0]["type"] == "http.response.start"


def test_exc_info_replaces_an_unsent_status() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("X-Partial", "1")])
        try:
            raise ValueError("boom")
        except ValueError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b"sorry"]

    sent = call(app)
    assert sent[0]["status"] == 500 and sent[0]["headers"] == [] and body(sent) == b"sorry"


def test_exc_info_after_write_reraises_and_never_mixes_bodies() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [])
        write(b"partial")
        try:
            raise ValueError("boom")
        except ValueError:
            start_response("500 Internal Server Error", [], sys.exc_info())  # headers went out: re-raises
        return [b"error page"]

    ex = Exchange(app)
    with pytest.raises(ValueError, match="boom"):
        ex.run()
    assert ex.sent[0]["status"] == 200 and body(ex.sent) == b"partial"


def test_app_errors_reach_the_server() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise RuntimeError("app bug")

    with pytest.raises(RuntimeError, match="app bug"):
        call(app)

    def no_start(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        return []

    with pytest.raises(RuntimeError, match="without calling start_response"):
        call(no_start)

    def twice(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        start_response("200 OK", [])
        return []

    with pytest.raises(RuntimeError, match="second time"):
        call(twice)

    def text(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return ["not bytes"] if environ["PATH_INFO"] == "/list" else iter(["not bytes"])

    for path in ("/list", "/iter"):
        with pytest.raises(TypeError, match="of type str, not bytes"):
            call(text, path=path)


@pytest.mark.parametrize("kind", ["list", "generator", "write"])
def test_wsgiref_validator_passes(kind: str) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        stream = environ["wsgi.input"]
        data = stream.read(5) + stream.readline() + b"".join(stream.readlines())
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        if kind == "write":
            write(data)
            return []
        return [data] if kind == "list" else iter([data[:2], data[2:]])

    parts = [b"hello\n", b"wor", b"ld\nagain"]
    headers = [(b"content-type", b"text/plain"), (b"transfer-encoding", b"chunked")]
    assert body(Exchange(wsgiref.validate.validator(app), parts, scope_of(headers=headers)).run()) == b"".join(parts)


def test_environ_without_raw_path_and_with_many_header_names() -> None:
    scope = {**scope_of("/100%/\xe9"), "raw_path": None}
    assert build_environ(scope, None)["PATH_INFO"] == "/100%/\xc3\xa9"  # UTF-8 bytes as latin-1, decoded once
    names = [(f"x-h{i}".encode(), str(i).encode()) for i in range(2000)]  # more names than are cached
    environ = build_environ(scope_of(headers=names), None)
    assert all(environ[f"HTTP_X_H{i}"] == str(i) for i in range(2000))


def test_threads_option_bounds_the_app_calls_running_at_once() -> None:
    running, peak, lock = [0], [0], threading.Lock()
    release = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        release.wait(WAIT)
        with lock:
            running[0] -= 1
        start_response("200 OK", [])
        return [b"ok"]

    bridge = adapt(app, HttpOptions(threads=3))
    assert bridge.threads == 3

    async def main() -> list[int]:
        async def one() -> None:
            queue = [{"type": "http.request", "body": b"", "more_body": False}]

            async def receive() -> dict[str, Any]:
                return queue.pop(0)

            async def send(message: dict[str, Any]) -> None:
                pass

            await bridge(scope_of(method="GET"), receive, send)

        tasks = [asyncio.ensure_future(one()) for _ in range(8)]
        while peak[0] < 3:  # bounded by WAIT through wait_for below
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # room for a fourth call to start, if the bound were broken
        seen = [bridge.calls, bridge.busy, peak[0]]
        release.set()
        await asyncio.gather(*tasks)
        return [*seen, bridge.busy]

    assert asyncio.run(asyncio.wait_for(main(), WAIT)) == [8, 3, 3, 0]  # 8 calls in, 3 on a thread at most
