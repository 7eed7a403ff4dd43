"""What each part of the pool is given of the settings, and what a SIGHUP may change: pure functions.

The policy decides with :class:`~corepool.poolstate.Timing`, :class:`~corepool.recycling.Limits` and the canary's
:class:`~corepool.canary.Rules`; a worker (or loader) is forked with a :class:`~corepool.workerapi.WorkerSpec`.
A SIGHUP re-reads the config file: every setting takes effect for the workers forked from then on and for the
policy's decisions, except those declared ``restart=True`` (the sockets, the health endpoint, the broadcast
backend), which :func:`reconfigure` names so that the log can say they wait for a restart.
"""

from __future__ import annotations

from dataclasses import dataclass

from corepool import canary, recycling
from corepool.balance import Board
from corepool.poolstate import Timing
from corepool.settings import FIELDS, Settings
from corepool.workerapi import WorkerSpec

# With a systemd watchdog, every worker is pinged at least this many times per watchdog interval: the watchdog is
# fed only while some worker answered within two intervals (Policy), so one late pong never costs a restart.
PINGS_PER_WATCHDOG_INTERVAL = 1.5
# A worker's own drain ends a little before the primary's SIGKILL at graceful_timeout, so it exits by itself.
WORKER_DRAIN_SHARE = 0.9
MIN_WORKER_DRAIN = 0.1


def timing(s: Settings, watchdog_interval: float | None = None) -> Timing:
    """The policy's timing; under a systemd watchdog, health pings come often enough to feed it."""
    interval = s.health_interval
    if watchdog_interval is not None:
        interval = min(interval, watchdog_interval / PINGS_PER_WATCHDOG_INTERVAL)
    return Timing(
        health_interval=interval,
        health_timeout=s.health_timeout,
        boot_timeout=s.boot_timeout,
        graceful_timeout=s.graceful_timeout,
        backoff_max=s.backoff_max,
        max_spawn_rate=s.max_spawn_rate,
        drain_seconds=s.drain_seconds,
    )


def limits(s: Settings) -> recycling.Limits:
    return recycling.Limits(
        request_timeout=s.request_timeout,
        max_requests=s.max_requests,
        max_requests_jitter=s.max_requests_jitter,
        max_rss_bytes=int(s.max_rss * 2**20),
        max_lifetime=s.max_lifetime,
    )


def canary_rules(s: Settings) -> canary.Rules:
    return canary.Rules(s.canary_seconds, s.canary_max_error_rate, s.canary_max_p99_ratio)


def drain_timeout(graceful_timeout: float) -> float:
    """How long a retired worker drains on its own before it exits."""
    return max(MIN_WORKER_DRAIN, graceful_timeout * WORKER_DRAIN_SHARE)


def worker_spec(s: Settings, slot: int, generation: int, primary_pid: int, board: Board) -> WorkerSpec:
    """What a worker (or, with slot -1, a generation's loader) is forked with."""
    return WorkerSpec(
        app=s.app or "",
        app_dir=s.app_dir,
        interface=s.interface,
        slot=slot,
        generation=generation,
        primary_pid=primary_pid,
        drain_timeout=drain_timeout(s.graceful_timeout),
        max_message_bytes=s.max_message_bytes,
        log_level=s.log_level,
        routes=s.routes,
        board=board,
        http=s.http,
        post_fork=s.post_fork,
        worker_exit=s.worker_exit,
    )


@dataclass(frozen=True)
class Reconfiguration:
    """What a SIGHUP's fresh settings change: the policy's parameters, the number of workers, and the changed
    settings that take effect only on restart."""

    timing: Timing
    limits: recycling.Limits
    canary_rules: canary.Rules
    workers_delta: int
    restart_only: tuple[str, ...]


def reconfigure(old: Settings, new: Settings, watchdog_interval: float | None) -> Reconfiguration:
    changed = tuple(f.name for f in FIELDS if f.restart and new.value(f.name) != old.value(f.name))
    return Reconfiguration(timing(new, watchdog_interval), limits(new), canary_rules(new),
                           new.workers - old.workers, changed)
