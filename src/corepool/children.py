"""The primary's children: forking workers and loaders, one :class:`Child` record each (its channel, its pid once
known, the signals waiting for that pid), and reaping them.

A worker is forked by the primary (lazy mode) or, in preload mode, by its generation's loader, which is sent the
worker's channel end and answers with the pid; a worker forked by a loader can even die before it is named, so
such exits are kept (bounded) until the name arrives. Everything that happens to a child becomes one event for
the policy, handed to ``emit``.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from corepool import balance, channel, events, exits, loader, log, signals, worker
from corepool.workerapi import WorkerSpec

UNCLAIMED_EXITS = 1024  # exits of loader-forked workers nobody named yet, kept until their name arrives

Listeners = list[tuple[str, socket.socket]]


@dataclass
class Child:
    """A worker (``generation`` and ``slot`` it runs) or a loader (``slot`` -1): its channel and, once known,
    its pid; signals decided before the pid was known wait in ``pending``."""

    key: int  # the worker's id, or the loader's generation
    slot: int
    generation: int
    sock: socket.socket
    pid: int | None = None
    pending: list[int] = field(default_factory=list)

    @property
    def cell(self) -> int:
        return balance.cell_of(self.slot, self.generation)


@dataclass
class Hooks:
    """What the primary does around its children: ``emit`` an event to the policy, read a worker's or a loader's
    channel (``read_worker``, ``read_loader``: a worker's last words are read before its exit is told), note a
    worker that is gone (``worker_gone``), ask whether another process was someone else's (``other_exited``:
    the broadcast backend's helper), and what a child must close (``private``: sockets and descriptors)."""

    emit: Callable[[events.Event], None]
    read_worker: Callable[[int], None]
    read_loader: Callable[[int], None]
    worker_gone: Callable[[Child], None]
    other_exited: Callable[[int, exits.Ended], bool]
    private: Callable[[], tuple[list[socket.socket | selectors.BaseSelector], list[int]]]


class Children:
    """Every worker and loader of the pool, by worker id, by generation and by pid."""

    def __init__(self, selector: selectors.BaseSelector, hooks: Hooks) -> None:
        self.selector = selector
        self.hooks = hooks
        self.workers: dict[int, Child] = {}
        self.loaders: dict[int, Child] = {}
        self.by_pid: dict[int, Child] = {}
        self.unclaimed: dict[int, int] = {}  # pid -> wait status

    # ---------------------------------------------------------------------------------------------- fork

    def fork(self, run: Callable[[], int], also_close: list[socket.socket]) -> int:
        """Fork a child that closes the primary's private descriptors, runs ``run`` and exits with its result."""
        sockets, fds = self.hooks.private()
        private = [*sockets, *also_close, *(c.sock for c in (*self.workers.values(), *self.loaders.values()))]
        with signals.blocked() as mask:
            pid = os.fork()
            if pid == 0:
                _run_child(run, mask, private, fds)
        return pid

    def spawn_worker(self, wid: int, spec: WorkerSpec, listeners: Listeners, preload: bool, now: float) -> None:
        if preload:
            primary_end, worker_end = channel.pair()
            loader_child = self.loaders.get(spec.generation)
            request = channel.encode("fork", wid=wid, slot=spec.slot)
            sent = loader_child is not None and _send_fd(loader_child.sock, request, worker_end.fileno())
            worker_end.close()
            if not sent:
                primary_end.close()
                self.hooks.emit(events.WorkerExited(wid, exits.lost(f"loader of generation {spec.generation} is "
                                                                    "gone"), now))
                return
            self._add_worker(Child(wid, spec.slot, spec.generation, primary_end))
            return  # the pid arrives with the loader's "forked"
        forked = self._fork_with_channel(lambda end: worker.run(spec, end, listeners))
        if isinstance(forked, str):
            self.hooks.emit(events.WorkerExited(wid, exits.lost(forked), now))
            return
        pid, primary_end = forked
        self._add_worker(Child(wid, spec.slot, spec.generation, primary_end))
        self.named(wid, pid, now)

    def spawn_loader(self, spec: WorkerSpec, listeners: Listeners, now: float) -> Child | None:
        generation = spec.generation
        forked = self._fork_with_channel(lambda end: loader.run(spec, end, listeners))
        if isinstance(forked, str):
            self.hooks.emit(events.LoaderExited(generation, exits.lost(forked), now))
            return None
        pid, primary_end = forked
        child = Child(generation, -1, generation, primary_end, pid)
        self.loaders[generation] = child
        self.by_pid[pid] = child
        self.selector.register(primary_end, selectors.EVENT_READ, lambda _m: self.hooks.read_loader(generation))
        self.hooks.emit(events.LoaderForked(generation, pid, now))
        log.event("loader", f"loader {pid} spawned for generation {generation}", generation=generation)
        return child

    def _fork_with_channel(self, run: Callable[[socket.socket], int]) -> tuple[int, socket.socket] | str:
        """Fork a child that runs ``run`` with its end of a fresh channel: its pid and the primary's end, or why
        the fork failed."""
        primary_end, child_end = channel.pair()
        try:
            pid = self.fork(lambda: run(child_end), [primary_end])
        except OSError as exc:
            primary_end.close()
            child_end.close()
            return f"fork failed: {exc.strerror}"
        child_end.close()
        return pid, primary_end

    def _add_worker(self, child: Child) -> None:
        self.workers[child.key] = child
        self.selector.register(child.sock, selectors.EVENT_READ, lambda _m: self.hooks.read_worker(child.key))

    def named(self, wid: int, pid: int, now: float) -> None:
        """A worker's pid is known: from fork (lazy), its own hello, or its loader's "forked" (preload)."""
        child = self.workers.get(wid)
        if child is None or child.pid is not None or pid in self.by_pid:
            if child is None:  # already gone (its channel closed before anyone named it): reap, don't adopt
                self.unclaimed.pop(pid, None)
            return
        child.pid = pid
        self.by_pid[pid] = child
        self.hooks.emit(events.WorkerForked(wid, pid, now))
        log.event("spawn", f"worker {pid} spawned (slot {child.slot}, generation {child.generation})",
                  worker_pid=pid, generation=child.generation, slot=child.slot)
        for signum in child.pending:
            _kill(pid, signum)
        child.pending.clear()
        status = self.unclaimed.pop(pid, None)
        if status is not None:  # it died before the loader told us its pid
            self._worker_exited(child, status, now)

    # ----------------------------------------------------------------------------------------- signals

    def signal_worker(self, wid: int, signum: int) -> None:
        child = self.workers.get(wid)
        if child is None:
            return
        if child.pid is None:  # a loader has not named it yet: deliver as soon as its pid is known
            child.pending.append(signum)
        else:
            _kill(child.pid, signum)

    def signal_loader(self, generation: int, signum: int) -> None:
        child = self.loaders.get(generation)
        if child is not None and child.pid is not None:
            _kill(child.pid, signum)

    def channels(self, wids: set[int]) -> dict[int, tuple[int | None, socket.socket]]:
        """The pid and channel of each worker in ``wids`` (those the primary has a channel to)."""
        return {wid: (c.pid, c.sock) for wid, c in self.workers.items() if wid in wids}

    def pid(self, wid: int) -> int | None:
        child = self.workers.get(wid)
        return child.pid if child is not None else None

    # -------------------------------------------------------------------------------------------- reap

    def reap(self, now: float, preload: bool) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.by_pid.get(pid)
            if child is not None and child.slot == -1:
                del self.by_pid[pid]
                self._close(self.loaders, child.key)
                self.hooks.emit(events.LoaderExited(child.key, exits.Ended.of(status), now))
            elif child is not None:
                self._worker_exited(child, status, now)
            elif self.hooks.other_exited(pid, exits.Ended.of(status)):
                pass  # the broadcast backend's helper process (the backend replaces it)
            elif preload:
                # A worker forked by a loader can die before it or its loader named it. Bounded: the oldest go.
                self.unclaimed[pid] = status
                while len(self.unclaimed) > UNCLAIMED_EXITS:
                    del self.unclaimed[next(iter(self.unclaimed))]

    def _worker_exited(self, child: Child, status: int, now: float) -> None:
        self.hooks.read_worker(child.key)  # its last words (the final pong of a drain) before its channel closes
        if child.pid is not None:
            self.by_pid.pop(child.pid, None)
        self.hooks.worker_gone(child)
        self._close(self.workers, child.key)
        self.hooks.emit(events.WorkerExited(child.key, exits.Ended.of(status), now))

    def lost(self, wid: int, why: str, now: float) -> None:
        """A worker gone before anyone named it (its channel closed), or that its loader could not fork."""
        self._close(self.workers, wid)
        self.hooks.emit(events.WorkerExited(wid, exits.lost(why), now))

    def _close(self, table: dict[int, Child], key: int) -> None:
        """Forget and close a worker's (or a loader's) channel."""
        child = table.pop(key, None)
        if child is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(child.sock)
            child.sock.close()

    def close(self) -> None:
        for child in (*self.workers.values(), *self.loaders.values()):
            child.sock.close()


def _run_child(run: Callable[[], int], mask: set[int | signal.Signals],
               private: list[socket.socket | selectors.BaseSelector], fds: list[int]) -> None:
    code = 1
    signals.reset_in_child(mask, worker.PRIMARY_SIGNALS)
    try:
        for thing in private:
            thing.close()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        code = run()
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _send_fd(sock: socket.socket, payload: bytes, fd: int) -> bool:
    try:
        socket.send_fds(sock, [payload], [fd], socket.MSG_DONTWAIT)
    except OSError:
        return False
    return True


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
