"""A host drain: the health endpoint answers 503 so that load balancers move traffic away, while every worker
serves on. Its state, and the pure judgements about it that :class:`corepool.policy.Policy` calls.

``corepool drain`` starts one until cancelled; ``corepool drain --stop``, and a SIGTERM or SIGINT to a running pool
with a health endpoint and ``drain_seconds`` > 0, start one that ends in a graceful stop after ``drain_seconds``
(a second signal skips the rest of it). A drain that ends in a stop cannot be cancelled; nothing can be drained
once a stop has begun, and without a health endpoint nothing would tell a balancer, so a drain is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from corepool.poolstate import PoolPhase

NO_ENDPOINT = ("this pool has no health endpoint (health_bind, or a socket named health): nothing would tell a "
               "balancer to move traffic away")
STOPPING = "the pool is stopping"
ENDS_IN_A_STOP = "this drain ends in a stop and cannot be cancelled"


@dataclass
class HostDrain:
    """``draining``: health says 503; ``until``: when the 503 window ends; ``then_stop``: a graceful stop then."""

    draining: bool = False
    until: float | None = None
    then_stop: bool = False

    def precedes_stop(self, health_endpoint: bool, seconds: float, phase: PoolPhase) -> bool:
        """Whether a SIGTERM drains the host first: with balancers checking health here, once (a second signal
        stops at once), and only while running (a pool that is starting answers 503 already)."""
        return health_endpoint and seconds > 0 and not self.then_stop and phase is PoolPhase.RUNNING

    @staticmethod
    def refusal(phase: PoolPhase, health_endpoint: bool) -> str | None:
        """Why ``corepool drain [--stop]`` is refused now (None: it is not)."""
        if phase.stopping:
            return STOPPING
        return None if health_endpoint else NO_ENDPOINT

    def cancel_refusal(self, phase: PoolPhase) -> str | None:
        """Why ``corepool drain --cancel`` is refused now (None: it is not; cancelling no drain is a no-op)."""
        if phase.stopping:
            return STOPPING
        return ENDS_IN_A_STOP if self.then_stop else None

    def begin(self, now: float, seconds: float, then_stop: bool) -> None:
        """Health says 503 from now for ``seconds`` (a drain already running keeps its earlier end)."""
        self.draining = True
        self.then_stop = self.then_stop or then_stop
        until = now + seconds
        self.until = until if self.until is None else min(self.until, until)

    def for_stop(self) -> None:
        """A stop has begun: health says 503 until the pool is gone."""
        self.draining, self.until = True, None

    def cancel(self) -> bool:
        """Take traffic again; False when there was no drain to cancel."""
        was = self.draining
        self.draining, self.until, self.then_stop = False, None, False
        return was
