"""Benchmark WSGI engines serving one pre-bound, inherited listening socket in one process.

Usage (the engines must be importable by ``--python``, e.g. a private venv)::

    python bench/wsgi_engines.py --python /var/lib/corepool-bench/wsgi-venv/bin/python \
        [--duration 5] [--repeat 3] [--out docs/benchmarks/wsgi-engines.md]

The parent binds 127.0.0.1:0, calls listen(), and hands the fd to a child process (``--serve``)
through ``pass_fds``, like a pre-fork primary or systemd socket activation. The child wraps the fd
in a ``socket.socket`` and serves it with one engine. wrk (``/usr/bin/wrk``) loads it; children are
stopped by the PID this script started. Self-contained: needs nothing from the repository.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

ENGINES: dict[str, str] = {
    "uvicorn+a2wsgi": "uvicorn.Server(config).run(sockets=[sock]), httptools+uvloop, a2wsgi 10 threads",
    "waitress": "waitress.serve(app, sockets=[sock]), 4 threads (default)",
    "cheroot": "cheroot.wsgi.Server subclass, bind() adopts sock, 10 threads (default)",
    "granian": "private API: MPServer._spawn_wsgi_worker in-process + _granian.SocketHolder(fd)",
    "gunicorn-sync": "reference: gunicorn --bind fd://N, 1 sync worker (arbiter + worker)",
    "gunicorn-gthread": "reference: gunicorn --bind fd://N, 1 gthread worker, 4 threads",
}
REFERENCE = {"gunicorn-sync", "gunicorn-gthread"}
APPS = {"hello": "/", "json": "/json"}
MODES = {"keep-alive": [], "close": ["-H", "Connection: close"]}
SLOW_SECONDS = 1.0


# --------------------------------------------------------------------------- child side: the app


def make_app() -> WSGIApp:
    """Return the benchmark app: ``/`` hello world, ``/json`` ~20 keys, ``/slow`` 1 s, ``/boom`` raises."""
    hello = b"Hello, world!"
    payload = {f"key_{i:02d}": {"id": i, "name": f"item-{i}", "ok": i % 2 == 0} for i in range(20)}

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/json":
            body = json.dumps(payload).encode()
            ctype = "application/json"
        elif path == "/slow":
            time.sleep(SLOW_SECONDS)
            body, ctype = b"slow done", "text/plain"
        elif path == "/boom":
            raise RuntimeError("boom: deliberate app error")
        else:
            body, ctype = hello, "text/plain"
        start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))])
        return [body]

    return app


def _serve_uvicorn(sock: socket.socket, app: WSGIApp) -> None:
    """uvicorn (httptools, uvloop) with a2wsgi; SIGTERM -> stop accepting, drain, exit."""
    import uvicorn
    from a2wsgi import WSGIMiddleware

    config = uvicorn.Config(
        WSGIMiddleware(app),  # type: ignore[arg-type,unused-ignore]
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run(sockets=[sock])


def _serve_waitress(sock: socket.socket, app: WSGIApp) -> None:
    """waitress with an adopted socket; it has no drain API, SIGTERM -> SystemExit in its loop."""
    import waitress

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    waitress.serve(app, sockets=[sock], _quiet=True)


def _serve_cheroot(sock: socket.socket, app: WSGIApp) -> None:
    """cheroot: prepare() calls bind() per getaddrinfo entry; our bind() adopts the socket instead."""
    from cheroot import wsgi

    class PreBoundServer(wsgi.Server):  # type: ignore[misc,unused-ignore]
        def bind(self, family: int, type: int, proto: int = 0) -> None:
            self.socket = sock

    server = PreBoundServer(sock.getsockname()[:2], app)
    server.shutdown_timeout = 10
    # cheroot's own prepare_socket() sets TCP_NODELAY on the listener (accepted sockets inherit it);
    # an adopted socket skips that, and without it keep-alive stalls on Nagle + delayed ACK (~40 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stopper = threading.Thread(target=server.stop)
    signal.signal(signal.SIGTERM, lambda *_: stopper.start())
    server.prepare()
    server.serve()
    if stopper.is_alive():
        stopper.join()


def _serve_granian(sock: socket.socket, app: WSGIApp) -> None:
    """granian's WSGI worker run in this process on our fd (private, version-pinned API)."""
    from granian._granian import SocketHolder
    from granian.constants import HTTPModes, Interfaces, RuntimeModes
    from granian.server.mp import MPServer

    srv = MPServer("unused:app", interface=Interfaces.WSGI, http=HTTPModes.http1, websockets=False)
    holder = SocketHolder(sock.fileno(), False, srv.backlog)  # type: ignore[call-arg,unused-ignore]  # not in the .pyi stub
    MPServer._spawn_wsgi_worker(
        1, None, lambda: app, ((None, holder), sock), None, srv.loop, srv.log_enabled, srv.log_level,
        srv.log_config, srv.env_files, RuntimeModes.mt, srv.runtime_threads, srv.runtime_blocking_threads,
        srv.blocking_threads, srv.blocking_threads_idle_timeout, srv.backpressure, srv.task_impl, srv.http,
        srv.http1_settings, srv.http2_settings, False, srv.static_path, None, srv.ssl_ctx,
        {"url_path_prefix": None}, (None, None),
    )  # fmt: skip


