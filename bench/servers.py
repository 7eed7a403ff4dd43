"""The servers under test: their command lines, and starting, probing and stopping them.

Every server is started by this process in its own session (process group == its pid) and stopped by that pid:
SIGTERM, then SIGKILL to its own group after a timeout. All listen on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import env

WSGI_ENGINES = ("bridge", "granian")  # corepool's wsgi_engine values a bench server can name
GTHREAD_THREADS = 10  # gunicorn gthread as commonly deployed (corepool's own default is 64: wsgi-threads.md)

# name -> (interface it serves, one-line description for the report)
SERVERS: dict[str, tuple[str, str]] = {
    "corepool-lazy": ("any", "corepool, lazy mode (each worker imports the app)"),
    "corepool-preload": ("any", "corepool, preload mode (per-generation loader, gc.freeze, fork)"),
    "corepool-bridge": ("wsgi", "corepool, preload mode, WSGI on the bridge (wsgi_engine bridge)"),
    "corepool-granian": ("wsgi", "corepool, preload mode, WSGI on granian's Rust worker (wsgi_engine granian, "
                                 "http2 off)"),
    "gunicorn-sync": ("wsgi", "gunicorn, sync worker"),
    "gunicorn-gthread": ("wsgi", f"gunicorn, gthread worker, {GTHREAD_THREADS} threads"),
    "gunicorn-uvicorn": ("asgi", "gunicorn with uvicorn-worker's UvicornWorker"),
    "gunicorn-uvicorn-preload": ("asgi", "gunicorn --preload with UvicornWorker"),
    "uvicorn": ("asgi", "uvicorn --workers (its multiprocess supervisor)"),
    "granian": ("any", "granian (Rust engine), --respawn-failed-workers"),
    "hypercorn": ("asgi", "hypercorn --workers (h2, its own HTTP/1.1 and HTTP/2 on h11 and h2)"),
    "nginx": ("static", "nginx `return 200` (static ceiling, reuseport)"),
}


def corepool_servers() -> list[str]:
    return [f"corepool-{mode}" for mode in env.corepool_modes()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def argv(name: str, module: str, interface: str, port: int, workers: int, workdir: Path,
         extra_args: tuple[str, ...] = ()) -> list[str]:  # fmt: skip
    """The command line that runs ``module`` (attribute ``app`` for ASGI, ``wsgi`` for WSGI) under ``name``
    (``extra_args``: more corepool flags, such as ``--threads``)."""
    target = f"{module}:{'wsgi' if interface == 'wsgi' else 'app'}"
    bind = f"127.0.0.1:{port}"
    if name.startswith("corepool-"):
        kind = name.removeprefix("corepool-")
        # corepool-bridge / corepool-granian: preload mode with that WSGI engine (not in corepool_servers():
        # only the cases that name them run them)
        engine = ["--wsgi-engine", kind] if kind in WSGI_ENGINES else []
        mode = env.corepool_modes()["preload" if engine else kind] + engine
        return [env.bin_path("corepool"), "serve", target, "--interface", interface, "--bind", bind,
                "--workers", str(workers), "--control", str(workdir / "control.sock"), "--app-dir", str(env.REPO),
                "--no-access-log", "--log-level", "warning", *mode, *extra_args]  # fmt: skip
    if name.startswith("gunicorn-"):
        kind = name.removeprefix("gunicorn-")
        cmd = [env.bin_path("gunicorn"), "--bind", bind, "--workers", str(workers), "--chdir", str(env.REPO),
               "--log-level", "warning", "--graceful-timeout", "10", "--timeout", "60"]  # fmt: skip
        if kind == "sync":
            cmd += ["--worker-class", "sync"]
        elif kind == "gthread":
            cmd += ["--worker-class", "gthread", "--threads", str(GTHREAD_THREADS)]
        else:
            cmd += ["--worker-class", "uvicorn_worker.UvicornWorker"]
        if kind.endswith("preload"):
            cmd += ["--preload"]
        return [*cmd, target]
    if name == "uvicorn":
        return [env.bin_path("uvicorn"), target, "--host", "127.0.0.1", "--port", str(port), "--workers",
                str(workers), "--app-dir", str(env.REPO), "--no-access-log", "--log-level", "warning",
                "--loop", "uvloop", "--http", "httptools", *extra_args]  # fmt: skip
    if name == "granian":
        return [env.bin_path("granian"), "--interface", interface, "--host", "127.0.0.1", "--port", str(port),
                "--workers", str(workers), "--working-dir", str(env.REPO), "--log-level", "warning",
                "--no-access-log", "--respawn-failed-workers", "--respawn-interval", "0", *extra_args,
                target]  # fmt: skip
    if name == "hypercorn":
        return [env.bin_path("hypercorn"), "--bind", bind, "--workers", str(workers), "--worker-class", "uvloop",
                "--log-level", "warning", *extra_args, target]  # fmt: skip
    if name == "nginx":
        return nginx_argv(port, workers, workdir)
    raise ValueError(f"unknown server {name!r}")


def nginx_argv(port: int, workers: int, workdir: Path) -> list[str]:
    """nginx in the foreground with a private prefix and config (never the system service)."""
    prefix = workdir / "nginx"
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
daemon off;
master_process on;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port} reuseport backlog=2048;
        location / {{ default_type text/plain; return 200 "Hello, world!"; }}
    }}
}}
""")
    nginx = env.ensure_nginx()
    if nginx is None:
        raise RuntimeError("nginx is not installed and could not be installed")
    return [nginx, "-p", str(prefix), "-c", str(conf)]


