"""The primary: one ``selectors`` loop that turns signals, worker channels, control requests and timers into
:mod:`corepool.policy` events, and carries out the actions the policy returns. It decides nothing itself.

Its rooms: :mod:`corepool.signals` (handlers that only enqueue, and what each signal asks for),
:mod:`corepool.children` (fork, reap, one record per child), :mod:`corepool.messages` (a channel's messages as
events), :mod:`corepool.waiters` (clients answered later), :mod:`corepool.tuning` (what the settings make of the
policy's parameters). No sleeps and no polling: the loop wakes on a signal, a message, a control client, or the
policy's next deadline. The primary never imports the app.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import os
import random
import selectors
import signal
import time
from collections.abc import Callable
from typing import Any

from corepool import (
    apps,
    backends,
    balance,
    channel,
    children,
    control,
    engines,
    events,
    exits,
    health,
    hooks,
    log,
    messages,
    metrics,
    policy,
    relay,
    settings,
    signals,
    status,
    tuning,
    waiters,
)
from corepool.listeners import Listener, ListenerError
from corepool.systemd import Notifier
from corepool.workerapi import WorkerSpec

_PR_SET_CHILD_SUBREAPER = 36
REMOTE_SENDER = 0  # the relay's sender id for broadcasts from other hosts (workers' ids start at 1)


class Primary:
    """Runs a pool until it is stopped; :meth:`run` returns the process exit code."""

    def __init__(self, s: settings.Settings, listeners: list[Listener], notifier: Notifier,
                 flags: dict[str, Any] | None = None) -> None:
        self.settings = s
        self.flags = flags or {}  # re-applied over the config file when SIGHUP re-reads it
        # Sockets named "metrics" and "health" are those endpoints': kept out of the app's listeners.
        metrics_listener, self.listeners = metrics.take_listener(listeners)
        health_listener, self.listeners = health.take_listener(self.listeners)
        self.notifier = notifier
        self.selector = selectors.DefaultSelector()
        self.control = control.ControlServer(s.control_path(), self.selector, self._control_request)
        self.counters = metrics.Counters()
        self.metrics = metrics.MetricsServer(self.selector, self._on_scrape, metrics_listener, s.metrics_bind)
        self.health = health.HealthServer(self.selector, lambda: health.verdict(self.policy), health_listener,
                                          s.health_bind)
        self.policy = policy.Policy(
            workers_wanted=s.workers, timing=tuning.timing(s, notifier.watchdog_interval),
            preload=s.mode == "preload", limits=tuning.limits(s), rng=random.Random(os.urandom(16)),
            canary_rules=tuning.canary_rules(s), health_endpoint=self.health.enabled,
            watchdog_interval=notifier.watchdog_interval,
        )
        self.broadcast = backends.make(s.broadcast, s.broadcast_channel, s.max_message_bytes)
        self.events: collections.deque[events.Event] = collections.deque()
        self.wakeup = signals.WakeupPipe()
        self.inbox = messages.Inbox(self.selector, self.events.append, s.max_message_bytes, self._pong, self._relay)
        self.children = children.Children(self.selector, children.Hooks(
            emit=self.events.append, read_worker=lambda wid: self.inbox.worker(self.children, wid),
            read_loader=lambda generation: self.inbox.loader(self.children, generation),
            worker_gone=self._worker_gone, other_exited=lambda pid, ended: self.broadcast.exited(
                pid, ended.description), private=self._private))
        self.when_ready: Callable[..., Any] | None = None
        self.on_reload: Callable[..., Any] | None = None
        self.exit_code: int | None = None
        self.tickets = waiters.Tickets()
        self.reload_waiters = waiters.ReloadWaiters()
        self.status_waiters = waiters.StatusWaiters()
        self.board = balance.Board()
        self.started_at = time.monotonic()
        self.subreaper = False
        self.devreload: Any = None  # --reload's watcher (corepool.devreload, imported only when asked for)

    # -------------------------------------------------------------------------------------------- setup

    def run(self) -> int:
        """Serve until stopped. Returns 0 after a clean stop, 1 when workers had to be killed or start failed."""
        code = self._open()
        if code is not None:
            self._cleanup()
            return code
        where = ", ".join(listener.address for listener in self.listeners)
        log.event("start", f"corepool {_version()} primary {os.getpid()}: serving {self.settings.app} on {where} "
                  f"with {policy.counted(self.settings.workers, 'worker')}; control socket {self.control.path}"
                  + (f"; health checks on {self.health.address}" if self.health.address else ""))
        self.events.append(events.Start(time.monotonic(), subreaper=self.subreaper))
        try:
            while self.exit_code is None:
                self._drain_events()
                if self.exit_code is not None:
                    break
                for key, mask in self.selector.select(self._timeout()):
                    key.data(mask)
                self.events.append(events.Tick(time.monotonic()))
                if self.status_waiters.pending:
                    self._drain_events()
                    self._answer_status_waiters()
        finally:
            self._cleanup()
        return self.exit_code

    def _open(self) -> int | None:
        """Everything the loop needs, before the first worker; an exit code when something cannot work."""
        try:
            self.when_ready = hooks.load("when_ready", self.settings.when_ready, self.settings.app_dir)
            self.on_reload = hooks.load("on_reload", self.settings.on_reload, self.settings.app_dir)
        except apps.AppLoadError as exc:
            log.event("boot_error", f"{exc}\n{exc.detail.rstrip()}".rstrip(), warning=True)
            return exits.EXIT_FAILURE
        engines.import_all()
        # Everything imported so far is shared with every process forked from here: keep the collector from
        # writing to it (and so copying its pages into the primary, and into a loader at its first collection).
        gc.collect()
        gc.freeze()
        self.subreaper = _become_subreaper()
        self.control.open()
        for name, endpoint in (("metrics_bind", self.metrics), ("health_bind", self.health)):
            try:
                endpoint.open()
            except ListenerError as exc:
                log.event("start", f"{name}: {exc}", warning=True)
                return exits.EXIT_FAILURE
        self.broadcast.open(self.selector, self._remote_broadcast, self._broadcast_news, self.children.fork)
        self.wakeup.install(self.selector, self._on_signal)
        if self.settings.reload:
            from corepool import devreload  # development only

            try:
                self.devreload = devreload.start(self.settings)
            except devreload.DevReloadUnavailable as exc:
                log.event("start", f"--reload: {exc}", warning=True)
                return exits.EXIT_USAGE  # as the CLI's: a setting that cannot work here
        return None

    def _cleanup(self) -> None:
        if self.devreload is not None:
            self.devreload.stop()
        self.wakeup.uninstall()
        self.control.close()
        self.metrics.close()
        self.health.close()
        self.broadcast.close()
        self.children.close()
        for listener in self.listeners:
            listener.close()
        self.selector.close()

    def _private(self) -> tuple[list[Any], list[int]]:
        """What a forked child closes: the primary's loop, signals and endpoints."""
        fds = self.control.fds() + self.metrics.fds() + self.health.fds() + self.broadcast.fds()
        return [self.selector, *self.wakeup.sockets()], fds

    # ------------------------------------------------------------------------------------------ signals

    def _on_signal(self, signum: int) -> None:
        now = time.monotonic()
        if signum == signal.SIGCHLD:
            self.children.reap(now, self.policy.preload)
            return
        event = signals.event_for(signum, now, self.settings, self.flags)
        if isinstance(event, events.ConfigReloaded):
            self.settings = event.new  # every worker forked from now on is given the fresh settings
        if event is not None:
            self.events.append(event)

    # -------------------------------------------------------------------------------------- the policy

    def _drain_events(self) -> None:
        while self.events:
            for action in self.policy.handle(self.events.popleft()):
                self._carry_out(action)
        self.notifier.status(self.status_line())

    def _carry_out(self, action: events.Action) -> None:
        now = time.monotonic()
        match action:
            case events.Spawn(wid, slot, generation):
                self.children.spawn_worker(wid, self._spec(slot, generation), self._named_listeners(),
                                           self.policy.preload, now)
            case events.SpawnLoader(generation):
                self.children.spawn_loader(self._spec(-1, generation), self._named_listeners(), now)
            case events.SignalLoader(generation, signum, _reason):
                self.children.signal_loader(generation, signum)
            case events.Signal(wid, signum, _reason):
                self.children.signal_worker(wid, signum)
            case events.Ping(wid, seq):
                self._send(wid, "ping", seq=seq)
            case events.SetRequestLimit(wid, limit):
                self._send(wid, "limit", requests=limit)
            case events.CapShare(wid, capped):
                self._send(wid, "share", capped=capped)
            case events.Answer():
                self._answer(action)
            case events.Exit(code, reason):
                self.exit_code = code
                log.event("exit", f"primary exits with code {code}: {reason}", warning=code != 0)
            case _:
                self._tell(action)

    def _tell(self, action: events.Action) -> None:
        """Actions that tell: the log, the metrics counters, systemd, the hooks and the waiting clients."""
        match action:
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
                self.reload_waiters.started(generation)
                self.notifier.reloading(f"reloading to generation {generation}")
                hooks.run("on_reload", self.on_reload, generation)
            case events.ReloadFinished(generation, ok, reason, serving):
                self.reload_waiters.finished(generation, ok, reason)
                self.counters.reload_finished(ok)
                if serving:
                    self.notifier.ready(self.status_line())
            case events.Stopping(text, extend):
                self.notifier.stopping(text)
                self.notifier.extend_timeout(extend)
            case events.ExtendTimeout(seconds):
                self.notifier.extend_timeout(seconds)
            case events.FeedWatchdog():
                self.notifier.watchdog()

    def _report(self, event: str, message: str, wid: int | None, warning: bool, **fields: Any) -> None:
        w = self.policy.workers.get(wid) if wid is not None else None
        if w is not None:
            fields = {"worker_pid": w.pid, "generation": w.generation, "slot": w.slot, **fields}
        log.event(event, message, warning=warning, **fields)

    def _send(self, wid: int, kind: str, **fields: Any) -> None:
        child = self.children.workers.get(wid)
        if child is not None:
            channel.send(child.sock, channel.encode(kind, **fields))

    # ------------------------------------------------------------------------------------------ workers

    def _spec(self, slot: int, generation: int) -> WorkerSpec:
        return tuning.worker_spec(self.settings, slot, generation, os.getpid(), self.board)

    def _named_listeners(self) -> children.Listeners:
        return [(listener.name, listener.sock) for listener in self.listeners]

    def _pong(self, pong: events.Pong) -> None:
        self.counters.report(pong.wid, pong.traffic, pong.connections)

    def _worker_gone(self, child: children.Child) -> None:
        self.counters.retire(child.key)  # its last counts join the pool's totals
        self.board.set(child.cell, None)

    # -------------------------------------------------------------------------------------- broadcast

    def _serving_channels(self) -> dict[int, tuple[int | None, Any]]:
        return self.children.channels({wid for wid, w in self.policy.workers.items()
                                      if w.state is not policy.WorkerState.DRAINING})

    def _relay(self, sender: int, pid: int | None, message: dict[str, Any]) -> None:
        """To every other serving worker, through corepool.relay: bounded queues, a rate guard, never blocking."""
        relay.of(self.selector).forward(sender, pid, message, self._serving_channels(),
                                        self.settings.max_message_bytes)
        if isinstance(message.get("topic"), str):
            self.broadcast.publish(message["topic"], message.get("data"))

    def _remote_broadcast(self, topic: str, data: Any) -> None:
        """A broadcast from another host (the backend): to every serving worker of this one, through the relay."""
        relay.of(self.selector).forward(REMOTE_SENDER, None, {"topic": topic, "data": data},
                                        self._serving_channels(), self.settings.max_message_bytes)

    def _broadcast_news(self, text: str, bad: bool) -> None:
        log.event("broadcast", text, warning=bad)
        self.notifier.status(self.status_line())

    # -------------------------------------------------------------------------------------- control

    def _control_request(self, req: dict[str, Any], reply: control.Reply) -> None:
        cmd, now = req.get("cmd"), time.monotonic()
        if cmd == "status":
            # Request counts travel with pongs: ask every ready worker now, answer when they have (or soon).
            self._wait_for_pongs(reply)
        elif cmd == "reload":
            ticket = self.tickets.issue(waiters.Pending("reload", reply, bool(req.get("wait"))))
            self.events.append(events.ReloadRequested(now, "reload via control socket", ticket))
        elif cmd == "drain" and req.get("cancel"):
            self.events.append(events.HostDrainCancelled(now, self.tickets.issue(waiters.Pending("drain", reply))))
        elif cmd == "drain":
            stop = bool(req.get("stop"))
            ticket = self.tickets.issue(waiters.Pending("drain", reply))
            self.events.append(events.HostDrainRequested(now, stop, ticket, "corepool drain --stop" if stop else None))
        else:
            reply({"ok": False, "error": f"unknown command {cmd!r} (known: status, reload, drain)"})
        self._drain_events()

    def _answer(self, answer: events.Answer) -> None:
        pending = self.tickets.take(answer.ticket)
        if pending is not None:
            waiters.answer(pending, answer, self.policy, self.reload_waiters)

    def _on_scrape(self, respond: metrics.Respond) -> None:
        """A Prometheus scrape: ping every ready worker, answer once they have (or after STATUS_WAIT)."""
        self._wait_for_pongs(lambda _status: respond(self._exposition()))

    def _wait_for_pongs(self, reply: control.Reply) -> None:
        self.events.append(events.PingAll(time.monotonic()))
        self._drain_events()
        waiting = {w.wid for w in self.policy.workers.values() if w.ping_sent_at is not None}
        self.status_waiters.add(time.monotonic(), waiting, reply)
        self._answer_status_waiters()

    def _answer_status_waiters(self) -> None:
        def pinged(wid: int) -> bool:
            return (w := self.policy.workers.get(wid)) is not None and w.ping_sent_at is not None

        self.status_waiters.answer(time.monotonic(), pinged, self.status)

    def _exposition(self) -> bytes:
        broadcasts = metrics.Broadcasts.of(relay.of(self.selector), self.broadcast.status())
        return metrics.render(self.policy, self.counters, broadcasts, status.rss_bytes)

    # ----------------------------------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        """The pool as data: what ``corepool status --json`` prints."""
        return status.snapshot(
            self.policy, time.monotonic(), name=self.settings.name, app=self.settings.app,
            requests=self.requests_total(), uptime=time.monotonic() - self.started_at,
            listeners=[{"name": lst.name, "address": lst.address, "source": lst.source} for lst in self.listeners],
            control=self.control.path, metrics=self.metrics.address, config_error=self.policy.config_error,
            health=status.health(self.policy, self.health.address, time.monotonic()) if self.health.enabled else None,
            broadcast=self.broadcast.status(),
        )

    def requests_total(self) -> int:
        """Requests the pool has served: the metrics counters' total, which keeps what retired workers served
        (their last words included) and so never goes down."""
        return self.counters.total().total

    def status_line(self) -> str:
        return status.line(self.policy, self.requests_total(), self.broadcast.line())

    def _timeout(self) -> float | None:
        deadlines = self.status_waiters.deadlines()
        if (deadline := self.policy.next_deadline()) is not None:
            deadlines.append(deadline)
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None


def _version() -> str:
    from corepool import __version__

    return __version__


def _become_subreaper() -> bool:
    """Orphaned descendants (workers a loader double-forked) become our children, so we reap them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1) == 0)
    except (OSError, AttributeError):
        return False
