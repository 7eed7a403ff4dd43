"""CI check (issue 9, item 6): ``pip install corepool`` needs no compiler, and the public module works.

Builds corepool's wheel from this checkout, installs it into a fresh venv of ``/usr/bin/python3`` with no C
compiler and no libsystemd headers visible (``CC``/``CXX`` point nowhere, ``PKG_CONFIG_PATH`` is empty and
``PKG_CONFIG_LIBDIR`` names nothing, no pip cache), then, in that venv:

* a control: ``pip install systemd-python`` must FAIL there (so the environment really cannot compile, and the
  install above proves that no dependency needs to);
* ``pip check`` is clean; ``systemd`` (systemd-python) is not importable, so sd_notify goes through sdnotify;
* ``python -m corepool --version`` prints what ``bin/corepool --version`` prints;
* ``python -m corepool serve corepool.demo:app`` on a socket passed the systemd way (``LISTEN_FDS``, fd 3) with a
  fake ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC``: READY=1 arrives, the demo answers, WATCHDOG=1 arrives, and
  SIGTERM gives STOPPING=1 and exit status 0.

Run: ``/usr/bin/python3 packaging/test_pip.py`` (network: PyPI). Prints one line per check; exits 1 on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NO_COMPILER = {
    "CC": "/nonexistent/cc",
    "CXX": "/nonexistent/c++",
    "PKG_CONFIG_PATH": "",
    "PKG_CONFIG_LIBDIR": "/nonexistent",
    "PIP_NO_CACHE_DIR": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
}


class Failed(Exception):
    pass


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV", "LISTEN_"))}
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(k, None)
    env.update(extra)
    return env


def run(*argv: str | Path, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], env=env or clean_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)


def must(r: subprocess.CompletedProcess[str], what: str) -> str:
    if r.returncode != 0:
        raise Failed(f"{what} exited {r.returncode}: {(r.stderr or r.stdout).strip()[-1500:]}")
    return r.stdout


def ok(line: str) -> None:
    print(f"ok   {line}", flush=True)


def notifications(sock: socket.socket, until: str, timeout: float) -> list[str]:
    """Datagrams received on the fake NOTIFY_SOCKET until one holds the line ``until``."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = sock.recv(65536).decode()
        except TimeoutError:
            break
        got.append(data)
        if until in data.splitlines():
            return got
    raise Failed(f"no {until} on NOTIFY_SOCKET within {timeout:.0f} s; got {got}")


def serve_demo(venv: Path, tmp: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = tmp / "notify.sock"
    notify.bind(str(notify_path))
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    port = listener.getsockname()[1]
    # The listening socket becomes fd 3 and LISTEN_PID the pid that execs corepool, as systemd passes them.
    launch = 'exec 3<&"$0"; LISTEN_PID=$$ exec "$@"'
    env = clean_env(NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="2000000", LISTEN_FDS="1",
                    LISTEN_FDNAMES="http")
    argv = ["/bin/sh", "-c", launch, str(listener.fileno()), str(venv / "bin/python"), "-m", "corepool", "serve",
            "corepool.demo:app", "--workers", "2", "--control", str(tmp / "control.sock")]
    log = open(tmp / "serve.log", "w")  # noqa: SIM115 (closed below, after the process)
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, pass_fds=(listener.fileno(),))
    listener.close()  # the pool holds it now
    try:
        notes = notifications(notify, "READY=1", 60)
        ok(f"python -m corepool serve (socket-activated, fd 3): READY=1 on the fake NOTIFY_SOCKET ({notes[-1]!r})")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            body = json.loads(r.read())
        if not isinstance(body.get("pid"), int):
            raise Failed(f"the demo answered {body}")
        ok(f"GET http://127.0.0.1:{port}/ -> {json.dumps(body)}")
        notifications(notify, "WATCHDOG=1", 10)
        ok("WATCHDOG=1 with WATCHDOG_USEC=2000000 (sdnotify)")
        proc.send_signal(signal.SIGTERM)
        notifications(notify, "STOPPING=1", 10)
        code = proc.wait(timeout=60)
        if code != 0:
            raise Failed(f"after SIGTERM the pool exited {code}")
        ok("SIGTERM -> STOPPING=1, exit status 0")
    except BaseException:
        log.flush()
        print((tmp / "serve.log").read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        notify.close()


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="corepool-test-pip-"))
    t0 = time.monotonic()
    try:
        # The wheel, from a snapshot of the package files (others may be editing the checkout meanwhile).
        src = tmp / "src"
        files = run("git", "-C", ROOT, "ls-files", "-z", "-co", "--exclude-standard", "--", "pyproject.toml",
                    "README.md", "LICENSE*", "src", "units")
        for name in must(files, "git ls-files").split("\0"):
            if name and (ROOT / name).is_file():
                (src / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, src / name)
        must(run("/usr/bin/python3", "-m", "venv", tmp / "venv"), "python3 -m venv")
        venv = tmp / "venv"
        pip = [venv / "bin/python", "-m", "pip"]
        must(run(*pip, "wheel", "--quiet", "--no-deps", "-w", tmp / "dist", src,
                 env=clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1")), "pip wheel")
        wheel = next((tmp / "dist").glob("corepool-*.whl"))
        ok(f"pip wheel: {wheel.name}")

        no_cc = clean_env(**NO_COMPILER)
        control = run(*pip, "install", "--quiet", "--no-binary", "systemd-python", "systemd-python", env=no_cc)
        if control.returncode == 0:
            raise Failed("control: systemd-python installed without a compiler: this environment proves nothing")
        ok("control: pip install systemd-python fails here (CC=/nonexistent/cc, no pkg-config path)")
        must(run(*pip, "install", "--quiet", wheel, env=no_cc), "pip install corepool (no compiler)")
        ok(f"pip install {wheel.name} with CC={NO_COMPILER['CC']} and an empty PKG_CONFIG_PATH")
        must(run(*pip, "check", env=no_cc), "pip check")
        ok("pip check: no broken requirements")
        if run(venv / "bin/python", "-c", "import systemd").returncode == 0:
            raise Failed("systemd-python is importable in the fresh venv: the sdnotify path is not tested")
        ok("systemd (systemd-python) not importable: sd_notify goes through sdnotify")
        a = must(run(venv / "bin/python", "-m", "corepool", "--version"), "python -m corepool --version").strip()
        b = must(run(venv / "bin/corepool", "--version"), "bin/corepool --version").strip()
        if a != b or not a.startswith("corepool "):
            raise Failed(f"python -m corepool --version printed {a!r}, bin/corepool {b!r}")
        ok(f"python -m corepool --version = bin/corepool --version = {a!r}")
        serve_demo(venv, tmp)
    except (Failed, subprocess.TimeoutExpired, StopIteration, OSError) as exc:
        print(f"FAIL {exc}")
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"test_pip: passed ({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
