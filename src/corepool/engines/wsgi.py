"""WSGI apps on the same uvicorn engine, run on a thread pool (the choice is measured in
docs/benchmarks/wsgi-engines.md).

uvicorn parses HTTP; :class:`WSGIBridge` turns each ASGI request into a WSGI call. a2wsgi's middleware hands
every response message from the app's thread back to the event loop and waits for it (three cross-thread round
trips for a plain response); the bridge runs the whole call on the thread and hands back the buffered response
once, which is most of the WSGI throughput difference on small responses. Large or streamed responses and
request bodies that do not arrive in one piece fall back to streaming through the loop, with back-pressure. The
environ is built by a2wsgi's ``build_environ``.

Health pings go through the same thread pool before they are answered: a worker whose every WSGI thread is
stuck fails its ping and is replaced, instead of being vouched for by an idle event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import io
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from a2wsgi.wsgi import Body, build_environ

from corepool.settings import HttpOptions

THREADS = HttpOptions.threads
BUFFER_LIMIT = 256 * 1024  # a response larger than this is streamed instead of buffered

Send = Callable[[dict[str, Any]], Any]


class _Response:
    """One WSGI response, buffered on the app's thread until it grows past BUFFER_LIMIT."""

    def __init__(self, loop: asyncio.AbstractEventLoop, send: Send) -> None:
        self.loop, self.send = loop, send
        self.start: dict[str, Any] | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.streaming = False

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None and self.streaming:
            raise exc_info[1].with_traceback(exc_info[2])  # PEP 3333: too late to change the status
        code = int(status.split(" ", 1)[0])
        encoded = [(name.strip().lower().encode("latin1"), value.strip().encode("latin1")) for name, value in headers]
        self.start = {"type": "http.response.start", "status": code, "headers": encoded}
        return self.write

    def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.chunks.append(chunk)
        self.size += len(chunk)
        if self.size > BUFFER_LIMIT:
            self.flush(more=True)

    def flush(self, more: bool) -> None:
        """From the app's thread: send what is buffered through the event loop, and wait (back-pressure)."""
        if self.start is None:
            raise RuntimeError("the WSGI app returned a body before calling start_response")
        if not self.streaming:
            self._on_loop(self.start)
            self.streaming = True
        body, self.chunks, self.size = b"".join(self.chunks), [], 0
        self._on_loop({"type": "http.response.body", "body": body, "more_body": more})

    def _on_loop(self, message: dict[str, Any]) -> None:
        asyncio.run_coroutine_threadsafe(self.send(message), self.loop).result()


class WSGIBridge:
    """An ASGI app running a WSGI app on a thread pool, with one hand-off per ordinary request."""

    def __init__(self, app: Any, threads: int = THREADS) -> None:
        self.app = app
        self.threads = threads
        self.busy = 0  # app calls running on a thread now (only changed on the event loop)
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsgi")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] != "http":  # uvicorn runs WSGI routes with lifespan off and no websockets
            return
        loop = asyncio.get_running_loop()
        first = await receive()
        wsgi_input: Any
        if first.get("more_body"):  # a body in several pieces: the app reads the rest through the loop
            wsgi_input = Body(loop, receive)
            wsgi_input.buffer.extend(first.get("body", b""))
        else:
            wsgi_input = io.BytesIO(first.get("body", b""))
        environ = cast(dict[str, Any], build_environ(scope, wsgi_input))  # type: ignore[arg-type]
        response = _Response(loop, send)
        context = contextvars.copy_context()
        self.busy += 1
        try:
            await loop.run_in_executor(self.executor, lambda: context.run(self._call, environ, response))
        finally:
            self.busy -= 1
        if not response.streaming:
            assert response.start is not None
            await send(response.start)
            await send({"type": "http.response.body", "body": b"".join(response.chunks)})

    def _call(self, environ: dict[str, Any], response: _Response) -> None:
        """On an app thread: call the app and collect its response (streaming it if it grows large)."""
        iterable: Iterable[bytes] = self.app(environ, response.start_response)
        try:
            for chunk in iterable:
                if response.start is None:
                    raise RuntimeError("the WSGI app returned a body before calling start_response")
                response.write(chunk)
            if response.start is None:
                raise RuntimeError("the WSGI app returned without calling start_response")
            if response.streaming:
                response.flush(more=False)
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()


def adapt(app: Any, options: HttpOptions) -> WSGIBridge:
    """The WSGI app as an ASGI app running it on ``options.threads`` threads."""
    return WSGIBridge(app, options.threads)
