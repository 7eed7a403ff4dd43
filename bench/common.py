"""What every case shares: the run settings, result files, and small /proc readers."""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import env

CORES_WORKERS = 2  # one worker per core on the 2-core bench machine, for every server
BIG_WORKERS = 4  # the reload and memory cases: a pool of 4 workers


@dataclass
class Settings:
    """How long and how often to measure. ``quick`` is the CI smoke run (one repetition, tiny durations)."""

    quick: bool = False
    reps: int = 3
    duration: float = 4.0  # wrk seconds per throughput measurement
    reload_window: float = 12.0  # wrk seconds around a rolling reload (the signal goes at +2 s)
    crash_window: float = 5.0
    import_seconds: float = 2.0
    results: Path = env.STATE / "results"
    out: Path = env.REPO / "docs" / "benchmarks"
    workdir: Path = env.STATE / "run"

    @classmethod
    def make(cls, quick: bool, reps: int | None, out: Path | None) -> Settings:
        if quick:
            quick = env.STATE / "quick"
            s = cls(quick=True, reps=1, duration=1.0, reload_window=3.0, crash_window=2.0, import_seconds=0.5,
                    results=quick / "results", out=quick, workdir=quick / "run")  # fmt: skip
        else:
            s = cls()
        if reps is not None:
            s.reps = reps
        if out is not None:
            s.out = out
        return s

    def as_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def order(items: list[Any], rep: int) -> list[Any]:
    """Alternate the servers between repetitions: forwards on even repetitions, backwards on odd ones."""
    return list(items) if rep % 2 == 0 else list(reversed(items))


def save(settings: Settings, case: str, data: dict[str, Any]) -> Path:
    settings.results.mkdir(parents=True, exist_ok=True)
    data = {"case": case, "finished": time.strftime("%Y-%m-%d %H:%M:%S %z"), "settings": settings.as_dict(),
            "loadavg_after": Path("/proc/loadavg").read_text().split()[:3], "checkout": env.checkout(),
            "corepool_modes": list(env.corepool_modes()), **data}  # fmt: skip
    path = settings.results / f"{case}.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def load(settings: Settings, case: str) -> dict[str, Any] | None:
    path = settings.results / f"{case}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def smaps_rollup(pid: int) -> dict[str, int]:
    """Fields of /proc/PID/smaps_rollup in kB (empty if the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+):\s+(\d+) kB", text, re.M)}


def io_counters(pid: int) -> dict[str, int]:
    """/proc/PID/io (all threads of the process)."""
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return {}
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        with contextlib.suppress(ValueError):
            out[key.strip()] = int(value)
    return out


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
