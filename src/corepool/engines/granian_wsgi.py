"""WSGI on granian's Rust worker, serving the listening sockets the worker inherited (``wsgi_engine``).

granian has no public way to serve an inherited socket (upstream request emmett-framework/granian#786), so
corepool drives its worker class, ``granian._granian.WSGIWorker``, the way granian's own process manager does.
That is private API; the risk is contained rather than avoided:

* the version is pinned exactly (:data:`PINNED`, the ``corepool[granian]`` extra), and every name and signature
  used here is checked before use (:func:`unusable`): anything else and the worker serves on the bridge;
* each listening socket is checked before it is handed over (:func:`listener_problem`): granian aborts the whole
  process in Rust on a bad fd, where the bridge would raise;
* granian gets a duplicate of each fd: it closes what it was given when it stops accepting.

Threads: the worker's Python main thread runs an event loop for its channel (pings, broadcasts, the drain);
granian's Rust runtime (one I/O thread) accepts and parses HTTP, and calls the app on up to ``threads`` Python
threads (:class:`WSGICall` is what it calls).

Health: the runtime that serves the connections also sends its own counters down a pipe every second (granian's
metrics collector, a task on that runtime); the worker answers a ping only while that report is recent
(:data:`STALE_SECONDS`), so a wedged or dead runtime fails its pings as a wedged event loop does, while a worker
whose threads are all busy is alive. The report also gives the pong its open connection count.

What granian does differently from the bridge (one timer for idle and slow heads, no 408, no body timeout, ...) is
listed in README's Engines section.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import io
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from corepool import log
from corepool.balance import cell_of
from corepool.engines import front
from corepool.engines.accept import Balancer
from corepool.engines.eventloop import loop_factory
from corepool.engines.requestcheck import Reject, check_head
from corepool.engines.routes import Route
from corepool.engines.stats import AppClock, RequestStats, log_app_error
from corepool.engines.stuck import StuckWatch
from corepool.engines.wsgi import (
    ClientDisconnected,
    FileWrapper,
    _Input,  # the bridge's reads, over granian's body (Input)
)
from corepool.settings import HttpOptions
from corepool.workerapi import EXIT_BOOT_FAILED, EXIT_OK, WorkerLink, WorkerSpec

PINNED = "2.8.9"
# The private API this module uses, as granian 2.8.9 declares it; checked before use, never assumed.
SIGNATURES = {
    "WSGIWorker": "(worker_id, sock, ipc, threads=1, blocking_threads=512, py_threads=1, py_threads_idle_timeout=30, "
                  "backpressure=128, http_mode=\"1\", http1_opts=None, http2_opts=None, static_files=None, "
                  "ssl_enabled=False, ssl_cert=None, ssl_key=None, ssl_key_password=None, ssl_protocol_min=\"1.3\", "
                  "ssl_ca=None, ssl_crl=..., ssl_client_verify=False, metrics=...)",
    "SocketHolder": "(fd, uds, backlog)",
    "WorkerSignal": "()",
    "IPCSenderHandle": "(fd)",
}
METHODS = {"WSGIWorker": ("serve_mtr", "serve_mtr_uds"), "WorkerSignal": ("set", "add_cb")}
HTTP1_FIELDS = ("header_read_timeout", "keep_alive", "max_buffer_size", "pipeline_flush")
REPORT_SECONDS = 1  # how often granian's runtime reports its counters (its metrics interval: whole seconds)
STALE_SECONDS = 3.5  # no report for this long: the runtime is not turning, pings go unanswered
_HEADER_OVERHEAD = 4 - len("HTTP_")  # ": " and CRLF per line, less the prefix granian's environ key carries
# The methods llhttp (the bridge's parser) accepts; another is refused as the bridge refuses it (501, or 400 when
# it is not even upper-case letters). CONNECT is refused by requestcheck (corepool is not a proxy).
KNOWN_METHODS = frozenset([
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "COPY", "LOCK", "MKCOL", "MOVE",
    "PROPFIND", "PROPPATCH", "SEARCH", "UNLOCK", "BIND", "REBIND", "UNBIND", "ACL", "REPORT", "MKACTIVITY",
    "CHECKOUT", "MERGE", "M-SEARCH", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE", "PURGE", "MKCALENDAR", "LINK", "UNLINK",
    "SOURCE", "QUERY",
])
READ_SIZE = 1 << 16  # what wsgi.input asks granian's body for at a time
MIN_BUFFER = 8192  # hyper refuses (panics on) a smaller read buffer
RUNTIME_THREADS = 1  # granian's own default: one Rust I/O thread per worker process


@functools.cache
def unusable() -> str | None:
    """Why granian cannot serve here (not installed, another version, its private API changed), or None."""
    try:
        import granian
        from granian import _futures, _granian
        from granian.http import HTTP1Settings
    except ImportError as exc:
        return f"granian is not installed ({exc.name or exc}): pip install 'corepool[granian]'"
    version = getattr(granian, "__version__", "?")
    if version != PINNED:
        return f"granian {version} is installed, corepool drives granian {PINNED} only"
    for name, expected in SIGNATURES.items():
        found = getattr(getattr(_granian, name, None), "__text_signature__", None)
        if found != expected:
            return f"granian {version}: _granian.{name}{found or ' is missing'}, expected {expected}"
    for name, methods in METHODS.items():
        missing = [m for m in methods if not callable(getattr(getattr(_granian, name), m, None))]
        if missing:
            return f"granian {version}: _granian.{name} has no {', '.join(missing)}"
    fields = getattr(HTTP1Settings, "__dataclass_fields__", {})
    if not callable(getattr(_futures, "_new_cbscheduler", None)) or any(f not in fields for f in HTTP1_FIELDS):
        return f"granian {version}: granian._futures._new_cbscheduler or HTTP1Settings changed"
    return None


def listener_problem(sock: socket.socket) -> str | None:
    """Why ``sock`` must not be handed to granian (which aborts the process on a bad one), or None."""
    try:
        kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        family = sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
    except OSError as exc:
        return f"fd {sock.fileno()}: {exc.strerror or exc}"
    if family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
        return f"fd {sock.fileno()} is not an IP or unix socket"
    if kind != socket.SOCK_STREAM:
        return f"fd {sock.fileno()} is not a stream socket"
    if not listening:
        return f"fd {sock.fileno()} is not listening"
    return None


# ------------------------------------------------------------------------------------------------ the runtime's report


def _cbor(data: bytes, at: int) -> tuple[Any, int]:
    """One CBOR item (the few kinds granian's report uses: integers, text, arrays, maps) and where it ends."""
    head = data[at]
    major, info = head >> 5, head & 31
    at += 1
    if info < 24:
        value = info
    else:
        size = 1 << (info - 24)  # 24..27: a 1, 2, 4 or 8-byte argument
        value = int.from_bytes(data[at:at + size], "big")
        at += size
    if major == 0:
        return value, at
    if major == 1:
        return -1 - value, at
    if major == 3:
        return data[at:at + value].decode(), at + value
    if major == 4:
        items = []
        for _ in range(value):
            item, at = _cbor(data, at)
            items.append(item)
        return items, at
    if major == 5:
        pairs = {}
        for _ in range(value):
            key, at = _cbor(data, at)
            pairs[key], at = _cbor(data, at)
        return pairs, at
    raise ValueError(f"CBOR major type {major}")


class RuntimeReport:
    """The reports granian's runtime sends down a pipe (a 4-byte length, then CBOR ``{"Metrics": [...]}``), read
    on the worker's event loop: when the last one came, and the runtime's open connections."""

    CONNECTIONS = 1  # index of conn_active among granian's counters

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.buffer = b""
        self.last = time.monotonic()  # counting from the start: the first report comes a second in
        self.connections = 0
        loop.add_reader(self.read_fd, self._readable)

    def fresh(self) -> bool:
        return time.monotonic() - self.last < STALE_SECONDS

    def _readable(self) -> None:
        try:
            data = os.read(self.read_fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            self.close()
            return
        self.buffer += data
        while len(self.buffer) >= 4:
            size = int.from_bytes(self.buffer[:4], "big")
            if len(self.buffer) < 4 + size:
                break
            frame, self.buffer = self.buffer[4:4 + size], self.buffer[4 + size:]
            self.last = time.monotonic()  # whatever it says: the runtime is turning
            with contextlib.suppress(ValueError, IndexError, KeyError, TypeError, UnicodeDecodeError):
                counters = _cbor(frame, 0)[0]["Metrics"]
                self.connections = int(next(iter(counters[self.CONNECTIONS].values())))

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.read_fd)
        with contextlib.suppress(OSError):
            os.close(self.read_fd)


# ------------------------------------------------------------------------------------------------ one request


class TooLarge(Exception):
    """A chunked request body went past ``max_body_bytes`` while the app read it."""


class Input(_Input):
    """``wsgi.input`` over granian's body: the bridge's reads (PEP 3333's ``read(-1)``, ``readline(size)``, never
    short), filled from granian's ``read(n)`` (which returns short only at the end) with the clock paused while the
    app waits for its client, ``max_body_bytes`` for chunked bodies, and :class:`ClientDisconnected` when a body
    ends before its Content-Length."""

    def __init__(self, body: Any, clock: AppClock, length: int | None, limit: int) -> None:
        self.buffer = bytearray()
        self.eof = False
        self.body, self.clock, self.length, self.limit = body, clock, length, limit
        self.taken = 0  # body bytes read from granian

    def _fill(self) -> bool:
        if self.eof:
            return False
        size = READ_SIZE
        if self.length is not None:
            size = min(size, self.length - self.taken)  # granian's read(n) waits for n: never past the end
        if self.limit:
            size = min(size, self.limit - self.taken + 1)  # one past the limit: refused when it is crossed
        if size <= 0:
            self.eof = True
            return False
        self.clock.pause()  # the app waits for its client: request_timeout does not count it
        try:
            data: bytes = self.body.read(size)
        finally:
            self.clock.resume()
        self.taken += len(data)
        if self.limit and self.taken > self.limit:
            raise TooLarge
        if len(data) < size:
            self.eof = True
            if self.length is not None and self.taken < self.length:
                raise ClientDisconnected("the client disconnected before the end of the request body")
        self.buffer += data
        return bool(data)


class Streamed:
    """A response iterable as granian's runtime pulls it (``__next__`` and ``close``), counting what it sent and
    logging an app's exception mid-response (granian would log it through its own logger)."""

    def __init__(self, first: list[bytes], rest: Iterator[bytes], result: Any, label: str,
                 environ: dict[str, Any]) -> None:
        self.first, self.rest, self.result, self.label, self.environ = first, rest, result, label, environ
        self.sent = 0

    def __next__(self) -> bytes:
        if self.first:
            block = self.first.pop(0)
        else:
            try:
                block = next(self.rest)
            except StopIteration:
                raise
            except Exception as exc:
                log_app_error(self.label, exc, self.environ["PATH_INFO"], self.environ["REQUEST_METHOD"])
                raise StopIteration from exc
        _check_bytes(block)
        self.sent += len(block)
        return bytes(block)

    def close(self) -> None:
        close = getattr(self.result, "close", None)
        if close is not None:
            close()


def _check_bytes(block: Any) -> None:
    if not isinstance(block, (bytes, bytearray, memoryview)):
        raise TypeError(f"the WSGI app gave a body block of type {type(block).__name__}, not bytes")


class Draining:
    """Set once the worker drains: every response from then on says ``Connection: close`` (a connection granian
    accepted while it was told to stop still gets closed after its request)."""

    def __init__(self) -> None:
        self.now = False


_CLOSE = ("connection", "close")
_SERVER = ("server", "corepool")  # as the bridge says; without it granian says "granian" (it cannot say nothing)
_TEXT = ("content-type", "text/plain; charset=utf-8")


class WSGICall:
    """What granian's runtime calls, on one of its Python threads, for each request: ``(proto, environ)`` with the
    environ granian built in Rust. It completes that environ to PEP 3333 and to what the bridge gives, refuses
    what the bridge's front line refuses and granian lets through, runs the app, and counts the request."""

    def __init__(self, app: Any, requests: RequestStats, options: HttpOptions, unix: bool, draining: Draining,
                 refused: Callable[[str, int, str], None]) -> None:
        self.app, self.requests, self.options, self.unix, self.draining = app, requests, options, unix, draining
        self.refused = refused
        self.added = [_SERVER] if options.server_header else []  # the headers every response gets
        self.script = options.root_path
        # The bridge's proxy rules (engines/front.py), which remember each peer's verdict.
        self.proxy = front.ProxyTrust(options.forwarded_allow_ips) if options.proxy_headers else None

    def __call__(self, proto: Any, environ: dict[str, Any]) -> int | None:
        method = environ["REQUEST_METHOD"]
        path = environ["PATH_INFO"]
        if environ["SERVER_PROTOCOL"] == "HTTP/1":
            environ["SERVER_PROTOCOL"] = "HTTP/1.0"  # granian says HTTP/1 for HTTP/1.0
        try:
            self._check(environ)
        except Reject as reject:
            self._refuse(proto, environ, reject)
            return reject.status
        clock = self.requests.begin(method, path)
        status: int | None = None
        start = time.monotonic()
        sent = 0
        headers: list[tuple[str, str]] = []
        try:
            status, headers, sent = self._run(proto, environ, clock, f"{method} {path}")
        except (TooLarge, ClientDisconnected) as exc:
            if isinstance(exc, TooLarge):
                self._refuse(proto, environ, Reject(413, "Content Too Large"))
            else:
                proto.response_bytes(400, [_TEXT, *self.added, _CLOSE], b"")
            status = None
        except Exception as exc:
            log_app_error(f"{method} {path}", exc, path, method)
            proto.response_bytes(500, [_TEXT, *self.added, _CLOSE], b"Internal Server Error")
        finally:
            self.requests.end(clock, status)
        if self.options.access_log:
            self._log_access(environ, status or 500, headers, sent, time.monotonic() - start)
        return status

    def _check(self, environ: dict[str, Any]) -> None:
        """The front line's checks that granian's parser (hyper) does not make: RFC 9112's Host rules (hyper
        joins two Host fields into one value, which no valid Host contains: a comma), Transfer-Encoding in
        HTTP/1.0 and codings other than chunked, and max_body_bytes for a declared length."""
        version = environ["SERVER_PROTOCOL"][5:]
        fields: list[tuple[bytes, bytes]] = []
        host = environ.get("HTTP_HOST")
        if host:
            fields += [(b"host", part.strip().encode("latin-1")) for part in host.split(",")]
        coding = environ.get("HTTP_TRANSFER_ENCODING")
        if coding is not None:
            fields.append((b"transfer-encoding", coding.encode("latin-1")))
        method = environ["REQUEST_METHOD"]
        if method not in KNOWN_METHODS:  # the bridge's parser (llhttp) knows these only
            if method.isalpha() and method.isupper():
                raise Reject(501, "Not Implemented: unknown method")
            raise Reject(400, "Bad Request: invalid method")
        # hyper hands "*" and an authority-form target over as they are, and an absolute one as its path.
        path = environ["PATH_INFO"]
        check_head(method.encode("latin-1"), b"/" if path[:1] == "/" else path.encode("latin-1"), version, fields)
        self._check_size(environ)
        length = environ.get("CONTENT_LENGTH")
        limit = self.options.max_body_bytes
        if limit and length and length.isdigit() and int(length) > limit:
            raise Reject(413, "Content Too Large")

    def _check_size(self, environ: dict[str, Any]) -> None:
        """The head limits hyper has no option for (it bounds only the whole head, to at least 8 KiB): measured on
        granian's environ, so on the decoded target and with a repeated field's lines joined into one."""
        o = self.options
        line = len(environ["REQUEST_METHOD"]) + len(environ["PATH_INFO"]) + len(environ["QUERY_STRING"]) + 1
        if line > o.max_request_line_bytes:
            raise Reject(414, "URI Too Long")
        head, fields = line, 0
        for key, value in environ.items():
            if key[:5] == "HTTP_" or key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
                size = len(key) + len(value) + _HEADER_OVERHEAD
                if size > o.max_header_line_bytes:
                    raise Reject(431, "Request Header Fields Too Large: a field is too long")
                head += size
                fields += 1
        if head > o.max_header_bytes:
            raise Reject(431, "Request Header Fields Too Large")
        if fields > o.max_headers:
            raise Reject(431, "Request Header Fields Too Large: too many fields")

    def _refuse(self, proto: Any, environ: dict[str, Any], reject: Reject) -> None:
        proto.response_bytes(reject.status, [_TEXT, *self.added, _CLOSE], reject.reason.encode("latin-1"))
        self.refused(environ.get("REMOTE_ADDR") or "a unix socket peer", reject.status, reject.reason)

    def _complete(self, environ: dict[str, Any], clock: AppClock) -> None:
        """granian's environ, completed to the bridge's (:func:`corepool.engines.wsgi.build_environ`)."""
        # root_path: the proxy in front stripped the prefix, so the path stays the client's, as on the bridge.
        environ["SCRIPT_NAME"] = self.script
        environ.update(_WSGI_KEYS)
        peer = environ.get("REMOTE_ADDR", "")
        if self.unix:
            del environ["REMOTE_ADDR"]  # granian gives "" (the peer's unnamed address); the bridge gives none
            host = environ.get("HTTP_HOST", "localhost")
            name, _, port = host.rpartition(":") if host.rpartition(":")[2].isdigit() else (host, "", "")
            environ["SERVER_NAME"] = name or "localhost"
            environ["SERVER_PORT"] = port or ("443" if environ["wsgi.url_scheme"] == "https" else "80")
        if self.proxy is not None and (self.unix or self.proxy.trusted(peer)):
            self._apply_proxy(environ, self.proxy)
        length = environ.get("CONTENT_LENGTH")
        declared = int(length) if length and length.isdigit() else None
        if declared or "HTTP_TRANSFER_ENCODING" in environ:
            environ["wsgi.input"] = Input(environ["wsgi.input"], clock, declared, self.options.max_body_bytes)
        else:
            environ["wsgi.input"] = io.BytesIO(b"")

    @staticmethod
    def _apply_proxy(environ: dict[str, Any], trust: front.ProxyTrust) -> None:
        forwarded_for = environ.get("HTTP_X_FORWARDED_FOR")
        proto = environ.get("HTTP_X_FORWARDED_PROTO")
        if forwarded_for is None and proto is None:
            return
        scope: dict[str, Any] = {"type": "http", "scheme": environ["wsgi.url_scheme"]}
        trust.apply(scope, None if proto is None else proto.encode("latin-1"),
                    [] if forwarded_for is None else [forwarded_for.encode("latin-1")])
        environ["wsgi.url_scheme"] = scope["scheme"]
        if "client" in scope:
            environ["REMOTE_ADDR"] = scope["client"][0]

    def _run(self, proto: Any, environ: dict[str, Any], clock: AppClock,
             label: str) -> tuple[int, list[tuple[str, str]], int]:
        self._complete(environ, clock)
        response: list[Any] = []  # [status, headers] once start_response was called
        written: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], None]:
            if exc_info is not None:
                try:
                    # PEP 3333: too late to change the status once the body began (write() counts, though
                    # it is held until the app returns: granian takes one response per call), re-raise
                    if streaming or written:
                        raise exc_info[1].with_traceback(exc_info[2])
                finally:
                    exc_info = None
            elif response:
                raise RuntimeError("start_response called a second time without exc_info")
            try:
                code = int(status[:3])
                for name, value in headers:
                    name.encode("latin-1"), value.encode("latin-1")
            except (TypeError, ValueError, AttributeError, UnicodeError) as exc:
                raise ValueError(f"bad WSGI status or headers: {status!r} {headers!r}") from exc
            close = self.draining.now or chunked
            response[:] = [code, [*headers, *self.added, _CLOSE] if close else [*headers, *self.added]]
            return write

        def write(data: bytes) -> None:  # PEP 3333's write(): sent before the iterable's blocks
            _check_bytes(data)
            written.append(bytes(data))

        # hyper reads a body with both Content-Length and Transfer-Encoding as chunked and drops the length, out of
        # sight: after a chunked request the connection closes (RFC 9112 §6.1), so that nothing a proxy framed by
        # the length is ever read from it as a next request.
        chunked = "HTTP_TRANSFER_ENCODING" in environ
        streaming = False
        result: Iterable[bytes] = self.app(environ, start_response)
        if isinstance(result, (list, tuple)):
            try:
                for block in result:
                    _check_bytes(block)
                if not response:
                    raise RuntimeError("the WSGI app returned without calling start_response")
                body = b"".join([*written, *result]) if written or len(result) != 1 else result[0]
                proto.response_bytes(response[0], response[1], body)
                return response[0], response[1], len(body)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        # Any other iterable: its first block before the answer (a generator calls start_response in it), then
        # granian's runtime pulls the rest from this thread, with back-pressure, and calls close() once.
        rest = iter(result)
        first = written
        try:
            for block in rest:
                if block:
                    first.append(block)
                    break
            if not response:
                raise RuntimeError("the WSGI app returned without calling start_response")
        except BaseException:
            close = getattr(result, "close", None)
            if close is not None:
                close()
            raise
        streaming = True
        stream = Streamed(first, rest, result, label, environ)
        proto.response_iter(response[0], response[1], stream)
        return response[0], response[1], stream.sent

    def _log_access(self, environ: dict[str, Any], status: int, headers: list[tuple[str, str]], sent: int,
                    seconds: float) -> None:
        scope = {
            "type": "http",
            "method": environ["REQUEST_METHOD"],
            "path": environ.get("SCRIPT_NAME", "") + environ["PATH_INFO"],
            "query_string": environ.get("QUERY_STRING", "").encode("latin-1"),
            "http_version": environ["SERVER_PROTOCOL"][5:],
            "client": (environ["REMOTE_ADDR"], 0) if environ.get("REMOTE_ADDR") else None,
            "headers": [(key[5:].replace("_", "-").lower().encode("latin-1"), str(value).encode("latin-1"))
                        for key, value in environ.items() if key.startswith("HTTP_")],
        }
        encoded = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        line = front.access_line(self.options.access_log_format, scope, status, encoded, sent, seconds)
        log.event("access", line, request_path=scope["path"], status=status)


