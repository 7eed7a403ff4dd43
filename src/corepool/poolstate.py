"""The state :class:`corepool.policy.Policy` decides over: plain data, no behaviour but small views.

Per worker ``BOOTING → READY → DRAINING → gone``; per slot (one per wanted worker) the generation it runs and
its failures; per generation a loader (preload mode); a :class:`Roll` while a reload is in progress; the pool's
:class:`PoolPhase`; and :class:`Timing`, every duration the policy decides with.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from corepool import canary
from corepool.crashpolicy import Cause
from corepool.traffic import Traffic


class WorkerState(enum.Enum):
    BOOTING = "booting"
    READY = "ready"
    DRAINING = "draining"


class PoolPhase(enum.Enum):
    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    EXITED = "exited"

    @property
    def stopping(self) -> bool:
        """A stop has begun (or is over): nothing is forked, reloads and drains are refused."""
        return self in (PoolPhase.STOPPING, PoolPhase.EXITED)


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
    drain_seconds: float = 10.0  # a host drain's 503 before a stop (with a health endpoint)

    # How far systemd's timeouts are pushed out (EXTEND_TIMEOUT_USEC): each phase's own bound plus some slack,
    # so that systemd never gives up on a pool that keeps to its own timeouts.
    @property
    def start_extension(self) -> float:
        """Start-up: every worker boots at once, within boot_timeout."""
        return self.boot_timeout + 10

    @property
    def roll_step_extension(self) -> float:
        """Each fork of a roll: the new worker boots, then the old one drains."""
        return self.boot_timeout + self.graceful_timeout + 10

    @property
    def stop_extension(self) -> float:
        """A graceful stop: every worker drains within graceful_timeout."""
        return self.graceful_timeout + 5

    @property
    def drain_stop_extension(self) -> float:
        """A host drain that ends in a stop: drain_seconds, then the graceful stop."""
        return self.drain_seconds + self.graceful_timeout + 5


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

    @property
    def serving(self) -> bool:
        """Ready and not being killed (a SIGKILLed worker keeps its state until its exit arrives)."""
        return self.state is WorkerState.READY and self.kill_reason is None

    @property
    def live(self) -> bool:
        """Booting or serving: neither retired nor being killed."""
        return self.state is not WorkerState.DRAINING and self.kill_reason is None

    @property
    def name(self) -> str:
        """The worker as the log names it."""
        if self.pid is None:  # preload: forked by its loader, not named yet
            return f"#{self.wid} (not yet named by its loader; slot {self.slot}, generation {self.generation})"
        return f"{self.pid} (slot {self.slot}, generation {self.generation})"


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

    @property
    def can_fork(self) -> bool:
        return self.ready and not self.stopping and self.kill_reason is None


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
