"""Summaries and Markdown rendering: median, min-max, ratios (pure; unit-tested)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    """Median and range of one measurement over the repetitions."""

    median: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            raise ValueError("no values to summarise")
        return cls(statistics.median(values), min(values), max(values), len(values))


def num(value: float, digits: int = 0) -> str:
    """A number with thin grouping for thousands (``12 345``) and ``digits`` decimals."""
    return f"{value:,.{digits}f}".replace(",", "\u202f")


def fmt(values: Sequence[float], digits: int = 0) -> str:
    """``median (min-max)``; just the value when there is one repetition or no spread."""
    if not values:
        return "-"
    s = Summary.of(values)
    if s.n == 1 or s.lo == s.hi:
        return num(s.median, digits)
    return f"{num(s.median, digits)} ({num(s.lo, digits)}-{num(s.hi, digits)})"


def ratio(ours: float | None, theirs: float | None, digits: int = 2) -> str:
    """``ours / theirs`` as ``1.23x``; ``-`` when either is missing or ``theirs`` is zero."""
    if ours is None or theirs is None or theirs == 0:
        return "-"
    return f"{ours / theirs:.{digits}f}x"


def median_or_none(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def share_split(counts: Sequence[float]) -> str:
    """Each worker's share of the total in percent, largest first: ``52/48``."""
    total = sum(counts)
    if total <= 0:
        return "-"
    return "/".join(f"{100 * c / total:.0f}" for c in sorted(counts, reverse=True))


def max_share_deviation(counts: Sequence[float]) -> float:
    """Largest relative deviation of a worker's share from 1/N, in percent (±15 % is the goal)."""
    total = sum(counts)
    if total <= 0 or not counts:
        return float("nan")
    fair = total / len(counts)
    return max(abs(c - fair) / fair for c in counts) * 100


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table; ``|`` in cells is escaped."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    out = [line(headers), "|" + "|".join("---" for _ in headers) + "|"]
    out += [line(row) for row in rows]
    return "\n".join(out) + "\n"