_WSGI_KEYS: dict[str, Any] = {
    "wsgi.version": (1, 0),
    "wsgi.errors": None,  # set when serving starts: the worker's sys.stderr
    "wsgi.multithread": True,
    "wsgi.multiprocess": True,
    "wsgi.run_once": False,
    "wsgi.input_terminated": True,
    "wsgi.file_wrapper": FileWrapper,  # the bridge's; here iterated in blocks (granian's protocol has no fd send)
}


def _set_errors_stream() -> None:
    import sys

    _WSGI_KEYS["wsgi.errors"] = sys.stderr


# ------------------------------------------------------------------------------------------------ the worker


def _http1(options: HttpOptions) -> Any:
    from granian.http import HTTP1Settings

    # hyper has one timer where the bridge has two: a request head must be whole within it, counted from the
    # connection's opening or its last response (so it is also the idle keep-alive timeout).
    timeout = min(options.keepalive_timeout, options.header_timeout)
    return HTTP1Settings(header_read_timeout=max(1, int(timeout * 1000)), keep_alive=True,
                         max_buffer_size=max(MIN_BUFFER, options.max_header_bytes), pipeline_flush=False)


def _private() -> tuple[Any, Any]:
    """granian's private modules, untyped: the stubs it ships disagree with its runtime (:data:`SIGNATURES` is
    what is checked instead)."""
    return importlib.import_module("granian._granian"), importlib.import_module("granian._futures")


