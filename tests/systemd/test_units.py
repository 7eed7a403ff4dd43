"""The units in units/ under a real systemd 252 (see sandbox.py): socket activation, notify, reload, watchdog,
restarts without refused connections, graceful stop, journald fields.

The units run are units/ as shipped, with two rewrites (``derive_units``): ``/usr/bin/corepool`` becomes the test
venv's corepool and ``/etc/corepool/`` a directory in the sandbox's state dir. Test settings come from drop-ins
(port, watchdog, environment) and a small TOML config (fast health pings, short timeouts), as a user would do.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from corepool import settings as corepool_settings
from tests.support import APPS, Load, LoadResult, free_port, get_json, inflight
from tests.systemd.rollback import BAD_DEPLOYS, BadDeploy, check_reload_fails, config_for
from tests.systemd.sandbox import CHECKOUT, Sandbox, SandboxError

SandboxFactory = Callable[..., Sandbox]
T = TypeVar("T")

UNITS = CHECKOUT / "units"
NAME = "t"
SERVICE = f"corepool@{NAME}.service"
SOCKET = f"corepool@{NAME}.socket"
CONTROL = f"/run/corepool/{NAME}/control.sock"

# Fast health pings so that a wedged worker is found in about a second; the watchdog (WatchdogSec=3 in the
# drop-in) then means "no worker answered within 3 s".
CONFIG = """\
app = "{app}"
app_dir = "{app_dir}"
workers = 2
health_interval = 0.5
health_timeout = 1.0
boot_timeout = 10.0
graceful_timeout = 5.0
backoff_max = 1.0
"""
WATCHDOG_SEC = 3


def derive_units(venv: Path, config_dir: Path) -> dict[str, str]:
    """units/ (relative path → text) as the tests run them: corepool from ``venv``, configs in ``config_dir``."""
    out: dict[str, str] = {}
    for path in sorted(UNITS.rglob("*")):
        if path.is_file():
            text = path.read_text()
            text = text.replace("/usr/bin/corepool", f"{venv}/bin/corepool")
            text = text.replace("/etc/corepool/", f"{config_dir}/")
            out[str(path.relative_to(UNITS))] = text
    return out


def wait(sb: Sandbox, predicate: Callable[[], T | None], timeout: float = 10, what: str = "condition") -> T:
    """Sandbox.wait_for for a predicate that answers None (not yet) or the value."""
    return cast(T, sb.wait_for(predicate, timeout, what))


def refused(result: LoadResult) -> list[str]:
    """The failed requests whose connection was refused (nobody listening), as opposed to reset or timed out."""
    return [e for e in result.errors if "ConnectionRefusedError" in e]


@dataclass
class Pool:
    """corepool@t under a sandbox's systemd, reached on 127.0.0.1:port."""

    sb: Sandbox
    venv: Path
    port: int
    files: Path

    @property
    def switch(self) -> Path:
        return self.files / "switch"

    def set_mode(self, mode: str) -> None:
        """What tests/apps/switchable.py does when a worker next imports it: ok, broken, slow:S, exit."""
        self.sb.write_file("switch", mode + "\n")

    def ctl(self, *args: str, check: bool = True, timeout: float = 60) -> Any:
        return self.sb.run(f"{self.venv}/bin/corepool", *args, "--control", CONTROL, check=check, timeout=timeout)

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.ctl("status", "--json", timeout=20).stdout))

    def ready_pids(self) -> set[int]:
        return {w["pid"] for w in self.status()["workers"] if w["state"] == "ready"}

    def main_pid(self) -> int:
        return int(self.sb.show(SERVICE, "MainPID"))

    def nrestarts(self) -> int:
        return int(self.sb.show(SERVICE, "NRestarts"))

    def wait_serving(self, timeout: float = 20) -> dict[str, Any]:
        """Wait for every worker to be ready, then for systemd to call the service active; return the status."""

        def pool_ready() -> dict[str, Any] | None:
            if self.sb.show(SERVICE, "ActiveState") == "failed":
                raise AssertionError(f"{SERVICE} failed: Result={self.sb.show(SERVICE, 'Result')}")
            try:
                s = self.status()
            except SandboxError:
                return None  # not started yet, or restarting
            return s if s["phase"] == "running" and s["workers_ready"] == s["workers_wanted"] else None

        status = wait(self.sb, pool_ready, timeout, what=f"every worker of {SERVICE} to be ready")
        try:
            self.sb.wait_for(lambda: self.sb.show(SERVICE, "ActiveState") == "active", 5, what="")
        except SandboxError:
            state = self.sb.show(SERVICE, "ActiveState")
            raise AssertionError(
                f"the pool is ready (corepool status) but systemd says {SERVICE} is {state!r}: READY=1 never "
                f"arrived; StatusText={self.sb.show(SERVICE, 'StatusText')!r}"
            ) from None
        return status

    def journal_has(self, text: str) -> bool:
        return any(text in e.get("MESSAGE", "") for e in self.sb.journal(SERVICE))


