"""The pool's decisions as a pure state machine (no I/O, no clock reads).

The primary feeds :class:`Policy` events (a worker was forked, said ready, answered a ping, exited; a timer
fired; a signal, a reload, scale, drain or stop was asked for; SIGHUP re-read the config) and carries out the
actions it returns (fork a worker, send a signal, send a ping, answer a control request, tell systemd, report).
Every timestamp comes in with the event, so the whole behaviour is testable without processes, sockets or sleeps.

Per-worker lifecycle::

    BOOTING --ready--> READY --retire/stop--> DRAINING --exit--> (gone)
       |                  |
       |                  +--exit/health kill--> (gone: replaced at once, within the pool's spawn budget)
       +--exit/boot_timeout--> (gone: the slot backs off, 0, 0.5 s, 1 s, ... up to backoff_max)

The state is plain data in :mod:`corepool.poolstate`. Judgements live in their own pure modules:
:mod:`corepool.crashpolicy` (backoff, spawn budget, causes of death), :mod:`corepool.recycling`
(request_timeout, max_requests, max_rss, max_lifetime), :mod:`corepool.canary` (a reload's canary),
:mod:`corepool.hostdrain` (a host drain) and :mod:`corepool.tuning` (what the settings make of the timing, and
what a SIGHUP may change). A worker that is recycled or holds an overdue request is replaced surge-first: its
successor boots, and only once the successor is ready does the old worker stop accepting and drain.

Everything the policy waits for is one list, :meth:`Policy._waits`: :meth:`Policy.next_deadline` is its earliest
entry, and every event (a :class:`~corepool.events.Tick` among them) fires the entries that are due.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

from corepool import canary, hostdrain, recycling, tuning
from corepool import events as ev
from corepool.crashpolicy import Cause, SpawnBudget, backoff
from corepool.exits import EXIT_FAILURE, EXIT_OK, Ended
from corepool.hostdrain import HostDrain
from corepool.poolstate import Loader, PoolPhase, ReloadResult, Roll, Slot, Timing, Worker, WorkerState, counted
from corepool.rolls import Rolls
from corepool.settings import Settings

__all__ = ["Policy", "PoolPhase", "Timing", "Worker", "WorkerState", "counted"]

Fire = Callable[[float, list[ev.Action]], None]  # what a wait does once it is due
# What the primary, its signals and its control socket ask for; what a loader says (the rest: what a worker says).
_ASKED = (ev.Start, ev.StopSignal, ev.StopRequested, ev.ReloadRequested, ev.ScaleRequested, ev.ConfigReloaded,
          ev.ConfigRefused, ev.HostDrainRequested, ev.HostDrainCancelled, ev.PingAll)
_FROM_LOADER = (ev.LoaderForked, ev.LoaderReady, ev.LoaderBootError, ev.LoaderExited)


@dataclass
class Policy(Rolls):
    """Decides who to spawn, ping, retire and kill, and how to answer the pool's operators. Feed it events with
    :meth:`handle`.

    ``health_endpoint``: balancers check this pool's health (a drain is possible, a stop drains first);
    ``watchdog_interval``: systemd's watchdog, fed by :class:`~corepool.events.FeedWatchdog`.
    """

    workers_wanted: int
    timing: Timing = field(default_factory=Timing)
    preload: bool = False
    limits: recycling.Limits = field(default_factory=recycling.Limits)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    canary_rules: canary.Rules = field(default_factory=canary.Rules)
    health_endpoint: bool = False
    watchdog_interval: float | None = None

    phase: PoolPhase = PoolPhase.IDLE
    generation: int = 1
    workers: dict[int, Worker] = field(default_factory=dict)
    slots: dict[int, Slot] = field(default_factory=dict)
    loaders: dict[int, Loader] = field(default_factory=dict)
    roll: Roll | None = None
    reload_pending: bool = False
    last_reload: ReloadResult | None = None
    pending_scale: int = 0
    stop_deadline: float | None = None
    killed_on_stop: int = 0
    drain: HostDrain = field(default_factory=HostDrain)
    ever_ready: bool = False
    config_error: str | None = None  # SIGHUP found the config file bad (status shows it)
    watchdog_at: float = 0.0
    _next_wid: int = 1
    _last_generation: int = 1
    _stop_failure: str | None = None  # why a stop is a failure from the start (a start-up given up on)
    budget: SpawnBudget = field(init=False)

    def __post_init__(self) -> None:
        if self.workers_wanted < 1:
            raise ValueError("workers_wanted must be >= 1")
        self.budget = self._fresh_budget()

    # ------------------------------------------------------------------------------------------ dispatch

    def handle(self, event: ev.Event) -> list[ev.Action]:
        """Apply one event and return the actions to carry out, in order."""
        out: list[ev.Action] = []
        if isinstance(event, _ASKED):
            self._asked(event, out)
        elif isinstance(event, _FROM_LOADER):
            self._from_loader(event, out)
        elif not isinstance(event, ev.Tick):
            self._from_worker(event, out)
        self._timers(event.now, out)
        self._retire_loaders(out)
        return out

    def _asked(self, event: ev.Event, out: list[ev.Action]) -> None:
        """What the primary, its signals and its control socket ask for."""
        match event:
            case ev.Start(now, subreaper):
                self._start(now, subreaper, out)
            case ev.StopSignal(now, name):
                self._stop_signal(now, name, out)
            case ev.StopRequested(now, graceful, by):
                self._stop_requested(now, graceful, by, out)
            case ev.ReloadRequested(now, reason, ticket):
                self._reload_requested(now, reason, ticket, out)
            case ev.ScaleRequested(delta, now):
                self._scale(delta, now, out)
            case ev.ConfigReloaded(now, old, new):
                self._reconfigure(now, old, new, out)
            case ev.ConfigRefused(_now, error):
                self.config_error = error
                out.append(ev.Report("reload", f"SIGHUP: config not reloaded, keeping the running settings: {error}",
                                  warning=True))
            case ev.HostDrainRequested(now, then_stop, ticket, by):
                self._host_drain_requested(now, then_stop, ticket, by, out)
            case ev.HostDrainCancelled(_now, ticket):
                self._host_drain_cancelled(ticket, out)
            case ev.PingAll(now):
                self._ping_now([w for w in self.workers.values() if w.serving], now)

    def _from_worker(self, event: ev.Event, out: list[ev.Action]) -> None:
        match event:
            case ev.WorkerForked(wid, pid, _now):
                if wid in self.workers:
                    self.workers[wid].pid = pid
            case ev.WorkerReady(wid, now):
                self._ready(wid, now, out)
            case ev.WorkerBootError(wid, error, _now):
                if wid in self.workers:
                    self.workers[wid].boot_error = error
            case ev.WorkerDraining(wid, now):
                self._stopped_accepting(wid, now, out)
            case ev.Pong():
                self._pong(event, out)
            case ev.WorkerMisbehaved(wid, reason, _now):
                w = self.workers.get(wid)
                if w is not None and w.kill_reason is None:
                    self._kill(w, f"broke the channel protocol: {reason}", out, Cause.CRASH)
            case ev.WorkerExited(wid, ended, now):
                self._exited(wid, ended, now, out)

    def _from_loader(self, event: ev.Event, out: list[ev.Action]) -> None:
        match event:
            case ev.LoaderForked(generation, pid, _now):
                if generation in self.loaders:
                    self.loaders[generation].pid = pid
            case ev.LoaderReady(generation, now):
                self._loader_ready(generation, now, out)
            case ev.LoaderBootError(generation, error, _now):
                if generation in self.loaders:
                    self.loaders[generation].boot_error = error
            case ev.LoaderExited(generation, ended, now):
                self._loader_exited(generation, ended, now, out)

    # --------------------------------------------------------------------------------------------- waits

    def next_deadline(self) -> float | None:
        """The earliest time at which a :class:`Tick` would change something (None: nothing pending)."""
        return min((when for when, _fire in self._waits()), default=None)

    def _timers(self, now: float, out: list[ev.Action]) -> None:
        for when, fire in self._waits():  # lazily: what fires first changes what is waited for after it
            if now >= when:
                fire(now, out)

    def _waits(self) -> Iterator[tuple[float, Fire]]:
        """Everything the policy waits for, as (when, what to do then), in the order they fire."""
        t = self.timing
        if self.roll is not None and (watch := self.roll.canary) is not None:
            # First: the pings it asks for go out with the workers' waits below.
            yield watch.due_at(self.workers.values()), partial(self._canary_due, watch)
        if self.drain.until is not None:
            yield self.drain.until, self._drain_over
        if self.stop_deadline is not None:
            yield self.stop_deadline, self._stop_overdue
        for loader in list(self.loaders.values()):
            if not loader.ready and loader.kill_reason is None:
                yield loader.spawned_at + t.boot_timeout, partial(self._loader_boot_overdue, loader)
        for w in list(self.workers.values()):
            yield from self._worker_waits(w)
        if self.phase in (PoolPhase.RUNNING, PoolPhase.STARTING):
            for slot in list(self.slots.values()):
                if slot.retry_at is not None:
                    yield slot.retry_at, partial(self._retry_slot, slot)
        if self.watchdog_interval and self.phase is not PoolPhase.EXITED:
            yield self.watchdog_at, self._watchdog_due

    def _worker_waits(self, w: Worker) -> Iterator[tuple[float, Fire]]:
        t = self.timing
        if w.kill_reason is not None:
            return
        if w.state is WorkerState.BOOTING:
            yield w.spawned_at + t.boot_timeout, partial(
                self._kill_at, w, f"not ready within boot_timeout ({t.boot_timeout:g}s)", Cause.BOOT)
        elif w.state is WorkerState.READY and self.phase is not PoolPhase.STOPPING:
            if w.ping_sent_at is not None:
                yield w.ping_sent_at + t.health_timeout, partial(
                    self._kill_at, w, f"no pong within health_timeout ({t.health_timeout:g}s)", Cause.HEALTH)
            else:
                yield w.next_ping_at, partial(self._send_ping, w)
            if w.max_age is not None and w.ready_at is not None and self._may_recycle(w):
                yield max(w.ready_at + w.max_age, w.recycle_after), partial(self._judge, w)
        elif (w.state is WorkerState.DRAINING and w.draining_since is not None
              and self.phase is not PoolPhase.STOPPING):  # stopping: stop_deadline ends every drain
            yield w.draining_since + t.graceful_timeout, partial(
                self._kill_at, w, f"still draining after graceful_timeout ({t.graceful_timeout:g}s)", None)

    @staticmethod
    def _answer(out: list[ev.Action], answer: ev.Answer) -> None:
        """ev.Answer a control request (a request with no ticket, from a signal, waits for no answer)."""
        if answer.ticket is not None:
            out.append(answer)

    def _kill_at(self, w: Worker, reason: str, cause: Cause | None, _now: float, out: list[ev.Action]) -> None:
        if w.kill_reason is None:
            self._kill(w, reason, out, cause)

    def _send_ping(self, w: Worker, now: float, out: list[ev.Action]) -> None:
        w.ping_seq += 1
        w.ping_sent_at = now
        out.append(ev.Ping(w.wid, w.ping_seq))

    def _retry_slot(self, slot: Slot, now: float, out: list[ev.Action]) -> None:
        if slot.retry_at is not None and now >= slot.retry_at:
            slot.retry_at = None
            self._respawn(slot, now, out)

    def _stop_overdue(self, _now: float, out: list[ev.Action]) -> None:
        self.stop_deadline = None
        for w in list(self.workers.values()):
            if w.kill_reason is None:
                self.killed_on_stop += 1
                self._kill(w, "still running after graceful_timeout", out)
        for loader in self.loaders.values():
            self._kill_loader(loader, "still running after graceful_timeout", out)

    def _loader_boot_overdue(self, loader: Loader, _now: float, out: list[ev.Action]) -> None:
        self._kill_loader(loader, f"app not imported within boot_timeout ({self.timing.boot_timeout:g}s)", out)

    def _watchdog_due(self, now: float, out: list[ev.Action]) -> None:
        """Starting, stopping and reloading have their own timeouts; while running, the watchdog is fed only while
        some worker proved within two watchdog intervals that its serving loop turns."""
        interval = self.watchdog_interval or 0.0
        self.watchdog_at = now + interval
        if self.phase is not PoolPhase.RUNNING or self.healthy(now, interval * 2):
            out.append(ev.FeedWatchdog())
        else:
            out.append(ev.Report("watchdog", "no worker answered a health ping within WatchdogSec: not feeding the "
                              "watchdog", warning=True))

    # -------------------------------------------------------------------------------------------- views

    @property
    def reloading(self) -> bool:
        return self.roll is not None

    @property
    def queued_generation(self) -> int:
        """The generation a reload asked for now rolls to once the current roll (or start-up) is over."""
        return self._last_generation + 1

    def ready_count(self) -> int:
        """Workers that serve: ready, and not being killed (a SIGKILLed worker keeps its state until it exits)."""
        return sum(1 for w in self.workers.values() if w.serving)

    def healthy(self, now: float, window: float) -> bool:
        """True when some ready worker proved its serving loop turns within ``window`` seconds."""
        return any(now - max(w.last_pong_at or 0.0, w.ready_at or 0.0) <= window
                   for w in self.workers.values() if w.serving)

    # ----------------------------------------------------------------------------------------- handlers

    def _start(self, now: float, subreaper: bool, out: list[ev.Action]) -> None:
        if self.phase is not PoolPhase.IDLE:
            return
        if self.preload and not subreaper:
            # Workers a loader double-forks would not be the primary's children: fork them from the primary.
            out.append(ev.Report("start", "cannot become a child subreaper: falling back to mode lazy", warning=True))
            self.preload = False
        self.phase = PoolPhase.STARTING
        out.append(ev.ExtendTimeout(self.timing.start_extension))
        for index in range(self.workers_wanted):
            self.slots[index] = Slot(index=index, generation=self.generation)
            self._spawn(index, self.generation, now, out)

    def _spawn(self, slot: int, generation: int, now: float, out: list[ev.Action]) -> int | None:
        """Fork a worker into ``slot``; in preload mode first make sure the generation's loader is ready."""
        if self.phase.stopping:
            return None  # nothing is forked once a stop has begun
        s = self.slots[slot]
        s.retry_at = None
        if self.preload and not self._has_ready_loader(generation):
            s.waiting = True
            self._want_loader(generation, now, out)
            return None
        s.waiting = False
        wid = self._next_wid
        self._next_wid += 1
        self.workers[wid] = Worker(
            wid=wid, slot=slot, generation=generation, state=WorkerState.BOOTING, spawned_at=now
        )
        self._extend_roll_timeout(out)
        out.append(ev.Spawn(wid, slot, generation))
        return wid

    def _extend_roll_timeout(self, out: list[ev.Action]) -> None:
        """A roll boots one worker at a time, each within boot_timeout: systemd's reload timeout is pushed out as
        long as the roll makes progress (a roll that stops making progress is bounded by the policy's timers)."""
        if self.roll is not None:
            out.append(ev.ExtendTimeout(self.timing.roll_step_extension))

    # ------------------------------------------------------------------------------------------ loaders

    def _has_ready_loader(self, generation: int) -> bool:
        loader = self.loaders.get(generation)
        return loader is not None and loader.ready and not loader.stopping and loader.kill_reason is None

    def _want_loader(self, generation: int, now: float, out: list[ev.Action]) -> None:
        if generation not in self.loaders:
            self.loaders[generation] = Loader(generation=generation, spawned_at=now)
            out.append(ev.SpawnLoader(generation))

    def _loader_ready(self, generation: int, now: float, out: list[ev.Action]) -> None:
        loader = self.loaders.get(generation)
        if loader is None or loader.ready or loader.kill_reason is not None:
            return
        loader.ready = True
        out.append(ev.Report("loader", f"loader {loader.pid} ready: generation {generation} imported and frozen"))
        if self.phase is PoolPhase.STOPPING:
            return
        for slot in self.slots.values():
            if slot.waiting and slot.generation == generation and not self._slot_has_live_worker(slot.index):
                self._spawn(slot.index, generation, now, out)
        if self.roll is not None and self.roll.generation == generation:
            self._roll_next(now, out)

    def _loader_exited(self, generation: int, ended: Ended, now: float, out: list[ev.Action]) -> None:
        loader = self.loaders.pop(generation, None)
        if loader is None:
            return
        description = ended.description
        why = loader.kill_reason or loader.boot_error or description
        if loader.stopping and ended.as_told:  # it ended because it was told to: no error
            why_stopped = "pool stopping" if self.phase is PoolPhase.STOPPING else "retired"
            out.append(ev.Report("loader", f"loader {loader.pid} of generation {generation} stopped ({why_stopped})"))
        elif loader.stopping:
            out.append(ev.Report("loader", f"loader {loader.pid} of generation {generation} exited: {description}"))
        else:
            out.append(ev.Report("loader", f"loader {loader.pid} of generation {generation} died: {why}", warning=True))
        if self.phase is PoolPhase.STOPPING:
            self._maybe_exit(out)
            return
        if loader.stopping:
            return
        if self.roll is not None and self.roll.generation == generation and not self.roll.restoring:
            self._roll_failed(f"generation {generation} failed to load: {why}", now, out)
            return
        if not self.ever_ready and not loader.ready:
            self._fail_start(f"app failed to load: {why}", now, out)
            return
        for slot in self.slots.values():
            if slot.waiting and slot.generation == generation:
                slot.waiting = False
                slot.failures += 1
                slot.last_error = why
                slot.retry_at = now + max(self._backoff(slot.failures), self.timing.backoff_base)

    def _retire_loaders(self, out: list[ev.Action]) -> None:
        """Stop loaders no slot, worker or reload needs any more (all of them when the pool stops)."""
        for generation, loader in self.loaders.items():
            if loader.stopping:
                continue
            needed = self.phase is not PoolPhase.STOPPING and (
                generation == self.generation
                or (self.roll is not None and self.roll.generation == generation)
                or any(slot.generation == generation for slot in self.slots.values())
                or any(w.generation == generation and w.state is not WorkerState.DRAINING
                       for w in self.workers.values())
            )
            if not needed:
                loader.stopping = True
                out.append(ev.SignalLoader(generation, signal.SIGTERM, "generation retired"))

    def _ready(self, wid: int, now: float, out: list[ev.Action]) -> None:
        w = self.workers.get(wid)
        if w is None or w.state is not WorkerState.BOOTING or w.kill_reason is not None:
            return
        w.state = WorkerState.READY
        w.ready_at = now
        w.next_ping_at = now + self.timing.health_interval
        w.request_limit = recycling.request_limit(self.limits, self.rng)
        w.max_age = recycling.lifetime(self.limits, self.rng)
        out.append(ev.Report("ready", f"worker {w.name} ready", wid))
        if self.phase is PoolPhase.STOPPING:
            self._retire(w, now, "pool stopping", out, Cause.STOP)
            return
        if w.request_limit is not None:
            out.append(ev.SetRequestLimit(wid, w.request_limit))
        if w.predecessor is not None:
            old = self.workers.get(w.predecessor)
            w.predecessor = None
            if old is not None:
                old.successor = None
                if old.serving:
                    self._retire(old, now, old.replace_reason or "replaced", out, old.cause)
        if self.roll is not None and self.roll.booting_wid == wid:
            self._roll_slot_done(w, now, out)
        if self.phase is PoolPhase.STARTING and self._all_slots_ready():
            self.phase = PoolPhase.RUNNING
            self.ever_ready = True
            out.append(ev.PoolReady())
            if self.reload_pending:
                self.reload_pending = False
                self._begin_roll(now, "queued reload", out)
            else:
                self._apply_pending_scale(now, out)

    def _pong(self, pong: ev.Pong, out: list[ev.Action]) -> None:
        w = self.workers.get(pong.wid)
        if w is None:
            return
        now = pong.now
        w.requests = max(w.requests, pong.requests)
        w.inflight, w.oldest_age, w.oldest = pong.inflight, pong.oldest_age, pong.oldest
        w.busy_threads, w.threads = pong.busy_threads, pong.threads
        if pong.traffic is not None:
            w.traffic, w.traffic_at = pong.traffic, now
            if self.roll is not None and self.roll.canary is not None:
                self.roll.canary.note(w.wid, pong.traffic, now)  # an old worker's counts at the window's start
        if pong.rss is not None:
            w.rss = pong.rss
            w.rss_over = recycling.rss_over(self.limits, pong.rss, w.rss_over)
        if pong.seq is not None and pong.seq == w.ping_seq and w.ping_sent_at is not None:
            w.ping_sent_at = None
            w.last_pong_at = now
            w.next_ping_at = now + self.timing.health_interval
            overdue_in = recycling.next_check(self.limits, pong.oldest_age)
            if overdue_in is not None:  # look again just as the oldest request would pass request_timeout
                w.next_ping_at = min(w.next_ping_at, max(now + overdue_in + 0.05, w.recycle_after))
        self._judge(w, now, out)

    # -------------------------------------------------------------------------------------- recycling

    def _judge(self, w: Worker, now: float, out: list[ev.Action]) -> None:
        """Replace a ready worker whose request is overdue, or that is due for recycling."""
        if w.state is not WorkerState.READY or w.kill_reason is not None or w.successor is not None:
            return
        if self.phase is not PoolPhase.RUNNING or now < w.recycle_after:
            return
        overdue = recycling.overdue(self.limits, w.oldest_age, w.oldest)
        if overdue is not None:
            self._replace(w, now, Cause.REQUEST_TIMEOUT, overdue, out)
            return
        if not self._may_recycle(w):
            return
        due = recycling.verdict(
            self.limits, requests=w.requests, request_limit=w.request_limit, rss=w.rss,
            rss_samples_over=w.rss_over, age=now - (now if w.ready_at is None else w.ready_at), max_age=w.max_age,
        )
        if due is not None:
            self._replace(w, now, due[0], due[1], out)

    def _may_recycle(self, w: Worker) -> bool:
        """Recycling waits for reloads, and goes one worker at a time (each surge costs one more process)."""
        if self.phase is not PoolPhase.RUNNING or self.roll is not None or w.successor is not None:
            return False
        return not any(o.successor is not None and o.state is WorkerState.READY for o in self.workers.values())

    def _replace(self, w: Worker, now: float, cause: Cause, reason: str, out: list[ev.Action]) -> None:
        """Surge-first: boot a successor for ``w``'s slot; ``w`` is retired once the successor is ready."""
        generation = self.slots[w.slot].generation
        if self.preload and not self._has_ready_loader(generation):
            # No successor can be forked yet: the old worker keeps serving, and we look again shortly.
            self._want_loader(generation, now, out)
            w.recycle_after = now + self.timing.backoff_base
            return
        w.cause, w.replace_reason = cause, reason
        event = "request_timeout" if cause is Cause.REQUEST_TIMEOUT else "recycle"
        out.append(ev.Report(event, f"replacing worker {w.name}: {reason}", w.wid,
                          warning=cause is Cause.REQUEST_TIMEOUT, cause=cause))
        new = self._spawn(w.slot, generation, now, out)
        assert new is not None  # a running pool with a ready loader (or in lazy mode) always forks
        w.successor = new
        self.workers[new].predecessor = w.wid

    def _exited(self, wid: int, ended: Ended, now: float, out: list[ev.Action]) -> None:
        w = self.workers.pop(wid, None)
        if w is None:
            return
        description = ended.description
        slot = self.slots.get(w.slot)
        expected = w.state is WorkerState.DRAINING
        cause = w.cause or (Cause.BOOT if w.state is WorkerState.BOOTING else Cause.CRASH)
        why = w.kill_reason or w.replace_reason or w.boot_error or description
        if slot is not None:
            slot.deaths[cause] = slot.deaths.get(cause, 0) + 1
        if expected and ended.as_told:  # drained and ended as told: say why it was asked to
            message = f"worker {w.name} stopped ({cause.value})"
        else:
            message = (f"worker {w.name} {'exited' if expected else 'died'}: {description}"
                       + (f" ({why})" if why != description else ""))
        out.append(ev.WorkerEnded(w.pid, w.slot, w.generation, cause, expected, ended.signal, message))
        if w.successor is not None and (successor := self.workers.get(w.successor)) is not None:
            successor.predecessor = None  # it simply becomes the slot's worker
        if w.predecessor is not None and (predecessor := self.workers.get(w.predecessor)) is not None:
            predecessor.successor = None
        if self.phase is PoolPhase.STOPPING:
            self._maybe_exit(out)
            return
        self._stopped_accepting(wid, now, out)
        if not expected and slot is not None:
            self._died(w, slot, why, now, out)

    def _died(self, w: Worker, slot: Slot, why: str, now: float, out: list[ev.Action]) -> None:
        """An unexpected death: the reload or the start-up it belonged to fails, or its slot is refilled."""
        wid = w.wid
        if self.roll is not None and self.roll.booting_wid == wid:
            self._roll_failed(f"new worker for slot {w.slot} failed to boot: {why}", now, out)
            return
        if self.roll is not None and self.roll.canary is not None and self.roll.canary.wid == wid:
            self._canary_rollback(w, f"canary: the canary worker died: {why}", now, out)
            return
        if not self.ever_ready and w.state is WorkerState.BOOTING:
            self._fail_start(f"worker failed to boot: {why}", now, out)
            return
        booting = w.state is WorkerState.BOOTING
        if booting:
            slot.failures += 1
            slot.last_error = why
        if self._slot_has_live_worker(w.slot):
            if booting and w.predecessor is not None and (old := self.workers.get(w.predecessor)) is not None:
                # A surge successor that could not boot: the old worker keeps serving; try again later.
                old.recycle_after = now + max(self._backoff(slot.failures), self.timing.backoff_base)
            return
        if not booting:
            # It was serving: whatever killed it (a request of death, the OOM killer, kill -9), replace it now.
            slot.failures = 0
            slot.last_error = why
            self._respawn(slot, now, out)
            return
        delay = self._backoff(slot.failures)
        if delay <= 0:
            self._respawn(slot, now, out)
        else:
            slot.retry_at = now + delay
            out.append(ev.Report("backoff", f"slot {w.slot} failed to boot {slot.failures} times in a row; next try in "
                              f"{delay:g}s", warning=True))

    def _fresh_budget(self) -> SpawnBudget:
        """The pool-wide spawn budget: max_spawn_rate forks a second, a burst of one per worker (at least two)."""
        return SpawnBudget(rate=self.timing.max_spawn_rate, burst=float(max(2, self.workers_wanted)))

    def _rebudget(self) -> None:
        """The timing or the number of workers changed: the same bucket, its new size (what is spent stays so)."""
        fresh = self._fresh_budget()
        fresh.tokens = min(self.budget.tokens, fresh.burst) if self.budget.tokens >= 0 else -1.0
        fresh.updated = self.budget.updated
        self.budget = fresh

    def _respawn(self, slot: Slot, now: float, out: list[ev.Action]) -> None:
        """Refill a slot within the pool-wide spawn budget; a pool with nothing serving or booting is exempt."""
        if self.budget.take(now) or not any(w.live for w in self.workers.values()):
            self._spawn(slot.index, slot.generation, now, out)
            return
        slot.retry_at = self.budget.next_at(now)
        out.append(ev.Report("spawn_rate", f"slot {slot.index}: max_spawn_rate reached, replacing in "
                          f"{slot.retry_at - now:.2f}s", warning=True))

    def _stopped_accepting(self, wid: int, now: float, out: list[ev.Action]) -> None:
        roll = self.roll
        if roll is not None and wid in roll.retiring:
            roll.retiring.discard(wid)
            if roll.failed is not None:
                if not roll.retiring:
                    self._roll_failed(roll.failed, now, out)
            elif roll.booting_wid is None and not roll.pending_slots:
                self._roll_next(now, out)

    def _backoff(self, failures: int) -> float:
        return backoff(failures, self.timing.backoff_base, self.timing.backoff_max)

    # ------------------------------------------------------------------------------------------- reload

    def _reload_requested(self, now: float, reason: str, ticket: int | None, out: list[ev.Action]) -> None:
        """A reload rolls at once, or is queued behind the roll or start-up in progress; refused once stopping."""
        if self.phase.stopping:
            self._answer(out, ev.Answer(ticket, refused=hostdrain.STOPPING))
            return
        queued = self.roll is not None or self.phase is PoolPhase.STARTING
        self._answer(out, ev.Answer(ticket, generation=self.queued_generation, queued=queued))
        if self.phase is PoolPhase.IDLE:
            return
        if queued:
            self.reload_pending = True
            out.append(ev.Report("reload", f"{reason}: queued until the current roll or start-up is done"))
            return
        self._begin_roll(now, reason, out)

    def _reconfigure(self, now: float, old: Settings, new: Settings, out: list[ev.Action]) -> None:
        """SIGHUP's fresh settings: the policy decides with them from now on, scales to their workers, reloads."""
        change = tuning.reconfigure(old, new, self.watchdog_interval)
        self.config_error = None
        if change.restart_only:
            out.append(ev.Report("reload", f"SIGHUP: {', '.join(change.restart_only)} changed; that takes effect on "
                              "restart", warning=True))
        self.timing, self.limits, self.canary_rules = change.timing, change.limits, change.canary_rules
        self._rebudget()
        if change.workers_delta:
            self._scale(change.workers_delta, now, out)
        self._reload_requested(now, "SIGHUP", None, out)

    # -------------------------------------------------------------------------------------------- scale

    def _scale(self, delta: int, now: float, out: list[ev.Action]) -> None:
        if self.phase.stopping:
            return
        self.pending_scale += delta
        if self.roll is None and self.phase is PoolPhase.RUNNING:
            self._apply_pending_scale(now, out)

    def _apply_pending_scale(self, now: float, out: list[ev.Action]) -> None:
        delta, self.pending_scale = self.pending_scale, 0
        while delta > 0:
            index = max(self.slots, default=-1) + 1
            self.slots[index] = Slot(index=index, generation=self.generation)
            self.workers_wanted += 1
            self._spawn(index, self.generation, now, out)
            out.append(ev.Report("scale", f"workers: {self.workers_wanted} (added slot {index})"))
            delta -= 1
        while delta < 0 and self.workers_wanted > 1:
            index = max(self.slots)
            del self.slots[index]
            self.workers_wanted -= 1
            for w in list(self.workers.values()):
                if w.slot == index and w.state is not WorkerState.DRAINING:
                    self._retire(w, now, "scaled down", out, Cause.SCALE)
            out.append(ev.Report("scale", f"workers: {self.workers_wanted} (removed slot {index})"))
            delta += 1
        self._rebudget()

    # --------------------------------------------------------------------------------------------- stop

    def _stop_signal(self, now: float, name: str, out: list[ev.Action]) -> None:
        """SIGTERM or SIGINT: balancers first when they check health here, else a graceful stop; once stopping,
        a fast stop."""
        if self.phase is PoolPhase.EXITED:
            return
        if self.drain.precedes_stop(self.health_endpoint, self.timing.drain_seconds, self.phase):
            out.append(ev.Report("stop", f"{name}: draining the host for {self.timing.drain_seconds:g}s, then a "
                              f"graceful stop (another {name} stops at once)"))
            self._host_drain_requested(now, True, None, None, out)
            return
        out.append(ev.Report("stop", f"{name}: graceful stop"))
        self._stop_requested(now, not self.phase.stopping, None, out)

    def _stop_requested(self, now: float, graceful: bool, by: str | None, out: list[ev.Action]) -> None:
        if self.phase is PoolPhase.EXITED:
            return
        if by is not None:
            out.append(ev.Report("stop", f"{by}: {'graceful' if graceful else 'fast'} stop"))
        if not self.phase.stopping:
            out.append(ev.Stopping("stopping: draining workers", self.timing.stop_extension))
        self._stop(now, graceful, out)

    def _stop(self, now: float, graceful: bool, out: list[ev.Action], failure: str | None = None) -> None:
        if self.phase is PoolPhase.EXITED:
            return
        if self.phase is PoolPhase.STOPPING:
            if not graceful:
                self._kill_everyone("fast stop", out)
            return
        self.phase = PoolPhase.STOPPING
        self.drain.for_stop()
        self._stop_failure = failure
        if self.roll is not None:
            roll, self.roll = self.roll, None
            out.append(ev.ReloadFinished(roll.generation, False, "pool is stopping", serving=False))
        self.reload_pending = False
        self.stop_deadline = now + self.timing.graceful_timeout
        for slot in self.slots.values():
            slot.retry_at = None
        for w in list(self.workers.values()):
            if graceful:
                self._retire(w, now, "pool stopping", out, Cause.STOP)
        if not graceful:
            self._kill_everyone("fast stop", out)
        self._maybe_exit(out)

    def _host_drain_requested(self, now: float, then_stop: bool, ticket: int | None, by: str | None,
                              out: list[ev.Action]) -> None:
        refused = HostDrain.refusal(self.phase, self.health_endpoint)
        if refused is not None:
            self._answer(out, ev.Answer(ticket, refused=refused))
            return
        seconds = self.timing.drain_seconds
        if by is not None:
            out.append(ev.Report("stop", f"{by}: draining the host for {seconds:g}s, then a graceful stop"))
        if then_stop:
            out.append(ev.Stopping(f"draining: health checks fail for {seconds:g}s, then stopping",
                                self.timing.drain_stop_extension))
        if then_stop and seconds <= 0:
            self._stop(now, True, out)
        else:
            self.drain.begin(now, seconds, then_stop)
            after = "then stopping" if self.drain.then_stop else "until cancelled"
            out.append(ev.Report("drain", f"host draining: health checks fail for {seconds:g}s while serving, {after}"))
        self._answer(out, ev.Answer(ticket))

    def _host_drain_cancelled(self, ticket: int | None, out: list[ev.Action]) -> None:
        refused = self.drain.cancel_refusal(self.phase)
        if refused is None and self.drain.cancel():
            out.append(ev.Report("drain", "host drain cancelled: taking traffic again"))
        self._answer(out, ev.Answer(ticket, refused=refused))

    def _drain_over(self, now: float, out: list[ev.Action]) -> None:
        self.drain.until = None
        if self.drain.then_stop:
            self._stop(now, True, out)

    def _fail_start(self, reason: str, now: float, out: list[ev.Action]) -> None:
        out.append(ev.Report("abort", f"giving up on start: {reason}", warning=True))
        self._stop(now, graceful=False, out=out, failure=reason)

    def _kill_everyone(self, reason: str, out: list[ev.Action]) -> None:
        for w in list(self.workers.values()):
            if w.kill_reason is None:
                self.killed_on_stop += 1
                self._kill(w, reason, out, w.cause or Cause.STOP)
        for loader in self.loaders.values():
            self._kill_loader(loader, reason, out)

    def _maybe_exit(self, out: list[ev.Action]) -> None:
        if self.phase is not PoolPhase.STOPPING or self.workers or self.loaders:
            return
        self.phase = PoolPhase.EXITED
        self.stop_deadline = None
        if self._stop_failure is not None:
            out.append(ev.Exit(EXIT_FAILURE, self._stop_failure))
        elif self.killed_on_stop:
            out.append(
                ev.Exit(EXIT_FAILURE, f"{self.killed_on_stop} worker(s) killed with requests still running")
            )
        else:
            out.append(ev.Exit(EXIT_OK, "stopped"))

    # ---------------------------------------------------------------------------------------- utilities

    def _retire(self, w: Worker, now: float, reason: str, out: list[ev.Action], cause: Cause | None) -> None:
        """Ask a worker to stop accepting, finish in-flight work and exit."""
        if w.state is WorkerState.DRAINING:
            return
        w.cause = w.cause or cause
        w.state = WorkerState.DRAINING
        # A surge in progress ends here: a draining worker needs no successor, a draining successor no longer
        # takes anyone's place.
        for other in (self.workers.get(w.successor or -1), self.workers.get(w.predecessor or -1)):
            if other is not None and w.wid in (other.successor, other.predecessor):
                other.successor = other.predecessor = None
        w.successor = w.predecessor = None
        w.draining_since = now
        w.ping_sent_at = None
        if self.roll is not None:
            self.roll.retiring.add(w.wid)
        out.append(ev.Signal(w.wid, signal.SIGTERM, reason))

    def _kill(self, w: Worker, reason: str, out: list[ev.Action], cause: Cause | None = None) -> None:
        w.kill_reason = reason
        if cause is not None:
            w.cause = cause
        out.append(ev.Signal(w.wid, signal.SIGKILL, reason))
        out.append(ev.Report("kill", f"killing worker {w.name}: {reason}", w.wid, warning=True))

    def _kill_loader(self, loader: Loader, reason: str, out: list[ev.Action]) -> None:
        if loader.kill_reason is None:
            loader.kill_reason = reason
            out.append(ev.SignalLoader(loader.generation, signal.SIGKILL, reason))

    def _slot_has_live_worker(self, index: int) -> bool:
        return any(w.slot == index and w.live for w in self.workers.values())

    def _all_slots_ready(self) -> bool:
        ready = {w.slot for w in self.workers.values() if w.state is WorkerState.READY}
        return all(index in ready for index in self.slots)
