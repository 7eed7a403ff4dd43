"""One worker process: forked by the primary, it imports the app, serves it and answers over its channel."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from corepool import apps, bus, channel, hooks, log
from corepool.balance import Board
from corepool.settings import HttpOptions
from corepool.systemd import PRIMARY_ONLY_VARIABLES

if TYPE_CHECKING:
    from corepool import engines

EXIT_OK = 0
EXIT_BOOT_FAILED = 3
EXIT_PRIMARY_GONE = 4

_PR_SET_PDEATHSIG = 1
# Signals meant for the primary alone; a worker that receives them (kill -HUP to the process group) ignores them.
PRIMARY_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU)


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to know, fixed at fork time."""

    app: str
    app_dir: str
    interface: str
    slot: int
    generation: int
    primary_pid: int
    drain_timeout: float = 27.0
    max_message_bytes: int = channel.DEFAULT_MAX_MESSAGE
    log_level: str = "info"
    routes: tuple[tuple[str, str], ...] = ()  # (socket name, module:attribute) served instead of ``app``
    board: Board | None = None  # the pool's shared connection counts (see corepool.balance)
    http: HttpOptions = field(default_factory=HttpOptions)
    post_fork: str | None = None  # hooks, as module:callable
    worker_exit: str | None = None


class WorkerLink:
    """The worker's end of its channel: ready/pong/broadcast out, ping/message in.

    Reads happen on the serving event loop, so a loop that is blocked cannot answer pings: exactly what the
    primary's health check must notice.
    """

    def __init__(self, sock: socket.socket, max_message_bytes: int) -> None:
        self.sock = sock
        self.max_message_bytes = max_message_bytes
        # What the pong reports: requests served, in-flight requests and the oldest one, busy threads...
        # Answered by the serving loop itself: a busy app thread pool is not a dead worker.
        self.stats: Callable[[], dict[str, Any]] = lambda: {"requests": 0}
        # max_requests: the primary tells the worker its limit; the engine reports on its own on reaching it.
        self.on_request_limit: Callable[[int], None] = lambda _limit: None
        # A reload's canary keeps to its share of accepted connections while it is watched.
        self.on_share: Callable[[bool], None] = lambda _capped: None
        self.on_primary_gone: Callable[[], None] = lambda: None
        self._loop: asyncio.AbstractEventLoop | None = None

    def send(self, kind: str, **fields: Any) -> bool:
        return channel.send(self.sock, channel.encode(kind, **fields))

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start answering on ``loop`` (the one that serves requests)."""
        self._loop = loop
        self.sock.setblocking(False)
        loop.add_reader(self.sock.fileno(), self._readable)
        bus.attach(self)

    def detach(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.fileno())
            self._loop = None

    def _readable(self) -> None:
        while True:
            try:
                raw = self.sock.recv(channel.recv_size())
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                raw = b""
            if not raw:
                self.detach()
                self.on_primary_gone()
                return
            try:
                message = channel.decode(raw, self.max_message_bytes)
            except channel.ChannelError as exc:
                log.event("channel", f"dropped a message from the primary: {exc}", warning=True)
                continue
            self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["t"]
        if kind == "ping":
            self.send("pong", seq=message.get("seq"), **self.stats())
        elif kind == "limit" and isinstance(message.get("requests"), int):
            self.on_request_limit(message["requests"])
        elif kind == "share":
            self.on_share(bool(message.get("capped")))
        elif kind == "message":
            self._deliver(str(message.get("topic")), message.get("data"))

    def _deliver(self, topic: str, data: Any) -> None:
        for handler in bus.handlers_for(topic):
            try:
                result = handler(data)
                if inspect.isawaitable(result) and self._loop is not None:
                    task = asyncio.ensure_future(result, loop=self._loop)
                    task.add_done_callback(_log_handler_failure(topic))
            except Exception as exc:
                log.event("message", f"handler for {topic!r} raised {type(exc).__name__}: {exc}", warning=True)


def _log_handler_failure(topic: str) -> Callable[[asyncio.Future[Any]], None]:
    def done(task: asyncio.Future[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.event("message", f"handler for {topic!r} raised {type(exc).__name__}: {exc}", warning=True)

    return done


def set_parent_death_signal(sig: int) -> None:
    """Have the kernel send ``sig`` when our parent dies (prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig)