def install(
    sb: Sandbox,
    venv: Path,
    *,
    app: str = "switchable:app",
    service_dropin: str = "",
    socket: bool = True,
) -> Pool:
    """Install the derived units, a config for the instance ``t`` and drop-ins; nothing is started."""
    files = sb.state_dir / "files"
    config_dir = files / "etc"
    for name in ("switchable.py", "canary_app.py"):
        sb.write_file(f"apps/{name}", (APPS / name).read_text())
    sb.write_file(f"etc/{NAME}.toml", CONFIG.format(app=app, app_dir=files / "apps"))
    port = free_port()
    dropins = {
        f"{SERVICE}.d/test.conf": (
            "[Service]\n"
            # the deploy's file: switchable.py reads SWITCH_FILE, canary_app.py CANARY_FILE
            f"Environment=SWITCH_FILE={files / 'switch'} CANARY_FILE={files / 'switch'} CANARY_BASE=0.01\n"
            f"WatchdogSec={WATCHDOG_SEC}\n"
            "TimeoutStopSec=15\n" + service_dropin
        ),
    }
    if socket:
        dropins[f"{SOCKET}.d/listen.conf"] = f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n"
    for rel, text in {**derive_units(venv, config_dir), **dropins}.items():
        dest = sb.unit_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
    sb.daemon_reload()
    return Pool(sb, venv, port, files)


@pytest.fixture
def pool(sandbox_factory: SandboxFactory, corepool_venv: Path) -> Pool:
    """corepool@t.socket started on a free port (the service is not started yet)."""
    p = install(sandbox_factory({}), corepool_venv)
    p.sb.systemctl("start", SOCKET)
    return p


def activate(pool: Pool) -> dict[str, Any]:
    """Make the first request (which starts the service), then wait for the whole pool; return its status."""
    get_json(pool.port, timeout=20)
    return pool.wait_serving()


# -- the units themselves ------------------------------------------------------------------------------------


def test_units_verify_and_security_score(sandbox_factory: SandboxFactory, corepool_venv: Path) -> None:
    sb = sandbox_factory({})
    install(sb, corepool_venv)
    sb.write_file("etc/demo.toml", (CHECKOUT / "etc/demo.toml").read_text())
    sb.daemon_reload()
    # --man=no: the man page comes with the .deb (packaging/), it is not installed here.
    paths = [str(sb.unit_dir / n) for n in ("corepool@.service", "corepool@.socket", "corepool@demo.socket")]
    verify = sb.run("systemd-analyze", "verify", "--man=no", *paths, check=False)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    sec = sb.run("systemd-analyze", "security", "--no-pager", "corepool@demo.service", check=False)
    match = re.search(r"Overall exposure level for corepool@demo\.service: (\d+\.\d+)", sec.stdout)
    assert match, sec.stdout + sec.stderr
    assert float(match.group(1)) <= 1.5, sec.stdout


def test_demo_instance_runs_as_shipped(sandbox_factory: SandboxFactory, corepool_venv: Path) -> None:
    """corepool@demo with etc/demo.toml and its 127.0.0.1:8000 drop-in (port moved off 8000 if that is taken)."""
    sb = sandbox_factory({})
    install(sb, corepool_venv)
    sb.write_file("etc/demo.toml", (CHECKOUT / "etc/demo.toml").read_text() + "workers = 2\n")
    port = 8000
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8000)) == 0:
            port = free_port()
            (sb.unit_dir / "corepool@demo.socket.d/listen.conf").write_text(
                f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n"
            )
    sb.daemon_reload()
    sb.systemctl("start", "corepool@demo.socket")
    answer = get_json(port, timeout=20)
    assert set(answer) >= {"pid", "generation", "slot"}
    assert answer["pid"] in sb.unit_pids("corepool@demo.service")


# -- the tests ---------------------------------------------------------------------------------------