def http_status(port: int, path: str = "/", timeout: float = 1.0, scheme: str = "http") -> int:
    """One ``Connection: close`` GET; the status code, 0 if no HTTP answer."""
    with contextlib.ExitStack() as stack:
        conn = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=timeout))
        if scheme == "https":  # the bench's own certificate: not verified
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
            conn = stack.enter_context(tls.wrap_socket(conn))
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while len(data) < 16 and (chunk := conn.recv(4096)):
            data += chunk
    match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(match.group(1)) if match else 0


def control(path: Path, request: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """One request on corepool's control socket (a JSON line each way)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(path))
        conn.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n") and (chunk := conn.recv(65536)):
            data += chunk
    answer: dict[str, Any] = json.loads(data)
    return answer


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        found += kids
        todo += kids
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Server:
    """One running server that this process started."""

    name: str
    port: int
    workers: int
    proc: subprocess.Popen[bytes]
    workdir: Path
    log: Path
    launched_at: float
    mark_dir: Path
    notes: list[str] = field(default_factory=list)
    scheme: str = "http"

    @property
    def is_corepool(self) -> bool:
        return self.name.startswith("corepool-")

    @property
    def control_path(self) -> Path:
        return self.workdir / "control.sock"

    def status(self) -> dict[str, Any]:
        answer = control(self.control_path, {"cmd": "status"}, timeout=5.0)
        status: dict[str, Any] = answer["status"]
        return status

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")

    def wait_http(self, timeout: float = 60.0, interval: float = 0.005) -> float:
        """Poll ``/`` until it answers 200; the monotonic time it first did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(OSError):
                if http_status(self.port, timeout=1.0, scheme=self.scheme) == 200:
                    return time.monotonic()
            time.sleep(interval)
        raise RuntimeError(f"{self.name} did not answer 200 within {timeout}s: {self.log.read_text()[-3000:]}")

    def wait_workers(self, timeout: float = 60.0, interval: float = 0.005) -> float:
        """Wait until all workers are up: corepool's status phase ``running``; for the peers, ``workers`` worker
        processes exist. The monotonic time it was seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if self.is_corepool:
                with contextlib.suppress(OSError, ValueError, KeyError):
                    if self.status()["phase"] == "running":
                        return time.monotonic()
            elif len(self.worker_pids()) >= self.workers:
                return time.monotonic()
            time.sleep(interval)
        raise RuntimeError(f"{self.name}: workers not up within {timeout}s: {self.log.read_text()[-3000:]}")

    def worker_pids(self) -> list[int]:
        """The pids serving requests (corepool: from its status; the peers: the master's children)."""
        if self.is_corepool:
            return [int(w["pid"]) for w in self.status()["workers"] if w.get("pid")]
        return [p for p in children(self.proc.pid) if "resource_tracker" not in cmdline(p)]

    def pool_pids(self) -> list[int]:
        """Every process of the pool: the pid we started and all its descendants."""
        return [self.proc.pid, *descendants(self.proc.pid)]

    def marks(self) -> dict[int, float]:
        """pid -> monotonic time of the first request it served (see bench.apps.mark)."""
        out: dict[int, float] = {}
        for f in self.mark_dir.iterdir():
            if f.name.isdigit():
                with contextlib.suppress(OSError, ValueError):
                    out[int(f.name)] = float(f.read_text())
        return out

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM if self.name != "nginx" else signal.SIGQUIT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.notes.append("did not stop on SIGTERM; killed")
        # Our child's own process group (it was started in a new session): reap stragglers, if any.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def launch(name: str, module: str, interface: str, workers: int, workdir: Path,
           extra_env: dict[str, str] | None = None, extra_args: tuple[str, ...] = (),
           scheme: str = "http") -> Server:  # fmt: skip
    """Start ``name`` serving ``module`` on a free 127.0.0.1 port (not waiting for it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    mark_dir = workdir / "marks"
    mark_dir.mkdir(exist_ok=True)
    port = free_port()
    cmd = argv(name, module, interface, port, workers, workdir, extra_args)
    run_env = {**os.environ, "PYTHONPATH": str(env.REPO), "BENCH_MARK_DIR": str(mark_dir),
               "PYTHONDONTWRITEBYTECODE": "0", **(extra_env or {})}  # fmt: skip
    run_env.pop("VIRTUAL_ENV", None)
    log = workdir / "server.log"
    with log.open("wb") as out:
        launched = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=env.REPO, env=run_env, start_new_session=True)  # fmt: skip
    return Server(name, port, workers, proc, workdir, log, launched, mark_dir, scheme=scheme)


@contextlib.contextmanager
def running(name: str, module: str, interface: str, workers: int, workdir: Path,
            extra_env: dict[str, str] | None = None, ready_timeout: float = 60.0,
            extra_args: tuple[str, ...] = (), scheme: str = "http") -> Iterator[Server]:  # fmt: skip
    """A started server whose workers are all up and that answers 200; stopped on exit."""
    server = launch(name, module, interface, workers, workdir, extra_env, extra_args, scheme)
    try:
        server.wait_http(ready_timeout)
        server.wait_workers(ready_timeout)
        yield server
    finally:
        server.stop()
