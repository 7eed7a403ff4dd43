"""WSGI apps on the same uvicorn engine, run on a thread pool (the choice is measured in
docs/benchmarks/wsgi-engines.md), following PEP 3333 to the letter.

uvicorn parses HTTP; :class:`WSGIBridge` turns each ASGI request into one WSGI call on a thread.

* **Request bodies.** Up to :data:`BUFFERED_BODY_LIMIT` of a body (chunked or not) is read on the event loop
  before a thread is taken (as nginx buffers requests), so a slow client costs a connection, never an app
  thread. The rest of a larger body streams: ``wsgi.input`` pulls it through the loop, and its ``read(n)``,
  ``readline(n)``, ``readlines()`` and iteration wait for data, returning short only at the end of the body.
  ``wsgi.input_terminated`` is set (the stream ends where the body ends, with or without a Content-Length).
  A client that leaves before the end of its body raises :class:`ClientDisconnected` in the app.
* **Responses.** A list or tuple response is handed back to the loop once, buffered: the fast path. Any other
  iterable, and ``write()``, is sent block by block as the app produces it, one block in flight at a time
  (back-pressure). A client that leaves mid-response ends the iteration; ``close()`` runs exactly once.
* **The environ** is built here: ``PATH_INFO`` is the latin-1 decoding of the raw, percent-decoded path bytes
  (PEP 3333), ``SCRIPT_NAME`` the ASGI ``root_path``, repeated headers are joined with ``", "`` (``Cookie``
  with ``"; "``), and header names with an underscore are dropped, as gunicorn and nginx do (``X_User`` would
  otherwise pass for ``X-User``).

Health pings are answered by the serving loop, never through this thread pool; unhandled app exceptions are
logged once by the protocol (engines/http11.py), which calls the bridge.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import io
import os
import queue
import sys
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, cast
from urllib.parse import unquote_to_bytes

from corepool.engines.stats import AppClock, current_clock
from corepool.settings import HttpOptions

THREADS = HttpOptions.threads
BUFFERED_BODY_LIMIT = 1024 * 1024  # this much of a body is read on the loop before a thread is taken
READ_AHEAD = 256 * 1024  # body bytes read ahead of a streaming app while its response is sent
BUFFER_LIMIT = 256 * 1024  # a list response larger than this goes out as one message per item, not joined

Send = Callable[[dict[str, Any]], Any]
Receive = Callable[[], Any]


class ClientDisconnected(OSError):
    """Raised in a WSGI app by ``wsgi.input`` (or ``write()``) when its client has gone away."""


# ------------------------------------------------------------------------------------------------ the environ


_KEYS: dict[bytes, str | None] = {}  # header name -> environ key (None: dropped); names repeat, so cached
_KEYS_MAX = 512


def environ_key(name: bytes) -> str | None:
    """The environ key of a request header (lower-case, as servers give them), None for one to drop."""
    key = _KEYS.get(name, "")
    if key != "":
        return key
    if b"_" in name:
        key = None  # gunicorn and nginx drop these: X_User would pass for X-User
    else:
        key = name.decode("latin-1").upper().replace("-", "_")
        if key != "CONTENT_TYPE" and key != "CONTENT_LENGTH":
            key = "HTTP_" + key
    if len(_KEYS) < _KEYS_MAX:  # bounded: a client can send any names it likes
        _KEYS[name] = key
    return key


def build_environ(scope: dict[str, Any], wsgi_input: Any) -> dict[str, Any]:
    """The PEP 3333 environ of an ASGI http scope (``wsgi.input`` is ``wsgi_input``)."""
    root_path = scope.get("root_path", "")
    # PEP 3333: the raw path's bytes, percent-decoded (ASGI's optional raw_path; "path" is decoded already).
    raw = scope.get("raw_path")
    path = scope["path"].encode("utf-8") if raw is None else unquote_to_bytes(raw) if b"%" in raw else raw
    script = root_path.encode("utf-8")
    if script and path.startswith(script):
        path = path[len(script) :]
    server = scope.get("server")
    scheme = scope.get("scheme", "http")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": script.decode("latin-1"),
        "PATH_INFO": path.decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": wsgi_input,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "wsgi.file_wrapper": FileWrapper,
    }
    client = scope.get("client")
    if client:
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = client[0], str(client[1])
    for name, value in scope.get("headers", ()):
        key = environ_key(name)
        if key is None:
            continue
        text = value.decode("latin-1")
        if key in environ:
            text = environ[key] + ("; " if key == "HTTP_COOKIE" else ", ") + text
        environ[key] = text
    if server and server[1] is not None:
        environ["SERVER_NAME"], environ["SERVER_PORT"] = server[0], str(server[1])
    else:  # a unix socket: the Host header is the best name there is
        host = environ.get("HTTP_HOST", "localhost")
        name, _, port = host.rpartition(":") if host.rpartition(":")[2].isdigit() else (host, "", "")
        environ["SERVER_NAME"] = name or "localhost"
        environ["SERVER_PORT"] = port or ("443" if scheme == "https" else "80")
    return environ


class FileWrapper:
    """PEP 3333's ``wsgi.file_wrapper``: a file an app returns as its body. The bridge hands a real file (one with a
    ``fileno``) to the connection, which sends it with ``sendfile(2)`` where the socket allows (plain TCP and unix
    sockets; read and written in blocks under TLS); anything else is iterated in ``blksize`` blocks."""

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike, self.blksize = filelike, blksize
        close = getattr(filelike, "close", None)
        if close is not None:
            self.close = close

    def fileno(self) -> int | None:
        """The file's descriptor, or None when it has none (a BytesIO, a pipe-like object)."""
        try:
            fd = self.filelike.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            return None
        return fd if isinstance(fd, int) and os.path.isfile(f"/proc/self/fd/{fd}") else None

    def __iter__(self) -> Iterator[bytes]:
        while block := self.filelike.read(self.blksize):
            yield block