def test_socket_activation_status_mainpid_and_cgroup(pool: Pool) -> None:
    sb = pool.sb
    assert sb.show(SOCKET, "ActiveState") == "active"
    assert sb.show(SERVICE, "ActiveState") == "inactive"
    first = get_json(pool.port, timeout=20)  # the first connection starts the service
    status = pool.wait_serving()
    main = pool.main_pid()
    assert main == status["pid"]
    assert status["listeners"][0]["source"] == "systemd"
    assert status["listeners"][0]["name"] == "http"
    workers = pool.ready_pids()
    assert len(workers) == 2 and first["pid"] in workers
    loaders = {x["pid"] for x in status["loaders"]}  # preload mode: the generation's loader
    assert set(sb.unit_pids(SERVICE)) == {main, *workers, *loaders}
    # the live STATUS= line: ready/total, generation, requests
    text = sb.wait_for(lambda: t if (t := sb.show(SERVICE, "StatusText")).startswith("2/2 workers ready") else "",
                       what="StatusText")
    assert "generation 1" in text and " request" in text
    assert sb.show(SERVICE, "NotifyAccess") == "main"


def test_reload_under_load_blocks_until_rolled(pool: Pool) -> None:
    activate(pool)
    main = pool.main_pid()
    with Load(pool.port, keepalive=3, fresh=3) as load:
        time.sleep(0.5)
        for round_ in range(2):
            before = pool.ready_pids()
            pool.sb.systemctl("reload", SERVICE, timeout=40)  # raises if it exits non-zero
            after = pool.ready_pids()  # right after it returned: the roll is over
            assert len(after) == 2 and not before & after, f"round {round_}: {before} → {after}"
            time.sleep(0.3)
    result = load.stop()
    assert result.failed == 0, result.errors[:10]
    assert result.ok > 50
    assert pool.main_pid() == main
    assert pool.status()["generation"] == 3
    assert "last reload ok" in pool.sb.show(SERVICE, "StatusText")
    assert pool.sb.show(SERVICE, "ActiveState") == "active"


@pytest.mark.parametrize("deploy", BAD_DEPLOYS, ids=[d.name for d in BAD_DEPLOYS])
def test_reload_that_rolls_back_fails_and_old_workers_serve(
    sandbox_factory: SandboxFactory, corepool_venv: Path, deploy: BadDeploy
) -> None:
    """An import error, a hang at import and a canary answering 500s: `systemctl reload` fails, the unit stays
    active, the old workers serve, and systemctl status and the journal say why (tests/systemd/rollback.py)."""
    sb = sandbox_factory({})
    pool = install(sb, corepool_venv)
    sb.write_file(f"etc/{NAME}.toml", config_for(deploy, CONFIG.format(app=deploy.app, app_dir=pool.files / "apps")))
    pool.set_mode(deploy.good)
    pool.sb.systemctl("start", SOCKET)
    activate(pool)
    check_reload_fails(pool.sb, SERVICE, pool.port, deploy, pool.set_mode, pool.status)


def test_sigstopped_worker_is_replaced_alone(pool: Pool) -> None:
    activate(pool)
    main = pool.main_pid()
    victim, other = sorted(pool.ready_pids())
    pool.sb.kill(victim, "SIGSTOP")

    def replaced() -> dict[str, Any] | None:
        s = pool.wait_serving()
        return None if victim in {w["pid"] for w in s["workers"]} else s

    status = wait(pool.sb, replaced, timeout=15, what="the stopped worker to be replaced")
    pids = {w["pid"] for w in status["workers"] if w["state"] == "ready"}
    assert other in pids and len(pids) == 2
    assert pool.main_pid() == main
    assert pool.nrestarts() == 0
    assert not pool.journal_has("Watchdog timeout")


def _restart_under_load(pool: Pool, disrupt: Callable[[int], None], timeout: float = 25) -> LoadResult:
    """Run disrupt(main pid) under load, wait for the restarted service to serve; return the load's result."""
    activate(pool)
    main = pool.main_pid()
    with Load(pool.port, keepalive=3, fresh=3, timeout=15) as load:
        time.sleep(0.5)
        disrupt(main)
        pool.sb.wait_for(lambda: pool.nrestarts() >= 1, timeout, what="systemd to restart the service")
        pool.wait_serving(timeout=20)
        time.sleep(0.5)
    result = load.stop()
    assert pool.main_pid() != main
    assert result.ok > 20
    assert pool.sb.show(SOCKET, "ActiveState") == "active"
    return result


def test_sigstopped_primary_watchdog_restarts_without_refusing(pool: Pool) -> None:
    result = _restart_under_load(pool, lambda main: pool.sb.kill(main, "SIGSTOP"))
    assert pool.journal_has("Watchdog timeout"), "restarted, but not by the watchdog"
    assert refused(result) == [], refused(result)[:5]


