"""``python -m bench all|throughput|reload|crash|memory|startup|fairness|wsgi-threads|report [--quick]``, and
``python -m bench cpu ...`` (CPU per request, A/B against earlier commits: bench/cpu.py).
``python -m bench protocols ...`` (TLS and HTTP/2 against the peers that speak them: bench/protocols.py).

Runs itself in the bench's private venv (created on first use from /usr/bin/python3 with the pinned peers and
corepool from this checkout), measures, and writes ``docs/benchmarks/README.md`` and PNG plots. ``--quick`` is the
CI smoke run: one repetition, tiny durations, output under /var/lib/corepool-bench/quick (not docs/).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench import env


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    if args_list[:1] == ["protocols"]:  # TLS and HTTP/2 against the peers that speak them (bench/protocols.py)
        from bench import protocols

        return protocols.main(args_list[1:])
    if args_list[:1] == ["cpu"]:  # CPU per request, A/B and against the peers (bench/cpu.py)
        if not env.in_peers_venv():
            env.reexec_in_peers(args_list)  # does not return
        from bench import cpu

        return cpu.main(args_list[1:])
    ap.add_argument("case", choices=["all", "throughput", "reload", "crash", "memory", "startup", "fairness",
                                     "wsgi-threads", "report"])  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="CI smoke run: 1 repetition, tiny durations")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per case (default 3; --quick: 1)")
    ap.add_argument("--out", type=Path, default=None, help="where README.md and the plots go")
    args = ap.parse_args(args_list)
    if not env.in_peers_venv():
        env.reexec_in_peers(args_list)  # does not return

    from bench import cases, report
    from bench.common import Settings, log

    settings = Settings.make(args.quick, args.reps, args.out)
    if settings.reps < 3 and not settings.quick:
        log("warning: fewer than 3 repetitions; the report says so")
    env.ensure_nginx()
    log(f"corepool modes available: {', '.join(env.corepool_modes())}; machine: {env.machine()}")
    started = time.monotonic()
    todo = list(cases.CASES) if args.case == "all" else [] if args.case == "report" else [args.case]
    for case in todo:
        t0 = time.monotonic()
        log(f"case {case}: start")
        cases.CASES[case](settings)
        log(f"case {case}: done in {time.monotonic() - t0:.0f} s")
    path = report.write(settings, elapsed=time.monotonic() - started if args.case == "all" else None)
    log(f"report written to {path} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