def _serve_gunicorn(fd: int, app: WSGIApp, worker: str) -> None:
    """gunicorn arbiter with one worker on ``fd://N`` (reference only)."""
    from gunicorn.app.base import BaseApplication

    class App(BaseApplication):  # type: ignore[misc,unused-ignore]
        def load_config(self) -> None:
            opts = {"bind": [f"fd://{fd}"], "workers": 1, "worker_class": worker, "threads": 4,
                    "loglevel": "warning", "graceful_timeout": 10, "keepalive": 5}  # fmt: skip
            for key, value in opts.items():
                self.cfg.set(key, value)

        def load(self) -> WSGIApp:
            return app

    App().run()


def serve(engine: str, fd: int) -> None:
    """Child entry point: adopt ``fd`` and serve the app with ``engine`` until SIGTERM."""
    app = make_app()
    if engine.startswith("gunicorn-"):
        _serve_gunicorn(fd, app, engine.removeprefix("gunicorn-"))
        return
    sock = socket.socket(fileno=fd)
    runners: dict[str, Callable[[socket.socket, WSGIApp], None]] = {
        "uvicorn+a2wsgi": _serve_uvicorn,
        "waitress": _serve_waitress,
        "cheroot": _serve_cheroot,
        "granian": _serve_granian,
    }
    runners[engine](sock, app)


# --------------------------------------------------------------------------- parent side


@dataclass
class Child:
    """One engine subprocess and the port of the socket it inherited."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def stop(self, timeout: float = 15.0) -> float:
        """SIGTERM the PID we started, wait; SIGKILL its own process group on timeout. Returns seconds."""
        start = time.monotonic()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # group id == our child's pid (new session)
            self.proc.wait()
        return time.monotonic() - start


def listening_socket() -> socket.socket:
    """Bind and listen on a free 127.0.0.1 port, as the corepool primary would."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def start(python: str, engine: str, fd_source: socket.socket | int, port: int, workdir: Path) -> Child:
    """Start ``engine`` in a child that inherits the listening fd."""
    fd = fd_source if isinstance(fd_source, int) else fd_source.fileno()
    log = workdir / f"{engine}-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "--serve", engine, "--fd", str(fd)],
            pass_fds=[fd],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Child(proc, port, log)


def http_get(port: int, path: str = "/", timeout: float = 2.0, close: bool = True) -> tuple[int, bytes]:
    """Tiny raw HTTP/1.1 client for probes; returns (status, raw response)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        hdr = "Connection: close\r\n" if close else ""
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{hdr}\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return parse_status(data), data


def parse_status(data: bytes) -> int:
    """Status code of a raw HTTP response, 0 if none."""
    match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(match.group(1)) if match else 0


def wait_ready(child: Child, timeout: float = 20.0) -> None:
    """Poll ``/`` until it answers 200 or raise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"engine exited {child.proc.returncode}: {child.log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            if http_get(child.port, timeout=1.0)[0] == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"engine not ready after {timeout}s: {child.log.read_text()[-2000:]}")


