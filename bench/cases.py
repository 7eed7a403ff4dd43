"""The six cases. Each measures, saves its raw results as JSON and returns them; :mod:`bench.report` renders.

Servers are started by this process, loaded with wrk on 127.0.0.1 for a bounded time, and stopped by pid.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import servers, wrk
from bench.common import BIG_WORKERS, CORES_WORKERS, Settings, io_counters, log, order, save, smaps_rollup

BASIC = "bench.apps.basic"
SLOW = "bench.apps.slowimport"
BIG = "bench.apps.big"
PATHS = {"hello": "/", "json": "/json", "wait": "/wait"}


def _workdir(settings: Settings, case: str, name: str, rep: int) -> Path:
    path = settings.workdir / case / f"{name}-{rep}-{time.monotonic_ns()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _timeline_script(settings: Settings) -> Path:
    path = settings.workdir / "timeline.lua"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(wrk.TIMELINE_LUA)
    return path


def _result_row(res: wrk.WrkResult) -> dict[str, Any]:
    return {"rps": res.rps, "p50_ms": res.p50_ms, "p99_ms": res.p99_ms, "max_ms": res.max_ms,
            "requests": res.requests, "failed": res.failed, "timeouts": res.timeouts}  # fmt: skip


# ----------------------------------------------------------------------------------------------- throughput


def throughput_units() -> list[tuple[str, str]]:
    """(interface, server) pairs: ASGI and WSGI, corepool in each mode it has, the peers, nginx once."""
    core = servers.corepool_servers()
    asgi = [*core, "gunicorn-uvicorn", "uvicorn", "granian"]
    wsgi = [*core, "gunicorn-sync", "gunicorn-gthread", "granian"]
    return [("asgi", s) for s in asgi] + [("wsgi", s) for s in wsgi] + [("static", "nginx")]


def throughput(settings: Settings) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    units = throughput_units()
    for rep in range(settings.reps):
        for iface, name in order(units, rep):
            with servers.running(name, BASIC, iface, CORES_WORKERS, _workdir(settings, "throughput", name, rep)) as s:
                if not settings.quick:
                    wrk.run(s.port, "/", duration=1)  # warm-up: connections, caches, every worker
                paths = {"hello": "/"} if iface == "static" or settings.quick else PATHS
                for app, path in paths.items():
                    res = wrk.run(s.port, path, duration=settings.duration)
                    runs.append({"rep": rep, "interface": iface, "app": app, "server": name, **_result_row(res)})
                    log(f"throughput rep {rep + 1} {iface:6} {name:17} {app:5} {res.rps:9.0f} req/s "
                        f"p50 {res.p50_ms:6.2f} p99 {res.p99_ms:7.2f} ms failed {res.failed}")  # fmt: skip
    data = {"workers": CORES_WORKERS, "connections": wrk.CONNECTIONS, "threads": wrk.THREADS, "runs": runs}
    save(settings, "throughput", data)
    return data


# ----------------------------------------------------------------------------------------------- reload


class ExitWatcher:
    """Polls a set of pids (5 ms) and records when each one is gone."""

    def __init__(self, pids: list[int], timeout: float) -> None:
        self.gone: dict[int, float] = {}
        self._pids = pids
        self._deadline = time.monotonic() + timeout
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while len(self.gone) < len(self._pids) and time.monotonic() < self._deadline:
            for pid in self._pids:
                if pid not in self.gone and not servers.alive(pid):
                    self.gone[pid] = time.monotonic()
            time.sleep(0.005)

    def join(self) -> None:
        self._thread.join()


class Prober:
    """Fresh ``Connection: close`` requests every ~2 ms in a thread, so that a new worker gets a connection even
    while wrk's keep-alive connections stay on the workers that accepted them."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                servers.http_status(self._port, timeout=2.0)
            self._stop.wait(0.002)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _warm_all_workers(s: servers.Server, timeout: float = 30.0) -> None:
    """Load the server until every current worker has served a request."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wrk.run(s.port, "/", duration=1)
        pids = s.worker_pids()
        if len(pids) >= s.workers and all(p in s.marks() for p in pids):
            return
    raise RuntimeError(f"{s.name}: not every worker served within {timeout}s")


def _collect_in_every_worker(s: servers.Server, tries: int = 400) -> None:
    """GET /collect on fresh connections until every worker ran one full gc.collect()."""
    pids = set(s.worker_pids())
    seen: set[int] = set()
    for _ in range(tries):
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        try:
            conn.request("GET", "/collect", headers={"Connection": "close"})
            seen.add(json.loads(conn.getresponse().read())["pid"])
        finally:
            conn.close()
        if pids <= seen:
            return
    raise RuntimeError(f"{s.name}: /collect reached {len(seen & pids)} of {len(pids)} workers")


def reload_trigger(s: servers.Server) -> tuple[Callable[[], dict[str, Any] | None], str]:
    """How to start a rolling reload of ``s`` (returns corepool's answer, if any); a description for the report."""
    if s.is_corepool:

        def corepool_reload() -> dict[str, Any] | None:
            return servers.control(s.control_path, {"cmd": "reload", "wait": True}, timeout=120)

        return corepool_reload, "`corepool reload --wait` (control socket)"

    def hup() -> None:
        os.kill(s.proc.pid, signal.SIGHUP)
        return None

    return hup, "SIGHUP to the master"


def _call_and_time(fn: Callable[[], dict[str, Any] | None], into: list[tuple[float, dict[str, Any] | None]]) -> None:
    answer = fn()
    into.append((time.monotonic(), answer))


def reload(settings: Settings) -> dict[str, Any]:
    names = [*servers.corepool_servers(), "gunicorn-uvicorn", "uvicorn"]
    script = _timeline_script(settings)
    runs: list[dict[str, Any]] = []
    extra_env = {"BENCH_IMPORT_SECONDS": str(settings.import_seconds)}
    window = settings.reload_window
    workers = CORES_WORKERS if settings.quick else BIG_WORKERS
    for rep in range(settings.reps):
        for name in order(names, rep):
            wd = _workdir(settings, "reload", name, rep)
            with servers.running(name, SLOW, "asgi", workers, wd, extra_env, ready_timeout=90) as s:
                _warm_all_workers(s)
                rest = wrk.run(s.port, "/", duration=1 if settings.quick else 5, timeout_s=10)
                old = s.worker_pids()
                load = wrk.start(s.port, "/", window, timeout_s=10, script=script)
                time.sleep(1.0 if settings.quick else 2.0)
                trigger, how = reload_trigger(s)
                watcher = ExitWatcher(old, timeout=window + 30)
                prober = Prober(s.port)
                t0 = time.monotonic()
                answered: list[tuple[float, dict[str, Any] | None]] = []
                th = threading.Thread(target=_call_and_time, args=(trigger, answered), daemon=True)
                th.start()
                res = wrk.finish(load, window)
                th.join(60)
                watcher.join()
                prober.stop()
                new = [p for p in s.worker_pids() if p not in old]
                marks = s.marks()
                served = [marks[p] for p in new if p in marks and marks[p] > t0]
                complete = len(served) >= s.workers and len(watcher.gone) == len(old)
                roll_s = max([*served, *watcher.gone.values()]) - t0 if complete else None
                answer = answered[0][1] if answered else None
                row = {
                    "rep": rep, "server": name, "trigger": how, "workers": s.workers,
                    "rest": _result_row(rest), "roll": _result_row(res), "roll_s": roll_s, "complete": complete,
                    "new_serving": len(served), "old_gone": len(watcher.gone),
                    "answer_s": (answered[0][0] - t0) if answered and s.is_corepool else None,
                    "answer": answer,
                    "timeline": [(b - t0, ok, bad) for b, ok, bad in res.timeline],
                }  # fmt: skip
                runs.append(row)
                log(f"reload rep {rep + 1} {name:17} roll {roll_s if roll_s is None else round(roll_s, 2)} s "
                    f"failed {res.failed} p99 {res.p99_ms:.1f} (rest {rest.p99_ms:.1f}) max {res.max_ms:.0f} ms "
                    f"new serving {len(served)}/{s.workers} old gone {len(watcher.gone)}/{len(old)} "
                    f"{answer or ''}")  # fmt: skip
    data = {"workers": workers, "import_seconds": settings.import_seconds, "window_s": window, "runs": runs}
    save(settings, "reload", data)
    return data


# ----------------------------------------------------------------------------------------------- crash


def crash(settings: Settings) -> dict[str, Any]:
    names = [*servers.corepool_servers(), "gunicorn-uvicorn", "uvicorn", "granian"]
    script = _timeline_script(settings)
    runs: list[dict[str, Any]] = []
    window = settings.crash_window
    for rep in range(settings.reps):
        for name in order(names, rep):
            with servers.running(name, BASIC, "asgi", CORES_WORKERS, _workdir(settings, "crash", name, rep)) as s:
                _warm_all_workers(s)
                before = s.worker_pids()
                load = wrk.start(s.port, "/", window, timeout_s=5, script=script)
                time.sleep(1.0 if settings.quick else 1.5)
                victim = before[0]
                t0 = time.monotonic()
                os.kill(victim, signal.SIGKILL)
                prober = Prober(s.port)
                spawned_s = served_s = None
                deadline = t0 + 20
                new_pid = 0
                while time.monotonic() < deadline and served_s is None:
                    if not new_pid:
                        with contextlib.suppress(OSError, ValueError, KeyError):
                            fresh = [p for p in s.worker_pids() if p not in before]
                            if fresh:
                                new_pid, spawned_s = fresh[0], time.monotonic() - t0
                    if new_pid:
                        mark = s.marks().get(new_pid)
                        if mark is not None:
                            served_s = mark - t0
                    time.sleep(0.001)
                prober.stop()
                res = wrk.finish(load, window)
                row = {"rep": rep, "server": name, "spawned_s": spawned_s, "served_s": served_s,
                       **_result_row(res), "timeline": [(b - t0, ok, bad) for b, ok, bad in res.timeline]}  # fmt: skip
                runs.append(row)
                log(f"crash rep {rep + 1} {name:17} new pid after {spawned_s} s, serving after {served_s} s, "
                    f"failed {res.failed}")  # fmt: skip
    data = {"workers": CORES_WORKERS, "window_s": window, "runs": runs}
    save(settings, "crash", data)
    return data


# ----------------------------------------------------------------------------------------------- memory


def pool_pss(s: servers.Server) -> dict[str, float]:
    pids = s.pool_pids()
    rollups = [smaps_rollup(p) for p in pids]
    workers = set(s.worker_pids())
    return {
        "pss_mib": sum(r.get("Pss", 0) for r in rollups) / 1024,
        "rss_mib": sum(r.get("Rss", 0) for r in rollups) / 1024,
        "worker_pss_mib": sum(smaps_rollup(p).get("Pss", 0) for p in workers) / 1024,
        "processes": len(pids),
    }


def memory(settings: Settings) -> dict[str, Any]:
    names = [*servers.corepool_servers(), "gunicorn-uvicorn-preload", "gunicorn-uvicorn", "uvicorn", "granian"]
    runs: list[dict[str, Any]] = []
    workers = CORES_WORKERS if settings.quick else BIG_WORKERS
    for rep in range(settings.reps):
        for name in order(names, rep):
            with servers.running(name, BIG, "asgi", workers, _workdir(settings, "memory", name, rep)) as s:
                _warm_all_workers(s)
                time.sleep(0.5)
                idle = pool_pss(s)
                res = wrk.run(s.port, "/items", duration=settings.duration)
                time.sleep(0.5)
                loaded = pool_pss(s)
                _collect_in_every_worker(s)
                time.sleep(0.2)
                collected = pool_pss(s)
                runs.append({"rep": rep, "server": name, "idle": idle, "loaded": loaded, "collected": collected,
                             "rps": res.rps})  # fmt: skip
                log(f"memory rep {rep + 1} {name:24} PSS idle {idle['pss_mib']:.1f} MiB, after load "
                    f"{loaded['pss_mib']:.1f} MiB, after gc {collected['pss_mib']:.1f} MiB "
                    f"({loaded['processes']} processes)")  # fmt: skip
    data = {"workers": workers, "runs": runs}
    save(settings, "memory", data)
    return data


# ----------------------------------------------------------------------------------------------- startup


def startup(settings: Settings) -> dict[str, Any]:
    names = [*servers.corepool_servers(), "gunicorn-uvicorn", "uvicorn", "granian"]
    runs: list[dict[str, Any]] = []
    for rep in range(settings.reps):
        for app_name, module in (("hello", BASIC), ("fastapi", BIG))[: 1 if settings.quick else 2]:
            for name in order(names, rep):
                s = servers.launch(name, module, "asgi", CORES_WORKERS, _workdir(settings, "startup", name, rep))
                try:
                    first = s.wait_http(60, interval=0.002) - s.launched_at
                    all_up = s.wait_workers(60, interval=0.002) - s.launched_at
                    ready = all_up if s.is_corepool else None
                finally:
                    s.stop()
                runs.append({"rep": rep, "app": app_name, "server": name, "first_200_s": first, "ready_s": ready})
                log(f"startup rep {rep + 1} {app_name:7} {name:17} first 200 after {first:.3f} s"
                    + (f", READY after {ready:.3f} s" if ready is not None else ""))  # fmt: skip
    data = {"workers": CORES_WORKERS, "runs": runs}
    save(settings, "startup", data)
    return data


# ----------------------------------------------------------------------------------------------- fairness


def fairness(settings: Settings) -> dict[str, Any]:
    units = [("asgi", n) for n in servers.corepool_servers()] + [("wsgi", "corepool-lazy")] + [
        ("wsgi", "gunicorn-gthread"), ("asgi", "gunicorn-uvicorn"), ("asgi", "uvicorn"), ("asgi", "granian"),
        ("static", "nginx")]  # fmt: skip
    runs: list[dict[str, Any]] = []
    for rep in range(settings.reps):
        for iface, name in order(units, rep):
            with servers.running(name, BASIC, iface, CORES_WORKERS, _workdir(settings, "fairness", name, rep)) as s:
                time.sleep(0.3)
                pids = s.worker_pids()
                before = {p: io_counters(p).get("wchar", 0) for p in pids}
                res = wrk.run(s.port, "/", duration=settings.duration, connections=64)
                after = {p: io_counters(p).get("wchar", 0) for p in pids}
                written = [after[p] - before[p] for p in pids]
                runs.append({"rep": rep, "interface": iface, "server": name, "written": written, "rps": res.rps})
                total = sum(written) or 1
                log(f"fairness rep {rep + 1} {iface:6} {name:17} shares "
                    + "/".join(f"{100 * w / total:.0f}" for w in written) + f" ({res.rps:.0f} req/s)")  # fmt: skip
    data = {"workers": CORES_WORKERS, "connections": 64, "runs": runs}
    save(settings, "fairness", data)
    return data


# ----------------------------------------------------------------------------------------------- WSGI threads

THREAD_COUNTS = (10, 32, 64, 128)  # corepool --threads values tried besides its default


def wsgi_threads(settings: Settings) -> dict[str, Any]:
    """The I/O-bound WSGI case (``/wait``: 20 ms in ``time.sleep``, wrk -c64, 2 workers) for corepool with its
    default WSGI threads and with several ``--threads``, against granian: how the default was chosen."""
    core = "corepool-preload" if "corepool-preload" in servers.corepool_servers() else servers.corepool_servers()[0]
    units: list[tuple[str, tuple[str, ...]]] = [("granian", ()), (core, ())]
    units += [(core, ("--threads", str(n))) for n in THREAD_COUNTS]
    runs: list[dict[str, Any]] = []
    for rep in range(settings.reps):
        for name, flags in order(units, rep):
            label = name + (f" {' '.join(flags)}" if flags else " (default threads)" if name == core else "")
            wd = _workdir(settings, "wsgi-threads", name, rep)
            with servers.running(name, BASIC, "wsgi", CORES_WORKERS, wd, extra_args=flags) as s:
                wrk.run(s.port, PATHS["wait"], duration=1)  # warm-up: every connection and thread
                res = wrk.run(s.port, PATHS["wait"], duration=settings.duration)
            runs.append({"rep": rep, "server": label, **_result_row(res)})
            log(f"wsgi-threads rep {rep + 1} {label:36} {res.rps:8.0f} req/s p50 {res.p50_ms:6.2f} "
                f"p99 {res.p99_ms:7.2f} ms failed {res.failed}")  # fmt: skip
    data = {"workers": CORES_WORKERS, "connections": wrk.CONNECTIONS, "path": PATHS["wait"], "runs": runs}
    save(settings, "wsgi-threads", data)
    return data


CASES: dict[str, Callable[[Settings], dict[str, Any]]] = {
    "throughput": throughput,
    "reload": reload,
    "crash": crash,
    "memory": memory,
    "startup": startup,
    "fairness": fairness,
    "wsgi-threads": wsgi_threads,
}


def median(values: list[float]) -> float:
    return statistics.median(values)
