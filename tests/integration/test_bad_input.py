"""Bad input gets one clear line naming what is wrong, and the right exit code: 2 usage/config, 1 start failure."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.support import APPS, free_port


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
    out = corepool("serve", "corepool.demo:app", "--bind", "localhost", "--control", str(tmp_path / "c"))
    assert out.returncode == 1 and "expected HOST:PORT" in one_line(out)


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


def test_status_without_a_pool_says_how_to_fix(tmp_path: Path) -> None:
    out = corepool("status", "--control", str(tmp_path / "none.sock"))
    assert out.returncode == 1
    assert "is the pool running?" in one_line(out)


def test_route_to_an_unknown_socket_name(tmp_path: Path) -> None:
    out = corepool("serve", "corepool.demo:app", "--route", "metrics=wsgiapp:app", "--bind", f"127.0.0.1:{free_port()}",
                   "--control", str(tmp_path / "c"))
    assert out.returncode == 2
    assert "routes: no socket named metrics (the sockets are named http" in one_line(out)
    out = corepool("check", "corepool.demo:app", "--route", "metrics")
    assert out.returncode == 2 and "metrics = '' is not module:attribute" in one_line(out)