# ------------------------------------------------------------------------------------------------ request body


class _Body:
    """The loop's side of a request body that streams: the one reader of ``receive()``.

    The app's thread asks for chunks (:meth:`next_chunk`); while a response is being sent, :meth:`watch` reads
    ahead (up to READ_AHEAD bytes) and, once the body has ended, waits for ``http.disconnect`` so that a client
    that leaves is noticed between two response blocks.
    """

    def __init__(self, receive: Receive, more: bool) -> None:
        self.receive = receive
        self.stash: collections.deque[bytes] = collections.deque()
        self.stashed = 0
        self.ended = not more
        self.gone = False  # read from the app's thread: a plain flag, set once
        self._lock: asyncio.Lock | None = None  # made when a body streams: most requests never need them
        self._room: asyncio.Event | None = None

    @property
    def lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    @property
    def room(self) -> asyncio.Event:
        if self._room is None:
            self._room = asyncio.Event()
        return self._room

    async def _take(self) -> None:
        """One message from the server into the stash, unless someone else brought data meanwhile."""
        async with self.lock:
            if self.stash or self.ended or self.gone:
                return
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                return
            chunk = message.get("body", b"")
            if chunk:
                self.stash.append(chunk)
                self.stashed += len(chunk)
            if not message.get("more_body", False):
                self.ended = True

    async def next_chunk(self) -> bytes:
        """The next piece of the body; b"" at its end; ClientDisconnected if the client left before it."""
        while not self.stash:
            if self.ended:
                return b""
            if self.gone:
                raise ClientDisconnected("the client disconnected before the end of the request body")
            await self._take()
        chunk = self.stash.popleft()
        self.stashed -= len(chunk)
        self.room.set()
        return chunk

    async def watch(self) -> None:
        """Until cancelled: read ahead, then notice the client leaving (``http.disconnect``)."""
        while not self.gone:
            if self.ended:
                message = await self.receive()  # after the body, only a disconnect can come
                if message["type"] == "http.disconnect":
                    self.gone = True
            elif self.stashed >= READ_AHEAD:
                self.room.clear()
                await self.room.wait()
            else:
                await self._take()


class _Input:
    """``wsgi.input`` for a body that streams: every read waits for data until the end of the body."""

    def __init__(self, exchange: _Exchange) -> None:
        self.exchange = exchange
        self.buffer = bytearray()
        self.eof = False

    def _fill(self) -> bool:
        if self.eof:
            return False
        clock = self.exchange.clock
        if clock is not None:
            clock.pause()  # the app waits for its client: request_timeout does not count this
        try:
            chunk: bytes = self.exchange.on_loop(self.exchange.body.next_chunk())
        finally:
            if clock is not None:
                clock.resume()
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def _cut(self, n: int) -> bytes:
        data = bytes(self.buffer[:n])
        del self.buffer[:n]  # cheap: bytearray drops a prefix without moving the rest
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            return self._cut(len(self.buffer))
        while len(self.buffer) < size and self._fill():
            pass
        return self._cut(size)

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None else size
        searched = 0
        while True:
            newline = self.buffer.find(b"\n", searched)
            if newline >= 0:
                end = newline + 1
                break
            if 0 <= limit <= len(self.buffer):
                end = limit
                break
            searched = len(self.buffer)
            if not self._fill():
                end = len(self.buffer)
                break
        return self._cut(end if limit < 0 else min(end, limit))

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines, total = [], 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


