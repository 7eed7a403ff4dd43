"""The primary: one ``selectors`` loop that turns signals, worker channels, control requests and timers into
:mod:`corepool.policy` events, and carries out the actions the policy returns.

No sleeps and no polling: the loop wakes on a signal (``signal.set_wakeup_fd``), a message, a control client,
or the policy's next deadline. The primary never imports the app.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import gc
import os
import random
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from corepool import (
    apps,
    backends,
    balance,
    channel,
    control,
    engines,
    events,
    exits,
    health,
    hooks,
    loader,
    log,
    metrics,
    policy,
    recycling,
    settings,
    status,
    traffic,
    worker,
    workerapi,
)
from corepool.canary import Rules as CanaryRules
from corepool.listeners import Listener, ListenerError
from corepool.policy import Policy, Timing, WorkerState
from corepool.systemd import Notifier

_PR_SET_CHILD_SUBREAPER = 36
MESSAGES_PER_WAKEUP = 64  # per channel and turn of the loop
STATUS_WAIT = 0.25  # how long `corepool status` waits for fresh pongs before answering with what it has
REMOTE_SENDER = 0  # the relay's sender id for broadcasts from other hosts (workers' ids start at 1)

HANDLED_SIGNALS = (
    signal.SIGCHLD,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGUSR2,
    signal.SIGTTIN,
    signal.SIGTTOU,
)



@dataclass
class _ReloadWaiters:
    """``reload --wait`` clients: those answered by the reload in progress, and those queued behind it."""

    by_generation: dict[int, list[control.Reply]] = field(default_factory=dict)
    next_reload: list[control.Reply] = field(default_factory=list)


def timing_for(s: settings.Settings, watchdog_interval: float | None) -> Timing:
    """The policy's timing; with a systemd watchdog, health pings are frequent enough to feed it."""
    interval = s.health_interval
    if watchdog_interval is not None:
        interval = min(interval, watchdog_interval / 1.5)
    return Timing(
        health_interval=interval,
        health_timeout=s.health_timeout,
        boot_timeout=s.boot_timeout,
        graceful_timeout=s.graceful_timeout,
        backoff_max=s.backoff_max,
        max_spawn_rate=s.max_spawn_rate,
    )


def canary_rules_for(s: settings.Settings) -> CanaryRules:
    return CanaryRules(s.canary_seconds, s.canary_max_error_rate, s.canary_max_p99_ratio)


def limits_for(s: settings.Settings) -> recycling.Limits:
    return recycling.Limits(
        request_timeout=s.request_timeout,
        max_requests=s.max_requests,
        max_requests_jitter=s.max_requests_jitter,
        max_rss_bytes=int(s.max_rss * 2**20),
        max_lifetime=s.max_lifetime,
    )


