"""Requests that get stuck, each its own way, for tests/integration/test_stuck.py.

ASGI ``app``: ``/await?s=S`` awaits ``asyncio.sleep`` (a slow upstream); ``/block?s=S`` blocks the event loop in
``time.sleep``; ``/gil?s=S`` holds the GIL S seconds in C (libc's sleep through ctypes.PyDLL, which keeps the GIL:
what a C extension that never releases it does). WSGI ``wsgi``: ``/sleep?s=S`` sleeps in its app thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import time
from typing import Any
from urllib.parse import parse_qs


def _seconds(query: str) -> float:
    return float(parse_qs(query).get("s", ["30"])[0])


def wait_for_the_upstream(seconds: float) -> None:
    time.sleep(seconds)


async def call_the_upstream(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    seconds = _seconds(scope["query_string"].decode())
    if scope["path"] == "/await":
        await call_the_upstream(seconds)
    elif scope["path"] == "/block":
        wait_for_the_upstream(seconds)
    elif scope["path"] == "/gil":
        ctypes.PyDLL(None).sleep(int(seconds))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    if environ["PATH_INFO"] == "/sleep":
        wait_for_the_upstream(_seconds(environ.get("QUERY_STRING", "")))
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