class NativeServer:
    """One granian WSGIWorker on one inherited listening socket, with its report pipe and its stop signal."""

    def __init__(self, loop: asyncio.AbstractEventLoop, call: WSGICall, sock: socket.socket, worker_id: int,
                 options: HttpOptions) -> None:
        _granian, _futures = _private()
        self.unix = sock.family == socket.AF_UNIX
        self.report = RuntimeReport(loop)
        self.stopped = loop.create_future()
        self.signal = _granian.WorkerSignal()
        self.signal.add_cb(functools.partial(_call_soon, loop, self._stopped))  # from a Rust thread, when done
        fd = os.dup(sock.fileno())  # granian closes the listener it was given when it stops accepting
        holder = _granian.SocketHolder(fd, self.unix, _backlog(sock))
        ipc = _granian.IPCSenderHandle(self.report.write_fd)  # owns the write end from now on
        self.worker = _granian.WSGIWorker(
            worker_id, (None, holder), ipc, RUNTIME_THREADS, 512, options.threads, 30, options.max_connections,
            "1", _http1(options), None, None, False, None, None, None, "1.3", None, [], False,
            (REPORT_SECONDS, None),
        )
        # impl_asyncio: no placeholder Task registered with asyncio (a WSGI callback never is a task; the placeholder
        # breaks asyncio.Runner's clean-up).
        self.scheduler = _futures._new_cbscheduler(loop, call, impl_asyncio=True)
        self.loop = loop

    def start(self) -> None:
        serve = self.worker.serve_mtr_uds if self.unix else self.worker.serve_mtr
        serve(self.scheduler, self.loop, self.signal)

    def stop(self) -> None:
        """Stop accepting; granian finishes in-flight requests, closes idle connections, then reports done."""
        self.signal.set()

    def _stopped(self) -> None:
        self.report.close()
        if not self.stopped.done():
            self.stopped.set_result(None)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: the worker is exiting anyway
        loop.call_soon_threadsafe(callback)


