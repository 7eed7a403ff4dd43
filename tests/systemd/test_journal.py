"""Journal fields from a plain ``pip install corepool`` (no extras, no compiler), under a real systemd and journald.

The pool runs from a venv holding only corepool's wheel and its hard dependencies (``pip_venv``: systemd-python
is checked NOT to be importable there), with the shipped units (``tests/systemd/test_units.install``). Checked
with ``journalctl -o json``: every event's fields (start, spawn, ready, reload, exit/death, stop, with
WORKER_PID, GENERATION, SLOT, CAUSE, SIGNAL), a 100 KB traceback arriving whole as one entry, an entry too large
for any datagram going whole through a sealed memfd, and journald stopped (SIGSTOP: its queue and its stream
fill) and restarted while the pool serves under load: 0 failed requests, and what a user then finds in the
journal — plain stderr lines with their priority while journald could not take entries, structured entries
again afterwards, and one ``EVENT=journal`` note saying how many lines went to stderr.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import Load
from tests.systemd.sandbox import BASE_DIR, CHECKOUT, HOST_PYTHON, Sandbox, _package_files
from tests.systemd.test_units import CONFIG, NAME, SERVICE, SOCKET, Pool, activate, install

SandboxFactory = Callable[..., Sandbox]
NO_COMPILER = {"CC": "/nonexistent/cc", "CXX": "/nonexistent/c++", "PKG_CONFIG_PATH": "",
               "PKG_CONFIG_LIBDIR": "/nonexistent", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.fixture(scope="module")
def pip_venv() -> Iterator[Path]:
    """A venv with corepool's wheel installed the README's pip way: no extras, no compiler, no libsystemd."""
    BASE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="pip-venv-", dir=BASE_DIR))
    try:
        src = tmp / "src"
        for p in _package_files(CHECKOUT):  # a snapshot: the checkout may change meanwhile
            dest = src / p.relative_to(CHECKOUT)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest)
        if not (src / "README.md").exists():
            (src / "README.md").write_text("corepool\n")
        venv = tmp / "venv"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
        env.update(NO_COMPILER)
        for argv in ([str(HOST_PYTHON), "-m", "venv", str(venv)],
                     [str(venv / "bin/pip"), "wheel", "--quiet", "--no-deps", "-w", str(tmp / "dist"), str(src)]):
            subprocess.run(argv, check=True, env=env, capture_output=True, timeout=600)
        wheel = next((tmp / "dist").glob("corepool-*.whl"))
        subprocess.run([str(venv / "bin/pip"), "install", "--quiet", str(wheel)], check=True, env=env,
                       capture_output=True, timeout=600)
        probe = subprocess.run([str(venv / "bin/python"), "-c", "import systemd"], capture_output=True, env=env)
        assert probe.returncode != 0, "systemd-python is importable in the pip venv: this test would prove nothing"
        for p in [tmp, *tmp.rglob("*")]:  # readable by the units' DynamicUser
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | (0o555 if p.is_dir() else 0o444))
        yield venv
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def corepool_entries(sb: Sandbox, **match: str) -> list[dict[str, str]]:
    return [e for e in sb.journal(SERVICE, **match) if e.get("_SYSTEMD_UNIT") == SERVICE]


def start_pool(sb: Sandbox, venv: Path, extra_config: str = "") -> Pool:
    pool = install(sb, venv)
    sb.write_file(f"etc/{NAME}.toml", CONFIG.format(app="switchable:app", app_dir=pool.files / "apps") + extra_config)
    sb.systemctl("start", SOCKET)
    activate(pool)
    return pool


def test_every_event_has_its_fields(sandbox_factory: SandboxFactory, pip_venv: Path) -> None:
    sb = sandbox_factory({})
    pool = start_pool(sb, pip_venv)
    first = pool.status()
    sb.systemctl("reload", SERVICE, timeout=40)
    victim = sorted(pool.ready_pids())[0]
    sb.kill(victim, "SIGKILL")
    sb.wait_for(lambda: victim not in pool.ready_pids() and len(pool.ready_pids()) == 2, 20, "a replacement")
    sb.systemctl("stop", SERVICE, timeout=30)

    entries = corepool_entries(sb)
    structured = [e for e in entries if e.get("_TRANSPORT") == "journal"]
    plain = [e["MESSAGE"] for e in entries if e.get("_TRANSPORT") == "stdout" and e["MESSAGE"].startswith("corepool[")]
    assert plain == [], "the pool's lines arrived as plain text: their fields are lost"  # (ExecReload's are its own)
    assert all(e["SYSLOG_IDENTIFIER"] == "corepool" and e["PRIORITY"] in ("4", "6") and e.get("ROLE")
               for e in structured)
    by_event: dict[str, list[dict[str, str]]] = {}
    for e in structured:
        by_event.setdefault(e.get("EVENT", ""), []).append(e)
    assert {"start", "spawn", "ready", "reload", "death", "stop"} <= set(by_event), sorted(by_event)
    assert not [e for e in by_event.get("", []) if e["LOGGER"] == "corepool"], "corepool lines without EVENT"
    gen1 = {w["pid"] for w in first["workers"]}
    spawned = {(int(e["WORKER_PID"]), e["GENERATION"]) for e in by_event["spawn"]}
    assert {(pid, "1") for pid in gen1} <= spawned
    assert {e["GENERATION"] for e in by_event["spawn"]} >= {"1", "2"}
    assert all(e["SLOT"] in ("0", "1") for e in by_event["spawn"] + by_event["ready"] if "WORKER_PID" in e)
    (death,) = [e for e in by_event["death"] if e.get("WORKER_PID") == str(victim)]
    assert (death["CAUSE"], death["SIGNAL"], death["GENERATION"], death["PRIORITY"]) == ("crash", "SIGKILL", "2",
                                                                                          "4")
    assert any(e.get("ROLE") == "worker" for e in structured)  # workers log through their own journal socket


TRACEBACK_APP = """\
raise RuntimeError("the start of a long message " + "x" * 100_000 + " the end of the long message")
"""


def test_a_100k_traceback_arrives_whole_as_one_entry(sandbox_factory: SandboxFactory, pip_venv: Path) -> None:
    """A when_ready hook (imported by the primary) whose import raises with a 100 KB message."""
    sb = sandbox_factory({})
    sb.write_file("apps/longtrace.py", TRACEBACK_APP)
    pool = install(sb, pip_venv)
    sb.write_file(f"etc/{NAME}.toml", CONFIG.format(app="switchable:app", app_dir=pool.files / "apps")
                  + 'when_ready = "longtrace:hook"\n')
    sb.systemctl("start", "--no-block", SERVICE)
    # the pool fails to start (exit 1) and systemd restarts it: each start logs it, once
    entry = sb.wait_for(lambda: corepool_entries(sb, EVENT="boot_error"), 30, "EVENT=boot_error")[0]
    message = entry["MESSAGE"]
    assert "Traceback (most recent call last)" in message
    assert "the start of a long message " + "x" * 100_000 + " the end of the long message" in message
    assert entry["_TRANSPORT"] == "journal" and entry["PRIORITY"] == "4"


MEMFD_PROBE = """\
from corepool import journal
big = "".join(f"line {i} " + "y" * 100 + "\\n" for i in range(100_000))  # 10 MB: more than any datagram
journal.Journal().send(journal.encode([("MESSAGE", big), ("PROBE", "memfd"), ("SYSLOG_IDENTIFIER", "probe")]))
"""


def test_an_entry_larger_than_any_datagram_goes_through_a_memfd(sandbox_factory: SandboxFactory,
                                                                pip_venv: Path) -> None:
    sb = sandbox_factory({})
    probe = sb.write_file("memfd_probe.py", MEMFD_PROBE)
    sb.systemctl("start", "systemd-journald.socket", "systemd-journald.service")
    sb.run(str(pip_venv / "bin/python"), str(probe))
    (entry,) = sb.wait_for(lambda: sb.journal(PROBE="memfd"), 10, "the memfd entry")
    lines = entry["MESSAGE"].splitlines()
    assert len(lines) == 100_000 and lines[-1] == "line 99999 " + "y" * 100


def test_journald_stopped_and_restarted_under_load(sandbox_factory: SandboxFactory, pip_venv: Path) -> None:
    """SIGSTOP journald while every request is logged (access_log): nothing blocks, the pool serves on."""
    sb = sandbox_factory({})
    pool = start_pool(sb, pip_venv, "access_log = true\n")
    with Load(pool.port, keepalive=3, fresh=2, timeout=15) as load:
        sb.wait_for(lambda: load.result.ok > 50, 20, "requests before the stop")
        sb.systemctl("kill", "-s", "SIGSTOP", "systemd-journald.service")
        try:
            # Far more lines than journald's queue and its stdout stream hold: a logger that waited for journald
            # (libsystemd's blocking send, or a blocking write to stderr) would stop serving here.
            served = load.result.ok
            sb.wait_for(lambda: load.result.ok > served + 3000, 60, "3000 requests while journald is stopped")
        finally:
            sb.systemctl("kill", "-s", "SIGCONT", "systemd-journald.service")
        sb.systemctl("restart", "systemd-journald.service")
        served = load.result.ok
        sb.wait_for(lambda: load.result.ok > served + 200, 30, "requests after journald's restart")
    result = load.stop()
    assert result.failed == 0, result.errors[:10]

    entries = corepool_entries(sb)
    # What a user finds: the fallback's own line, then plain access lines, with their priority from "<N>"...
    plain = [e for e in entries if e.get("_TRANSPORT") == "stdout"]
    assert any("journald cannot take entries (EAGAIN)" in e["MESSAGE"] and e["PRIORITY"] == "4" for e in plain)
    assert any('"GET / HTTP/1.1" 200' in e["MESSAGE"] and e["PRIORITY"] == "6" for e in plain)
    # ...one note per process that fell back, once journald took entries again...
    notes = [e for e in entries if e.get("EVENT") == "journal" and e.get("_TRANSPORT") == "journal"]
    assert notes and all("went to stderr as plain lines meanwhile (EAGAIN)" in e["MESSAGE"] for e in notes)
    # ...and structured access entries after the restart.
    last_note = max(int(e["__REALTIME_TIMESTAMP"]) for e in notes)
    later = [e for e in entries if e.get("EVENT") == "access" and e.get("_TRANSPORT") == "journal"
             and int(e["__REALTIME_TIMESTAMP"]) > last_note]
    assert later and all(e.get("REQUEST_PATH") == "/" and e.get("WORKER_PID") for e in later)
    assert pool.sb.show(SERVICE, "ActiveState") == "active" and pool.nrestarts() == 0