def _block_all_workers(pool: Pool, stop: threading.Event) -> None:
    """Keep sending GET /block: each one wedges the worker that accepts it (its loop never turns again)."""
    while not stop.is_set():
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", pool.port, timeout=30)
            try:
                conn.request("GET", "/block")
                conn.getresponse()
            finally:
                conn.close()


def test_every_worker_hung_watchdog_restarts(pool: Pool) -> None:
    activate(pool)
    main = pool.main_pid()
    # Replacements hang too: they never finish starting (boot_timeout is 10 s, WatchdogSec 3 s), whether they
    # import the app (lazy) or are forked from a loader that already did (preload).
    pool.set_mode("hang")
    stop = threading.Event()
    blockers = [threading.Thread(target=_block_all_workers, args=(pool, stop), daemon=True) for _ in range(2)]
    for t in blockers:
        t.start()
    try:
        pool.sb.wait_for(lambda: pool.nrestarts() >= 1, 30, what="the watchdog to restart the service")
    finally:
        stop.set()
    assert pool.journal_has("Watchdog timeout")
    assert pool.journal_has("not feeding the watchdog")
    pool.set_mode("ok")
    pool.wait_serving(timeout=30)  # the restarted pool boots (at the latest when its hung workers time out)
    assert pool.main_pid() != main


def test_sigkilled_primary_restarts_without_refusing(pool: Pool) -> None:
    result = _restart_under_load(pool, lambda main: pool.sb.kill(main, "SIGKILL"))
    assert not pool.journal_has("Watchdog timeout")
    assert refused(result) == [], refused(result)[:5]


def test_stop_drains_slow_request(pool: Pool) -> None:
    activate(pool)
    answers: list[Any] = []
    errors: list[BaseException] = []

    def slow() -> None:
        try:
            answers.append(get_json(pool.port, "/slow?seconds=2", timeout=15))
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=slow)
    t.start()
    wait(pool.sb, lambda: inflight(pool.status()) == 1 or None, 10, "it in flight")
    start = time.monotonic()
    pool.sb.systemctl("stop", SERVICE, timeout=30)
    took = time.monotonic() - start
    t.join(timeout=15)
    assert not errors, errors
    assert len(answers) == 1 and answers[0]["pid"]
    assert took >= 1.0, f"stop returned after {took:.2f}s, before the request could finish"
    assert pool.sb.show(SERVICE, "ActiveState") == "inactive"
    assert pool.sb.show(SERVICE, "Result") == "success"
    assert pool.sb.unit_pids(SERVICE) == []


def test_journal_has_structured_fields(pool: Pool) -> None:
    status = activate(pool)
    workers = {w["pid"] for w in status["workers"]}
    sb = pool.sb

    def entries(event: str) -> list[dict[str, str]]:
        return [e for e in sb.journal(SERVICE, EVENT=event) if e.get("_SYSTEMD_UNIT") == SERVICE]

    spawn = sb.wait_for(lambda: e if len(e := entries("spawn")) >= 2 else [], what="EVENT=spawn entries")
    assert {int(e["WORKER_PID"]) for e in spawn} == workers
    assert {e["GENERATION"] for e in spawn} == {"1"}
    assert all(e["_TRANSPORT"] == "journal" and e["ROLE"] == "primary" for e in spawn)
    ready = sb.wait_for(lambda: entries("ready"), what="EVENT=ready entries")
    worker_ready = [e for e in ready if "WORKER_PID" in e]
    assert {int(e["WORKER_PID"]) for e in worker_ready} == workers
    assert all(e["GENERATION"] == "1" for e in ready)
    assert any("WORKER_PID" not in e and int(e["_PID"]) == status["pid"] for e in ready)  # the pool's own


# -- named sockets and the fd store (once src/corepool has them) ---------------------------------------------

HAS_ROUTES = "--route" in {f.flag for f in corepool_settings.FIELDS}
HAS_FDSTORE = any("FDSTORE=1" in p.read_text() for p in (CHECKOUT / "src/corepool").rglob("*.py"))