class Primary:
    """Runs a pool until it is stopped; :meth:`run` returns the process exit code."""

    def __init__(
        self,
        s: settings.Settings,
        listeners: list[Listener],
        notifier: Notifier,
        flags: dict[str, Any] | None = None,
    ) -> None:
        self.settings = s
        self.flags = flags or {}  # re-applied over the config file when SIGHUP re-reads it
        self.config_error: str | None = None
        # A socket named "metrics" is the metrics endpoint's: kept out of the app's listeners, never in a worker.
        metrics_listener, self.listeners = metrics.take_listener(listeners)
        health_listener, self.listeners = health.take_listener(self.listeners)  # the same for "health"
        self.notifier = notifier
        self.policy = Policy(
            workers_wanted=s.workers, timing=timing_for(s, notifier.watchdog_interval), preload=s.mode == "preload",
            limits=limits_for(s), rng=random.Random(os.urandom(16)), canary_rules=canary_rules_for(s),
        )
        self.selector = selectors.DefaultSelector()
        self.control = control.ControlServer(s.control_path(), self.selector, self._control_request)
        self.counters = metrics.Counters()
        self.metrics = metrics.MetricsServer(self.selector, self._on_scrape, metrics_listener, s.metrics_bind)
        self.health = health.HealthServer(self.selector, lambda: health.verdict(self.policy), health_listener,
                                          s.health_bind)
        self.broadcast = backends.make(s.broadcast, s.broadcast_channel, s.max_message_bytes)
        self.channels: dict[int, socket.socket] = {}  # wid -> the primary's end of its channel
        self.pids: dict[int, int] = {}  # pid -> wid
        self.loader_channels: dict[int, socket.socket] = {}  # generation -> channel
        self.loader_pids: dict[int, int] = {}  # pid -> generation
        self.unclaimed_exits: dict[int, int] = {}  # pid -> wait status, for workers not yet named by a loader
        self.pending_signals: dict[int, list[int]] = {}  # wid -> signals decided before its pid was known
        self.when_ready: Callable[..., Any] | None = None
        self.on_reload: Callable[..., Any] | None = None
        self.events: collections.deque[events.Event] = collections.deque()
        self.exit_code: int | None = None
        self.waiters = _ReloadWaiters()
        self.status_waiters: list[tuple[float, set[int], control.Reply]] = []
        self.board = balance.Board()
        self.tracebacks_seen: set[str] = set()
        self.next_watchdog = 0.0
        self.started_at = time.monotonic()
        self._wake_r, self._wake_w = socket.socketpair()

    # -------------------------------------------------------------------------------------------- setup

    def run(self) -> int:
        """Serve until stopped. Returns 0 after a clean stop, 1 when workers had to be killed or start failed."""
        try:
            self.when_ready = hooks.load("when_ready", self.settings.when_ready, self.settings.app_dir)
            self.on_reload = hooks.load("on_reload", self.settings.on_reload, self.settings.app_dir)
        except apps.AppLoadError as exc:
            log.event("boot_error", f"{exc}\n{exc.detail.rstrip()}".rstrip(), warning=True)
            self._cleanup()
            return exits.EXIT_FAILURE
        engines.import_all()
        # Everything imported so far is shared with every process forked from here: keep the collector from
        # writing to it (and so copying its pages into the primary, and into a loader at its first collection).
        gc.collect()
        gc.freeze()
        if not _become_subreaper() and self.policy.preload:
            log.event("start", "cannot become a child subreaper: falling back to mode lazy", warning=True)
            self.policy.preload = False
        self.control.open()
        try:
            self.metrics.open()
        except ListenerError as exc:
            log.event("start", f"metrics_bind: {exc}", warning=True)
            self._cleanup()
            return exits.EXIT_FAILURE
        try:
            self.health.open()
        except ListenerError as exc:
            log.event("start", f"health_bind: {exc}", warning=True)
            self._cleanup()
            return exits.EXIT_FAILURE
        self.broadcast.open(self.selector, self._remote_broadcast, self._broadcast_news, self._fork)
        self._install_signals()
        if self.settings.reload:
            from corepool import devreload  # development only

            try:
                devreload.start(self.settings)
            except devreload.DevReloadUnavailable as exc:
                log.event("start", f"--reload: {exc}", warning=True)
                self._cleanup()
                return exits.EXIT_USAGE  # as the CLI's: a setting that cannot work here
        where = ", ".join(listener.address for listener in self.listeners)
        log.event(
            "start",
            f"corepool {self._version()} primary {os.getpid()}: serving {self.settings.app} on {where} with "
            f"{policy.counted(self.settings.workers, 'worker')}; control socket {self.control.path}"
            + (f"; health checks on {self.health.address}" if self.health.address else ""),
        )
        self.notifier.extend_timeout(self.settings.boot_timeout + 10)
        self.events.append(events.Start(time.monotonic()))
        try:
            while self.exit_code is None:
                self._drain_events()
                if self.exit_code is not None:
                    break
                for key, mask in self.selector.select(self._timeout()):
                    key.data(mask)
                self.events.append(events.Tick(time.monotonic()))
                self._heartbeat()
                if self.status_waiters:
                    self._drain_events()
                    self._answer_status_waiters()
        finally:
            self._cleanup()
        return self.exit_code

    def _install_signals(self) -> None:
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, _noop_handler)  # the wakeup fd carries the signal number to the loop
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._on_signals)

    def _cleanup(self) -> None:
        signal.set_wakeup_fd(-1)
        self.control.close()
        self.metrics.close()
        self.health.close()
        self.broadcast.close()
        for sock in [*self.channels.values(), *self.loader_channels.values()]:
            sock.close()
        for listener in self.listeners:
            listener.close()
        self.selector.close()

    @staticmethod
    def _version() -> str:
        from corepool import __version__

        return __version__

    # ------------------------------------------------------------------------------------------ signals

    def _on_signals(self, _mask: int) -> None:
        try:
            data = self._wake_r.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        now = time.monotonic()
        for signum in data:
            self._on_signal(signum, now)

    def _on_signal(self, signum: int, now: float) -> None:
        if signum == signal.SIGCHLD:
            self._reap(now)
        elif signum in (signal.SIGTERM, signal.SIGINT):
            name = signal.Signals(signum).name
            if self._may_drain_first():
                # Balancers first: health checks fail for drain_seconds while every worker still serves.
                log.event("stop", f"{name}: draining the host for {self.settings.drain_seconds:g}s, then a "
                          f"graceful stop (another {name} stops at once)")
                self._begin_drain(now, then_stop=True)
                return
            log.event("stop", f"{name}: graceful stop")
            graceful = self.policy.phase is not policy.PoolPhase.STOPPING
            self._begin_stop(now, graceful)
        elif signum == signal.SIGQUIT:
            log.event("stop", "SIGQUIT: fast stop")
            self._begin_stop(now, graceful=False)
        elif signum == signal.SIGUSR2:
            self.events.append(events.ReloadRequested(now, "SIGUSR2"))
        elif signum == signal.SIGHUP:
            self._reload_config(now)
        elif signum == signal.SIGTTIN:
            self.events.append(events.ScaleRequested(1, now))
        elif signum == signal.SIGTTOU:
            self.events.append(events.ScaleRequested(-1, now))

    def _may_drain_first(self) -> bool:
        """A stop drains the host first when balancers check health here, once (a second signal stops at once)."""
        p = self.policy
        return (self.health.enabled and self.settings.drain_seconds > 0 and not p.host_drain_then_stop
                and p.phase is policy.PoolPhase.RUNNING)  # starting: health says 503 already

    def _begin_drain(self, now: float, then_stop: bool) -> None:
        if then_stop:
            self.notifier.stopping(f"draining: health checks fail for {self.settings.drain_seconds:g}s, then stopping")
            self.notifier.extend_timeout(self.settings.drain_seconds + self.settings.graceful_timeout + 5)
        self.events.append(events.HostDrainRequested(now, self.settings.drain_seconds, then_stop))

    def _begin_stop(self, now: float, graceful: bool) -> None:
        if self.policy.phase is not policy.PoolPhase.STOPPING:
            self.notifier.stopping("stopping: draining workers")
            self.notifier.extend_timeout(self.settings.graceful_timeout + 5)
        self.events.append(events.StopRequested(now, graceful))

    def _reload_config(self, now: float) -> None:
        path = self.settings.config_path
        if path is not None:
            try:
                fresh = settings.load(path, self.flags)
            except settings.SettingsError as exc:
                self.config_error = str(exc)
                log.event("reload", f"SIGHUP: config not reloaded, keeping the running settings: {exc}", warning=True)
                return
            self.config_error = None
            if fresh.bind != self.settings.bind:
                log.event("reload", "SIGHUP: bind addresses changed; they take effect on restart", warning=True)
            restart_only = [k for k in ("health_bind", "broadcast", "broadcast_channel")
                            if getattr(fresh, k) != getattr(self.settings, k)]
            if restart_only:
                log.event("reload", f"SIGHUP: {', '.join(restart_only)} changed; that takes effect on restart",
                          warning=True)
            delta = fresh.workers - self.settings.workers
            self.settings = fresh
            self.policy.timing = timing_for(fresh, self.notifier.watchdog_interval)
            self.policy.limits = limits_for(fresh)
            self.policy.canary_rules = canary_rules_for(fresh)
            if delta:
                self.events.append(events.ScaleRequested(delta, now))
        self.events.append(events.ReloadRequested(now, "SIGHUP"))

    def _reap(self, now: float) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            generation = self.loader_pids.pop(pid, None)
            if generation is not None:
                self._close_channel(self.loader_channels, generation)
                self.events.append(events.LoaderExited(generation, exits.Ended.of(status), now))
            elif pid in self.pids:
                self._worker_exited(pid, status, now)
            elif self.broadcast.exited(pid, exits.Ended.of(status).description):
                pass  # the broadcast backend's helper process (the backend replaces it)
            elif self.policy.preload:
                # A worker forked by a loader can die before it or its loader named it. Bounded: the oldest go.
                self.unclaimed_exits[pid] = status
                while len(self.unclaimed_exits) > 1024:
                    del self.unclaimed_exits[next(iter(self.unclaimed_exits))]

    def _worker_exited(self, pid: int, status: int, now: float) -> None:
        self._on_channel(self.pids[pid])  # its last words (the final pong of a drain) before its channel closes
        wid = self.pids.pop(pid)
        self.counters.retire(wid)  # its last counts join the pool's totals
        w = self.policy.workers.get(wid)
        if w is not None:
            self.board.set(balance.cell_of(w.slot, w.generation), None)
        self._close_channel(self.channels, wid)
        self.pending_signals.pop(wid, None)
        self.events.append(events.WorkerExited(wid, exits.Ended.of(status), now))

    # -------------------------------------------------------------------------------------- the policy

    def _drain_events(self) -> None:
        while self.events:
            event = self.events.popleft()
            for action in self.policy.handle(event):
                self._carry_out(action)
        self.notifier.status(self.status_line())

    def _carry_out(self, action: events.Action) -> None:
        match action:
            case events.Spawn(wid, slot, generation):
                self._extend_reload_timeout()
                self._spawn(wid, slot, generation)
            case events.SpawnLoader(generation):
                self._extend_reload_timeout()
                self._spawn_loader(generation)
            case events.SignalLoader(generation, signum, _reason):
                for loader_pid, g in self.loader_pids.items():
                    if g == generation:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(loader_pid, signum)
            case events.Signal(wid, signum, _reason):
                pid = self._pid(wid)
                if pid is None:  # a loader has not named it yet: deliver as soon as its pid is known
                    self.pending_signals.setdefault(wid, []).append(signum)
                else:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signum)
            case events.Ping(wid, seq):
                sock = self.channels.get(wid)
                if sock is not None:
                    channel.send(sock, channel.encode("ping", seq=seq))
            case events.SetRequestLimit(wid, limit):
                sock = self.channels.get(wid)
                if sock is not None:
                    channel.send(sock, channel.encode("limit", requests=limit))
            case events.CapShare(wid, capped):
                sock = self.channels.get(wid)
                if sock is not None:
                    channel.send(sock, channel.encode("share", capped=capped))
            case events.Report(event, message, wid, warning, cause):
                self._report(event, message, wid, warning, cause=None if cause is None else cause.value)
            case events.WorkerEnded(pid, slot, generation, cause, expected, signame, message):
                log.event("exit" if expected else "death", message, warning=not expected, cause=cause.value,
                          generation=generation, slot=slot, worker_pid=pid, signal=signame)
                self.counters.ended(cause)
            case events.CanaryJudged(wid, verdict, message):
                self._report("canary", message, wid, not verdict.ok, verdict="pass" if verdict.ok else "rollback",
                             canary_requests=verdict.canary.requests, canary_errors=verdict.canary.errors,
                             old_requests=verdict.old.requests, old_errors=verdict.old.errors)
                self.counters.judged(verdict.ok)
            case events.PoolReady():
                ready = f"ready: {policy.counted(self.policy.ready_count(), 'worker')} serving"
                log.event("ready", f"pool {ready} (pid {os.getpid()})", generation=self.policy.generation)
                self.notifier.ready(self.status_line())
                hooks.run("when_ready", self.when_ready, self.status())
            case events.ReloadStarted(generation):
                self.waiters.by_generation.setdefault(generation, []).extend(self.waiters.next_reload)
                self.waiters.next_reload = []
                self.notifier.reloading(f"reloading to generation {generation}")
                hooks.run("on_reload", self.on_reload, generation)
            case events.ReloadFinished(generation, ok, reason):
                self._answer_reload_waiters(generation, ok, reason)
                self.counters.reload_finished(ok)
                if self.policy.phase is not policy.PoolPhase.STOPPING:
                    self.notifier.ready(self.status_line())
            case events.Exit(code, reason):
                self.exit_code = code
                log.event("exit", f"primary exits with code {code}: {reason}", warning=code != 0)

    def _extend_reload_timeout(self) -> None:
        """A roll boots one worker at a time: each may take boot_timeout, so systemd's reload timeout is pushed
        out as long as the roll makes progress (a roll that stops making progress is bounded by the policy)."""
        if self.policy.reloading:
            self.notifier.extend_timeout(self.settings.boot_timeout + self.settings.graceful_timeout + 10)

    def _report(self, event: str, message: str, wid: int | None, warning: bool, **fields: Any) -> None:
        w = self.policy.workers.get(wid) if wid is not None else None
        if w is not None:
            fields = {"worker_pid": w.pid, "generation": w.generation, "slot": w.slot, **fields}
        log.event(event, message, warning=warning, **fields)

    def _pid(self, wid: int) -> int | None:
        w = self.policy.workers.get(wid)
        return w.pid if w is not None else None

    # ------------------------------------------------------------------------------------------ workers

    def _spec(self, slot: int, generation: int) -> workerapi.WorkerSpec:
        s = self.settings
        return workerapi.WorkerSpec(
            app=s.app or "",
            app_dir=s.app_dir,
            interface=s.interface,
            slot=slot,
            generation=generation,
            primary_pid=os.getpid(),
            drain_timeout=max(0.1, s.graceful_timeout * 0.9),
            max_message_bytes=s.max_message_bytes,
            log_level=s.log_level,
            routes=s.routes,
            board=self.board,
            http=s.http,
            post_fork=s.post_fork,
            worker_exit=s.worker_exit,
        )

    def _fork(self, run: Callable[[], int], also_close: list[socket.socket]) -> int:
        """Fork a child that closes the primary's private descriptors, runs ``run`` and exits with its result."""
        private: list[socket.socket | selectors.BaseSelector] = [
            self.selector, self._wake_r, self._wake_w, *also_close,
            *self.channels.values(), *self.loader_channels.values(),
        ]
        control_fds = self.control.fds() + self.metrics.fds() + self.health.fds() + self.broadcast.fds()
        # A signal meant for the primary must not land in the child between fork and its own set-up: the
        # inherited wakeup fd would hand it back to the primary as a second signal nobody sent (a SIGTERM
        # would become a fast stop), and the inherited no-op handler would swallow a SIGTERM sent to the child.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            raise
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # pending ones reach the primary's loop now
        else:
            code = 1
            signal.set_wakeup_fd(-1)  # before closing the wakeup socket, so no signal writes to a stale fd
            for sig in HANDLED_SIGNALS:
                signal.signal(sig, signal.SIG_IGN if sig in worker.PRIMARY_SIGNALS else signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            try:
                for thing in private:
                    thing.close()
                for fd in control_fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                code = run()
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        return pid

    def _named_listeners(self) -> list[tuple[str, socket.socket]]:
        return [(listener.name, listener.sock) for listener in self.listeners]

    def _spawn(self, wid: int, slot: int, generation: int) -> None:
        primary_end, worker_end = channel.pair()
        now = time.monotonic()
        if self.policy.preload:
            loader_channel = self.loader_channels.get(generation)
            request = channel.encode("fork", wid=wid, slot=slot)
            sent = loader_channel is not None and _send_fd(loader_channel, request, worker_end.fileno())
            worker_end.close()
            if not sent:
                primary_end.close()
                gone = exits.lost(f"loader of generation {generation} is gone")
                self.events.append(events.WorkerExited(wid, gone, now))
                return
            self._add_channel(wid, primary_end)
            return  # the pid arrives with the loader's "forked"
        spec = self._spec(slot, generation)
        try:
            pid = self._fork(lambda: worker.run(spec, worker_end, self._named_listeners()), [primary_end])
        except OSError as exc:
            primary_end.close()
            worker_end.close()
            self.events.append(events.WorkerExited(wid, exits.lost(f"fork failed: {exc.strerror}"), now))
            return
        worker_end.close()
        self._add_channel(wid, primary_end)
        self._worker_forked(wid, pid, now)

    def _add_channel(self, wid: int, sock: socket.socket) -> None:
        self.channels[wid] = sock
        self.selector.register(sock, selectors.EVENT_READ, lambda _m, w=wid: self._on_channel(w))

    def _worker_forked(self, wid: int, pid: int, now: float) -> None:
        """A worker's pid is known: from fork (lazy), its own hello, or its loader's "forked" (preload)."""
        w = self.policy.workers.get(wid)
        if pid in self.pids or w is None or w.pid is not None:
            if w is None:  # already gone (its channel closed before anyone named it): reap, don't adopt
                self.unclaimed_exits.pop(pid, None)
            return
        self.pids[pid] = wid
        w.pid = pid  # now, not when the event is handled: a Signal decided in between must reach it
        self.events.append(events.WorkerForked(wid, pid, now))
        log.event("spawn", f"worker {pid} spawned (slot {w.slot}, generation {w.generation})",
                  worker_pid=pid, generation=w.generation, slot=w.slot)
        for signum in self.pending_signals.pop(wid, []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        status = self.unclaimed_exits.pop(pid, None)
        if status is not None:  # it died before the loader told us its pid
            self._worker_exited(pid, status, now)

    # ------------------------------------------------------------------------------------------ loaders

    def _spawn_loader(self, generation: int) -> None:
        spec = self._spec(-1, generation)
        primary_end, loader_end = channel.pair()
        now = time.monotonic()
        try:
            pid = self._fork(lambda: loader.run(spec, loader_end, self._named_listeners()), [primary_end])
        except OSError as exc:
            primary_end.close()
            loader_end.close()
            self.events.append(events.LoaderExited(generation, exits.lost(f"fork failed: {exc.strerror}"), now))
            return
        loader_end.close()
        self.loader_pids[pid] = generation
        self.loader_channels[generation] = primary_end
        self.selector.register(primary_end, selectors.EVENT_READ, lambda _m, g=generation: self._on_loader(g))
        self.events.append(events.LoaderForked(generation, pid, now))
        log.event("loader", f"loader {pid} spawned for generation {generation}", generation=generation)

    def _on_loader(self, generation: int) -> None:
        sock = self.loader_channels.get(generation)
        if sock is None:
            return
        now = time.monotonic()
        for message in self._receive(sock, f"the loader of generation {generation}")[0]:
            kind = message["t"]
            if kind == "ready":
                self.events.append(events.LoaderReady(generation, now))
            elif kind == "boot_error":
                error = self._boot_error(message, generation=generation)
                self.events.append(events.LoaderBootError(generation, error, now))
            elif kind == "forked" and isinstance(message.get("wid"), int) and isinstance(message.get("pid"), int):
                wid, pid = message["wid"], message["pid"]
                if pid > 0:
                    self._worker_forked(wid, pid, now)
                else:
                    self._close_channel(self.channels, wid)
                    self.events.append(events.WorkerExited(wid, exits.lost("the loader could not fork it"), now))

    def _close_channel(self, table: dict[int, socket.socket], key: int) -> None:
        """Forget and close a worker's (or a loader's) channel."""
        sock = table.pop(key, None)
        if sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(sock)
            sock.close()

    def _on_channel(self, wid: int) -> None:
        sock = self.channels.get(wid)
        if sock is None:
            return
        now = time.monotonic()
        messages, errors, closed = self._receive(sock, f"worker {self._pid(wid)}")
        for message in messages:
            self._on_message(wid, message, now)
        if errors:
            self.events.append(events.WorkerMisbehaved(wid, errors[0], now))
        if closed and self._pid(wid) is None and wid in self.policy.workers:
            # Its only holder (the worker, or the loader about to fork it) is gone before anyone named it.
            self._close_channel(self.channels, wid)
            self.pending_signals.pop(wid, None)
            self.events.append(events.WorkerExited(wid, exits.lost("gone before its pid was known"), now))

    def _receive(self, sock: socket.socket, sender: str) -> tuple[list[dict[str, Any]], list[str], bool]:
        """The messages waiting on a channel (at most :data:`MESSAGES_PER_WAKEUP`, so that one flooding worker
        cannot starve the others: the selector reports the rest on the next turn), what was wrong with malformed
        ones (logged and dropped), and whether the peer closed its end (then the channel is unregistered)."""
        messages: list[dict[str, Any]] = []
        errors: list[str] = []
        while len(messages) + len(errors) < MESSAGES_PER_WAKEUP:
            try:
                raw = sock.recv(channel.recv_size())
            except (BlockingIOError, InterruptedError):
                return messages, errors, False
            except OSError:
                raw = b""
            if not raw:
                # The peer closed its end (it is exiting); its exit status arrives with SIGCHLD.
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(sock)
                return messages, errors, True
            try:
                messages.append(channel.decode(raw, self.settings.max_message_bytes))
            except channel.ChannelError as exc:
                log.event("channel", f"dropped a message from {sender}: {exc}", warning=True)
                errors.append(str(exc))
        return messages, errors, False

    def _boot_error(self, message: dict[str, Any], **fields: Any) -> str:
        """Log a boot error's traceback once (every worker of a broken app sends the same one)."""
        error = str(message.get("error", "unknown error"))
        detail = str(message.get("detail", ""))
        if detail and detail not in self.tracebacks_seen:
            self.tracebacks_seen.add(detail)
            log.event("boot_error", f"{error}\n{detail.rstrip()}", warning=True, **fields)
        return error

    def _on_message(self, wid: int, message: dict[str, Any], now: float) -> None:
        kind = message["t"]
        if kind == "ready":
            self.events.append(events.WorkerReady(wid, now))
        elif kind == "draining":
            self.events.append(events.WorkerDraining(wid, now))
        elif kind == "pong":
            pong = _pong_event(wid, message, now, status.rss_bytes(self._pid(wid)))
            if pong is not None:
                self.counters.report(wid, pong.traffic, message.get("connections"))
            if pong is None:
                self.events.append(events.WorkerMisbehaved(wid, "a malformed pong", now))
            else:
                self.events.append(pong)
        elif kind == "hello":
            if isinstance(message.get("pid"), int) and message["pid"] > 0:
                self._worker_forked(wid, message["pid"], now)
        elif kind == "boot_error":
            error = self._boot_error(message, worker_pid=self._pid(wid))
            self.events.append(events.WorkerBootError(wid, error, now))
        elif kind == "broadcast":
            self._relay(wid, message)
        else:
            log.event("channel", f"a message of unknown type {kind!r} from worker {self._pid(wid)}", warning=True)
            self.events.append(events.WorkerMisbehaved(wid, f"a message of unknown type {kind!r}", now))

    def _relay(self, sender: int, message: dict[str, Any]) -> None:
        """To every other serving worker, through corepool.relay: bounded queues, a rate guard, never blocking."""
        from corepool import relay

        serving = {wid: (w.pid, sock) for wid, sock in self.channels.items()
                   if (w := self.policy.workers.get(wid)) is not None and w.state is not WorkerState.DRAINING}
        relay.of(self.selector).forward(sender, self._pid(sender), message, serving, self.settings.max_message_bytes)
        if isinstance(message.get("topic"), str):
            self.broadcast.publish(message["topic"], message.get("data"))

    def _remote_broadcast(self, topic: str, data: Any) -> None:
        """A broadcast from another host (the backend): to every serving worker of this one, through the relay."""
        from corepool import relay

        serving = {wid: (w.pid, sock) for wid, sock in self.channels.items()
                   if (w := self.policy.workers.get(wid)) is not None and w.state is not WorkerState.DRAINING}
        relay.of(self.selector).forward(REMOTE_SENDER, None, {"topic": topic, "data": data}, serving,
                                        self.settings.max_message_bytes)

    def _broadcast_news(self, text: str, bad: bool) -> None:
        log.event("broadcast", text, warning=bad)
        self.notifier.status(self.status_line())

    # -------------------------------------------------------------------------------------- control

    def _control_request(self, req: dict[str, Any], reply: control.Reply) -> None:
        cmd = req.get("cmd")
        if cmd == "status":
            # Request counts travel with pongs: ask every ready worker now, answer when they have (or soon).
            self.events.append(events.PingAll(time.monotonic()))
            self._drain_events()
            waiting = {w.wid for w in self.policy.workers.values() if w.ping_sent_at is not None}
            self.status_waiters.append((time.monotonic() + STATUS_WAIT, waiting, reply))
            self._answer_status_waiters()
        elif cmd == "reload":
            if self.policy.phase in (policy.PoolPhase.STOPPING, policy.PoolPhase.EXITED):
                reply({"ok": False, "error": "the pool is stopping"})
                return
            queued = self.policy.reloading or self.policy.phase is policy.PoolPhase.STARTING
            now = time.monotonic()
            self.events.append(events.ReloadRequested(now, "reload via control socket"))
            self._drain_events()
            roll = self.policy.roll
            if not req.get("wait"):
                generation = self.policy.queued_generation if queued or roll is None else roll.generation
                reply({"ok": True, "generation": generation, "queued": queued})
            elif queued:
                self.waiters.next_reload.append(reply)
            elif roll is not None:
                self.waiters.by_generation.setdefault(roll.generation, []).append(reply)
            else:
                last = self.policy.last_reload
                reply({"ok": bool(last and last.ok), "generation": last.generation if last else None,
                       "reason": last.reason if last else "no reload ran"})
        elif cmd == "drain":
            self._control_drain(req, reply)
        else:
            reply({"ok": False, "error": f"unknown command {cmd!r} (known: status, reload, drain)"})

    def _control_drain(self, req: dict[str, Any], reply: control.Reply) -> None:
        """``corepool drain [--stop] [--cancel]``: take this host out of its balancers (or back in)."""
        now = time.monotonic()
        p = self.policy
        if p.phase in (policy.PoolPhase.STOPPING, policy.PoolPhase.EXITED):
            reply({"ok": False, "error": "the pool is stopping"})
            return
        if req.get("cancel"):
            if p.host_drain_then_stop:
                reply({"ok": False, "error": "this drain ends in a stop and cannot be cancelled"})
                return
            self.events.append(events.HostDrainCancelled(now))
        elif not self.health.enabled:
            reply({"ok": False, "error": "this pool has no health endpoint (health_bind, or a socket named health): "
                   "nothing would tell a balancer to move traffic away"})
            return
        else:
            stop = bool(req.get("stop"))
            if stop:
                log.event("stop", f"corepool drain --stop: draining the host for {self.settings.drain_seconds:g}s, "
                          "then a graceful stop")
            self._begin_drain(now, then_stop=stop)
        self._drain_events()
        v = health.verdict(self.policy)
        reply({"ok": True, "health": v.code, "reason": v.reason, "drain_seconds": self.settings.drain_seconds})

    def _on_scrape(self, respond: metrics.Respond) -> None:
        """A Prometheus scrape: ping every ready worker, answer once they have (or after STATUS_WAIT)."""
        self.events.append(events.PingAll(time.monotonic()))
        self._drain_events()
        waiting = {w.wid for w in self.policy.workers.values() if w.ping_sent_at is not None}
        answer = lambda _status: respond(self._exposition())  # noqa: E731 (a status waiter's reply)
        self.status_waiters.append((time.monotonic() + STATUS_WAIT, waiting, answer))
        self._answer_status_waiters()

    def _exposition(self) -> bytes:
        from corepool import relay

        r = relay.of(self.selector)
        backend = self.broadcast.status()
        up = None if backend["backend"] == "local" else int(bool(backend.get("connected")))
        return metrics.render(self.policy, self.counters, metrics.Broadcasts(r.relayed, r.dropped, up),
                              status.rss_bytes)

    def _answer_status_waiters(self) -> None:
        now = time.monotonic()
        still: list[tuple[float, set[int], control.Reply]] = []
        for deadline, waiting, reply in self.status_waiters:
            pending = {wid for wid in waiting if (w := self.policy.workers.get(wid)) and w.ping_sent_at is not None}
            if pending and now < deadline:
                still.append((deadline, pending, reply))
            else:
                reply({"ok": True, "status": self.status()})
        self.status_waiters = still

    def _answer_reload_waiters(self, generation: int, ok: bool, reason: str) -> None:
        for reply in self.waiters.by_generation.pop(generation, []):
            reply({"ok": ok, "generation": generation, "reason": reason})

    # ----------------------------------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        """The pool as data: what ``corepool status --json`` prints."""
        return status.snapshot(
            self.policy,
            time.monotonic(),
            name=self.settings.name,
            app=self.settings.app,
            requests=self.requests_total(),
            uptime=time.monotonic() - self.started_at,
            listeners=[{"name": lst.name, "address": lst.address, "source": lst.source} for lst in self.listeners],
            control=self.control.path,
            metrics=self.metrics.address,
            config_error=self.config_error,
            health=self._health_status(),
            broadcast=self.broadcast.status(),
        )

    def _health_status(self) -> dict[str, Any] | None:
        if not self.health.enabled:
            return None
        v = health.verdict(self.policy)
        until = self.policy.host_drain_until
        return {"address": self.health.address, "code": v.code, "reason": v.reason,
                "draining": self.policy.host_draining, "then_stop": self.policy.host_drain_then_stop,
                "drain_left": None if until is None else round(max(0.0, until - time.monotonic()), 3)}

    def requests_total(self) -> int:
        """Requests the pool has served: the metrics counters' total, which keeps what retired workers served
        (their last words included) and so never goes down."""
        return self.counters.total().total

    def status_line(self) -> str:
        return status.line(self.policy, self.requests_total(), self.broadcast.line())

    # ------------------------------------------------------------------------------------------- timing

    def _timeout(self) -> float | None:
        deadlines = [d for d in (self.policy.next_deadline(), self._watchdog_deadline()) if d is not None]
        deadlines += [deadline for deadline, _, _ in self.status_waiters]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _watchdog_deadline(self) -> float | None:
        return self.next_watchdog if self.notifier.watchdog_interval else None

    def _heartbeat(self) -> None:
        interval = self.notifier.watchdog_interval
        now = time.monotonic()
        if not interval or now < self.next_watchdog:
            return
        self.next_watchdog = now + interval
        # Starting, stopping and reloading have their own timeouts; while running, the watchdog is fed only
        # while some worker proved within the watchdog window that its serving loop turns.
        window = interval * 2
        if self.policy.phase is not policy.PoolPhase.RUNNING or self.policy.healthy(now, window):
            self.notifier.watchdog()
        else:
            log.event("watchdog", "no worker answered a health ping within WatchdogSec: not feeding the watchdog",
                      warning=True)


def _pong_event(wid: int, message: dict[str, Any], now: float, rss: int | None) -> events.Pong | None:
    """A worker's pong (or unsolicited stats) as an event; None when its fields are not what a worker sends."""
    seq, requests, oldest = message.get("seq"), message.get("requests"), message.get("oldest")
    counts = [message.get(key, 0) for key in ("inflight", "busy_threads", "threads")]
    if not (seq is None or isinstance(seq, int)) or not isinstance(requests, int):
        return None
    if not all(isinstance(n, int) for n in counts):
        return None
    oldest_age: float | None = None
    oldest_label: str | None = None
    if oldest is not None:
        if not (isinstance(oldest, list) and len(oldest) == 2 and isinstance(oldest[0], (int, float))):
            return None
        oldest_age, oldest_label = float(oldest[0]), str(oldest[1])[:200]
    counted = None
    if message.get("traffic") is not None:
        counted = traffic.Traffic.from_wire(message["traffic"])
        if counted is None:
            return None
    return events.Pong(wid, seq, requests, now, counts[0], oldest_age, oldest_label, counts[1], counts[2], rss,
                       counted)


def _become_subreaper() -> bool:
    """Orphaned descendants (workers a loader double-forked) become our children, so we reap them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1) == 0)
    except (OSError, AttributeError):
        return False


def _send_fd(sock: socket.socket, payload: bytes, fd: int) -> bool:
    try:
        socket.send_fds(sock, [payload], [fd], socket.MSG_DONTWAIT)
    except OSError:
        return False
    return True


def _noop_handler(_signum: int, _frame: object) -> None:
    """Signals are read from the wakeup fd by the loop; the handler only has to exist."""