@contextlib.contextmanager
def running(python: str, engine: str, workdir: Path) -> Iterator[Child]:
    """Run ``engine`` on a fresh pre-bound socket; the parent keeps its copy open (like a primary)."""
    sock = listening_socket()
    child = start(python, engine, sock, sock.getsockname()[1], workdir)
    try:
        wait_ready(child)
        yield child
    finally:
        child.stop()
        sock.close()


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(f"bad wrk latency {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


@dataclass
class WrkResult:
    """What we keep from one wrk run."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non2xx: int
    socket_errors: int
    cpu_cores: float = 0.0  # engine process tree CPU time / wall time during the run


def parse_wrk(out: str) -> WrkResult:
    """Parse ``wrk --latency`` output."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    reqs = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(
        rps=rps,
        p50_ms=p50,
        p99_ms=p99,
        requests=reqs,
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(g) for g in errs.groups()) if errs else 0,
    )


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime of ``pid`` and its descendants (gunicorn: arbiter + worker), from /proc."""
    total, todo = 0.0, [pid]
    while todo:
        cur = todo.pop()
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{cur}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{cur}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total


def run_wrk(port: int, path: str, extra: list[str], duration: int, conns: int, threads: int) -> WrkResult:
    """One wrk run against 127.0.0.1, bounded in time."""
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency", *extra,
           f"http://127.0.0.1:{port}{path}"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30, check=True).stdout
    return parse_wrk(out)


@dataclass
class Checks:
    """Correctness probes for one engine."""

    close_ok: str = "?"
    drain: str = "?"
    idle_exit_s: float = 0.0
    app_error: str = "?"
    bad_fd: str = "?"


def check_connection_close(port: int) -> str:
    """(a) HTTP/1.1 request with Connection: close -> 200, server closes, says so in headers."""
    try:
        status, raw = http_get(port, close=True, timeout=3.0)
    except TimeoutError:
        return "no close (timeout)"
    head = raw.split(b"\r\n\r\n", 1)[0].lower()
    return f"{status}, EOF" + (", hdr" if b"connection: close" in head else ", no hdr")


def _wait_time(proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Wait for ``proc`` (bounded); monotonic time it was seen gone, or the deadline."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    return time.monotonic()


def check_drain(python: str, engine: str, workdir: Path) -> tuple[str, float]:
    """(b) SIGTERM during a 1 s request with an idle keep-alive conn open: in-flight status + exit time."""
    sock = listening_socket()
    port = sock.getsockname()[1]
    child = start(python, engine, sock, port, workdir)
    try:
        wait_ready(child)
        idle = socket.create_connection(("127.0.0.1", port), timeout=15)
        idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        idle.recv(65536)
        slow = socket.create_connection(("127.0.0.1", port), timeout=15)
        slow.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        time.sleep(0.3)
        exited: list[float] = []
        waiter = threading.Thread(target=lambda: exited.append(_wait_time(child.proc, 15)))
        sent = time.monotonic()
        os.kill(child.proc.pid, signal.SIGTERM)
        waiter.start()
        time.sleep(0.1)
        late = socket.create_connection(("127.0.0.1", port), timeout=15)
        late.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        late.settimeout(SLOW_SECONDS)  # still draining: a worker that keeps accepting answers at once
        late_status = 0
        with contextlib.suppress(OSError):
            late_status = parse_status(late.recv(65536))
        late.close()
        data = b""
        with contextlib.suppress(OSError):
            while chunk := slow.recv(65536):
                data += chunk
        waiter.join()
        exit_s = exited[0] - sent
        idle.close()
        slow.close()
        status = parse_status(data)
        accepted = f"new conn served {late_status}" if late_status else "new conn not accepted"
        return f"in-flight {status or 'cut'}, {accepted}", exit_s
    finally:
        child.stop()
        sock.close()


def check_app_error(port: int, log: Path) -> str:
    """(c1) App raising -> status and whether a traceback reached the log."""
    status, _ = http_get(port, "/boom", timeout=3.0)
    time.sleep(0.2)
    text = log.read_text(errors="replace")
    return f"{status}, " + ("traceback logged" if "boom: deliberate" in text else "no traceback")


def check_bad_fd(python: str, engine: str, workdir: Path) -> str:
    """(c2) Startup on a wrong inherited fd (a UDP socket): exit code, time, last error line."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    try:
        child = start(python, engine, udp, 0, workdir)
        t0 = time.monotonic()
        try:
            rc = child.proc.wait(10)
        except subprocess.TimeoutExpired:
            child.stop()
            return "hangs (>10 s, killed)"
        lines = [ln for ln in child.log.read_text(errors="replace").splitlines() if "rror" in ln]
        last = lines[-1].strip()[:44].replace("|", "/").replace("`", "'") if lines else "(no message)"
        return f"exit {rc}, {time.monotonic() - t0:.1f} s: `{last}`"
    finally:
        udp.close()


# --------------------------------------------------------------------------- report


