"""CPU time per request: corepool (this checkout, and earlier commits) against its peers, in one run.

``python -m bench cpu [--against REV ...] [--cases asgi-hello,wsgi-hello,...] [--reps N] [--duration S]
[--check] [--record]``

Each unit is a server (2 workers) under wrk (``-c64``) for ``--duration`` seconds after a warm-up; its figure is
the CPU time (user + system) of *all* its processes — the primary, loaders and workers for corepool, the master
and workers for the peers — over the measured run, divided by the requests wrk counted. On a shared machine this
is the steady figure: throughput falls when a neighbour takes CPU, CPU per request hardly moves. The units
alternate within each repetition (forwards, then backwards), and the report is the median over repetitions,
with the ratio of each unit to the peer a user would pick instead (uvicorn for ASGI, granian for WSGI).

``--against REV``: the same corepool at an earlier commit (``git archive REV src``, first on ``PYTHONPATH``), for
the A/B of a change. ``--check``: exit 1 when a ratio is over its limit (``LIMITS``: CI's regression gate).
``--record``: write the bridge's measured ratio to uvicorn into ``RECORD`` (the gate's reference).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import env, servers, wrk
from bench.common import CORES_WORKERS, log, order

BASIC = "bench.apps.basic"
PATHS = {"hello": "/", "json": "/json", "wait": "/wait"}
RECORD = Path(__file__).with_name("cpu-record.json")
# CI's regression gate: corepool's CPU per request over its reference's, at most (wide enough for a noisy 2-core
# machine, narrow enough that the 30 % the front line once cost would have failed).
# WSGI hello is measured on the engine `auto` picks (granian's worker where corepool[granian] is installed): issue 15
# asks for 1.25x granian's CLI; corepool needs 1.08x-1.50x there today, run to run on this 2-core machine (median
# about 1.15x: its head checks, counts and clock per request), so the gate sits at 1.6x, which a 30 % regression
# from the median still fails.
LIMITS = {"asgi-hello": ("uvicorn", 1.25), "wsgi-hello": ("granian", 1.6)}
BRIDGE_LIMIT = 1.25  # the bridge's ratio to uvicorn, at most this times the recorded one
BRIDGE = "corepool-bridge"  # the unit that runs WSGI on the bridge when another engine is corepool's default


@dataclass(frozen=True)
class Unit:
    label: str  # "corepool", "corepool@abc123", "uvicorn", ...
    server: str  # a bench.servers name
    src: Path | None = None  # an earlier commit's src/ tree
    args: tuple[str, ...] = ()


def cpu_ticks(pids: list[int]) -> int:
    """utime + stime of these processes, in clock ticks."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total


def measure(unit: Unit, interface: str, app: str, duration: float, workdir: Path) -> tuple[float, float]:
    """(requests/s, CPU microseconds per request) of one run of ``unit``."""
    extra_env = {"PYTHONPATH": f"{unit.src}{os.pathsep}{env.REPO}"} if unit.src is not None else None
    with servers.running(unit.server, BASIC, interface, CORES_WORKERS, workdir, extra_env=extra_env,
                         extra_args=unit.args) as server:  # fmt: skip
        wrk.run(server.port, PATHS[app], duration=1)  # warm-up: connections, caches, every worker
        pids = server.pool_pids()
        before = cpu_ticks(pids)
        result = wrk.run(server.port, PATHS[app], duration=duration)
        ticks = cpu_ticks(pids) - before
    per_request = ticks / os.sysconf("SC_CLK_TCK") / max(1, result.requests) * 1e6
    log(f"cpu {unit.label:22} {interface}-{app:5} {result.rps:9.0f} req/s {per_request:7.1f} us/request "
        f"failed {result.failed}")
    return result.rps, per_request


@contextlib.contextmanager
def source_trees(revs: list[str]) -> Iterator[dict[str, Path]]:
    """REV -> a temporary copy of that commit's src/."""
    with tempfile.TemporaryDirectory(prefix="corepool-cpu-") as tmp:
        trees = {}
        for rev in revs:
            dest = Path(tmp) / rev.replace("/", "_")
            dest.mkdir()
            archive = subprocess.run(["git", "-C", str(env.REPO), "archive", rev, "src"], check=True,
                                     capture_output=True).stdout  # fmt: skip
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                # our own commit's files; the "data" filter where this Python has it (3.11.4 and later)
                tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
            trees[rev] = dest / "src"
        yield trees


