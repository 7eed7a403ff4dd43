"""The policy's vocabulary: the events the primary feeds :class:`corepool.policy.Policy` and the actions it
returns. Plain frozen dataclasses, no behaviour (h11's events, for a process pool).

A control request the policy must answer (a reload, a drain) carries a ``ticket``; the policy answers it with one
:class:`Answer` carrying the same ticket.
"""

from __future__ import annotations

from dataclasses import dataclass

from corepool.canary import Verdict
from corepool.crashpolicy import Cause
from corepool.exits import Ended
from corepool.settings import Settings
from corepool.traffic import Traffic

# ---------------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Start:
    """The primary is up and its listeners are bound: boot the pool. ``subreaper``: the primary is a child
    subreaper (preload mode needs it: workers a loader double-forks must become the primary's children)."""

    now: float
    subreaper: bool = True


@dataclass(frozen=True)
class WorkerForked:
    """``Spawn(wid)`` was carried out and the worker process is ``pid``."""

    wid: int
    pid: int
    now: float


@dataclass(frozen=True)
class WorkerReady:
    """The worker loaded its app and is accepting connections."""

    wid: int
    now: float


@dataclass(frozen=True)
class WorkerDraining:
    """A retired worker closed its listening sockets: it takes no new connection any more."""

    wid: int
    now: float


@dataclass(frozen=True)
class WorkerBootError:
    """The worker said why it could not boot (it exits right after)."""

    wid: int
    error: str
    now: float


@dataclass(frozen=True)
class Pong:
    """The worker's serving loop answered ping ``seq`` (None: it reported on its own, for example on reaching
    its request limit or at the end of a drain) with its stats; ``rss`` is sampled by the primary."""

    wid: int
    seq: int | None
    requests: int
    now: float
    inflight: int = 0
    oldest_age: float | None = None  # seconds the longest-running in-flight request has run
    oldest: str | None = None  # that request, as "METHOD /path"
    busy_threads: int = 0
    threads: int = 0
    rss: int | None = None
    traffic: Traffic | None = None  # cumulative requests by method/status class and durations (corepool.traffic)
    connections: int | None = None  # open client connections


@dataclass(frozen=True)
class WorkerMisbehaved:
    """The worker broke the channel protocol (garbage, an unknown message): it cannot be trusted to serve."""

    wid: int
    reason: str
    now: float


@dataclass(frozen=True)
class WorkerExited:
    """The worker process is gone, and how it ended."""

    wid: int
    ended: Ended
    now: float


@dataclass(frozen=True)
class LoaderForked:
    """``SpawnLoader(generation)`` was carried out: the loader process is ``pid``."""

    generation: int
    pid: int
    now: float


@dataclass(frozen=True)
class LoaderReady:
    """The generation's loader imported the app and froze its heap: workers can be forked from it."""

    generation: int
    now: float


@dataclass(frozen=True)
class LoaderBootError:
    """The loader said why the app could not be imported (it exits right after)."""

    generation: int
    error: str
    now: float


@dataclass(frozen=True)
class LoaderExited:
    """The generation's loader process is gone, and how it ended."""

    generation: int
    ended: Ended
    now: float


@dataclass(frozen=True)
class Tick:
    """Time passed; the primary sends one at least by :meth:`Policy.next_deadline`."""

    now: float


@dataclass(frozen=True)
class PingAll:
    """Ping every ready worker now (``corepool status`` wants fresh request counts); a ping as any other."""

    now: float


@dataclass(frozen=True)
class ReloadRequested:
    """Roll every worker onto a new generation (SIGUSR2, SIGHUP, ``corepool reload``)."""

    now: float
    reason: str = "reload requested"
    ticket: int | None = None


@dataclass(frozen=True)
class ScaleRequested:
    """Change the number of workers by ``delta`` (SIGTTIN +1, SIGTTOU -1)."""

    delta: int
    now: float


@dataclass(frozen=True)
class StopRequested:
    """Stop the pool: graceful drains first, otherwise kill at once. ``by``: the signal that asked (SIGQUIT), for
    the log and for systemd (``STOPPING=1``)."""

    now: float
    graceful: bool = True
    by: str | None = None


@dataclass(frozen=True)
class StopSignal:
    """SIGTERM or SIGINT (``signal``): with a health endpoint, first a host drain that ends in a graceful stop,
    else a graceful stop; once stopping, a fast stop."""

    now: float
    signal: str


@dataclass(frozen=True)
class HostDrainRequested:
    """Turn load balancers away (the health endpoint answers 503) for ``drain_seconds`` while the pool still
    serves; then stop gracefully when ``then_stop``. ``by``: who asked (``corepool drain --stop``), for the log."""

    now: float
    then_stop: bool = True
    ticket: int | None = None
    by: str | None = None


