"""A generation's loader (preload mode): imports the app once, freezes its heap, forks that generation's workers.

The primary asks over the loader's channel (``fork`` with the worker's channel fd attached, SCM_RIGHTS). The
loader double-forks so that each worker is re-parented to the primary (a child subreaper): the primary reaps
every worker itself and learns each exit status, exactly as in lazy mode. Workers inherit the imported app,
and ``gc.freeze()`` keeps the import's objects out of the collector's reach, so their pages stay shared
copy-on-write instead of being dirtied by the first collection.

==========  =========  ===================================================
``t``       direction  fields
==========  =========  ===================================================
``ready``   l → p      the app is imported and frozen
``boot_error`` l → p   ``error``, ``detail``: why the import failed
``fork``    p → l      ``wid``, ``slot``, and the worker's channel fd
``forked``  l → p      ``wid``, ``pid`` of the new worker
==========  =========  ===================================================
"""

from __future__ import annotations

import dataclasses
import gc
import os
import socket
import time
import traceback

from corepool import apps, channel, engines, worker
from corepool.workerapi import EXIT_BOOT_FAILED, EXIT_OK, EXIT_PRIMARY_GONE, WorkerSpec


def run(spec: WorkerSpec, sock: socket.socket, listeners: list[tuple[str, socket.socket]]) -> int:
    """The loader's life: import, freeze, then fork workers until the primary stops it or goes away."""
    worker.prepare_process(spec, "loader", f"corepool loader {spec.app} [generation {spec.generation}]")
    sock.setblocking(True)
    try:
        routes = worker.load_routes(spec, listeners)
    except apps.AppLoadError as exc:
        channel.send(sock, channel.encode("boot_error", error=str(exc), detail=exc.detail[-8000:]))
        return EXIT_BOOT_FAILED
    gc.collect()
    gc.freeze()
    channel.send(sock, channel.encode("ready"))
    while True:
        try:
            raw, fds, _flags, _addr = socket.recv_fds(sock, channel.recv_size(), 1)
        except InterruptedError:
            continue
        if not raw:
            return EXIT_OK  # the primary closed the channel
        try:
            message = channel.decode(raw)
        except channel.ChannelError:
            for fd in fds:
                os.close(fd)
            continue
        if message["t"] == "fork" and len(fds) == 1:
            wid, slot = int(message["wid"]), int(message["slot"])
            pid = _fork_worker(dataclasses.replace(spec, slot=slot), sock, fds[0], routes)
            channel.send(sock, channel.encode("forked", wid=wid, pid=pid))
        else:
            for fd in fds:
                os.close(fd)


def _fork_worker(spec: WorkerSpec, loader_sock: socket.socket, channel_fd: int, routes: list[engines.Route]) -> int:
    """Double-fork a worker so that it is re-parented to the primary; returns its pid (0 if the fork failed)."""
    read_end, write_end = os.pipe()
    try:
        middle = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        os.close(channel_fd)
        return 0
    if middle == 0:
        os.close(read_end)
        try:
            pid = os.fork()
            if pid == 0:
                os.close(write_end)
                loader_sock.close()
                os._exit(_worker_main(spec, channel_fd, routes))
            os.write(write_end, str(pid).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.close(channel_fd)
    os.waitpid(middle, 0)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    return int(data) if data.isdigit() else 0


def _worker_main(spec: WorkerSpec, channel_fd: int, routes: list[engines.Route]) -> int:
    # Name ourselves to the primary first, on our own channel: it then knows our pid even if this loader is
    # stopped or killed before its "forked" reaches the primary, so a stop can always reach us.
    sock = socket.socket(fileno=channel_fd)
    channel.send(sock, channel.encode("hello", pid=os.getpid()))
    # Our parent (the middle process) exits at once; wait until the primary, a child subreaper, adopts us.
    deadline = time.monotonic() + 5
    while os.getppid() != spec.primary_pid:
        if time.monotonic() > deadline:
            return EXIT_PRIMARY_GONE
        time.sleep(0.0002)
    code = 1
    try:
        code = worker.run_preloaded(spec, sock, routes)
    except BaseException:
        traceback.print_exc()
    return code
