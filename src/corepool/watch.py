"""``corepool status --watch``: the pool's table, redrawn every second.

Each second the status is fetched again over the control socket (which pings every worker first, so the counts
are fresh). Requests per second and the p99 come from the difference between the newest status and one up to
:data:`WINDOW` seconds older, per worker. On a terminal the table is redrawn in place with rich's ``Live``;
otherwise (a pipe, a file, a journal) each frame is printed as plain text, one after the other.
"""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from corepool.crashpolicy import UNPLANNED
from corepool.status import _mib, _seconds
from corepool.traffic import BUCKETS, Traffic

WINDOW = 5.0  # seconds of history behind requests/s and p99
COLUMNS = ("SLOT", "PID", "GEN", "STATE", "UPTIME", "REQ/S", "P99", "BUSY", "RSS", "LAST PONG", "DEATHS")


@dataclass
class _Sample:
    at: float
    requests: int
    buckets: tuple[int, ...] | None


@dataclass
class Rates:
    """Per-worker history of (time, requests, latency buckets), keyed by pid."""

    window: float = WINDOW
    history: dict[int, collections.deque[_Sample]] = field(default_factory=dict)

    def add(self, status: dict[str, Any], now: float) -> None:
        alive = set()
        for w in status.get("workers", []):
            pid = w.get("pid")
            if pid is None:
                continue
            alive.add(pid)
            buckets = w.get("latency_buckets")
            samples = self.history.setdefault(pid, collections.deque())
            samples.append(_Sample(now, int(w.get("requests", 0)), tuple(buckets) if buckets else None))
            while len(samples) > 2 and now - samples[1].at >= self.window:
                samples.popleft()
        for pid in [pid for pid in self.history if pid not in alive]:
            del self.history[pid]

    def of(self, pid: int | None) -> tuple[float | None, float | None]:
        """(requests per second, p99 seconds) over the window; None until there are two samples."""
        samples = self.history.get(pid) if pid is not None else None
        if not samples or len(samples) < 2:
            return None, None
        old, new = samples[0], samples[-1]
        elapsed = new.at - old.at
        rate = max(0, new.requests - old.requests) / elapsed if elapsed > 0 else None
        p99 = None
        if old.buckets is not None and new.buckets is not None and len(new.buckets) == len(BUCKETS) + 1:
            delta = tuple(max(0, a - b) for a, b in zip(new.buckets, old.buckets, strict=False))
            p99 = Traffic({}, delta).quantile(0.99)
        return rate, p99


def rows(status: dict[str, Any], rates: Rates) -> list[tuple[str, ...]]:
    """The table's rows, as text."""
    deaths = {s["slot"]: s.get("deaths", {}) for s in status.get("slots", [])}
    out: list[tuple[str, ...]] = []
    for w in status.get("workers", []):
        rate, p99 = rates.of(w.get("pid"))
        slot_deaths = deaths.get(w["slot"], {})
        died = ", ".join(f"{slot_deaths[c.value]} {c.value}" for c in UNPLANNED if slot_deaths.get(c.value))
        busy = f"{w.get('busy_threads', 0)}/{w['threads']}" if w.get("threads") else str(w.get("inflight", 0))
        out.append((
            str(w["slot"]), str(w.get("pid") or "-"), str(w["generation"]), w["state"], _seconds(w["uptime"]),
            "-" if rate is None else f"{rate:.1f}", "-" if p99 is None else f"{p99 * 1000:.1f}ms", busy,
            _mib(w.get("rss_bytes")), _seconds(w.get("last_pong_ago")), died or "-",
        ))
    return out


def headline(status: dict[str, Any]) -> str:
    text = (f"corepool {status.get('name')!r} primary {status.get('pid')}: {status.get('phase')}, generation "
            f"{status.get('generation')}, {status.get('workers_ready')}/{status.get('workers_wanted')} workers ready, "
            f"{status.get('requests')} requests")
    if status.get("reloading"):
        text += " (reloading)"
    last = status.get("last_reload")
    if last:
        text += f"; last reload {'ok' if last['ok'] else 'ROLLED BACK'}: {last['reason']}"
    return text


def plain(status: dict[str, Any], rates: Rates) -> str:
    """One frame as plain text (BUSY: busy/total WSGI threads, or in-flight requests for ASGI workers)."""
    table = [COLUMNS, *rows(status, rates)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = [time.strftime("%H:%M:%S ") + headline(status)]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
              for row in table]
    return "\n".join(lines)


def _rich(status: dict[str, Any], rates: Rates) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold")
    for name in COLUMNS:
        table.add_column(name, justify="left" if name in ("STATE", "DEATHS") else "right")
    for row in rows(status, rates):
        style = {"booting": "yellow", "draining": "dim"}.get(row[3])
        if row[-1] != "-":
            style = "red"
        table.add_row(*row, style=style)
    return Group(Text(headline(status), style="bold"), table)


def run(fetch: Callable[[], dict[str, Any]], out: TextIO | None = None, interval: float = 1.0,
        frames: int | None = None) -> int:
    """Redraw until interrupted (or ``frames`` frames); ``fetch`` returns the status as ``status --json`` has it."""
    out = out or sys.stdout
    rates = Rates()
    shown = 0
    try:
        if out.isatty():
            from rich.console import Console
            from rich.live import Live

            status = fetch()
            rates.add(status, time.monotonic())
            with Live(_rich(status, rates), console=Console(file=out), auto_refresh=False) as live:
                while frames is None or shown < frames:
                    shown += 1
                    time.sleep(interval)
                    status = fetch()
                    rates.add(status, time.monotonic())
                    live.update(_rich(status, rates), refresh=True)
            return 0
        while frames is None or shown < frames:
            if shown:
                time.sleep(interval)
            status = fetch()
            rates.add(status, time.monotonic())
            print(plain(status, rates) + "\n", file=out, flush=True)
            shown += 1
    except KeyboardInterrupt:
        pass
    return 0