def _fmt(values: list[float], digits: int = 0) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def render(results: dict[tuple[str, str, str], list[WrkResult]], checks: dict[str, Checks],
           args: argparse.Namespace, versions: str) -> str:  # fmt: skip
    """Markdown tables: req/s median (min-max), median p50/p99, error totals, CPU; then the probes."""
    lines = [
        "| engine | app | keep-alive req/s | p50 / p99 ms | close req/s | p50 / p99 ms | errors | CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    engines = list(dict.fromkeys(e for e, _, _ in results))
    for engine in engines:
        for app in APPS:
            ka, cl = results[(engine, app, "keep-alive")], results[(engine, app, "close")]
            name = f"{engine} (ref)" if engine in REFERENCE else engine
            cells = [name, app]
            for runs in (ka, cl):
                p50, p99 = statistics.median(r.p50_ms for r in runs), statistics.median(r.p99_ms for r in runs)
                cells += [_fmt([r.rps for r in runs]), f"{p50:.1f} / {p99:.0f}"]
            errs = [sum(r.non2xx + r.socket_errors for r in runs) for runs in (ka, cl)]
            cpu = [statistics.median(r.cpu_cores for r in runs) for runs in (ka, cl)]
            cells += [f"{errs[0]} / {errs[1]}", f"{cpu[0]:.2f} / {cpu[1]:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| engine | (a) `Connection: close` | (b) SIGTERM mid-request | (c) app raises | (c) UDP fd given |",
              "|---|---|---|---|---|"]  # fmt: skip
    for engine, c in checks.items():
        lines.append(
            f"| {engine} | {c.close_ok} | {c.drain}, exit {c.idle_exit_s:.1f} s | {c.app_error} | {c.bad_fd} |"
        )
    lines.append(f"\nwrk -t{args.threads} -c{args.connections} -d{args.duration}s, {args.repeat} reps; {versions}")
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def write_report(out: Path, report: str) -> None:
    """Replace the text between the result markers in ``out`` (keeping the prose), or create it."""
    block = f"{BEGIN}\n{report}{END}\n"
    text = out.read_text() if out.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1].removeprefix("\n")
    else:
        text += ("\n" if text else "") + block
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def engine_versions(python: str) -> str:
    """Installed versions of the measured packages in the target interpreter."""
    code = (
        "import importlib.metadata as m, platform\n"
        "ps=['uvicorn','a2wsgi','httptools','uvloop','waitress','cheroot','granian','gunicorn']\n"
        "print('Python '+platform.python_version()+', '+', '.join(p+' '+m.version(p) for p in ps))"
    )
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments; either serve (child) or orchestrate the benchmark (parent)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    ap.add_argument("--python", default=sys.executable, help="interpreter that has the engines installed")
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset")
    ap.add_argument("--serve", choices=list(ENGINES), help=argparse.SUPPRESS)
    ap.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve, args.fd)
        return 0

    engines = [e for e in args.engines.split(",") if e]
    results: dict[tuple[str, str, str], list[WrkResult]] = {(e, a, m): [] for e in engines for a in APPS for m in MODES}
    checks = {e: Checks() for e in engines}
    with tempfile.TemporaryDirectory(prefix="wsgi-bench-") as tmp:
        workdir = Path(tmp)
        for rep in range(args.repeat):
            order = engines if rep % 2 == 0 else engines[::-1]
            for engine in order:
                with running(args.python, engine, workdir) as child:
                    run_wrk(child.port, "/", [], 1, args.connections, args.threads)  # warm-up
                    for app, path in APPS.items():
                        for mode, extra in MODES.items():
                            cpu0, t0 = tree_cpu_seconds(child.proc.pid), time.monotonic()
                            res = run_wrk(child.port, path, extra, args.duration, args.connections, args.threads)
                            res.cpu_cores = (tree_cpu_seconds(child.proc.pid) - cpu0) / (time.monotonic() - t0)
                            results[(engine, app, mode)].append(res)
                            print(f"rep {rep + 1} {engine:17} {app:5} {mode:10} {res.rps:9.0f} req/s "
                                  f"p99 {res.p99_ms:7.2f} ms err {res.socket_errors} non2xx {res.non2xx}",
                                  flush=True)  # fmt: skip
        for engine in engines:
            c = checks[engine]
            with running(args.python, engine, workdir) as child:
                c.close_ok = check_connection_close(child.port)
                c.app_error = check_app_error(child.port, child.log)
            c.drain, c.idle_exit_s = check_drain(args.python, engine, workdir)
            c.bad_fd = check_bad_fd(args.python, engine, workdir)
            print(f"checks {engine}: {c}", flush=True)
    report = render(results, checks, args, engine_versions(args.python))
    print(report)
    if args.out:
        write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
