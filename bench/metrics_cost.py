"""What the request counting and the metrics endpoint cost: ASGI hello-world throughput, three ways.

``python -m bench.metrics_cost [--reps N] [--duration S] [--base DIR]`` runs corepool from this checkout's venv
(2 workers, preload, wrk with the bench's connections) in turns:

* ``counting``: as shipped, without ``metrics_bind`` (workers count every request by method, status class and
  duration: that is always on, the canary and ``status --watch`` use it);
* ``metrics``: the same with ``--metrics-bind`` and a scraper fetching ``/metrics`` every second (15 times
  Prometheus' default interval: the endpoint's cost, with margin);
* ``base`` (with ``--base DIR``, a ``src/`` tree of an earlier commit, e.g. from ``git archive``): no counting.

The variants alternate within each repetition, so a neighbour's load spreads over all of them. Two figures per
variant, medians over the repetitions: requests/s, and the pool's CPU time per request (primary and workers,
from /proc, over the measured run). On a machine shared with other work the second is the steadier one: it
does not move with the CPU time others take, and on a CPU-bound hello world it is throughput's inverse.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from bench import wrk
from bench.common import CORES_WORKERS
from bench.servers import free_port, http_status

REPO = Path(__file__).resolve().parent.parent


class Scraper:
    """GET /metrics every ``interval`` seconds until stopped; counts the scrapes that answered 200."""

    def __init__(self, port: int, interval: float = 1.0) -> None:
        self.port, self.interval, self.ok = port, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                conn.request("GET", "/metrics")
                response = conn.getresponse()
                response.read()
                self.ok += response.status == 200
            except OSError:
                pass
            finally:
                conn.close()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.ok


def cpu_seconds(root: int) -> float:
    """User + system CPU time of ``root`` and its children, in seconds."""
    pids = [root]
    with contextlib.suppress(OSError):
        pids += [int(p) for p in Path(f"/proc/{root}/task/{root}/children").read_text().split()]
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def pool(src: Path, workdir: Path, metrics_port: int | None) -> Iterator[tuple[int, int]]:
    port = free_port()
    argv = [sys.executable, "-m", "corepool", "serve", "bench.apps.basic:app", "--bind", f"127.0.0.1:{port}",
            "--workers", str(CORES_WORKERS), "--control", str(workdir / "control.sock"), "--app-dir", str(REPO),
            "--no-access-log", "--log-level", "warning"]
    if metrics_port is not None:
        argv += ["--metrics-bind", f"127.0.0.1:{metrics_port}"]
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{REPO}"}
    with (workdir / "server.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((workdir / "server.log").read_text())
            time.sleep(0.05)
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _answers(port: int) -> bool:
    try:
        return http_status(port) == 200
    except OSError:
        return False


def measure(name: str, src: Path, workdir: Path, duration: float) -> tuple[float, float]:
    """(requests/s, CPU microseconds per request) of one run."""
    workdir.mkdir(parents=True, exist_ok=True)
    metrics_port = free_port() if name == "metrics" else None
    with pool(src, workdir, metrics_port) as (port, pid):
        wrk.run(port, "/", duration=1)  # warm-up
        scraper = Scraper(metrics_port) if metrics_port is not None else None
        before = cpu_seconds(pid)
        result = wrk.run(port, "/", duration=duration)
        cpu = cpu_seconds(pid) - before
        scrapes = scraper.stop() if scraper is not None else 0
    per_request = cpu / max(1, result.requests) * 1e6
    print(f"{name:9} {result.rps:9.0f} req/s  {per_request:6.1f} us CPU/request  p99 {result.p99_ms:6.2f} ms  "
          f"failed {result.failed}" + (f"  scrapes {scrapes}" if scraper is not None else ""), flush=True)
    return result.rps, per_request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--base", type=Path, help="an earlier commit's src/ tree: measure it too")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/corepool-metrics-cost"))
    args = parser.parse_args(argv)
    variants = {"counting": REPO / "src", "metrics": REPO / "src"}
    if args.base is not None:
        variants = {"base": args.base, **variants}
    signal.signal(signal.SIGTERM, _interrupted)  # so that a stopped run still stops its pool
    rps: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for rep in range(args.reps):
        names = list(variants)
        names = names[rep % len(names):] + names[:rep % len(names)]  # rotate the order every repetition
        for name in names:
            r, c = measure(name, variants[name], args.workdir / f"{name}-{rep}", args.duration)
            rps[name].append(r)
            cpu[name].append(c)
    ref_rps, ref_cpu = statistics.median(rps["counting"]), statistics.median(cpu["counting"])
    print(f"\nmedian of {args.reps} x {args.duration:g}s, {CORES_WORKERS} workers, {wrk.CONNECTIONS} connections:")
    print("| variant | req/s (median, range) | vs counting | CPU us/request (median, range) | vs counting |")
    print("|---|---|---|---|---|")
    for name in variants:
        med_rps, med_cpu = statistics.median(rps[name]), statistics.median(cpu[name])
        print(f"| {name} | {med_rps:.0f} ({min(rps[name]):.0f}-{max(rps[name]):.0f}) | {med_rps / ref_rps:.3f} | "
              f"{med_cpu:.1f} ({min(cpu[name]):.1f}-{max(cpu[name]):.1f}) | {med_cpu / ref_cpu:.3f} |")
    return 0


def _interrupted(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
