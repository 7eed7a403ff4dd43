"""The pool's decisions as a pure state machine (no I/O, no clock reads).

The primary feeds :class:`Policy` events (a worker was forked, said ready, answered a ping, exited; a timer
fired; a reload, scale or stop was asked for) and carries out the actions it returns (fork a worker, send a
signal, send a ping, report). Every timestamp comes in with the event, so the whole behaviour is testable
without processes, sockets or sleeps.

Per-worker lifecycle::

    BOOTING --ready--> READY --retire/stop--> DRAINING --exit--> (gone)
       |                  |
       |                  +--exit/health kill--> (gone: replaced at once, within the pool's spawn budget)
       +--exit/boot_timeout--> (gone: the slot backs off, 0, 0.5 s, 1 s, ... up to backoff_max)

Judgements live in their own pure modules: :mod:`corepool.crashpolicy` (backoff, spawn budget, causes of
death) and :mod:`corepool.recycling` (request_timeout, max_requests, max_rss, max_lifetime). A worker that is
recycled or holds an overdue request is replaced surge-first: its successor boots, and only once the successor
is ready does the old worker stop accepting and drain.
"""

from __future__ import annotations

import enum
import random
import signal
from dataclasses import dataclass, field

from corepool import canary, recycling
from corepool.crashpolicy import Cause, SpawnBudget, backoff
from corepool.events import (
    Action,
    CanaryJudged,
    CapShare,
    Event,
    Exit,
    HostDrainCancelled,
    HostDrainRequested,
    LoaderBootError,
    LoaderExited,
    LoaderForked,
    LoaderReady,
    Ping,
    PingAll,
    Pong,
    PoolReady,
    ReloadFinished,
    ReloadRequested,
    ReloadStarted,
    Report,
    ScaleRequested,
    SetRequestLimit,
    Signal,
    SignalLoader,
    Spawn,
    SpawnLoader,
    Start,
    StopRequested,
    Tick,
    WorkerBootError,
    WorkerDraining,
    WorkerEnded,
    WorkerExited,
    WorkerForked,
    WorkerMisbehaved,
    WorkerReady,
)
from corepool.exits import EXIT_FAILURE, EXIT_OK, Ended
from corepool.traffic import Traffic

# ----------------------------------------------------------------------------------------------- state


class WorkerState(enum.Enum):
    BOOTING = "booting"
    READY = "ready"
    DRAINING = "draining"


@dataclass(frozen=True)
class Timing:
    """Every duration the policy decides with, in seconds."""

    health_interval: float = 10.0
    health_timeout: float = 5.0
    boot_timeout: float = 60.0
    graceful_timeout: float = 30.0
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_spawn_rate: float = 20.0  # replacement forks a second, pool-wide


@dataclass
class Worker:
    wid: int
    slot: int
    generation: int
    state: WorkerState
    spawned_at: float
    pid: int | None = None
    ready_at: float | None = None
    draining_since: float | None = None
    next_ping_at: float = 0.0
    ping_seq: int = 0
    ping_sent_at: float | None = None
    last_pong_at: float | None = None
    requests: int = 0
    boot_error: str | None = None
    kill_reason: str | None = None
    cause: Cause | None = None  # why it is being retired or killed (set when that is decided)
    # Surge-first replacement: the worker booting to take this one's place, and the reverse link.
    successor: int | None = None
    predecessor: int | None = None
    replace_reason: str | None = None
    recycle_after: float = 0.0  # a successor failed to boot: do not try again before this
    # From the last pong (and the primary's RSS sample).
    inflight: int = 0
    oldest_age: float | None = None
    oldest: str | None = None
    busy_threads: int = 0
    threads: int = 0
    rss: int | None = None
    rss_over: int = 0
    request_limit: int | None = None
    max_age: float | None = None
    traffic: Traffic | None = None  # cumulative counts from its latest pong (corepool.traffic)
    traffic_at: float | None = None


@dataclass
class Slot:
    index: int
    generation: int
    failures: int = 0  # boot failures in a row
    retry_at: float | None = None
    last_error: str | None = None
    waiting: bool = False  # for its generation's loader to be ready (preload mode)
    deaths: dict[Cause, int] = field(default_factory=dict)  # worker ends by cause


@dataclass
class Loader:
    """A preload-mode process that imported one generation's app and forks its workers."""

    generation: int
    spawned_at: float
    pid: int | None = None
    ready: bool = False
    stopping: bool = False
    boot_error: str | None = None
    kill_reason: str | None = None