# ------------------------------------------------------------------------------------------------ one exchange


def _check_bytes(chunk: Any) -> None:
    # PEP 3333: bytestrings (a str would need an encoding we cannot guess); bytearray and memoryview pass.
    if not isinstance(chunk, (bytes, bytearray, memoryview)):
        raise TypeError(f"the WSGI app gave a body block of type {type(chunk).__name__}, not bytes")


class _Exchange:
    """One request/response between the loop and the app's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, send: Send, body: _Body, clock: AppClock | None) -> None:
        self.loop, self.send, self.body, self.clock = loop, send, body, clock
        self.start: dict[str, Any] | None = None
        self.headers_sent = False
        self.in_flight: concurrent.futures.Future[Any] | None = None
        self.waiting: concurrent.futures.Future[Any] | None = None
        self.aborted = False
        self.watcher: asyncio.Task[None] | None = None

    # On the app's thread.

    def on_loop(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run a coroutine on the loop and wait for its result."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        self.waiting = future
        if self.aborted:
            future.cancel()
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise ClientDisconnected("the request was cancelled") from None
        finally:
            self.waiting = None

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.headers_sent:  # PEP 3333: too late to change the status, re-raise
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.start is not None:
            raise RuntimeError("start_response called a second time without exc_info")
        try:
            code = int(status[:3])
            encoded = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        except (TypeError, ValueError, AttributeError, UnicodeError) as exc:
            raise ValueError(f"bad WSGI status or headers: {status!r} {headers!r}") from exc
        self.start = {"type": "http.response.start", "status": code, "headers": encoded}
        return self.write

    def write(self, data: bytes) -> None:
        """PEP 3333's write(): the data is on its way to the client when it returns."""
        if self.body.gone:
            raise ClientDisconnected("the client disconnected")
        if data:
            self.emit(data)

    def emit(self, data: bytes) -> None:
        """Send one block; the block before it must have been sent first (one in flight: back-pressure)."""
        if self.start is None:
            raise RuntimeError("the WSGI app sent a body before calling start_response")
        _check_bytes(data)
        messages = [] if self.headers_sent else [self.start]
        self.headers_sent = True
        messages.append({"type": "http.response.body", "body": bytes(data), "more_body": True})
        self.settle()
        self.in_flight = asyncio.run_coroutine_threadsafe(self._send(messages), self.loop)

    def settle(self) -> None:
        """Wait until the block in flight has been handed to the connection."""
        if self.in_flight is not None:
            future, self.in_flight = self.in_flight, None
            self.waiting = future
            try:
                future.result()
            except concurrent.futures.CancelledError:
                raise ClientDisconnected("the request was cancelled") from None
            finally:
                self.waiting = None

    # On the loop.

    async def _send(self, messages: list[dict[str, Any]]) -> None:
        if self.watcher is None:
            self.watcher = self.loop.create_task(self.body.watch())
        for message in messages:
            await self.send(message)

    def abort(self) -> None:
        """The request's task was cancelled: whatever the app's thread waits for raises ClientDisconnected."""
        self.aborted = True
        for future in (self.waiting, self.in_flight):
            if future is not None:
                future.cancel()

    def stop_watching(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()


# ------------------------------------------------------------------------------------------------ the threads


class AppThreads:
    """The threads WSGI calls run on: at most ``size``, started as needed, fed through one queue.

    Lighter than ``ThreadPoolExecutor`` + ``run_in_executor`` (no concurrent future to chain: the result goes
    straight to the loop's future), which was measured at a fifth less CPU per call. The threads are daemons:
    a worker that exits does not wait for an app call that never returns (its request was already lost).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.started = 0
        self.queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        # One token per thread waiting for work. deque's append and pop are atomic, and cheaper than a Semaphore.
        self.idle: collections.deque[None] = collections.deque()

    def run(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` on a thread; its result or exception in the returned future."""
        future = loop.create_future()
        self.queue.put((loop, future, fn, args))
        try:
            self.idle.pop()  # a waiting thread will take it
        except IndexError:
            if self.started < self.size:
                self.started += 1
                threading.Thread(target=self._work, name=f"wsgi-{self.started}", daemon=True).start()
        return future

    def _work(self) -> None:
        while True:
            loop, future, fn, args = self.queue.get()
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # handed to the request's task, which re-raises it there
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop is closed: the worker is exiting
                return
            del future, result, error, args  # hold nothing from a finished request while idle
            self.idle.append(None)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


# ------------------------------------------------------------------------------------------------ the bridge

_WHOLE, _STREAMED, _GONE, _FILE = 0, 1, 2, 3


class WSGIBridge:
    """An ASGI app (http scopes only) running a WSGI app on a thread pool."""

    def __init__(self, app: Any, threads: int = THREADS) -> None:
        self.app = app
        self.threads = threads
        self.calls = 0  # app calls handed to the threads and not finished (only changed on the event loop)
        self.pool = AppThreads(threads)

    @property
    def busy(self) -> int:
        """App threads running a call now (calls beyond the thread count wait for one)."""
        return min(self.calls, self.threads)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # uvicorn runs WSGI routes with lifespan off and no websockets
            return
        loop = asyncio.get_running_loop()
        clock = current_clock.get()
        if clock is not None:
            clock.pause()  # until an app thread takes the request (_call): the body, a free thread
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        first, more = message.get("body", b""), message.get("more_body", False)
        environ = build_environ(scope, None)
        if more:
            # Gather the body here, up to BUFFERED_BODY_LIMIT whatever its framing, so that a client that sends
            # slowly holds a connection and no app thread meanwhile; the rest of a larger body streams.
            parts, size = [first], len(first)
            while more and size < BUFFERED_BODY_LIMIT:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return  # nobody to answer; the app never saw the request
                chunk = message.get("body", b"")
                parts.append(chunk)
                size += len(chunk)
                more = message.get("more_body", False)
            first = b"".join(parts)
        body = _Body(receive, more)
        exchange = _Exchange(loop, send, body, clock)
        if more:
            wsgi_input: Any = _Input(exchange)
            wsgi_input.buffer += first
        else:
            wsgi_input = io.BytesIO(first)
        environ["wsgi.input"] = wsgi_input
        context = contextvars.copy_context()
        self.calls += 1
        try:
            kind, payload = await self.pool.run(loop, context.run, self._call, environ, exchange)
        except asyncio.CancelledError:
            exchange.abort()
            raise
        except ClientDisconnected:
            if body.gone or exchange.aborted:
                return  # the app let the disconnect through: not an app error
            raise
        finally:
            self.calls -= 1
            exchange.stop_watching()
        if kind == _WHOLE:
            await self._send_whole(send, cast(dict[str, Any], exchange.start), payload)
        elif kind == _FILE:
            try:
                await send(cast(dict[str, Any], exchange.start))
                file = payload.filelike
                await send({"type": "http.response.zerocopysend", "file": file, "offset": file.tell(),
                            "more_body": False})  # fmt: skip
            finally:
                close = getattr(payload, "close", None)
                if close is not None:
                    close()
        elif kind == _STREAMED:
            if not exchange.headers_sent:
                await send(cast(dict[str, Any], exchange.start))
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _send_whole(send: Send, start: dict[str, Any], chunks: list[bytes] | tuple[bytes, ...]) -> None:
        await send(start)
        if len(chunks) > 1 and sum(len(c) for c in chunks) > BUFFER_LIMIT:
            for chunk in chunks:  # already in memory: no join, which would double it
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await send({"type": "http.response.body", "body": chunks[0] if len(chunks) == 1 else b"".join(chunks)})

    def _call(self, environ: dict[str, Any], exchange: _Exchange) -> tuple[int, Any]:
        """On an app thread: call the app; a list or tuple comes back whole, anything else is sent as yielded."""
        clock = exchange.clock
        if clock is not None:
            clock.resume()
            clock.thread = threading.get_ident()  # the stack to log if it gets stuck (corepool.engines.stuck)
        result: Iterable[bytes] = self.app(environ, exchange.start_response)
        if isinstance(result, FileWrapper) and not exchange.headers_sent and exchange.start is not None \
                and result.fileno() is not None:
            return _FILE, result  # sent by the connection, closed once sent (the bridge's loop side)
        try:
            if isinstance(result, (list, tuple)) and not exchange.headers_sent:
                if exchange.start is None:
                    raise RuntimeError("the WSGI app returned without calling start_response")
                for chunk in result:
                    _check_bytes(chunk)
                return _WHOLE, result if result else [b""]
            for block in result:
                if exchange.body.gone:
                    return _GONE, None
                if block:
                    exchange.emit(block)
            if exchange.start is None:
                raise RuntimeError("the WSGI app returned without calling start_response")
            exchange.settle()  # every block is with the connection before close() runs
            return _STREAMED, None
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()


def adapt(app: Any, options: HttpOptions) -> WSGIBridge:
    """The WSGI app as an ASGI app running it on ``options.threads`` threads."""
    return WSGIBridge(app, options.threads)
