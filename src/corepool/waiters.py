"""Clients the primary answers later: control requests waiting for the policy's :class:`~corepool.events.Answer`
(by ticket), ``reload --wait`` clients waiting for their reload to finish, and status requests and scrapes
waiting (briefly) for fresh pongs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from corepool import health
from corepool.control import Reply
from corepool.events import Answer
from corepool.policy import Policy

STATUS_WAIT = 0.25  # how long `corepool status` (or a scrape) waits for fresh pongs before answering with what it has


@dataclass(frozen=True)
class Pending:
    """A control request the policy answers: its command, whether it waits for the result, and its reply."""

    cmd: str
    reply: Reply
    wait: bool = False


class Tickets:
    """Control requests by the ticket their event carries, until the policy answers it."""

    def __init__(self) -> None:
        self._next = 1
        self.open: dict[int, Pending] = {}

    def issue(self, pending: Pending) -> int:
        ticket, self._next = self._next, self._next + 1
        self.open[ticket] = pending
        return ticket

    def take(self, ticket: int | None) -> Pending | None:
        return None if ticket is None else self.open.pop(ticket, None)


@dataclass
class ReloadWaiters:
    """``reload --wait`` clients: those answered by the reload to each generation, and those queued behind the
    roll (or start-up) in progress, who wait for the next reload to start."""

    by_generation: dict[int, list[Reply]] = field(default_factory=dict)
    next_reload: list[Reply] = field(default_factory=list)

    def wait_for(self, generation: int, reply: Reply) -> None:
        self.by_generation.setdefault(generation, []).append(reply)

    def started(self, generation: int) -> None:
        self.by_generation.setdefault(generation, []).extend(self.next_reload)
        self.next_reload = []

    def finished(self, generation: int, ok: bool, reason: str) -> None:
        for reply in self.by_generation.pop(generation, []):
            reply({"ok": ok, "generation": generation, "reason": reason})


@dataclass
class StatusWaiter:
    deadline: float
    waiting: set[int]  # workers whose pong is awaited
    reply: Reply


@dataclass
class StatusWaiters:
    """Status requests (and scrapes) waiting for the workers pinged for them, until :data:`STATUS_WAIT` is over."""

    pending: list[StatusWaiter] = field(default_factory=list)

    def add(self, now: float, waiting: set[int], reply: Reply) -> None:
        self.pending.append(StatusWaiter(now + STATUS_WAIT, waiting, reply))

    def deadlines(self) -> list[float]:
        return [w.deadline for w in self.pending]

    def answer(self, now: float, pinged: Callable[[int], bool], status: Callable[[], dict[str, Any]]) -> None:
        """Answer every waiter whose workers all answered (``pinged``: still waiting for that one's pong), or whose
        time is up."""
        still: list[StatusWaiter] = []
        for w in self.pending:
            w.waiting = {wid for wid in w.waiting if pinged(wid)}
            if w.waiting and now < w.deadline:
                still.append(w)
            else:
                w.reply({"ok": True, "status": status()})
        self.pending = still


def answer(pending: Pending, given: Answer, p: Policy, reloads: ReloadWaiters) -> None:
    """Reply to a control request as control.py's table says, once the policy answered it (``p``: its state
    after the request)."""
    if given.refused is not None:
        pending.reply({"ok": False, "error": given.refused})
    elif pending.cmd == "drain":
        v = health.verdict(p)
        pending.reply({"ok": True, "health": v.code, "reason": v.reason, "drain_seconds": p.timing.drain_seconds})
    elif not pending.wait:
        pending.reply({"ok": True, "generation": given.generation, "queued": given.queued})
    elif given.queued:
        reloads.next_reload.append(pending.reply)
    elif p.roll is not None and p.roll.generation == given.generation:
        reloads.wait_for(p.roll.generation, pending.reply)
    else:  # the roll is already over
        last = p.last_reload
        pending.reply({"ok": bool(last and last.ok), "generation": last.generation if last else None,
                       "reason": last.reason if last else "no reload ran"})
