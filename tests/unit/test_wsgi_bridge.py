"""The WSGI bridge driven as an ASGI app, no server: what uvicorn would receive from it."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from corepool.engines.wsgi import BUFFER_LIMIT, WSGIBridge


def call(app: Any, body_parts: list[bytes] | None = None, path: str = "/") -> list[dict[str, Any]]:
    parts = body_parts or [b""]
    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"q=1",
             "root_path": "", "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 80),
             "client": ("127.0.0.1", 5000), "headers": [(b"content-type", b"text/plain")]}
    sent: list[dict[str, Any]] = []

    async def main() -> None:
        queue = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]

        async def receive() -> dict[str, Any]:
            return queue.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await WSGIBridge(app, threads=2)(scope, receive, send)

    asyncio.run(main())
    return sent


def body(sent: list[dict[str, Any]]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_plain_response_is_sent_in_two_messages() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        assert environ["QUERY_STRING"] == "q=1" and environ["CONTENT_TYPE"] == "text/plain"
        start_response("201 Created", [("X-A", "1")])
        return [b"hello ", b"world"]

    sent = call(app)
    assert sent[0] == {"type": "http.response.start", "status": 201, "headers": [(b"x-a", b"1")]}
    assert len(sent) == 2 and body(sent) == b"hello world" and not sent[1].get("more_body")


def test_request_body_in_pieces_is_read_through_the_loop() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        data = environ["wsgi.input"].read()
        start_response("200 OK", [])
        return [data.upper()]

    assert body(call(app, [b"abc", b"def", b"ghi"])) == b"ABCDEFGHI"
    assert body(call(app, [b"one piece"])) == b"ONE PIECE"


def test_large_response_is_streamed_with_every_byte() -> None:
    chunk = b"x" * 65536

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        for _ in range(10):
            yield chunk

    sent = call(app)
    assert body(sent) == chunk * 10
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert len(bodies) > 1 and all(m["more_body"] for m in bodies[:-1]) and not bodies[-1]["more_body"]
    assert max(len(m["body"]) for m in bodies) <= BUFFER_LIMIT + len(chunk)


def test_write_callable_and_close_are_honoured() -> None:
    closed = []

    class Result(list[bytes]):
        def close(self) -> None:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Any) -> Result:
        write = start_response("200 OK", [])
        write(b"early ")
        return Result([b"late"])

    assert body(call(app)) == b"early late" and closed == [True]


def test_exc_info_replaces_an_unsent_status() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        try:
            raise ValueError("boom")
        except ValueError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b"sorry"]

    sent = call(app)
    assert sent[0]["status"] == 500 and body(sent) == b"sorry"


def test_app_errors_reach_the_server() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise RuntimeError("app bug")

    with pytest.raises(RuntimeError, match="app bug"):
        call(app)

    def no_start(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        return []

    with pytest.raises(RuntimeError, match="without calling start_response"):
        call(no_start)