@dataclass
class Roll:
    """A reload in progress: slots still to roll, and the one new worker booting (at most one).

    ``restoring``: after a failed reload in preload mode, the slots that already ran the new generation are
    rolled back onto the last good one.
    """

    generation: int
    pending_slots: list[int]
    booting_wid: int | None = None
    started_at: float = 0.0
    restoring: bool = False
    # Retired workers that may still accept: the roll is over only when none is left, so that a client
    # connecting after `corepool reload --wait` returned always reaches the new generation.
    retiring: set[int] = field(default_factory=set)
    # A canary judged worse: the reload fails with this reason once the canary stopped accepting (the same
    # promise, the other way round: after a rolled-back reload returned, only the old generation answers).
    failed: str | None = None
    # canary_seconds: the first new worker is watched before the roll goes on (corepool.canary).
    canary: canary.Watch | None = None
    canary_done: bool = False


@dataclass
class ReloadResult:
    generation: int
    ok: bool
    reason: str
    finished_at: float


def counted(n: int, noun: str) -> str:
    """``1 worker``, ``2 workers``: a count as the pool's messages say it."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class PoolPhase(enum.Enum):
    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    EXITED = "exited"


@dataclass
class Policy:
    """Decides who to spawn, ping, retire and kill. Feed it events with :meth:`handle`."""

    workers_wanted: int
    timing: Timing = field(default_factory=Timing)
    preload: bool = False
    limits: recycling.Limits = field(default_factory=recycling.Limits)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    canary_rules: canary.Rules = field(default_factory=canary.Rules)

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
    # Host drain: the health endpoint says 503 so balancers move traffic away, while every worker still serves.
    host_draining: bool = False
    host_drain_until: float | None = None
    host_drain_then_stop: bool = False
    ever_ready: bool = False
    _next_wid: int = 1
    _last_generation: int = 1
    _stop_reason: str = ""
    budget: SpawnBudget = field(default_factory=lambda: SpawnBudget(rate=20.0, burst=2.0))

    def __post_init__(self) -> None:
        if self.workers_wanted < 1:
            raise ValueError("workers_wanted must be >= 1")

    # ------------------------------------------------------------------------------------------ dispatch

    def handle(self, event: Event) -> list[Action]:
        """Apply one event and return the actions to carry out, in order."""
        out: list[Action] = []
        match event:
            case Start(now):
                self._start(now, out)
            case WorkerForked(wid, pid, _now):
                if wid in self.workers:
                    self.workers[wid].pid = pid
            case WorkerReady(wid, now):
                self._ready(wid, now, out)
            case WorkerBootError(wid, error, _now):
                if wid in self.workers:
                    self.workers[wid].boot_error = error
            case WorkerDraining(wid, now):
                self._stopped_accepting(wid, now, out)
            case Pong():
                self._pong(event, out)
            case WorkerMisbehaved(wid, reason, _now):
                w = self.workers.get(wid)
                if w is not None and w.kill_reason is None:
                    self._kill(w, f"broke the channel protocol: {reason}", out, Cause.CRASH)
            case WorkerExited(wid, ended, now):
                self._exited(wid, ended, now, out)
            case ReloadRequested(now, reason):
                self._reload_requested(now, reason, out)
            case ScaleRequested(delta, now):
                self._scale(delta, now, out)
            case StopRequested(now, graceful):
                self._stop(now, graceful, out)
            case HostDrainRequested(now, seconds, then_stop):
                self._host_drain(now, seconds, then_stop, out)
            case HostDrainCancelled(now):
                if self.host_draining and self.phase not in (PoolPhase.STOPPING, PoolPhase.EXITED):
                    self.host_draining, self.host_drain_until, self.host_drain_then_stop = False, None, False
                    out.append(Report("drain", "host drain cancelled: taking traffic again"))
            case LoaderForked(generation, pid, _now):
                if generation in self.loaders:
                    self.loaders[generation].pid = pid
            case LoaderReady(generation, now):
                self._loader_ready(generation, now, out)
            case LoaderBootError(generation, error, _now):
                if generation in self.loaders:
                    self.loaders[generation].boot_error = error
            case LoaderExited(generation, ended, now):
                self._loader_exited(generation, ended, now, out)
            case PingAll(now):
                for w in self.workers.values():
                    if w.state is WorkerState.READY and w.kill_reason is None and w.ping_sent_at is None:
                        w.next_ping_at = now
            case Tick():
                pass
        self._timers(event.now, out)
        self._retire_loaders(out)
        return out

    def next_deadline(self) -> float | None:
        """The earliest time at which a :class:`Tick` would change something (None: nothing pending)."""
        times: list[float] = []
        t = self.timing
        for w in self.workers.values():
            if w.kill_reason is not None:
                continue
            if w.state is WorkerState.BOOTING:
                times.append(w.spawned_at + t.boot_timeout)
            elif w.state is WorkerState.READY and self.phase is not PoolPhase.STOPPING:
                if w.ping_sent_at is not None:
                    times.append(w.ping_sent_at + t.health_timeout)
                else:
                    times.append(w.next_ping_at)
                if w.max_age is not None and w.ready_at is not None and self._may_recycle(w):
                    times.append(max(w.ready_at + w.max_age, w.recycle_after))
            elif (w.state is WorkerState.DRAINING and w.draining_since is not None
                  and self.phase is not PoolPhase.STOPPING):  # stopping: stop_deadline ends every drain
                times.append(w.draining_since + t.graceful_timeout)
        for s in self.slots.values():
            if s.retry_at is not None:
                times.append(s.retry_at)
        for loader in self.loaders.values():
            if not loader.ready and loader.kill_reason is None:
                times.append(loader.spawned_at + t.boot_timeout)
        if self.stop_deadline is not None:
            times.append(self.stop_deadline)
        if self.host_drain_until is not None:
            times.append(self.host_drain_until)
        if self.roll is not None and (watch := self.roll.canary) is not None:
            times.append(watch.until if watch.collect_until is None else watch.collect_until)
        return min(times) if times else None

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
        return sum(1 for w in self.workers.values() if w.state is WorkerState.READY and w.kill_reason is None)

    def healthy(self, now: float, window: float) -> bool:
        """True when some ready worker proved its serving loop turns within ``window`` seconds."""
        for w in self.workers.values():
            if w.state is not WorkerState.READY or w.kill_reason is not None:
                continue
            seen = max(w.last_pong_at or 0.0, w.ready_at or 0.0)
            if now - seen <= window:
                return True
        return False

    # ----------------------------------------------------------------------------------------- handlers

    def _start(self, now: float, out: list[Action]) -> None:
        if self.phase is not PoolPhase.IDLE:
            return
        self.phase = PoolPhase.STARTING
        for index in range(self.workers_wanted):
            self.slots[index] = Slot(index=index, generation=self.generation)
            self._spawn(index, self.generation, now, out)

    def _spawn(self, slot: int, generation: int, now: float, out: list[Action]) -> int | None:
        """Fork a worker into ``slot``; in preload mode first make sure the generation's loader is ready."""
        if self.phase in (PoolPhase.STOPPING, PoolPhase.EXITED):
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
        out.append(Spawn(wid, slot, generation))
        return wid

    # ------------------------------------------------------------------------------------------ loaders

    def _has_ready_loader(self, generation: int) -> bool:
        loader = self.loaders.get(generation)
        return loader is not None and loader.ready and not loader.stopping and loader.kill_reason is None

    def _want_loader(self, generation: int, now: float, out: list[Action]) -> None:
        if generation not in self.loaders:
            self.loaders[generation] = Loader(generation=generation, spawned_at=now)
            out.append(SpawnLoader(generation))

    def _loader_ready(self, generation: int, now: float, out: list[Action]) -> None:
        loader = self.loaders.get(generation)
        if loader is None or loader.ready or loader.kill_reason is not None:
            return
        loader.ready = True
        out.append(Report("loader", f"loader {loader.pid} ready: generation {generation} imported and frozen"))
        if self.phase is PoolPhase.STOPPING:
            return
        for slot in self.slots.values():
            if slot.waiting and slot.generation == generation and not self._slot_has_live_worker(slot.index):
                self._spawn(slot.index, generation, now, out)
        if self.roll is not None and self.roll.generation == generation:
            self._roll_next(now, out)

    def _loader_exited(self, generation: int, ended: Ended, now: float, out: list[Action]) -> None:
        loader = self.loaders.pop(generation, None)
        if loader is None:
            return
        description = ended.description
        why = loader.kill_reason or loader.boot_error or description
        if loader.stopping and ended.as_told:  # it ended because it was told to: no error
            why_stopped = "pool stopping" if self.phase is PoolPhase.STOPPING else "retired"
            out.append(Report("loader", f"loader {loader.pid} of generation {generation} stopped ({why_stopped})"))
        elif loader.stopping:
            out.append(Report("loader", f"loader {loader.pid} of generation {generation} exited: {description}"))
        else:
            out.append(Report("loader", f"loader {loader.pid} of generation {generation} died: {why}", warning=True))
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

    def _retire_loaders(self, out: list[Action]) -> None:
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
                out.append(SignalLoader(generation, signal.SIGTERM, "generation retired"))

    def _ready(self, wid: int, now: float, out: list[Action]) -> None:
        w = self.workers.get(wid)
        if w is None or w.state is not WorkerState.BOOTING or w.kill_reason is not None:
            return
        w.state = WorkerState.READY
        w.ready_at = now
        w.next_ping_at = now + self.timing.health_interval
        w.request_limit = recycling.request_limit(self.limits, self.rng)
        w.max_age = recycling.lifetime(self.limits, self.rng)
        out.append(Report("ready", f"worker {self._name(w)} ready", wid))
        if self.phase is PoolPhase.STOPPING:
            self._retire(w, now, "pool stopping", out, Cause.STOP)
            return
        if w.request_limit is not None:
            out.append(SetRequestLimit(wid, w.request_limit))
        if w.predecessor is not None:
            old = self.workers.get(w.predecessor)
            w.predecessor = None
            if old is not None:
                old.successor = None
                if old.state is WorkerState.READY and old.kill_reason is None:
                    self._retire(old, now, old.replace_reason or "replaced", out, old.cause)
        if self.roll is not None and self.roll.booting_wid == wid:
            self._roll_slot_done(w, now, out)
        if self.phase is PoolPhase.STARTING and self._all_slots_ready():
            self.phase = PoolPhase.RUNNING
            self.ever_ready = True
            out.append(PoolReady())
            if self.reload_pending:
                self.reload_pending = False
                self._begin_roll(now, "queued reload", out)
            else:
                self._apply_pending_scale(now, out)

    def _pong(self, pong: Pong, out: list[Action]) -> None:
        w = self.workers.get(pong.wid)
        if w is None:
            return
        now = pong.now
        w.requests = max(w.requests, pong.requests)
        w.inflight, w.oldest_age, w.oldest = pong.inflight, pong.oldest_age, pong.oldest
        w.busy_threads, w.threads = pong.busy_threads, pong.threads
        if pong.traffic is not None:
            w.traffic, w.traffic_at = pong.traffic, now
            watch = self.roll.canary if self.roll is not None else None
            if watch is not None and w.wid != watch.wid and w.wid not in watch.base and now >= watch.started_at:
                watch.base[w.wid] = pong.traffic  # an old worker's counts at the window's start
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

    def _judge(self, w: Worker, now: float, out: list[Action]) -> None:
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

    def _replace(self, w: Worker, now: float, cause: Cause, reason: str, out: list[Action]) -> None:
        """Surge-first: boot a successor for ``w``'s slot; ``w`` is retired once the successor is ready."""
        generation = self.slots[w.slot].generation
        if self.preload and not self._has_ready_loader(generation):
            # No successor can be forked yet: the old worker keeps serving, and we look again shortly.
            self._want_loader(generation, now, out)
            w.recycle_after = now + self.timing.backoff_base
            return
        w.cause, w.replace_reason = cause, reason
        event = "request_timeout" if cause is Cause.REQUEST_TIMEOUT else "recycle"
        out.append(Report(event, f"replacing worker {self._name(w)}: {reason}", w.wid,
                          warning=cause is Cause.REQUEST_TIMEOUT, cause=cause))
        new = self._spawn(w.slot, generation, now, out)
        assert new is not None  # a running pool with a ready loader (or in lazy mode) always forks
        w.successor = new
        self.workers[new].predecessor = w.wid

    def _exited(self, wid: int, ended: Ended, now: float, out: list[Action]) -> None:
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
            message = f"worker {self._name(w)} stopped ({cause.value})"
        else:
            message = (f"worker {self._name(w)} {'exited' if expected else 'died'}: {description}"
                       + (f" ({why})" if why != description else ""))
        out.append(WorkerEnded(w.pid, w.slot, w.generation, cause, expected, ended.signal, message))
        if w.successor is not None and (successor := self.workers.get(w.successor)) is not None:
            successor.predecessor = None  # it simply becomes the slot's worker
        if w.predecessor is not None and (predecessor := self.workers.get(w.predecessor)) is not None:
            predecessor.successor = None
        if self.phase is PoolPhase.STOPPING:
            self._maybe_exit(out)
            return
        self._stopped_accepting(wid, now, out)
        if expected or slot is None:
            return
        # An unexpected death.
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
            out.append(
                Report(
                    "backoff",
                    f"slot {w.slot} failed to boot {slot.failures} times in a row; next try in {delay:g}s",
                    warning=True,
                )
            )

    def _respawn(self, slot: Slot, now: float, out: list[Action]) -> None:
        """Refill a slot within the pool-wide spawn budget; a pool with nothing serving or booting is exempt."""
        self.budget.rate = self.timing.max_spawn_rate
        self.budget.burst = float(max(2, self.workers_wanted))
        if self.budget.take(now) or not self._anything_serving_or_booting():
            self._spawn(slot.index, slot.generation, now, out)
            return
        slot.retry_at = self.budget.next_at(now)
        out.append(Report("spawn_rate", f"slot {slot.index}: max_spawn_rate reached, replacing in "
                          f"{slot.retry_at - now:.2f}s", warning=True))

    def _anything_serving_or_booting(self) -> bool:
        return any(
            w.state is not WorkerState.DRAINING and w.kill_reason is None for w in self.workers.values()
        )

    def _stopped_accepting(self, wid: int, now: float, out: list[Action]) -> None:
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

    def _reload_requested(self, now: float, reason: str, out: list[Action]) -> None:
        if self.phase in (PoolPhase.STOPPING, PoolPhase.EXITED, PoolPhase.IDLE):
            return
        if self.roll is not None or self.phase is PoolPhase.STARTING:
            self.reload_pending = True
            out.append(Report("reload", f"{reason}: queued until the current roll or start-up is done"))
            return
        self._begin_roll(now, reason, out)

    def _begin_roll(self, now: float, reason: str, out: list[Action]) -> None:
        self._last_generation += 1
        generation = self._last_generation
        self.roll = Roll(generation=generation, pending_slots=sorted(self.slots), started_at=now)
        out.append(ReloadStarted(generation))
        count = len(self.slots)
        out.append(Report("reload", f"{reason}: rolling {counted(count, 'worker')} to generation {generation}"))
        self._roll_next(now, out)

    def _roll_next(self, now: float, out: list[Action]) -> None:
        roll = self.roll
        assert roll is not None
        if roll.canary is not None or roll.failed is not None:
            return  # paused while the canary is watched, or while a rolled-back canary drains
        while roll.booting_wid is None and roll.pending_slots:
            index = roll.pending_slots[0]
            if index not in self.slots:
                roll.pending_slots.pop(0)
                continue
            if self.preload and not self._has_ready_loader(roll.generation):
                self._want_loader(roll.generation, now, out)  # the roll goes on at LoaderReady
                return
            roll.pending_slots.pop(0)
            roll.booting_wid = self._spawn(index, roll.generation, now, out)
        if roll.booting_wid is None and not roll.retiring:
            self._finish_roll(True, f"all workers run generation {roll.generation}", now, out)

    def _roll_slot_done(self, new: Worker, now: float, out: list[Action]) -> None:
        roll = self.roll
        assert roll is not None
        roll.booting_wid = None
        if self.canary_rules.seconds > 0 and not roll.restoring and not roll.canary_done:
            self._canary_start(new, now, out)
            return
        self._roll_slot_switch(new, now, out)

    def _roll_slot_switch(self, new: Worker, now: float, out: list[Action]) -> None:
        """The slot runs the new generation: its old worker is retired, the roll goes on."""
        slot = self.slots[new.slot]
        slot.generation = new.generation
        slot.failures = 0
        slot.retry_at = None
        for old in list(self.workers.values()):
            if old.slot == new.slot and old.wid != new.wid and old.state is not WorkerState.DRAINING:
                self._retire(old, now, f"replaced by generation {new.generation}", out, Cause.RELOAD)
        self._roll_next(now, out)

    def _roll_failed(self, reason: str, now: float, out: list[Action]) -> None:
        roll = self.roll
        assert roll is not None
        if roll.booting_wid is not None:
            w = self.workers.get(roll.booting_wid)
            if w is not None:
                self._kill(w, "reload rolled back", out, Cause.BOOT)
            roll.booting_wid = None
        # Slots that lost their worker while the roll was going on are refilled with their own generation
        # (in preload mode the slots already on the failed generation are restored by _finish_roll instead).
        for slot in self.slots.values():
            restorable = self.preload and slot.generation == roll.generation
            if not self._slot_has_live_worker(slot.index) and slot.retry_at is None and not restorable:
                self._spawn(slot.index, slot.generation, now, out)
        self._finish_roll(False, f"rolled back: {reason}", now, out)

    def _finish_roll(self, ok: bool, reason: str, now: float, out: list[Action]) -> None:
        roll = self.roll
        assert roll is not None
        self.roll = None
        if roll.restoring:
            out.append(Report("reload", f"restore to generation {roll.generation}: {reason}", warning=not ok))
        else:
            if ok:
                self.generation = roll.generation
            self.last_reload = ReloadResult(roll.generation, ok, reason, now)
            out.append(ReloadFinished(roll.generation, ok, reason))
            out.append(Report("reload", f"reload to generation {roll.generation}: {reason}", warning=not ok))
            moved = sorted(i for i, slot in self.slots.items() if slot.generation == roll.generation)
            if not ok and self.preload and moved:
                # Preload keeps the last good generation's loader: put every slot back on it.
                self.roll = Roll(self.generation, moved, started_at=now, restoring=True)
                out.append(Report("reload", f"restoring slots {moved} to generation {self.generation}"))
                self._roll_next(now, out)
                return
        if self.reload_pending and self.phase is PoolPhase.RUNNING:
            self.reload_pending = False
            self._begin_roll(now, "queued reload", out)
        else:
            self._apply_pending_scale(now, out)

    # ------------------------------------------------------------------------------------------- canary

    def _canary_start(self, new: Worker, now: float, out: list[Action]) -> None:
        """Pause the roll: the new worker serves next to every old one (its slot's included) for a window."""
        roll = self.roll
        assert roll is not None
        seconds = self.canary_rules.seconds
        roll.canary = canary.Watch(new.wid, now, now + seconds)
        out.append(CapShare(new.wid, True))  # its share of the requests, not what an idle worker would win
        out.append(Report("canary", f"worker {self._name(new)} is the canary: watching it for {seconds:g}s "
                          "before rolling on", new.wid))
        self._ping_now(self._canary_old_workers(roll.canary), now)  # their counts at the window's start

    def _canary_old_workers(self, watch: canary.Watch) -> list[Worker]:
        generation = self.roll.generation if self.roll is not None else self.generation
        return [w for w in self.workers.values() if w.wid != watch.wid and w.state is WorkerState.READY
                and w.kill_reason is None and w.generation != generation]

    @staticmethod
    def _ping_now(workers: list[Worker], now: float) -> None:
        for w in workers:
            if w.ping_sent_at is None:
                w.next_ping_at = now

    def _canary_timer(self, watch: canary.Watch, now: float, out: list[Action]) -> None:
        if watch.collect_until is None:
            if now < watch.until:
                return
            # The window is over: ask the canary and every old worker for their counts; judge when all answered.
            watch.collect_until = now + self.timing.health_timeout
            new = self.workers.get(watch.wid)
            self._ping_now([*self._canary_old_workers(watch), *([new] if new is not None else [])], now)
            return
        involved = [w for w in self.workers.values() if w.wid == watch.wid or w.wid in watch.base]
        if all(self._reported_since(w, watch.until) for w in involved) or now >= watch.collect_until:
            self._canary_judge(watch, now, out)

    @staticmethod
    def _reported_since(w: Worker, when: float) -> bool:
        return max(w.last_pong_at or 0.0, w.traffic_at or 0.0) >= when

    def _canary_judge(self, watch: canary.Watch, now: float, out: list[Action]) -> None:
        new = self.workers.get(watch.wid)
        if new is None:
            return  # its exit is handled by _exited
        if not self._reported_since(new, watch.until):
            if new.kill_reason is None:  # its serving loop does not answer: as the health check would, kill it
                self._kill(new, f"no pong within health_timeout ({self.timing.health_timeout:g}s)", out, Cause.HEALTH)
            self._canary_rollback(new, f"canary: the canary did not report its counts within health_timeout "
                                  f"({self.timing.health_timeout:g}s) after its window", now, out)
            return
        old = Traffic()
        for w in self.workers.values():
            base = watch.base.get(w.wid)
            if base is not None and w.traffic is not None and self._reported_since(w, watch.until):
                old = old + w.traffic.since(base)
        counted = new.traffic or Traffic()  # an engine without HTTP counts: nothing to judge
        verdict = canary.judge(old, counted, self.canary_rules)
        if not verdict.ok:
            out.append(CanaryJudged(new.wid, verdict, f"generation {new.generation} rolled back: {verdict.reason}"))
            self._canary_rollback(new, f"canary: {verdict.reason}", now, out)
            return
        out.append(CanaryJudged(new.wid, verdict, f"generation {new.generation} passed: {verdict.reason}"))
        out.append(CapShare(new.wid, False))
        roll = self.roll
        assert roll is not None
        roll.canary, roll.canary_done = None, True
        self._roll_slot_switch(new, now, out)

    def _canary_rollback(self, w: Worker, reason: str, now: float, out: list[Action]) -> None:
        """The canary did worse (or died): it drains, the old workers keep serving, the reload fails."""
        roll = self.roll
        assert roll is not None
        roll.canary, roll.canary_done = None, True
        if w.wid in self.workers and w.kill_reason is None:
            self._retire(w, now, "canary rolled back", out, Cause.RELOAD)
            roll.failed = reason  # the reload fails when the canary has stopped accepting (_stopped_accepting)
            return
        self._roll_failed(reason, now, out)

    # -------------------------------------------------------------------------------------------- scale

    def _scale(self, delta: int, now: float, out: list[Action]) -> None:
        if self.phase in (PoolPhase.STOPPING, PoolPhase.EXITED):
            return
        self.pending_scale += delta
        if self.roll is None and self.phase is PoolPhase.RUNNING:
            self._apply_pending_scale(now, out)

    def _apply_pending_scale(self, now: float, out: list[Action]) -> None:
        delta, self.pending_scale = self.pending_scale, 0
        while delta > 0:
            index = max(self.slots, default=-1) + 1
            self.slots[index] = Slot(index=index, generation=self.generation)
            self.workers_wanted += 1
            self._spawn(index, self.generation, now, out)
            out.append(Report("scale", f"workers: {self.workers_wanted} (added slot {index})"))
            delta -= 1
        while delta < 0 and self.workers_wanted > 1:
            index = max(self.slots)
            del self.slots[index]
            self.workers_wanted -= 1
            for w in list(self.workers.values()):
                if w.slot == index and w.state is not WorkerState.DRAINING:
                    self._retire(w, now, "scaled down", out, Cause.SCALE)
            out.append(Report("scale", f"workers: {self.workers_wanted} (removed slot {index})"))
            delta += 1

    # --------------------------------------------------------------------------------------------- stop

    def _stop(self, now: float, graceful: bool, out: list[Action], reason: str = "stopped") -> None:
        if self.phase is PoolPhase.EXITED:
            return
        if self.phase is PoolPhase.STOPPING:
            if not graceful:
                self._kill_everyone("fast stop", out)
            return
        self.phase = PoolPhase.STOPPING
        self.host_draining, self.host_drain_until = True, None
        self._stop_reason = reason
        if self.roll is not None:
            roll, self.roll = self.roll, None
            out.append(ReloadFinished(roll.generation, False, "pool is stopping"))
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

    def _host_drain(self, now: float, seconds: float, then_stop: bool, out: list[Action]) -> None:
        if self.phase in (PoolPhase.STOPPING, PoolPhase.EXITED):
            return
        self.host_draining = True
        self.host_drain_then_stop = self.host_drain_then_stop or then_stop
        if then_stop and seconds <= 0:
            self._stop(now, True, out)
            return
        until = now + seconds
        self.host_drain_until = until if self.host_drain_until is None else min(self.host_drain_until, until)
        after = "then stopping" if self.host_drain_then_stop else "until cancelled"
        out.append(Report("drain", f"host draining: health checks fail for {seconds:g}s while serving, {after}"))

    def _fail_start(self, reason: str, now: float, out: list[Action]) -> None:
        out.append(Report("abort", f"giving up on start: {reason}", warning=True))
        self._stop(now, graceful=False, out=out, reason=reason)

    def _kill_everyone(self, reason: str, out: list[Action]) -> None:
        for w in list(self.workers.values()):
            if w.kill_reason is None:
                self.killed_on_stop += 1
                self._kill(w, reason, out, w.cause or Cause.STOP)
        for loader in self.loaders.values():
            self._kill_loader(loader, reason, out)

    def _maybe_exit(self, out: list[Action]) -> None:
        if self.phase is not PoolPhase.STOPPING or self.workers or self.loaders:
            return
        self.phase = PoolPhase.EXITED
        self.stop_deadline = None
        if self._stop_reason != "stopped":
            out.append(Exit(EXIT_FAILURE, self._stop_reason))
        elif self.killed_on_stop:
            out.append(
                Exit(EXIT_FAILURE, f"{self.killed_on_stop} worker(s) killed with requests still running")
            )
        else:
            out.append(Exit(EXIT_OK, "stopped"))

    # ------------------------------------------------------------------------------------------- timers

    def _timers(self, now: float, out: list[Action]) -> None:
        t = self.timing
        if self.roll is not None and self.roll.canary is not None:
            self._canary_timer(self.roll.canary, now, out)  # first: the pings it asks for go out below
        if self.host_drain_until is not None and now >= self.host_drain_until:
            self.host_drain_until = None
            if self.host_drain_then_stop:
                self._stop(now, True, out)
        if self.stop_deadline is not None and now >= self.stop_deadline:
            self.stop_deadline = None
            for w in list(self.workers.values()):
                if w.kill_reason is None:
                    self.killed_on_stop += 1
                    self._kill(w, "still running after graceful_timeout", out)
            for loader in self.loaders.values():
                self._kill_loader(loader, "still running after graceful_timeout", out)
        for loader in self.loaders.values():
            if not loader.ready and loader.kill_reason is None and now >= loader.spawned_at + t.boot_timeout:
                self._kill_loader(loader, f"app not imported within boot_timeout ({t.boot_timeout:g}s)", out)
        for w in list(self.workers.values()):
            if w.kill_reason is not None:
                continue
            if w.state is WorkerState.BOOTING and now >= w.spawned_at + t.boot_timeout:
                self._kill(w, f"not ready within boot_timeout ({t.boot_timeout:g}s)", out, Cause.BOOT)
            elif w.state is WorkerState.READY and self.phase is not PoolPhase.STOPPING:
                if w.ping_sent_at is not None and now >= w.ping_sent_at + t.health_timeout:
                    self._kill(w, f"no pong within health_timeout ({t.health_timeout:g}s)", out, Cause.HEALTH)
                elif w.ping_sent_at is None and now >= w.next_ping_at:
                    w.ping_seq += 1
                    w.ping_sent_at = now
                    out.append(Ping(w.wid, w.ping_seq))
                if w.max_age is not None and w.ready_at is not None and now >= w.ready_at + w.max_age:
                    self._judge(w, now, out)
            elif (
                w.state is WorkerState.DRAINING
                and w.draining_since is not None
                and now >= w.draining_since + t.graceful_timeout
                and self.phase is not PoolPhase.STOPPING
            ):
                self._kill(w, f"still draining after graceful_timeout ({t.graceful_timeout:g}s)", out)
        if self.phase in (PoolPhase.RUNNING, PoolPhase.STARTING):
            for slot in self.slots.values():
                if slot.retry_at is not None and now >= slot.retry_at:
                    slot.retry_at = None
                    self._respawn(slot, now, out)

    # ---------------------------------------------------------------------------------------- utilities

    def _retire(self, w: Worker, now: float, reason: str, out: list[Action], cause: Cause | None) -> None:
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
        out.append(Signal(w.wid, signal.SIGTERM, reason))

    def _kill(self, w: Worker, reason: str, out: list[Action], cause: Cause | None = None) -> None:
        w.kill_reason = reason
        if cause is not None:
            w.cause = cause
        out.append(Signal(w.wid, signal.SIGKILL, reason))
        out.append(Report("kill", f"killing worker {self._name(w)}: {reason}", w.wid, warning=True))

    def _kill_loader(self, loader: Loader, reason: str, out: list[Action]) -> None:
        if loader.kill_reason is None:
            loader.kill_reason = reason
            out.append(SignalLoader(loader.generation, signal.SIGKILL, reason))

    def _slot_has_live_worker(self, index: int) -> bool:
        return any(
            w.slot == index and w.state is not WorkerState.DRAINING and w.kill_reason is None
            for w in self.workers.values()
        )

    def _all_slots_ready(self) -> bool:
        ready = {w.slot for w in self.workers.values() if w.state is WorkerState.READY}
        return all(index in ready for index in self.slots)

    @staticmethod
    def _name(w: Worker) -> str:
        if w.pid is None:  # preload: forked by its loader, not named yet
            return f"#{w.wid} (not yet named by its loader; slot {w.slot}, generation {w.generation})"
        return f"{w.pid} (slot {w.slot}, generation {w.generation})"
