"""Bad input gets one clear line naming what is wrong, and the right exit code: 2 usage/config, 1 start failure."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corepool.control import MAX_CLIENTS, MAX_REQUEST
from tests.integration.conftest import Pool
from tests.support import APPS, free_port, held_workers


def corepool(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corepool", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def one_line(out: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in out.stderr.splitlines() if line.startswith("corepool")]
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_unknown_flag_is_a_usage_error() -> None:
    out = corepool("serve", "corepool.demo:app", "--wrokers", "2")
    assert out.returncode == 2
    assert "unrecognized arguments: --wrokers" in one_line(out)


def test_bad_flag_value_names_the_setting() -> None:
    out = corepool("serve", "corepool.demo:app", "--workers", "many")
    assert out.returncode == 2
    assert "workers: expected a whole number, got 'many'" in one_line(out)
    out = corepool("serve", "corepool.demo:app", "--workers", "0")
    assert out.returncode == 2 and "workers: must be at least 1" in one_line(out)


def test_unknown_config_key_and_bad_toml(tmp_path: Path) -> None:
    config = tmp_path / "pool.toml"
    config.write_text('app = "corepool.demo:app"\nworkrs = 3\n')
    out = corepool("serve", "--config", str(config))
    assert out.returncode == 2 and f"unknown setting 'workrs' in {config}" in one_line(out)
    config.write_text("app = \n")
    out = corepool("check", "--config", str(config))
    assert out.returncode == 2 and "is not valid TOML" in one_line(out)
    out = corepool("serve", "--config", str(tmp_path / "missing.toml"))
    assert out.returncode == 2 and "does not exist" in one_line(out)


def test_config_value_of_wrong_type(tmp_path: Path) -> None:
    config = tmp_path / "pool.toml"
    config.write_text('app = "corepool.demo:app"\ninterface = "soap"\n')
    out = corepool("check", "--config", str(config))
    assert out.returncode == 2
    assert "interface: 'soap' is not one of auto, asgi, wsgi, raw" in one_line(out)


def test_missing_app() -> None:
    out = corepool("serve")
    assert out.returncode == 2 and "no app given" in one_line(out)


def test_unbindable_address_is_a_start_failure(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = corepool("serve", "corepool.demo:app", "--bind", f"127.0.0.1:{port}", "--control", str(tmp_path / "c"))
    assert out.returncode == 1
    assert f"cannot bind 127.0.0.1:{port}" in one_line(out)
    assert not (tmp_path / "c").exists(), "nothing left behind"


@pytest.mark.parametrize("command", ["serve", "check"])
@pytest.mark.parametrize(("bind", "message"), [
    ("nonsense", "bind 'nonsense': expected HOST:PORT"),
    ("localhost", "bind 'localhost': expected HOST:PORT"),
    ("127.0.0.1:99999", "bind '127.0.0.1:99999': port 99999 is out of range"),
    ("::1:80", "put IPv6 addresses in brackets"),
    ("unix:", "empty unix socket path"),
])
def test_a_bind_address_that_can_never_work_is_a_usage_error(command: str, bind: str, message: str,
                                                               tmp_path: Path) -> None:
    out = corepool(command, "corepool.demo:app", "--bind", bind, "--control", str(tmp_path / "c"))
    assert out.returncode == 2 and message in one_line(out)
    config = tmp_path / "pool.toml"
    config.write_text(f'app = "corepool.demo:app"\nbind = ["127.0.0.1:8000", "{bind}"]\n')
    out = corepool(command, "--config", str(config), "--control", str(tmp_path / "c"))
    assert out.returncode == 2 and message in one_line(out) and f"fix 'bind' in {config}" in one_line(out)
    assert not (tmp_path / "c").exists()


def test_app_that_fails_to_import_at_start(tmp_path: Path) -> None:
    switch = tmp_path / "switch"
    switch.write_text("broken")
    out = corepool(
        "serve", "switchable:app", "--app-dir", str(APPS), "--workers", "2", "--bind", f"127.0.0.1:{free_port()}",
        "--control", str(tmp_path / "c"), env={"SWITCH_FILE": str(switch)},
    )
    assert out.returncode == 1
    assert out.stderr.count("Traceback (most recent call last)") == 1, out.stderr
    assert "giving up on start" in out.stderr and "RuntimeError: switchable: broken on purpose" in out.stderr


def test_app_module_missing_is_named() -> None:
    out = corepool("check", "nosuchmodule:app")
    assert out.returncode == 1
    assert "no module named 'nosuchmodule'" in one_line(out)
    out = corepool("check", "corepool.demo:nope")
    assert out.returncode == 1 and "has no attribute 'nope'" in one_line(out)
    out = corepool("check", "corepool.demo")
    assert out.returncode == 2 and "is not module:attribute" in one_line(out)


def test_check_accepts_a_good_config(tmp_path: Path) -> None:
    config = tmp_path / "pool.toml"
    config.write_text('app = "corepool.demo:app"\nworkers = 3\n')
    out = corepool("check", "--config", str(config), "--workers", "5")
    assert out.returncode == 0, out.stderr
    assert "corepool.demo:app (asgi), 5 workers" in out.stdout


def _serve_with_listen_fds(tmp_path: Path, fds: str, redirect: str = "") -> subprocess.CompletedProcess[str]:
    # exec keeps the shell's pid, so LISTEN_PID=$$ names the corepool process as sd_listen_fds(3) expects.
    script = (
        f"LISTEN_PID=$$ LISTEN_FDS={fds} exec {sys.executable} -m corepool serve corepool.demo:app "
        f"--control {tmp_path / 'c'} {redirect}"
    )
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)


def test_bad_listen_fds_environment(tmp_path: Path) -> None:
    out = _serve_with_listen_fds(tmp_path, "x")
    assert out.returncode == 1 and "LISTEN_FDS='x' is not a number" in one_line(out)
    out = _serve_with_listen_fds(tmp_path, "1", "3<&-")
    assert out.returncode == 1 and "LISTEN_FDS: fd 3 (fd3) is not open" in one_line(out)
    out = _serve_with_listen_fds(tmp_path, "1", "3</etc/hostname")
    assert out.returncode == 1 and "fd 3 (fd3) is not a socket" in one_line(out)


_PLACE_FDS = """
import fcntl, os, sys
fds = [int(x) for x in sys.argv[1].split(",") if x]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]  # out of the way of the targets first
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
env = dict(os.environ, LISTEN_FDS=sys.argv[2], LISTEN_PID=sys.argv[3] or str(os.getpid()))
os.execve(sys.executable, [sys.executable, "-m", "corepool", "serve", *sys.argv[4:]], env)
"""


def _serve_with_sockets(tmp_path: Path, socks: list[socket.socket | int], count: str,
                        pid: str = "") -> subprocess.CompletedProcess[str]:
    """corepool serve with ``socks`` at fds 3, 4, ... and LISTEN_FDS=count, as systemd would start it."""
    fds = [s if isinstance(s, int) else s.fileno() for s in socks]
    return subprocess.run(
        [sys.executable, "-c", _PLACE_FDS, ",".join(map(str, fds)), count, pid, "corepool.demo:app",
         "--control", str(tmp_path / "c")],
        capture_output=True, text=True, timeout=60, pass_fds=fds,
    )


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize(("count", "pid", "message"), [
    ("x", "", "LISTEN_FDS='x' is not a number"),
    ("-1", "", "LISTEN_FDS='-1' is not a number"),
    ("\u00b2", "", "is not a number"),  # a digit to str.isdigit, not to int()
    ("", "", "LISTEN_FDS='' is not a number"),
    ("1", "abc", "LISTEN_PID='abc' is not a process id"),
    ("2", "", "LISTEN_FDS: fd 4 (fd4) is not open"),  # one socket passed, two announced
    ("99999999", "", "LISTEN_FDS: fd 4 (fd4) is not open"),
])
def test_listen_fds_garbage_and_fds_out_of_range(count: str, pid: str, message: str, tmp_path: Path) -> None:
    with _listening() as sock:
        out = _serve_with_sockets(tmp_path, [sock], count, pid)
    assert out.returncode == 1 and message in one_line(out), out.stderr
    assert not (tmp_path / "c").exists(), "nothing left behind"


@pytest.mark.parametrize("kind", ["udp", "unix-dgram", "tcp-not-listening", "pipe"])
def test_listen_fds_that_are_not_listening_stream_sockets(kind: str, tmp_path: Path) -> None:
    keep: list[socket.socket | int] = []
    if kind == "udp":
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        keep = [udp]
    elif kind == "unix-dgram":
        keep = [socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)]
    elif kind == "tcp-not-listening":
        keep = [socket.socket()]
    else:
        keep = list(os.pipe())  # the read end is passed
    try:
        out = _serve_with_sockets(tmp_path, keep[:1], "1")
    finally:
        for thing in keep:
            thing.close() if isinstance(thing, socket.socket) else os.close(thing)
    expected = "fd 3 (fd3) is not a socket" if kind == "pipe" else "fd 3 (fd3) is not a listening stream socket"
    assert out.returncode == 1 and expected in one_line(out), out.stderr
    assert not (tmp_path / "c").exists(), "nothing left behind"


@pytest.mark.parametrize("command", ["status", "reload"])
def test_status_and_reload_without_a_pool_say_how_to_fix(command: str, tmp_path: Path) -> None:
    out = corepool(command, "--control", str(tmp_path / "none.sock"))
    assert out.returncode == 1
    assert "is the pool running?" in one_line(out)
    stale = tmp_path / "stale.sock"  # left by a pool that died: a socket file nobody listens on
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(stale))
    out = corepool(command, "--control", str(stale))
    assert out.returncode == 1 and f"nothing listens on {stale}" in one_line(out)
    out = corepool(command, "--control", str(tmp_path))  # a directory
    assert out.returncode == 1 and f"{tmp_path} is not a control socket" in one_line(out)


def test_route_to_an_unknown_socket_name(tmp_path: Path) -> None:
    out = corepool("serve", "corepool.demo:app", "--route", "admin=wsgiapp:app", "--bind", f"127.0.0.1:{free_port()}",
                   "--control", str(tmp_path / "c"))
    assert out.returncode == 2
    assert "routes: no socket named admin (the sockets are named http" in one_line(out)
    out = corepool("check", "corepool.demo:app", "--route", "admin")
    assert out.returncode == 2 and "admin = '' is not module:attribute" in one_line(out)
    out = corepool("check", "corepool.demo:app", "--route", "metrics=wsgiapp:app")
    assert out.returncode == 2 and "a socket named metrics is the pool's own metrics endpoint" in one_line(out)


# ---- the control socket: bad clients cost the pool nothing ----------------------------------------------------


def _ask(path: str, raw: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)
        data = b""
        while b"\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return dict(json.loads(data))


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    p = Pool(tmp_path, "corepool.demo:app")
    p.start()
    yield p
    p.close()


@pytest.mark.parametrize(("raw", "error"), [
    (b"{nope\n", "bad control request"),
    (b"[1]\n", 'expected a JSON object with a string "cmd"'),
    (b'{"cmd": 5}\n', 'expected a JSON object with a string "cmd"'),
    (b"\xff\xfe\x00\n", "bad control request"),
    (b"[" * 60000 + b"\n", "bad control request"),  # nesting deep enough to exhaust the parser's recursion
    (b'{"cmd": "status", "n": ' + b"1" * 5000 + b"}\n", "bad control request"),  # over int's digit limit
    (b'{"cmd": "explode"}\n', "unknown command 'explode'"),
    (b"x" * (MAX_REQUEST + 10), f"request over {MAX_REQUEST} bytes"),  # and no newline
    (b'{"cmd": "status", "pad": "' + b"x" * MAX_REQUEST + b'"}\n', f"request over {MAX_REQUEST} bytes"),
])
def test_bad_control_requests_get_an_error_answer(pool: Pool, raw: bytes, error: str) -> None:
    before = pool.pids()
    answer = _ask(pool.control, raw)
    assert answer["ok"] is False and error in answer["error"], answer
    assert pool.pids() == before and pool.status()["phase"] == "running"


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_clients_that_never_send_cost_a_bounded_number_of_descriptors(pool: Pool) -> None:
    before_pids, before_fds = pool.pids(), _fd_count(pool.pid)
    idle = []
    try:
        for _ in range(3 * MAX_CLIENTS):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(pool.control)
            idle.append(sock)
        idle[-1].sendall(b'{"cmd": "sta')  # half a request, then nothing
        # Answered after every idle client was accepted (the backlog is first in, first out):
        assert pool.status()["phase"] == "running"
        assert _fd_count(pool.pid) <= before_fds + MAX_CLIENTS + 2
        evicted = 0
        for sock in idle:
            sock.settimeout(0.001)
            with contextlib.suppress(TimeoutError):
                evicted += sock.recv(1) == b""  # closed by the pool
        assert evicted >= 2 * MAX_CLIENTS - 2, "the oldest idle clients were dropped"
    finally:
        for sock in idle:
            sock.close()
    assert pool.pids() == before_pids


@pytest.mark.skipif(os.geteuid() != 0, reason="becoming another uid needs root")
def test_a_client_of_another_uid_is_refused_whatever_the_socket_mode(tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="corepool-ctl-"))
    base.chmod(0o755)
    control = base / "control.sock"
    pool = Pool(tmp_path, "corepool.demo:app", "--control", str(control))
    pool.control = str(control)
    try:
        pool.start()
        control.chmod(0o666)  # as a careless administrator might: the mode no longer keeps anyone out
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports through the pipe
            try:
                os.close(read_end)
                os.setgid(65534)
                os.setuid(65534)  # nobody, before connecting: SO_PEERCRED is taken at connect()
                os.write(write_end, json.dumps(_ask(str(control), b'{"cmd": "reload"}\n')).encode())
            except BaseException as exc:
                os.write(write_end, json.dumps({"child": repr(exc)}).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as fh:
            answer = json.loads(fh.read())
        os.waitpid(child, 0)
        assert answer.get("ok") is False and "uid 65534 may not control this pool" in answer.get("error", ""), answer
        assert "refused a control client of uid 65534" in pool.log()
        status = pool.status()  # root (and the pool's own uid) still may
        assert status["generation"] == 1 and status["phase"] == "running", "no reload happened"
    finally:
        pool.close()
        shutil.rmtree(base, ignore_errors=True)


def test_status_into_a_closed_pipe_exits_quietly(pool: Pool) -> None:
    """``corepool status | head -1``: the reader goes away; no BrokenPipeError traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # before the command writes: its first write finds no reader, every time
    try:
        out = subprocess.run([sys.executable, "-m", "corepool", "status", "--control", pool.control],
                             stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=30)
    finally:
        os.close(write_end)
    assert "Traceback" not in out.stderr and out.stderr == "", out.stderr
    assert out.returncode == 1


