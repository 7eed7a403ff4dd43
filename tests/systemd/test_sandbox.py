"""The sandbox fixture itself: a real systemd boots, runs units, logs to its own journald, and leaves no trace."""

from __future__ import annotations

import os
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import free_port
from tests.systemd.sandbox import Sandbox, SandboxError

SandboxFactory = Callable[..., Sandbox]

SLEEPER = "[Service]\nExecStart=/bin/sleep 600\n"

# Socket-activated (Accept=no) HTTP server: takes its listening socket from systemd as fd 3 (LISTEN_FDS).
HTTP_APP = """\
import http.server, os, socket

assert os.environ["LISTEN_FDS"] == "1" and int(os.environ["LISTEN_PID"]) == os.getpid()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello from {os.getpid()}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

server = http.server.HTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
server.socket.close()
server.socket = socket.socket(fileno=3)
server.serve_forever()
"""


def _get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body.decode()


def test_boots_as_pid1_and_answers(sandbox_factory: SandboxFactory) -> None:
    sb = sandbox_factory({"sleeper.service": SLEEPER})
    assert sb.systemctl("is-system-running").stdout.strip() == "running"
    assert sb.run("cat", "/proc/1/comm").stdout.strip() == "systemd"
    assert Path(f"/proc/{sb.pid}/exe").resolve().name == "systemd"
    # only our units and the stubs are known: nothing from /lib/systemd/system
    listed = sb.systemctl("list-unit-files", "--no-legend", "--type=service").stdout
    names = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert names == {"sleeper.service", "systemd-journald.service"}
    # errors surface instead of passing silently
    with pytest.raises(SandboxError, match="exited 3"):
        sb.run("sh", "-c", "exit 3")
    assert sb.run("sh", "-c", "exit 3", check=False).returncode == 3
    with pytest.raises(SandboxError):
        sb.systemctl("start", "no-such.service")


def test_socket_activation_mainpid_unit_pids_and_kill(sandbox_factory: SandboxFactory) -> None:
    port = free_port()
    sb = sandbox_factory({})
    app = sb.write_file("app/http_app.py", HTTP_APP)
    sb.write_unit("web.socket", f"[Socket]\nListenStream=127.0.0.1:{port}\nAccept=no\n")
    sb.write_unit("web.service", f"[Service]\nExecStart=/usr/bin/python3 {app}\n")
    sb.systemctl("start", "web.socket")
    assert sb.show("web.socket", "ActiveState") == "active"
    assert sb.show("web.service", "ActiveState") == "inactive"
    assert sb.show("web.service", "MainPID") == "0"

    body = _get(f"http://127.0.0.1:{port}/")  # the connection starts the service
    assert body.startswith("hello from ")
    served_by = int(body.split()[-1])
    assert sb.show("web.service", "ActiveState") == "active"
    assert int(sb.show("web.service", "MainPID")) == served_by  # namespace numbering on both sides
    assert sb.unit_pids("web.service") == [served_by]
    assert _get(f"http://127.0.0.1:{port}/") == body  # same process, socket kept

    # seen from the host, the service's process lives under the sandbox's fresh cgroup
    cg_rel = sb.show("web.service", "ControlGroup")
    assert cg_rel == "/system.slice/web.service"
    [host_pid] = (sb.cgroup / "system.slice/web.service/cgroup.procs").read_text().split()
    host_view = Path(f"/proc/{host_pid}/cgroup").read_text().splitlines()
    assert f"0::/{sb.cgroup.name}/system.slice/web.service" in host_view

    sb.kill(served_by, "TERM")
    sb.wait_for(lambda: sb.show("web.service", "ActiveState") != "active", what="web.service to stop")
    assert sb.unit_pids("web.service") == []
    assert sb.show("web.socket", "ActiveState") == "active"
    body2 = _get(f"http://127.0.0.1:{port}/")  # activated again
    assert body2 != body


def test_notify_status_text(sandbox_factory: SandboxFactory) -> None:
    notify = (
        "import os, socket, time; "
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
        's.connect(os.environ["NOTIFY_SOCKET"]); '
        's.send(b"STATUS=warming up"); time.sleep(0.3); '
        's.send(b"STATUS=serving 4 workers"); s.send(b"READY=1"); '
        "time.sleep(600)"
    )
    sb = sandbox_factory({"notify.service": f"[Service]\nType=notify\nExecStart=/usr/bin/python3 -c '{notify}'\n"})
    sb.systemctl("start", "notify.service")  # returns once READY=1 arrived
    assert sb.show("notify.service", "ActiveState") == "active"
    assert sb.show("notify.service", "StatusText") == "serving 4 workers"
    assert int(sb.show("notify.service", "MainPID")) in sb.unit_pids("notify.service")


