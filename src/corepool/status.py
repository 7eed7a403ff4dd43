"""The pool's status: as data (``corepool status --json``), as systemd's one-line STATUS=, and as text."""

from __future__ import annotations

import os
from typing import Any

from corepool.crashpolicy import Cause
from corepool.health import verdict
from corepool.policy import Policy, counted
from corepool.traffic import BUCKETS


def snapshot(p: Policy, now: float, **pool: Any) -> dict[str, Any]:
    """Everything ``corepool status`` shows; ``pool`` adds what the primary knows (name, listeners, ...)."""
    last = p.last_reload
    return {
        "pid": os.getpid(),
        **pool,
        "phase": p.phase.value,
        "mode": "preload" if p.preload else "lazy",
        "generation": p.generation,
        "workers_wanted": p.workers_wanted,
        "workers_ready": p.ready_count(),
        "reloading": p.reloading,
        "last_reload": None
        if last is None
        else {
            "generation": last.generation,
            "ok": last.ok,
            "reason": last.reason,
            "ago": round(now - last.finished_at, 3),
        },
        "latency_bounds": list(BUCKETS),  # the upper bounds of each worker's latency_buckets (+Inf last)
        "loaders": [
            {"generation": g, "pid": loader.pid, "ready": loader.ready, "stopping": loader.stopping}
            for g, loader in sorted(p.loaders.items())
        ],
        "workers": [
            {
                "pid": w.pid,
                "slot": w.slot,
                "generation": w.generation,
                "state": w.state.value,
                "uptime": round(now - w.spawned_at, 3),
                "requests": w.requests,
                "inflight": w.inflight,
                "oldest_request": None if w.oldest is None else {"request": w.oldest, "running": w.oldest_age},
                "busy_threads": w.busy_threads,
                "threads": w.threads,
                "rss_bytes": rss_bytes(w.pid),
                "last_pong_ago": None if w.last_pong_at is None else round(now - w.last_pong_at, 3),
                # Cumulative since the worker started, as of its last pong (for rates and p99: status --watch).
                "errors_5xx": None if w.traffic is None else w.traffic.errors,
                "latency_buckets": None if w.traffic is None else list(w.traffic.buckets),
            }
            for w in sorted(p.workers.values(), key=lambda w: (w.slot, w.wid))
        ],
        "slots": [
            {
                "slot": s.index,
                "generation": s.generation,
                "failures": s.failures,
                "retry_in": None if s.retry_at is None else round(max(0.0, s.retry_at - now), 3),
                "last_error": s.last_error,
                "deaths": {cause.value: n for cause, n in sorted(s.deaths.items(), key=lambda item: item[0].value)},
            }
            for s in sorted(p.slots.values(), key=lambda s: s.index)
        ],
    }


def health(p: Policy, address: str | None, now: float) -> dict[str, Any]:
    """The health endpoint as ``corepool status`` shows it: its address, its answer now, and a host drain."""
    v = verdict(p)
    until = p.drain.until
    return {"address": address, "code": v.code, "reason": v.reason, "draining": p.drain.draining,
            "then_stop": p.drain.then_stop, "drain_left": None if until is None else round(max(0.0, until - now), 3)}


def line(p: Policy, requests: int, broadcast: str | None = None) -> str:
    """The one-line summary systemd shows as the unit's status (``broadcast``: the backend's note, if any)."""
    text = (f"{p.ready_count()}/{p.workers_wanted} workers ready, generation {p.generation}, "
            f"{counted(requests, 'request')}")
    if p.drain.draining and not p.phase.stopping:
        text += "; host draining (health 503)" + (", then stopping" if p.drain.then_stop else "")
    if p.reloading and p.roll is not None:
        text += f"; reloading to generation {p.roll.generation}"
    elif p.last_reload is not None:
        text += f"; last reload {'ok' if p.last_reload.ok else _rolled_back(p.last_reload.reason)}"
    backing_off = [s.index for s in p.slots.values() if s.retry_at is not None]
    if backing_off:
        text += f"; backing off slots {backing_off}"
    unplanned = sorted((cause.value, n) for cause, n in death_counts(p).items() if cause.unplanned)
    if unplanned:
        text += "; deaths: " + ", ".join(f"{n} {cause}" for cause, n in unplanned)
    if broadcast:
        text += f"; {broadcast}"
    return text


