"""The load-balancer health endpoint: 200 while the pool serves, 503 while it starts, drains, stops or has no worker.

A socket of its own — a systemd socket named ``health`` (``FileDescriptorName=health``, or
``--bind health=ADDR``) or the ``health_bind`` address — answered by the primary itself, never by a worker: the
answer is the pool's state as the primary knows it, and a socket named health never reaches a worker (the
primary closes it in every process it forks).

=========================================================  ======  =============================================
the pool                                                   answer  body starts with
=========================================================  ======  =============================================
running, every slot has a ready worker (reloads included:  200     ``ok``
capacity never drops during a roll)
running, some slots without a ready worker (a crashed      200     ``degraded``
worker being replaced), at least one ready
starting (not every worker ready yet)                      503     ``starting``
host draining (``corepool drain``, or a stop with          503     ``draining``
``drain_seconds``): every worker still serves
stopping                                                   503     ``stopping``
no ready worker                                            503     ``unavailable``
=========================================================  ======  =============================================

A degraded pool still answers 200 on purpose: one worker's crash must not take a whole host out of the
balancer, and a request of death that hit every host at once must not take out the fleet (HAProxy with every
server down answers every client 503). Degraded capacity is visible in the body, ``corepool status`` and STATUS=.

:class:`HealthServer` answers ``GET`` and ``HEAD`` on any path through :mod:`corepool.endpoint` (the tiny
non-blocking HTTP/1.x responder it shares with the metrics endpoint), at most :data:`MAX_CONNECTIONS` at once.
"""

from __future__ import annotations

import selectors
from collections.abc import Callable
from dataclasses import dataclass

from corepool import endpoint, listeners
from corepool.policy import Policy, PoolPhase

NAME = "health"  # the socket name that makes a listener the health endpoint
MAX_CONNECTIONS = 32  # checks at once (a few balancers, each checking every few seconds); beyond, the oldest goes
BACKLOG = 64


@dataclass(frozen=True)
class Verdict:
    """What the endpoint answers now: an HTTP status and a one-line reason (the body)."""

    code: int
    reason: str

    @property
    def ok(self) -> bool:
        return self.code == 200


def verdict(p: Policy) -> Verdict:
    """The health of the pool ``p`` as a load balancer should see it (pure: reads the policy's state)."""
    ready_slots = {w.slot for w in p.workers.values() if w.serving}
    ready = len(ready_slots & set(p.slots))
    counts = f"{ready}/{len(p.slots)} workers ready, generation {p.generation}"
    if p.phase in (PoolPhase.STOPPING, PoolPhase.EXITED):
        return Verdict(503, f"stopping: {counts}")
    if p.phase is not PoolPhase.RUNNING:
        return Verdict(503, f"starting: {counts}")
    if p.drain.draining:
        after = "then stopping" if p.drain.then_stop else "until cancelled"
        return Verdict(503, f"draining: this host is leaving the balancer ({after}); {counts}, still serving")
    if ready == 0:
        return Verdict(503, f"unavailable: no ready worker; {counts}")
    if ready < len(p.slots):
        return Verdict(200, f"degraded: {counts}")
    roll = f", reloading to generation {p.roll.generation}" if p.roll is not None else ""
    return Verdict(200, f"ok: {counts}{roll}")


def take_listener(found: list[listeners.Listener]) -> tuple[listeners.Listener | None, list[listeners.Listener]]:
    """Split off the socket named ``health`` (it must never reach a worker); the rest serve the app."""
    return endpoint.take_listener(found, NAME)


class HealthServer(endpoint.Endpoint):
    """Answers health checks (any path) on one listening socket, driven by the primary's selector.

    ``judge()`` is called for each check and returns the :class:`Verdict` to answer with.
    """

    max_connections = MAX_CONNECTIONS
    backlog = BACKLOG

    def __init__(self, selector: selectors.BaseSelector, judge: Callable[[], Verdict],
                 listener: listeners.Listener | None = None, bind: str | None = None) -> None:
        super().__init__(selector, listener, bind)
        self.judge = judge
        self.answered = 0

    def request(self, path: bytes, respond: endpoint.Respond) -> None:
        v = self.judge()
        self.answered += 1
        respond(v.code, v.reason.encode() + b"\n", endpoint.TEXT)