def test_a_worker_writing_garbage_on_its_channel_is_replaced(tmp_path: Path) -> None:
    # A long keep-alive: the connection to the good worker stays with it while the bad one is replaced.
    pool = Pool(tmp_path, "broadcast_app:app", "--keepalive-timeout", "300")
    try:
        pool.start()
        with held_workers(pool.port) as (bad, good):
            assert bad.get("/garbage")["sent"]
            status = pool.wait_for(lambda s: bad.pid not in {w["pid"] for w in s["workers"]}
                                   and s["workers_ready"] == s["workers_wanted"], what="the bad worker replaced")
            assert good.pid in {w["pid"] for w in status["workers"]}, "the other worker was not touched"
            assert good.get("/")["pid"] == good.pid and status["phase"] == "running"
        assert "not JSON" in pool.log()
    finally:
        pool.close()


@contextlib.contextmanager
def stopping_pool(tmp_path: Path) -> Iterator[Pool]:
    """A pool told to stop (SIGTERM) whose graceful stop waits for a held request: phase "stopping" until the
    request is released."""
    import threading

    from tests.support import get_json, inflight

    release = tmp_path / "release"
    pool = Pool(tmp_path, "fleet_app:app", "--graceful-timeout", "60", workers=1)
    pool.start()
    holder = threading.Thread(target=lambda: get_json(pool.port, f"/hold?flag={release}", 60))
    try:
        holder.start()
        pool.wait_for(lambda s: inflight(s) == 1, what="the held request in flight")
        pool.signal(signal.SIGTERM)
        pool.wait_for(lambda s: s["phase"] == "stopping", what="the pool stopping")
        yield pool
    finally:
        release.touch()
        holder.join(timeout=60)
        pool.close()