def units_for(interface: str, trees: dict[str, Path]) -> list[Unit]:
    core = [Unit("corepool", "corepool-preload")]
    core += [Unit(f"corepool@{rev}", "corepool-preload", src) for rev, src in trees.items()]
    if interface == "asgi":
        return core + [Unit(name, name) for name in ("uvicorn", "gunicorn-uvicorn", "granian")]
    # the bridge beside the engine auto picks: its own gate (BRIDGE_LIMIT) must not follow a change of default
    return [*core, Unit(BRIDGE, BRIDGE), *(Unit(name, name) for name in ("granian", "gunicorn-gthread"))]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench cpu", description=__doc__.splitlines()[0])
    ap.add_argument("--against", action="append", default=[], metavar="REV")
    ap.add_argument("--cases", default="asgi-hello,asgi-json,wsgi-hello,wsgi-json")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--check", action="store_true", help="exit 1 when a ratio is over its limit")
    ap.add_argument("--record", action="store_true", help=f"write the bridge's ratio to uvicorn into {RECORD.name}")
    args = ap.parse_args(argv)
    workdir = env.STATE / "cpu"
    cases = [c.split("-", 1) for c in args.cases.split(",")]
    figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with source_trees(args.against) as trees:
        for rep in range(args.reps):
            for interface, app in cases:
                for unit in order(units_for(interface, trees), rep):
                    figures.setdefault((f"{interface}-{app}", unit.label), []).append(
                        measure(unit, interface, app, args.duration, workdir / f"{unit.label}-{interface}-{rep}"))
    medians = {key: (statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs))
               for key, runs in figures.items()}  # fmt: skip
    print(f"\nCPU per request, median of {args.reps} x {args.duration:g} s, {CORES_WORKERS} workers, "
          f"wrk -c{wrk.CONNECTIONS}:")
    print("| case | server | req/s | CPU µs/request | vs uvicorn | vs granian |")
    print("|---|---|---|---|---|---|")
    for (case, label), (rps, cpu) in medians.items():
        ratios = [f"{cpu / medians[(case, peer)][1]:.2f}" if (case, peer) in medians else "" for peer in
                  ("uvicorn", "granian")]  # fmt: skip
        print(f"| {case} | {label} | {rps:.0f} | {cpu:.1f} | {ratios[0]} | {ratios[1]} |")
    return check(medians) if args.check else record(medians) if args.record else 0


def _ratio(medians: dict[tuple[str, str], tuple[float, float]], case: str, a: str, b: str) -> float | None:
    if (case, a) not in medians or (case, b) not in medians:
        return None
    return medians[(case, a)][1] / medians[(case, b)][1]


def _bridge_ratio(medians: dict[tuple[str, str], tuple[float, float]]) -> float | None:
    """The WSGI bridge's CPU per request (WSGI hello) over uvicorn's (ASGI hello): what the bridge adds."""
    bridge = medians.get(("wsgi-hello", BRIDGE)) or medians.get(("wsgi-hello", "corepool"))
    uvicorn = medians.get(("asgi-hello", "uvicorn"))
    return None if bridge is None or uvicorn is None else round(bridge[1] / uvicorn[1], 3)


def check(medians: dict[tuple[str, str], tuple[float, float]]) -> int:
    failed = []
    for case, (peer, limit) in LIMITS.items():
        ratio = _ratio(medians, case, "corepool", peer)
        if ratio is not None and ratio > limit:
            failed.append(f"{case}: corepool needs {ratio:.2f}x {peer}'s CPU per request (limit {limit:g}x)")
    recorded = json.loads(RECORD.read_text()).get("bridge_vs_uvicorn") if RECORD.exists() else None
    bridge = _bridge_ratio(medians)
    if recorded is not None and bridge is not None and bridge > recorded * BRIDGE_LIMIT:
        failed.append(f"wsgi bridge: {bridge:.2f}x uvicorn, recorded {recorded:.2f}x (limit {BRIDGE_LIMIT:g}x that)")
    for line in failed:
        print(f"bench cpu: FAIL {line}", file=sys.stderr)
    print(f"bench cpu: {'FAILED' if failed else 'ok'}: {len(LIMITS)} limits checked")
    return 1 if failed else 0


def record(medians: dict[tuple[str, str], tuple[float, float]]) -> int:
    data = {"bridge_vs_uvicorn": _bridge_ratio(medians)}
    RECORD.write_text(json.dumps(data, indent=2) + "\n")
    print(f"bench cpu: recorded {data} in {RECORD}")
    return 0
