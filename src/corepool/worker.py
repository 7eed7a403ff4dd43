"""One worker process: forked by the primary, it imports the app, serves it and answers over its channel."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING

from corepool import apps, hooks, log
from corepool.systemd import PRIMARY_ONLY_VARIABLES
from corepool.workerapi import EXIT_BOOT_FAILED, EXIT_PRIMARY_GONE, WorkerLink, WorkerSpec

if TYPE_CHECKING:
    from corepool import engines

_PR_SET_PDEATHSIG = 1
# Signals meant for the primary alone; a worker that receives them (kill -HUP to the process group) ignores them.
PRIMARY_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU)


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
