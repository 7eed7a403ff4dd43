"""python -m bench protocols: TLS and HTTP/2 throughput and CPU per request, corepool against the peers that speak
them, in one run, servers alternating (issue 17's bars: TLS ≥ 1.0x uvicorn and granian with TLS; HTTP/2, h2load
``-c64 -m10``, ≥ 1.0x hypercorn and granian).

* ``tls-hello``: the ASGI hello app over HTTPS (a P-256 certificate made for the run), wrk ``-c64``: corepool
  (``--ssl-certfile``), uvicorn (``--ssl-certfile``), granian (``--ssl-certificate``).
* ``h2-hello``: the same app over h2c with prior knowledge, h2load ``-c64 -m10``: corepool, granian ``--http auto``,
  hypercorn (when the peers venv has it).

CPU per request counts every process of the server (as ``bench cpu`` does): it stays comparable on a noisy machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench import env, servers, wrk
from bench.cpu import BASIC, CORES_WORKERS, PATHS, cpu_ticks, log

H2LOAD = "h2load"
STREAMS = 10  # h2load -m: streams in flight per connection


def make_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)  # fmt: skip
    return cert, key


def units(case: str, cert: Path, key: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    """(label, bench.servers name, extra arguments) of every server in ``case``."""
    if case == "tls-hello":
        return [("corepool", "corepool-preload", ("--ssl-certfile", str(cert), "--ssl-keyfile", str(key))),
                ("uvicorn", "uvicorn", ("--ssl-certfile", str(cert), "--ssl-keyfile", str(key))),
                ("granian", "granian", ("--ssl-certificate", str(cert), "--ssl-keyfile", str(key)))]
    out = [("corepool", "corepool-preload", ()), ("granian", "granian", ("--http", "auto"))]
    if Path(env.bin_path("hypercorn")).exists():
        out.append(("hypercorn", "hypercorn", ()))
    return out


def h2load(port: int, path: str, duration: float) -> tuple[float, int, int]:
    """(requests/s, requests succeeded, requests not succeeded) of one h2load run."""
    seconds = str(max(1, round(duration)))  # h2load takes whole seconds
    run = subprocess.run([H2LOAD, "-D", seconds, "-c", str(wrk.CONNECTIONS), "-m", str(STREAMS), "-t", "1",
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True)  # fmt: skip
    rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", run.stdout).group(1))  # type: ignore[union-attr]
    counts = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded", run.stdout)
    assert counts is not None, run.stdout
    total, succeeded = int(counts.group(1)), int(counts.group(2))
    return rps, succeeded, total - succeeded


def measure(case: str, label: str, name: str, extra: tuple[str, ...], duration: float,
            workdir: Path) -> tuple[float, float]:  # fmt: skip
    """(requests/s, CPU microseconds per request) of one run."""
    scheme = "https" if case == "tls-hello" else "http"
    with servers.running(name, BASIC, "asgi", CORES_WORKERS, workdir, extra_args=extra,
                         scheme=scheme) as server:  # fmt: skip
        pids = server.pool_pids()
        if case == "tls-hello":
            wrk.run(server.port, PATHS["hello"], duration=1, scheme="https")
            before = cpu_ticks(pids)
            result = wrk.run(server.port, PATHS["hello"], duration=duration, scheme="https")
            rps, done, failed = result.rps, result.requests, result.failed
        else:
            h2load(server.port, PATHS["hello"], 1)
            before = cpu_ticks(pids)
            rps, done, failed = h2load(server.port, PATHS["hello"], duration)
        ticks = cpu_ticks(pids) - before
    per_request = ticks / os.sysconf("SC_CLK_TCK") / max(1, done) * 1e6
    log(f"{case} {label:10} {rps:9.0f} req/s {per_request:7.1f} us/request failed {failed}")
    return rps, per_request


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench protocols", description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="tls-hello,h2-hello")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0)
    args = ap.parse_args(argv)
    for tool in ("openssl", H2LOAD):
        if shutil.which(tool) is None:
            print(f"bench protocols: needs {tool} (scripts/setup --test installs it)")
            return 2
    env.ensure_peers()
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="corepool-protocols-") as tmp:
        cert, key = make_cert(Path(tmp))
        for _ in range(args.reps):
            for case in args.cases.split(","):
                for label, name, extra in units(case, cert, key):
                    results.setdefault((case, label), []).append(
                        measure(case, label, name, extra, args.duration, Path(tmp) / label))
    print(f"\nmedian of {args.reps} x {args.duration:g} s, {CORES_WORKERS} workers, c{wrk.CONNECTIONS}"
          f" (h2: x m{STREAMS}):")
    print("| case | server | req/s | CPU µs/request | corepool's req/s over it |")
    print("|---|---|---|---|---|")
    for case in args.cases.split(","):
        ours = statistics.median(r for r, _ in results[(case, "corepool")])
        for (c, label), runs in results.items():
            if c != case:
                continue
            rps, cpu = statistics.median(r for r, _ in runs), statistics.median(u for _, u in runs)
            print(f"| {case} | {label} | {rps:.0f} | {cpu:.1f} | {ours / rps:.2f} |")
    return 0