def test_journald_captures_stdout_and_structured_fields(sandbox_factory: SandboxFactory, corepool_venv: Path) -> None:
    code = (
        "import time; from systemd import journal; "
        'print("plain stdout line", flush=True); '
        'journal.send("worker spawned", EVENT="spawn", WORKER="3"); '
        "time.sleep(600)"  # stays alive so journald can attribute the message to the unit
    )
    sb = sandbox_factory(
        {
            "logger.service": f"[Service]\nExecStart={corepool_venv}/bin/python -c '{code}'\n",
            "cat.service": "[Service]\nExecStart=/bin/sh -c 'echo via-systemd-cat | systemd-cat -t cattest -p warning"
            "; exec sleep 600'\n",
        }
    )
    sb.systemctl("start", "logger.service", "cat.service")
    spawn = sb.wait_for(lambda: sb.journal("logger.service", EVENT="spawn"), what="the EVENT=spawn entry")
    assert len(spawn) == 1
    assert spawn[0]["MESSAGE"] == "worker spawned"
    assert spawn[0]["WORKER"] == "3"
    assert spawn[0]["_SYSTEMD_UNIT"] == "logger.service"
    assert spawn[0]["_TRANSPORT"] == "journal"

    out = sb.wait_for(
        lambda: [e for e in sb.journal("logger.service") if e.get("MESSAGE") == "plain stdout line"],
        what="the stdout line",
    )
    assert out[0]["_TRANSPORT"] == "stdout"
    assert out[0]["_SYSTEMD_UNIT"] == "logger.service"

    cat = sb.wait_for(lambda: sb.journal(SYSLOG_IDENTIFIER="cattest"), what="the systemd-cat line")
    assert cat[0]["MESSAGE"] == "via-systemd-cat"
    assert cat[0]["PRIORITY"] == "4"
    assert sb.journal("logger.service", EVENT="no-such-event") == []


def test_dynamic_user_protect_system_strict_runs_venv(sandbox_factory: SandboxFactory, corepool_venv: Path) -> None:
    code = 'import corepool, os; print("corepool", corepool.__version__, "uid", os.getuid(), flush=True)'
    unit = (
        "[Service]\nType=oneshot\nDynamicUser=yes\nProtectSystem=strict\n"
        f"ExecStart={corepool_venv}/bin/python -c '{code}'\n"
    )
    sb = sandbox_factory({"dyn.service": unit})
    sb.systemctl("start", "dyn.service")  # oneshot: returns when it exited, raises if it failed
    assert sb.show("dyn.service", "Result") == "success"
    lines = sb.wait_for(
        lambda: [e["MESSAGE"] for e in sb.journal("dyn.service") if e.get("MESSAGE", "").startswith("corepool ")],
        what="the service's output",
    )
    words = lines[0].split()
    assert words[1] != "0+unknown"
    assert int(words[3]) >= 61184  # a dynamic UID, not root


def test_without_journald_output_goes_to_console(sandbox_factory: SandboxFactory) -> None:
    sb = sandbox_factory({"hi.service": "[Service]\nType=oneshot\nExecStart=/bin/echo hi-on-console\n"}, journald=False)
    assert "systemd-journald.service" not in sb.systemctl("list-unit-files", "--no-legend").stdout
    sb.systemctl("start", "hi.service")
    sb.wait_for(lambda: "hi-on-console" in sb.console(), what="the unit's output on the console")
    assert sb.journal() == []


def test_failing_unit_is_reported(sandbox_factory: SandboxFactory) -> None:
    sb = sandbox_factory({"bad.service": "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'exit 7'\n"})
    with pytest.raises(SandboxError):
        sb.systemctl("start", "bad.service")
    assert sb.show("bad.service", "ExecMainStatus") == "7"
    assert sb.show("bad.service", "ActiveState") == "failed"


def test_stop_removes_everything_and_host_tmp_is_untouched() -> None:
    own_cgroup = Path("/proc/self/cgroup").read_text()
    with tempfile.NamedTemporaryFile(prefix="corepool-canary-", dir="/tmp") as canary:
        canary_path = Path(canary.name)
        with Sandbox({"sleeper.service": SLEEPER}) as sb:
            sb.systemctl("start", "sleeper.service")
            host_pids = [int(p) for p in (sb.cgroup / "system.slice/sleeper.service/cgroup.procs").read_text().split()]
            assert host_pids
            # /tmp inside is a fresh tmpfs: the canary is not visible, and what is made there stays there
            assert sb.run("ls", "-A", "/tmp").stdout.split() == []
            sb.run("touch", "/tmp/made-inside", "/run/made-inside", "/var/log/made-inside")
            assert not Path("/tmp/made-inside").exists()
            assert not Path("/run/made-inside").exists()
            assert not Path("/var/log/made-inside").exists()
            assert sb.run("findmnt", "-n", "-o", "FSTYPE", "/sys/fs/cgroup").stdout.strip() == "cgroup2"
            cgroup, state_dir, pid = sb.cgroup, sb.state_dir, sb.pid
            assert cgroup.is_dir() and state_dir.is_dir()
            assert cgroup.parent == Path("/sys/fs/cgroup/unified") or not Path("/sys/fs/cgroup/unified").is_dir()
        assert not cgroup.exists()
        assert not state_dir.exists()
        deadline = time.monotonic() + 5
        while any(Path(f"/proc/{p}").exists() for p in [pid, *host_pids]) and time.monotonic() < deadline:
            time.sleep(0.05)  # reaped by their (dead) namespace's parent: may take a moment
        assert not any(_alive(p) for p in [pid, *host_pids])
        assert canary_path.exists()
    assert Path("/proc/self/cgroup").read_text() == own_cgroup  # the test process was not moved
    sb.stop()  # idempotent


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
