"""The canary's verdict: does a reload's first new worker do worse than the old generation over the same window?

With ``canary_seconds`` > 0 a reload pauses once its first new worker (the canary) is ready: the canary serves
next to every old worker (its slot's old worker keeps serving too, so a rollback never depends on re-importing
the old code) while :class:`corepool.policy.Policy` counts what each served over the window. :func:`judge` then
compares the two windows:

* **5xx rate**: rolled back when the canary's is above the old generation's by more than ``max_error_rate``
  (0.02: two percentage points).
* **p99 latency**, read from the duration histograms as Prometheus' ``histogram_quantile()`` does: rolled back
  when the canary's is above the old generation's times ``max_p99_ratio``. Judged only when both windows hold
  at least :data:`MIN_LATENCY_SAMPLES` requests (a p99 of a handful of requests is their maximum: noise).
* A canary that served no request is not judged: the roll goes on (say so in the reason).

Pure: counts in, a :class:`Verdict` with its figures out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from corepool.traffic import Traffic

MIN_LATENCY_SAMPLES = 20


@dataclass(frozen=True)
class Rules:
    """The canary settings: ``seconds`` 0 turns canaries off."""

    seconds: float = 0.0
    max_error_rate: float = 0.02
    max_p99_ratio: float = 2.0


@dataclass(frozen=True)
class Figures:
    """One window: requests, 5xx answers, their rate, and the p99 duration (None without requests)."""

    requests: int
    errors: int
    error_rate: float
    p99: float | None

    @classmethod
    def of(cls, counts: Traffic) -> Figures:
        n, errors = counts.total, counts.errors
        return cls(n, errors, errors / n if n else 0.0, counts.quantile(0.99))

    def text(self) -> str:
        p99 = "-" if self.p99 is None else _ms(self.p99)
        return f"5xx {self.error_rate:.1%} ({self.errors}/{self.requests}), p99 {p99}"


@dataclass(frozen=True)
class Verdict:
    """``ok`` False: roll back. ``reason`` is one line with the figures, for the journal and ``reload --wait``."""

    ok: bool
    reason: str
    canary: Figures
    old: Figures
    failed: tuple[str, ...] = ()  # what was over the tolerance: "error_rate", "p99"


def judge(old: Traffic, new: Traffic, rules: Rules) -> Verdict:
    """Compare the canary's window (``new``) with the old generation's (``old``, every old worker summed)."""
    c, o = Figures.of(new), Figures.of(old)
    figures = f"canary {c.text()}; old generation {o.text()}"
    if c.requests == 0:
        return Verdict(True, f"no request reached the canary: nothing to judge ({figures})", c, o)
    failed: list[str] = []
    if c.error_rate > o.error_rate + rules.max_error_rate:
        failed.append("error_rate")
    if (
        c.requests >= MIN_LATENCY_SAMPLES
        and o.requests >= MIN_LATENCY_SAMPLES
        and c.p99 is not None
        and o.p99 is not None
        and c.p99 > o.p99 * rules.max_p99_ratio
    ):
        failed.append("p99")
    if not failed:
        return Verdict(True, f"within tolerance ({figures})", c, o)
    why = []
    if "error_rate" in failed:
        why.append(f"5xx rate {c.error_rate:.1%} > {o.error_rate:.1%} + {rules.max_error_rate:.1%}")
    if "p99" in failed:
        assert c.p99 is not None and o.p99 is not None
        why.append(f"p99 {_ms(c.p99)} > {_ms(o.p99)} x {rules.max_p99_ratio:g}")
    return Verdict(False, f"{' and '.join(why)} ({figures})", c, o, tuple(failed))


class Reporter(Protocol):
    """What the watch reads of a worker (the policy's :class:`~corepool.poolstate.Worker` is one)."""

    wid: int
    traffic: Traffic | None
    last_pong_at: float | None
    traffic_at: float | None


def reported_since(w: Reporter, when: float) -> bool:
    """The worker sent counts (a pong, or unsolicited stats) at ``when`` or later."""
    return max(w.last_pong_at or 0.0, w.traffic_at or 0.0) >= when


@dataclass
class Watch:
    """A canary being watched (the bookkeeping the policy keeps in its roll).

    ``base``: each old worker's counts at the window's start (its first report after the start; a worker that
    has not reported yet is not in it); the canary's own base is zero, it started with the window.
    ``collect_until``: set when the window is over and the policy waits for every worker's last counts.
    """

    wid: int
    started_at: float
    until: float
    base: dict[int, Traffic] = field(default_factory=dict)
    collect_until: float | None = None

    def note(self, wid: int, counts: Traffic, now: float) -> None:
        """A worker's report: an old worker's first one in the window is its base."""
        if wid != self.wid and wid not in self.base and now >= self.started_at:
            self.base[wid] = counts

    def due_at(self, workers: Iterable[Reporter]) -> float:
        """When the policy acts on this watch next: at the window's end (ask everyone for their counts), then
        once every worker involved has reported since, or at ``collect_until`` at the latest (judge)."""
        if self.collect_until is None:
            return self.until
        involved = [w for w in workers if w.wid == self.wid or w.wid in self.base]
        if all(reported_since(w, self.until) for w in involved):
            return self.until  # passed already: judge now
        return self.collect_until

    def verdict(self, workers: Mapping[int, Reporter], rules: Rules) -> Verdict | None:
        """The canary against the old workers that reported since the window's end; None when the canary itself
        did not (its serving loop does not answer)."""
        new = workers.get(self.wid)
        if new is None or not reported_since(new, self.until):
            return None
        old = Traffic()
        for w in workers.values():
            base = self.base.get(w.wid)
            if base is not None and w.traffic is not None and reported_since(w, self.until):
                old = old + w.traffic.since(base)
        return judge(old, new.traffic or Traffic(), rules)  # an engine without HTTP counts: nothing to judge


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"