@dataclass(frozen=True)
class HostDrainCancelled:
    """The host takes traffic again (``corepool drain --cancel``), unless the drain ends in a stop."""

    now: float
    ticket: int | None = None


@dataclass(frozen=True)
class ConfigReloaded:
    """SIGHUP re-read the config file: ``new`` replaces ``old`` (then a reload)."""

    now: float
    old: Settings
    new: Settings


@dataclass(frozen=True)
class ConfigRefused:
    """SIGHUP found the config file bad: the pool keeps its settings (and does not reload)."""

    now: float
    error: str


Event = (
    Start
    | WorkerForked
    | WorkerReady
    | WorkerDraining
    | WorkerBootError
    | Pong
    | WorkerMisbehaved
    | WorkerExited
    | LoaderForked
    | LoaderReady
    | LoaderBootError
    | LoaderExited
    | Tick
    | PingAll
    | ReloadRequested
    | ScaleRequested
    | StopRequested
    | StopSignal
    | HostDrainRequested
    | HostDrainCancelled
    | ConfigReloaded
    | ConfigRefused
)

# --------------------------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Spawn:
    """Fork worker ``wid`` into ``slot`` running ``generation``; answer with ``WorkerForked``."""

    wid: int
    slot: int
    generation: int


@dataclass(frozen=True)
class SpawnLoader:
    """Fork a loader for ``generation`` (preload mode): it imports the app once; workers fork from it."""

    generation: int


@dataclass(frozen=True)
class SignalLoader:
    generation: int
    signum: int
    reason: str


@dataclass(frozen=True)
class Signal:
    """Send ``signum`` to worker ``wid``."""

    wid: int
    signum: int
    reason: str


@dataclass(frozen=True)
class Ping:
    """Ask worker ``wid``'s serving loop to answer ``seq``."""

    wid: int
    seq: int


@dataclass(frozen=True)
class Report:
    """Something worth a log line: ``event`` is a short keyword (spawn, ready, kill, backoff, ...); ``cause``: why
    a worker is being replaced (journal ``CAUSE=``)."""

    event: str
    message: str
    wid: int | None = None
    warning: bool = False
    cause: Cause | None = None


@dataclass(frozen=True)
class WorkerEnded:
    """A worker is gone (the policy forgot it): logged as ``exit`` when it ended as expected (it was draining),
    ``death`` otherwise, with its ids, ``cause`` and the ``signal`` that ended it; counted by cause."""

    pid: int | None
    slot: int
    generation: int
    cause: Cause
    expected: bool
    signal: str | None
    message: str


@dataclass(frozen=True)
class CanaryJudged:
    """A reload's canary ``wid`` was judged against the old generation: logged and counted by verdict."""

    wid: int
    verdict: Verdict
    message: str


@dataclass(frozen=True)
class CapShare:
    """Worker ``wid`` keeps to its share of accepted connections (a canary while it is watched), or stops."""

    wid: int
    capped: bool


@dataclass(frozen=True)
class SetRequestLimit:
    """Tell worker ``wid`` to report on its own once it has served ``limit`` requests (max_requests)."""

    wid: int
    limit: int


@dataclass(frozen=True)
class PoolReady:
    """Every slot has a ready worker for the first time: the service is up."""


@dataclass(frozen=True)
class ReloadStarted:
    generation: int


@dataclass(frozen=True)
class ReloadFinished:
    """The roll to ``generation`` is over (``serving``: the pool serves on, so systemd hears READY=1 again)."""

    generation: int
    ok: bool
    reason: str
    serving: bool = True


@dataclass(frozen=True)
class Answer:
    """The answer to the control request with ``ticket``: ``refused`` says why not; a reload answers the
    ``generation`` it rolls to, ``queued`` behind the roll or start-up in progress."""

    ticket: int | None
    refused: str | None = None
    generation: int | None = None
    queued: bool = False


@dataclass(frozen=True)
class Stopping:
    """A stop (or a drain that ends in one) has begun: tell systemd (``STOPPING=1``, ``STATUS=``) and extend its
    stop timeout by ``extend`` seconds (``EXTEND_TIMEOUT_USEC``)."""

    status: str
    extend: float


@dataclass(frozen=True)
class ExtendTimeout:
    """Push systemd's start or reload timeout out by ``seconds`` (``EXTEND_TIMEOUT_USEC``)."""

    seconds: float


@dataclass(frozen=True)
class FeedWatchdog:
    """Send systemd ``WATCHDOG=1``."""


@dataclass(frozen=True)
class Exit:
    """Every worker is gone after a stop: the primary exits with ``code``."""

    code: int
    reason: str


Action = (
    Spawn | SpawnLoader | Signal | SignalLoader | Ping | SetRequestLimit | CapShare | Report | WorkerEnded
    | CanaryJudged | PoolReady | ReloadStarted | ReloadFinished | Answer | Stopping | ExtendTimeout | FeedWatchdog
    | Exit
)
