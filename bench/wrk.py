"""Running wrk against 127.0.0.1 and parsing its output (pure parts are unit-tested)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

WRK = "/usr/bin/wrk"
THREADS = 2  # the same for every server: wrk shares the machine's 2 cores with the server under test
CONNECTIONS = 64

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}

# Per-100 ms counts of 2xx/3xx and other responses, stamped with CLOCK_MONOTONIC (LuaJIT ffi), so the bench can
# line the load up with the moment it signalled or killed something. Each wrk thread has its own Lua state;
# done() gathers their tables.
TIMELINE_LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function bucket()
  ffi.C.clock_gettime(1, ts)
  return math.floor(tonumber(ts.tv_sec) * 10 + tonumber(ts.tv_nsec) / 1e8)
end
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = {}; bad = {} end
function response(status, headers, body)
  local b = bucket()
  if status < 400 then ok[b] = (ok[b] or 0) + 1 else bad[b] = (bad[b] or 0) + 1 end
end
function done(summary, latency, requests)
  local all = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("ok")) do all[k] = all[k] or {0, 0}; all[k][1] = all[k][1] + v end
    for k, v in pairs(t:get("bad")) do all[k] = all[k] or {0, 0}; all[k][2] = all[k][2] + v end
  end
  for k, v in pairs(all) do io.write(string.format("TL %d %d %d\n", k, v[1], v[2])) end
  io.write(string.format("MAXLAT_US %d\n", latency.max))
end
"""


@dataclass
class WrkResult:
    """What the bench keeps from one wrk run."""

    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    non2xx: int = 0
    connect_errors: int = 0
    read_errors: int = 0
    write_errors: int = 0
    timeouts: int = 0
    # (CLOCK_MONOTONIC bucket start in s, 2xx/3xx responses, other responses), 100 ms buckets
    timeline: list[tuple[float, int, int]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        """Requests that did not get a 2xx/3xx answer: non-2xx plus every socket error and timeout."""
        return self.non2xx + self.connect_errors + self.read_errors + self.write_errors + self.timeouts


def to_ms(text: str) -> float:
    """A wrk duration (``812.00us``, ``1.23ms``, ``2.00s``) in milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"bad wrk latency {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def _search(pattern: str, out: str) -> re.Match[str]:
    match = re.search(pattern, out, re.M)
    if match is None:
        raise ValueError(f"wrk output lacks {pattern!r}:\n{out}")
    return match


def parse_wrk(out: str) -> WrkResult:
    """Parse the output of ``wrk --latency`` (optionally with :data:`TIMELINE_LUA`'s extra lines)."""
    rps = float(_search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(_search(r"^\s+50%\s+(\S+)", out).group(1))
    p99 = to_ms(_search(r"^\s+99%\s+(\S+)", out).group(1))
    max_ms = to_ms(_search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", out).group(1))
    exact_max = re.search(r"^MAXLAT_US (\d+)", out, re.M)
    if exact_max:
        max_ms = int(exact_max.group(1)) / 1000.0
    requests = int(_search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    c, r, w, t = (int(g) for g in errs.groups()) if errs else (0, 0, 0, 0)
    timeline = sorted(
        (int(m.group(1)) / 10.0, int(m.group(2)), int(m.group(3)))
        for m in re.finditer(r"^TL (\d+) (\d+) (\d+)$", out, re.M)
    )
    return WrkResult(rps, p50, p99, max_ms, requests, int(non2xx.group(1)) if non2xx else 0, c, r, w, t, timeline)


def command(port: int, path: str = "/", duration: float = 5.0, connections: int = CONNECTIONS,
            threads: int = THREADS, timeout_s: float = 2.0, script: Path | None = None,
            scheme: str = "http") -> list[str]:  # fmt: skip
    """The wrk command line; ``duration`` is rounded to whole seconds (wrk's resolution), at least 1."""
    cmd = [WRK, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", f"--timeout={timeout_s:g}s",
           "--latency"]  # fmt: skip
    if script is not None:
        cmd += ["-s", str(script)]
    return [*cmd, f"{scheme}://127.0.0.1:{port}{path}"]


def run(port: int, path: str = "/", duration: float = 5.0, connections: int = CONNECTIONS,
        timeout_s: float = 2.0, script: Path | None = None, scheme: str = "http") -> WrkResult:  # fmt: skip
    """One wrk run, bounded in time (wrk's own -d, and a hard subprocess timeout)."""
    cmd = command(port, path, duration, connections, THREADS, timeout_s, script, scheme)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + timeout_s + 30, check=True)
    return parse_wrk(proc.stdout)


def start(port: int, path: str, duration: float, connections: int = CONNECTIONS, timeout_s: float = 2.0,
          script: Path | None = None) -> subprocess.Popen[str]:  # fmt: skip
    """Start wrk in the background (finish with :func:`finish`)."""
    cmd = command(port, path, duration, connections, THREADS, timeout_s, script)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], duration: float) -> WrkResult:
    """Wait for a background wrk (bounded) and parse it."""
    out, err = proc.communicate(timeout=duration + 40)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err}")
    return parse_wrk(out)