@pytest.mark.skipif(not HAS_ROUTES, reason="corepool has no --route (routes setting) yet")
def test_two_named_sockets_routed_to_two_apps(sandbox_factory: SandboxFactory, corepool_venv: Path) -> None:
    # not "metrics": that socket name is the primary's own metrics endpoint, never an app's route
    sb = sandbox_factory({})
    pool = install(sb, corepool_venv, service_dropin=f"Sockets={SOCKET} corepool-admin@{NAME}.socket\n")
    admin_port = free_port()
    (sb.unit_dir / "corepool-admin@.socket").write_text(
        f"[Socket]\nListenStream=127.0.0.1:{admin_port}\nFileDescriptorName=admin\nService=corepool@%i.service\n"
    )
    sb.write_file("apps/adminapp.py", ADMIN_APP)
    config = CONFIG.format(app="switchable:app", app_dir=pool.files / "apps")
    sb.write_file(f"etc/{NAME}.toml", config + 'routes = { admin = "adminapp:app" }\n')
    sb.daemon_reload()
    sb.systemctl("start", SOCKET, f"corepool-admin@{NAME}.socket")
    http_answer = get_json(pool.port, timeout=20)
    status = pool.wait_serving()
    assert {(x["name"], x["source"]) for x in status["listeners"]} == {("http", "systemd"), ("admin", "systemd")}
    admin_answer = get_json(admin_port, timeout=10)
    assert http_answer["version"] == "ok"  # switchable
    assert admin_answer["app"] == "admin"
    assert http_answer["pid"] in sb.unit_pids(SERVICE) and admin_answer["pid"] in sb.unit_pids(SERVICE)


ADMIN_APP = """\
import json, os


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = json.dumps({"app": "admin", "pid": os.getpid()}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
"""


@pytest.mark.skipif(not HAS_FDSTORE, reason="corepool does not push its sockets into the fd store (FDSTORE=1) yet")
def test_sigkilled_primary_without_socket_unit_keeps_sockets_in_fd_store(
    sandbox_factory: SandboxFactory, corepool_venv: Path
) -> None:
    sb = sandbox_factory({})
    pool = install(sb, corepool_venv, socket=False)
    # The same service, but started on its own: corepool binds --bind itself and stores the socket in systemd.
    text = (sb.unit_dir / "corepool@.service").read_text()
    text = re.sub(r"^(Requires|After)=corepool@%i\.socket.*$", "", text, flags=re.MULTILINE)
    (sb.unit_dir / "corepool@.service").write_text(text)
    sb.write_file(
        f"etc/{NAME}.toml",
        CONFIG.format(app="switchable:app", app_dir=pool.files / "apps") + f'bind = ["127.0.0.1:{pool.port}"]\n',
    )
    sb.daemon_reload()
    sb.systemctl("start", "--no-block", SERVICE)
    status = pool.wait_serving()
    assert status["listeners"][0]["source"] == "bind"
    assert int(sb.show(SERVICE, "NFileDescriptorStore")) >= 1
    main = pool.main_pid()
    with Load(pool.port, keepalive=3, fresh=3, timeout=15) as load:
        time.sleep(0.5)
        sb.kill(main, "SIGKILL")
        sb.wait_for(lambda: pool.nrestarts() >= 1, 20, what="systemd to restart the service")
        status = pool.wait_serving()
        time.sleep(0.5)
    result = load.stop()
    assert pool.main_pid() != main
    assert refused(result) == [], refused(result)[:5]
    assert result.ok > 20
    # the restarted primary took the very socket back from systemd's fd store
    assert [(x["address"], x["source"]) for x in status["listeners"]] == [(f"127.0.0.1:{pool.port}", "fdstore")]


def test_units_command_renders_a_working_pair(sandbox_factory: SandboxFactory, corepool_venv: Path) -> None:
    """`corepool units` for a user's app: the pair it prints verifies and serves under systemd."""
    import subprocess

    sb = sandbox_factory({})
    port = free_port()
    app_dir = sb.write_file("shop/.keep", "").parent
    out = subprocess.run(
        [str(corepool_venv / "bin/corepool"), "units", "--app", "corepool.demo:app", "--name", "shop",
         "--listen", f"127.0.0.1:{port}", "--app-dir", str(app_dir)],
        capture_output=True, text=True, check=True, timeout=30,
    )
    files = dict(re.findall(r"(?ms)^# ---- (\S+)\n(.*?)(?=^# ---- |\Z)", out.stdout))
    assert set(files) == {"shop.socket", "shop.service"}
    for name, text in files.items():
        sb.write_unit(name, text)
    verify = sb.run("systemd-analyze", "verify", "--man=no", *(str(sb.unit_dir / n) for n in files), check=False)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    sb.systemctl("start", "shop.socket")
    answer = get_json(port, timeout=20)
    assert answer["pid"] in sb.unit_pids("shop.service")
    # The first worker answers before the pool's READY=1, i.e. while the start job still runs; a reload job
    # queued then is merged into that start job by systemd and no reload happens. Reload an active unit.
    sb.wait_for(lambda: sb.show("shop.service", "ActiveState") == "active", 60, "shop.service active")
    sb.systemctl("reload", "shop.service", timeout=60)
    assert get_json(port, timeout=10)["generation"] == 2