def prepare_process(spec: WorkerSpec, role: str, title: str) -> None:
    """Set-up right after fork, shared by workers and loaders: signals, parent-death signal, title, logging."""
    signal.set_wakeup_fd(-1)
    for key in PRIMARY_ONLY_VARIABLES:  # workers and loaders never talk to systemd
        os.environ.pop(key, None)
    for sig in PRIMARY_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # If the primary dies (even by SIGKILL), the kernel sends us SIGTERM: we drain and exit, never orphaned.
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != spec.primary_pid:
        os._exit(EXIT_PRIMARY_GONE)
    with contextlib.suppress(ImportError):
        import setproctitle

        setproctitle.setproctitle(title)
    log.setup(spec.log_level, role=role)


def _become_worker(spec: WorkerSpec) -> None:
    prepare_process(spec, "worker", f"corepool worker {spec.app} [slot {spec.slot}, generation {spec.generation}]")
    os.environ["COREPOOL_WORKER"] = "1"
    os.environ["COREPOOL_SLOT"] = str(spec.slot)
    os.environ["COREPOOL_GENERATION"] = str(spec.generation)
    uvicorn_logger = logging.getLogger("uvicorn")
    for handler in log.logger.handlers:
        uvicorn_logger.addHandler(handler)
    uvicorn_logger.setLevel(logging.DEBUG if spec.log_level == "debug" else logging.WARNING)
    uvicorn_logger.propagate = False
    access = logging.getLogger("uvicorn.access")
    access.setLevel(logging.INFO if spec.http.access_log else logging.WARNING)


def run(spec: WorkerSpec, sock: socket.socket, listeners: list[tuple[str, socket.socket]]) -> int:
    """Lazy mode: the whole life of a worker forked by the primary; returns its exit code."""
    _become_worker(spec)
    link = WorkerLink(sock, spec.max_message_bytes)
    try:
        routes = load_routes(spec, listeners)
    except apps.AppLoadError as exc:
        link.send("boot_error", error=str(exc), detail=exc.detail[-8000:])
        return EXIT_BOOT_FAILED
    return _serve(spec, link, routes)


def run_preloaded(spec: WorkerSpec, sock: socket.socket, routes: list[engines.Route]) -> int:
    """Preload mode: a worker forked by its generation's loader, the app already imported and frozen."""
    _become_worker(spec)
    return _serve(spec, WorkerLink(sock, spec.max_message_bytes), routes)


def _serve(spec: WorkerSpec, link: WorkerLink, routes: list[engines.Route]) -> int:
    from corepool import engines

    try:
        post_fork = hooks.load("post_fork", spec.post_fork, spec.app_dir)
        worker_exit = hooks.load("worker_exit", spec.worker_exit, spec.app_dir)
        failure = hooks.run("post_fork", post_fork, spec.slot, spec.generation)
        if failure is not None:
            raise failure
    except apps.AppLoadError as exc:
        link.send("boot_error", error=str(exc), detail=exc.detail[-8000:])
        return EXIT_BOOT_FAILED
    try:
        return engines.serve(routes, link, spec)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_BOOT_FAILED
    finally:
        hooks.run("worker_exit", worker_exit, spec.slot, spec.generation)
        sys.stdout.flush()


def load_routes(spec: WorkerSpec, listeners: list[tuple[str, socket.socket]]) -> list[engines.Route]:
    """Import every app that has a socket to serve: the main app, and each routed app on its named sockets."""
    from corepool import engines

    routed = dict(spec.routes)
    by_app: dict[str, list[socket.socket]] = {}
    for name, listen_socket in listeners:
        by_app.setdefault(routed.get(name, spec.app), []).append(listen_socket)
    routes = []
    for app_spec, sockets in by_app.items():
        app = apps.load(app_spec, spec.app_dir)
        requested = spec.interface if app_spec == spec.app else "auto"
        routes.append(engines.Route(app_spec, app, apps.detect_interface(app, requested), sockets))
    return routes
