"""What a log call costs with each journald handler, and what each does while journald is stopped.

    sudo .venv/bin/python -m bench.journal_handlers [--extra-path DIR]

Boots a sandboxed systemd with journald (tests/systemd/sandbox.py) and, inside it, runs each handler:
corepool's own (:mod:`corepool.journal`), systemd-python's ``JournalHandler`` (libsystemd), and
logging-journald's ``JournaldLogHandler`` when ``--extra-path`` holds it (``pip download logging-journald``,
unzipped). For each: microseconds per ``logger.info()`` with corepool's event fields (median of 5 runs of 2,000
calls), the fields journald stored, and with journald SIGSTOPped (its socket queue fills): whether 2,000 more
calls return within 10 s, and how. Takes about 20 s. Figures are written to docs/systemd.md by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tests.systemd.sandbox import CHECKOUT, Sandbox

PROBE = r'''
import json, logging, statistics, sys, threading, time
sys.path[:0] = [p for p in sys.argv[2:] if p]
kind = sys.argv[1]
if kind == "corepool":
    from corepool.journal import JournalHandler
    handler = JournalHandler("corepool", {"ROLE": "primary"})
elif kind == "systemd-python":
    from systemd.journal import JournalHandler
    handler = JournalHandler(SYSLOG_IDENTIFIER="corepool", ROLE="primary")
else:
    from logging_journald import JournaldLogHandler
    handler = JournaldLogHandler(identifier="corepool")
lg = logging.getLogger("corepool")
lg.addHandler(handler)
lg.setLevel(logging.INFO)
lg.propagate = False
extra = {"EVENT": "spawn", "WORKER_PID": 4242, "GENERATION": 3, "SLOT": 1, "ROLE": "primary", "PROBE": kind}
runs = []
for _ in range(5):
    t = time.perf_counter()
    for i in range(2000):
        lg.info("spawned worker %d for slot 1, generation 3", i, extra=extra)
    runs.append((time.perf_counter() - t) / 2000 * 1e6)
    time.sleep(0.2)  # let journald catch up: this measures the call, not journald's throughput
print(json.dumps({"usec_per_call": statistics.median(runs)}), flush=True)
sys.stdin.readline()  # the bench SIGSTOPs journald meanwhile
done = threading.Event()
def flood():
    for i in range(2000):
        lg.info("while journald is stopped %d", i, extra=extra)
    done.set()
threading.Thread(target=flood, daemon=True).start()
print(json.dumps({"returned_while_stopped": done.wait(10)}), flush=True)
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extra-path", default="", help="a directory holding logging_journald.py")
    ap.add_argument("--venv", type=Path, default=CHECKOUT / ".venv", help="a venv with corepool and systemd-python")
    args = ap.parse_args()
    import subprocess

    results: dict[str, dict[str, object]] = {}
    kinds = ["corepool", "systemd-python"] + (["logging-journald"] if args.extra_path else [])
    for kind in kinds:
        with Sandbox({}) as sb:
            sb.systemctl("start", "systemd-journald.socket", "systemd-journald.service")
            probe = sb.write_file("probe.py", PROBE)
            src = str(CHECKOUT / "src")
            proc = subprocess.Popen(
                ["nsenter", "-t", str(sb.pid), "-m", "-p", "-C", "-u", "-i", str(args.venv / "bin/python"),
                 str(probe), kind, src, args.extra_path],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            assert proc.stdin is not None and proc.stdout is not None
            result = json.loads(proc.stdout.readline())
            entries: list[dict[str, object]] = []
            for field in ("PROBE", "EXTRA_PROBE"):  # logging-journald renames extra= fields EXTRA_*
                entries = entries or [json.loads(line) for line in sb.run(
                    "journalctl", "--no-pager", "-o", "json", f"{field}={kind}", check=False).stdout.splitlines()]
            result["entries"] = len(entries)
            result["fields"] = sorted(k for k in (entries[0] if entries else {}) if not k.startswith("_"))
            sb.systemctl("kill", "-s", "SIGSTOP", "systemd-journald.service")
            proc.stdin.write("\n")
            proc.stdin.flush()
            result.update(json.loads(proc.stdout.readline()))
            sb.systemctl("kill", "-s", "SIGCONT", "systemd-journald.service")
            proc.kill()
            proc.wait()
            results[kind] = result
            print(kind, json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