# systemd keeps a STATUS= of a few KiB at most, and `systemctl status` shows it on one line: the first part of a
# long reason (an exception's message) says why; the journal's reload line has all of it.
STATUS_REASON_MAX = 200


def _rolled_back(reason: str) -> str:
    """'rolled back: <why>', shortened for the status line (a rollback's reason starts with 'rolled back')."""
    why = reason.removeprefix("rolled back").removeprefix(":").strip()
    if len(why) > STATUS_REASON_MAX:
        why = why[: STATUS_REASON_MAX - 1].rstrip() + "…"
    return f"rolled back: {why}" if why else "rolled back"


def death_counts(p: Policy) -> dict[Cause, int]:
    """Worker ends by cause, over every slot."""
    total: dict[Cause, int] = {}
    for slot in p.slots.values():
        for cause, n in slot.deaths.items():
            total[cause] = total.get(cause, 0) + n
    return total


def rss_bytes(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}s" if value < 120 else f"{value / 60:.0f}m"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 1048576:.1f}M"


def format_text(status: dict[str, Any]) -> str:
    """The human-readable ``corepool status``."""
    lines = [
        f"corepool {status['name']!r} primary {status['pid']}: {status['phase']}, generation {status['generation']}, "
        f"{status['workers_ready']}/{status['workers_wanted']} workers ready, {counted(status['requests'], 'request')}"
        + (" (reloading)" if status["reloading"] else ""),
        "listening on " + ", ".join(f"{x['address']} ({x['source']})" for x in status["listeners"])
        + (f"; metrics on {status['metrics']}" if status.get("metrics") else ""),
    ]
    last = status.get("last_reload")
    if last:
        verdict = "ok" if last["ok"] else "ROLLED BACK"
        ago = _seconds(last["ago"])
        lines.append(f"last reload: generation {last['generation']} {verdict} {ago} ago: {last['reason']}")
    health = status.get("health")
    if health:
        lines.append(f"health {health['code']} on {health['address']}: {health['reason']}")
    bcast = status.get("broadcast") or {}
    if bcast.get("backend") == "redis":
        dropped = sum(bcast.get("dropped", {}).values())
        lines.append(f"broadcast: redis {bcast['url']} channel {bcast['channel']!r}: {bcast['state']}"
                     + (f" ({bcast['error']})" if bcast.get("error") else "")
                     + f"; {bcast['published']} published, {bcast['received']} received, {dropped} dropped")
    if status.get("config_error"):
        lines.append(f"config not reloaded: {status['config_error']}")
    header = ("SLOT", "PID", "GEN", "STATE", "UPTIME", "REQUESTS", "IN FLIGHT", "THREADS", "RSS", "LAST PONG")
    lines.append("{:>4} {:>7} {:>4} {:<9} {:>8} {:>9} {:>9} {:>7} {:>8} {:>10}".format(*header))
    for w in status["workers"]:
        threads = f"{w.get('busy_threads', 0)}/{w['threads']}" if w.get("threads") else "-"
        lines.append(
            f"{w['slot']:>4} {w['pid'] or '-':>7} {w['generation']:>4} {w['state']:<9} {_seconds(w['uptime']):>8} "
            f"{w['requests']:>9} {w.get('inflight', 0):>9} {threads:>7} {_mib(w['rss_bytes']):>8} "
            f"{_seconds(w['last_pong_ago']):>10}"
        )
    for s in status["slots"]:
        if s["failures"] or s["retry_in"] is not None:
            retry = f", retry in {_seconds(s['retry_in'])}" if s["retry_in"] is not None else ""
            lines.append(f"slot {s['slot']}: {s['failures']} failures in a row{retry} (backoff): {s['last_error']}")
        if s.get("deaths"):
            counts = ", ".join(f"{n} {cause}" for cause, n in s["deaths"].items())
            lines.append(f"slot {s['slot']}: worker ends by cause: {counts}")
    return "\n".join(lines)
