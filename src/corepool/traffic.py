"""What a worker has served, as plain numbers: requests by method and status class, and a duration histogram.

Workers keep these counts cumulative (since the worker started) and send them with every pong; the primary
adds a retired worker's last counts to the pool's totals, so the pool's counters never go down. The same value
type feeds the Prometheus endpoint (:mod:`corepool.metrics`), the canary's verdict (:mod:`corepool.canary`) and
``corepool status --watch``. Pure: no clock, no I/O.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Upper bounds (seconds) of the duration histogram, fixed for the pool's life so that workers' histograms add
# up. Finer than Prometheus' defaults below 100 ms: a p99 read from buckets is only as good as their width,
# and the canary compares p99s of fast handlers.
BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1,
    0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0,
)  # then +Inf

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def method_label(method: str) -> str:
    """The method as a label: the common ones as they are, anything else "other" (bounded cardinality)."""
    return method if method in METHODS else "other"


def status_class(status: int | None) -> str:
    """``200`` → "2xx"; no response at all (the app failed before answering: the server sent 500) → "5xx"."""
    if status is None or not 100 <= status <= 599:
        return "5xx"
    return f"{status // 100}xx"


def bucket_index(seconds: float) -> int:
    """Index of the histogram bucket (``len(BUCKETS)`` is +Inf) a request of ``seconds`` falls into."""
    return bisect.bisect_left(BUCKETS, seconds)


@dataclass(frozen=True)
class Traffic:
    """Cumulative counts: ``requests`` maps (method, status class) to a count; ``buckets`` has one count per
    :data:`BUCKETS` bound plus +Inf (not cumulative: each request is in exactly one); ``seconds`` sums the
    durations."""

    requests: Mapping[tuple[str, str], int] = field(default_factory=dict)
    buckets: tuple[int, ...] = (0,) * (len(BUCKETS) + 1)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    @property
    def errors(self) -> int:
        """Requests answered with a 5xx status."""
        return sum(n for (_, cls), n in self.requests.items() if cls == "5xx")

    def __add__(self, other: Traffic) -> Traffic:
        requests = dict(self.requests)
        for key, n in other.requests.items():
            requests[key] = requests.get(key, 0) + n
        return Traffic(requests, tuple(a + b for a, b in zip(self.buckets, other.buckets, strict=True)),
                       self.seconds + other.seconds)

    def since(self, base: Traffic) -> Traffic:
        """What was served between ``base`` (an earlier report of the same worker) and this one."""
        requests = {key: n - base.requests.get(key, 0) for key, n in self.requests.items()}
        return Traffic({k: n for k, n in requests.items() if n > 0},
                       tuple(max(0, a - b) for a, b in zip(self.buckets, base.buckets, strict=True)),
                       max(0.0, self.seconds - base.seconds))

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of durations, interpolated inside its bucket as Prometheus' histogram_quantile()
        does (None without requests; the highest finite bound when it falls in +Inf)."""
        count = sum(self.buckets)
        if count == 0:
            return None
        rank = q * count
        seen = 0
        for i, n in enumerate(self.buckets):
            if n and seen + n >= rank:
                if i == len(BUCKETS):
                    return BUCKETS[-1]
                lower = 0.0 if i == 0 else BUCKETS[i - 1]
                return lower + (BUCKETS[i] - lower) * max(0.0, rank - seen) / n
            seen += n
        return BUCKETS[-1]

    def to_wire(self) -> dict[str, Any]:
        """As JSON for a pong."""
        return {"by": [[m, c, n] for (m, c), n in sorted(self.requests.items())], "buckets": list(self.buckets),
                "sum": round(self.seconds, 6)}

    @classmethod
    def from_wire(cls, data: object) -> Traffic | None:
        """Parse :meth:`to_wire`'s output; None when it is not what a worker sends (never raises)."""
        if not isinstance(data, dict):
            return None
        by, buckets, total = data.get("by"), data.get("buckets"), data.get("sum")
        if not isinstance(by, list) or not isinstance(buckets, list) or len(buckets) != len(BUCKETS) + 1:
            return None
        if not all(type(n) is int and n >= 0 for n in buckets):
            return None
        if not isinstance(total, (int, float)) or isinstance(total, bool) or not math.isfinite(total) or total < 0:
            return None
        requests: dict[tuple[str, str], int] = {}
        for row in by:
            if not (isinstance(row, list) and len(row) == 3):
                return None
            method, cls_, n = row
            if method not in METHODS and method != "other":
                return None
            if cls_ not in STATUS_CLASSES or type(n) is not int or n < 0:
                return None
            requests[(method, cls_)] = requests.get((method, cls_), 0) + n
        return cls(requests, tuple(buckets), float(total))


def combine(parts: Iterable[Traffic]) -> Traffic:
    """The sum of several workers' counts."""
    out = Traffic()
    for part in parts:
        out = out + part
    return out
