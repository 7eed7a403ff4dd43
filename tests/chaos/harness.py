"""What every chaos case shares: clients that count every request, a quick status over the control socket,
the pool's processes from /proc, and the one-line summary each case prints.

A failed request is one of two kinds. **Dropped**: the connection closed or was reset with no answer at all —
what a client sees when the worker holding its request dies (the allowed casualties of a killed worker, counted
apart). **Failed**: anything else — refused, timed out, or an answer other than 200 — which no chaos may cause.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Errors that mean "the connection died under the request, with no answer": a killed worker.
DROPPED = (http.client.RemoteDisconnected, http.client.IncompleteRead, ConnectionResetError, BrokenPipeError,
           ConnectionAbortedError)
SPAWNED = re.compile(r"worker \d+ spawned")


@dataclass
class Tally:
    """Every request one group of clients sent, and how each ended."""

    sent: int = 0
    ok: int = 0
    dropped: int = 0
    failed: int = 0
    refused: int = 0  # of the failed: connection refused (nobody listening)
    statuses: dict[int, int] = field(default_factory=dict)  # non-200 answers by status
    errors: list[str] = field(default_factory=list)  # first few of each kind, for the assertion message
    served: dict[int, int] = field(default_factory=dict)  # 200 answers by the worker pid they carried
    longest_wait: float = 0.0  # of a request that got an answer or failed (not of a dropped one)

    @property
    def pids(self) -> set[int]:
        return set(self.served)

    def line(self) -> str:
        refused = f" (refused {self.refused})" if self.refused else ""
        return (f"sent={self.sent} ok={self.ok} dropped={self.dropped} failed={self.failed}{refused} "
                f"longest_wait={self.longest_wait:.3f}s")


class Clients:
    """``keepalive + fresh`` client threads sending ``GET path`` until stopped (or ``count`` requests each).

    Keep-alive clients reconnect only after ``Connection: close`` or a broken connection; ``interval`` spaces
    each thread's requests (a paced attacker), 0 sends back to back.
    """

    def __init__(self, port: int, path: str = "/", keepalive: int = 4, fresh: int = 4, timeout: float = 15.0,
                 interval: float = 0.0, count: int | None = None) -> None:
        self.port, self.path, self.timeout, self.interval, self.count = port, path, timeout, interval, count
        self.tally = Tally()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(True,), daemon=True) for _ in range(keepalive)]
        self._threads += [threading.Thread(target=self._run, args=(False,), daemon=True) for _ in range(fresh)]

    def __enter__(self) -> Clients:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Clients:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> Tally:
        self._stop.set()
        return self.join()

    def join(self, timeout: float | None = None) -> Tally:
        deadline = time.monotonic() + (self.timeout + 5 if timeout is None else timeout)
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "a client thread is still waiting for an answer"
        return self.tally

    def _record(self, start: float, status: int | None, data: bytes, error: BaseException | None) -> bool:
        wait = time.monotonic() - start
        with self._lock:
            t = self.tally
            t.sent += 1
            if status == 200:
                t.ok += 1
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    pid = int(json.loads(data)["pid"])
                    t.served[pid] = t.served.get(pid, 0) + 1
            elif error is not None and isinstance(error, DROPPED):
                t.dropped += 1
            else:
                t.failed += 1
                t.refused += isinstance(error, ConnectionRefusedError)
                if status is not None:
                    t.statuses[status] = t.statuses.get(status, 0) + 1
            if status != 200 and len(t.errors) < 20:
                t.errors.append(f"HTTP {status}" if error is None else f"{type(error).__name__}: {error}")
            if error is None or not isinstance(error, DROPPED):
                t.longest_wait = max(t.longest_wait, wait)
        return error is None

    def _run(self, keepalive: bool) -> None:
        conn: http.client.HTTPConnection | None = None
        sent = 0
        while not self._stop.is_set() and (self.count is None or sent < self.count):
            sent += 1
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            start = time.monotonic()
            try:
                conn.request("GET", self.path, headers={} if keepalive else {"Connection": "close"})
                response = conn.getresponse()
                data = response.read()
                self._record(start, response.status, data, None)
                if response.will_close or not keepalive:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                self._record(start, None, b"", exc)
                conn.close()
                conn = None
            if self.interval:
                self._stop.wait(self.interval)
        if conn is not None:
            conn.close()


def control(path: str, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """One request on the pool's control socket (what ``corepool status``/``reload`` send), without a subprocess."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return dict(json.loads(buf))


def status(control_path: str) -> dict[str, Any]:
    answer = control(control_path, {"cmd": "status"})
    assert answer.get("ok"), answer
    return dict(answer["status"])


def settled(s: dict[str, Any]) -> bool:
    """Every slot has a ready worker of the current generation, none backs off, no reload runs."""
    return (s["phase"] == "running" and not s["reloading"] and s["workers_ready"] == s["workers_wanted"]
            and all(x["retry_in"] is None for x in s["slots"]))


def wait_settled(control_path: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, AssertionError):
            last = status(control_path)
            if settled(last):
                return last
        time.sleep(0.05)
    raise AssertionError(f"the pool did not settle within {timeout} s: {describe(last)}")


def deaths(s: dict[str, Any]) -> dict[str, int]:
    """The pool's worker deaths by cause, summed over its slots (issue 8 item 1: counted per slot in status)."""
    total: dict[str, int] = {}
    for x in s["slots"]:
        assert "deaths" in x, f"status has no per-slot death counts: {x}"
        for cause, n in x["deaths"].items():
            if n:
                total[cause] = total.get(cause, 0) + n
    return total


def describe(s: dict[str, Any]) -> str:
    """The pool's state for a summary line: ready/wanted, backoff, and every per-slot count the status carries."""
    if not s:
        return "no status"
    base = {"slot", "generation", "retry_in", "last_error"}
    slots = []
    for x in s["slots"]:
        extra = {k: v for k, v in x.items() if k not in base and v}
        retry = "" if x["retry_in"] is None else f" retry_in={x['retry_in']}"
        slots.append(f"{x['slot']}:{extra or '-'}{retry}")
    states: dict[str, int] = {}
    for w in s["workers"]:
        states[w["state"]] = states.get(w["state"], 0) + 1
    return (f"gen {s['generation']} {s['phase']} ready {s['workers_ready']}/{s['workers_wanted']} "
            f"workers {states} slots [{', '.join(slots)}]")


def children(pid: int, zombies: bool = False) -> list[int]:
    """Live children of ``pid`` from /proc (or, with ``zombies``, the dead ones nobody reaped yet)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid and (fields[0] == "Z") == zombies:
            out.append(int(entry))
    return out


def worker_pids(primary: int, loaders: set[int]) -> list[int]:
    """The primary's worker processes, whatever their state: its children but its generations' loaders."""
    return [pid for pid in children(primary) if pid not in loaders]


def forks(log: str) -> int:
    """Workers the primary spawned so far, from its log."""
    return len(SPAWNED.findall(log))


def summary(case: str, took: float, **parts: Any) -> str:
    """One line per case, printed (``pytest -s`` shows it): the figures the lead collects for the docs."""
    text = f"[chaos] {case}: {took:.1f}s " + " | ".join(f"{k}: {v}" for k, v in parts.items())
    print(text)
    return text