def test_reload_against_a_stopping_pool_fails_with_the_reason(tmp_path: Path) -> None:
    with stopping_pool(tmp_path) as pool:
        out = pool.ctl("reload")
        assert out.returncode == 1, out
        assert one_line(out) == "corepool: error: the pool is stopping", out.stderr
        assert "reload started" not in out.stdout
        out = pool.ctl("reload", "--wait")
        assert out.returncode == 1 and one_line(out) == "corepool: error: the pool is stopping", out.stderr
        # Every refusal has one shape, whatever the command.
        for request in (b'{"cmd": "reload"}\n', b'{"cmd": "reload", "wait": true}\n', b'{"cmd": "drain"}\n'):
            assert _ask(pool.control, request) == {"ok": False, "error": "the pool is stopping"}, request


def test_control_replies_are_the_documented_ones(pool: Pool) -> None:
    """control.py's table, reply by reply (a reload's answer names the generation it rolls to)."""
    status = _ask(pool.control, b'{"cmd": "status"}\n')
    assert set(status) == {"ok", "status"} and status["ok"] is True
    assert _ask(pool.control, b'{"cmd": "reload"}\n') == {"ok": True, "generation": 2, "queued": False}
    # Queued behind the roll to 2, or started after it: either way generation 3, answered when it is over.
    done = _ask(pool.control, b'{"cmd": "reload", "wait": true}\n')
    assert done == {"ok": True, "generation": 3, "reason": "all workers run generation 3"}, done
    assert _ask(pool.control, b'{"cmd": "drain"}\n')["error"].startswith("this pool has no health endpoint")
