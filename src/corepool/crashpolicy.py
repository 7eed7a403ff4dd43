"""How the pool answers a worker's death: pure judgements the policy calls.

* Backoff is for code that cannot boot: a worker that died before it was ready grows its slot's backoff
  (0, base, 2*base, ... up to backoff_max). A worker that was ready and then died is replaced at once,
  whatever killed it: a request of death or a ``kill -9`` storm must never empty the pool.
* A pool-wide :class:`SpawnBudget` (a token bucket) caps how fast replacements are forked, so a crash loop
  cannot become a fork storm; the policy bypasses it while no worker is ready or booting.
* Every end of a worker has a :class:`Cause`, counted per slot and shown in ``status``, ``STATUS=`` and the
  journal.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

TOKEN_EPSILON = 1e-9


class Cause(enum.Enum):
    """Why a worker ended."""

    BOOT = "boot"  # died or timed out before it was ready
    CRASH = "crash"  # died while serving (a signal, an exit, a broken channel)
    HEALTH = "health"  # its serving loop stopped answering pings
    REQUEST_TIMEOUT = "request_timeout"  # a request outlived request_timeout
    RECYCLE = "recycle"  # max_requests, max_rss or max_lifetime
    RELOAD = "reload"  # replaced by a new generation
    SCALE = "scale"  # its slot was removed
    STOP = "stop"  # the pool stopped

    @property
    def unplanned(self) -> bool:
        """An end worth an operator's attention (STATUS=, status --watch); the others are the pool's routine."""
        return self in UNPLANNED


# In this order wherever they are listed (STATUS=, status --watch's DEATHS column).
UNPLANNED = (Cause.BOOT, Cause.CRASH, Cause.HEALTH, Cause.REQUEST_TIMEOUT)


def backoff(failures: int, base: float, cap: float) -> float:
    """Seconds before retrying a slot after ``failures`` boot failures in a row: 0 for the first, then
    base, 2*base, ... capped at ``cap``."""
    if failures <= 1:
        return 0.0
    return float(min(base * 2 ** (failures - 2), cap))


@dataclass
class SpawnBudget:
    """A token bucket: ``rate`` forks a second on average, ``burst`` at once. Time is passed in."""

    rate: float
    burst: float
    tokens: float = -1.0  # full on first use
    updated: float | None = None

    def _refill(self, now: float) -> None:
        if self.updated is None or self.tokens < 0:
            self.tokens = self.burst
        else:
            self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = now

    def take(self, now: float) -> bool:
        """Spend one fork if the budget allows it now."""
        self._refill(now)
        # Refills add float seconds times a rate: 0.9999999999999996 of a token is a whole one.
        if self.tokens >= 1.0 - TOKEN_EPSILON:
            self.tokens = max(0.0, self.tokens - 1.0)
            return True
        return False

    def next_at(self, now: float) -> float:
        """When the next fork will be allowed: always after ``now`` (a deadline that is already due would spin the
        primary's loop)."""
        self._refill(now)
        return max(now + max(0.0, 1.0 - self.tokens) / self.rate, math.nextafter(now, math.inf))
