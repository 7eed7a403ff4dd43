"""When a healthy worker should still be replaced: pure judgements the policy calls.

A worker is retired through the same surge-first path as a reload (its replacement is ready before it stops
accepting) when one of its requests outlives ``request_timeout``, when it has served ``max_requests``
(plus a per-worker jitter), when its resident memory stayed above ``max_rss`` for :data:`RSS_SAMPLES` samples in
a row, or when it is older than ``max_lifetime`` (plus up to 10 % jitter, so workers started together are not
all replaced together).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from corepool.crashpolicy import Cause

RSS_SAMPLES = 3  # samples in a row over max_rss before acting: one spike (a large response) is not a leak
LIFETIME_JITTER = 0.1


@dataclass(frozen=True)
class Limits:
    """The recycling settings; 0 turns each off."""

    request_timeout: float = 30.0
    max_requests: int = 0
    max_requests_jitter: int = 0
    max_rss_bytes: int = 0
    max_lifetime: float = 0.0


def request_limit(limits: Limits, rng: random.Random) -> int | None:
    """How many requests this worker may serve (None: no limit)."""
    if limits.max_requests <= 0:
        return None
    return limits.max_requests + (rng.randint(0, limits.max_requests_jitter) if limits.max_requests_jitter else 0)


def lifetime(limits: Limits, rng: random.Random) -> float | None:
    """Seconds this worker may live once ready (None: no limit)."""
    if limits.max_lifetime <= 0:
        return None
    return limits.max_lifetime * (1 + rng.uniform(0, LIFETIME_JITTER))


def overdue(limits: Limits, oldest_age: float | None, oldest: str | None) -> str | None:
    """Why a worker whose longest-running request is ``oldest_age`` seconds old must go, if it must."""
    if limits.request_timeout <= 0 or oldest_age is None or oldest_age < limits.request_timeout:
        return None
    return f"request {oldest or '?'} running {oldest_age:.1f}s, over request_timeout ({limits.request_timeout:g}s)"


def next_check(limits: Limits, oldest_age: float | None) -> float | None:
    """Seconds from now at which the oldest in-flight request would pass request_timeout."""
    if limits.request_timeout <= 0 or oldest_age is None:
        return None
    return max(0.0, limits.request_timeout - oldest_age)


def rss_over(limits: Limits, rss: int | None, over_so_far: int) -> int:
    """The count of samples in a row over max_rss, after this one."""
    if limits.max_rss_bytes <= 0 or rss is None:
        return 0
    return over_so_far + 1 if rss > limits.max_rss_bytes else 0


def verdict(
    limits: Limits, *, requests: int, request_limit: int | None, rss: int | None, rss_samples_over: int,
    age: float, max_age: float | None,
) -> tuple[Cause, str] | None:
    """Whether a healthy worker is due for recycling, and why."""
    if request_limit is not None and requests >= request_limit:
        return Cause.RECYCLE, f"served {requests} requests (max_requests {request_limit})"
    if rss_samples_over >= RSS_SAMPLES and rss is not None:
        return Cause.RECYCLE, (f"resident memory {rss / 2**20:.0f} MiB over max_rss "
                               f"({limits.max_rss_bytes / 2**20:g} MiB) {rss_samples_over} samples in a row")
    if max_age is not None and age >= max_age:
        return Cause.RECYCLE, f"up {age:.0f}s (max_lifetime {limits.max_lifetime:g}s)"
    return None