def _backlog(sock: socket.socket) -> int:
    """The backlog the socket listens with now: granian calls listen() again on the shared socket, and must not
    change it. TCP_INFO's tcpi_sacked is the listen backlog on a listening TCP socket; a unix socket does not say,
    so it gets SOMAXCONN (what a socket unit's Backlog= defaults to)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
            backlog = int.from_bytes(info[28:32], "little")  # tcpi_sacked, after 8 one-byte and 5 u32 fields
            if backlog > 0:
                return backlog
    return socket.SOMAXCONN


def serve(routes: list[Route], link: WorkerLink, spec: WorkerSpec) -> int:
    """Serve every (WSGI) route on granian's runtime until a drain ends."""
    log.bind(worker_pid=os.getpid(), generation=spec.generation, slot=spec.slot)
    _set_errors_stream()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(_serve(routes, link, spec))


async def _serve(routes: list[Route], link: WorkerLink, spec: WorkerSpec) -> int:
    from corepool.engines.http11 import BAD_REQUESTS

    loop = asyncio.get_running_loop()
    options = spec.http
    requests = RequestStats(threaded=True)
    draining = Draining()
    balancer = Balancer(spec.board, cell_of(spec.slot, spec.generation))

    def refused(peer: str, status: int, reason: str) -> None:
        _call_soon(loop, functools.partial(BAD_REQUESTS.refused, loop, peer, status, reason))

    servers: list[NativeServer] = []
    try:
        for route in routes:
            for sock in route.sockets:
                call = WSGICall(route.app, requests, options, sock.family == socket.AF_UNIX, draining, refused)
                servers.append(NativeServer(loop, call, sock, spec.slot + 1, options))
        for server in servers:
            server.start()
    except BaseException as exc:  # pyo3 turns a panic into a BaseException: still one line, and a boot failure
        log.event("boot_error", f"granian could not serve: {type(exc).__name__}: {exc}", warning=True)
        for server in servers:
            server.stop()
        return EXIT_BOOT_FAILED
    threads = options.threads * len(servers)

    def stats() -> dict[str, Any]:
        """What a pong tells the primary about this worker."""
        return {
            **requests.pong(),
            "connections": sum(server.report.connections for server in servers),
            "threads": threads,
            "busy_threads": min(len(requests.inflight), threads),
        }

    def drain() -> None:
        if draining.now:
            return
        draining.now = True
        log.event("drain", "draining: no new connections, finishing in-flight requests")
        balancer.stop()
        for server in servers:
            server.stop()
        link.send("draining")

    def on_request_limit(limit: int) -> None:
        """max_requests: report once on reaching ``limit`` (counted on an app thread: reported from the loop)."""
        def report() -> None:
            link.send("pong", seq=None, **stats())

        requests.limit_requests(limit, functools.partial(_call_soon, loop, report))

    loop.add_signal_handler(signal.SIGTERM, drain)
    link.stats = stats
    link.serving = lambda: all(server.report.fresh() for server in servers)
    link.on_primary_gone = drain
    link.on_request_limit = on_request_limit
    link.attach(loop)
    link.send("ready")
    # A request past request_timeout is reported within a second with its app thread's stack (the clock knows its
    # thread: RequestStats(threaded=True) begins on it).
    watch = StuckWatch(requests, spec.http.request_timeout, spec.http.health_timeout,
                       lambda: link.send("pong", seq=None, **stats()))
    watch.start(loop)
    try:
        await asyncio.gather(*(server.stopped for server in servers))
    finally:
        watch.stop()
    link.send("pong", seq=None, **stats())  # the requests served since the last ping count too
    return EXIT_OK

