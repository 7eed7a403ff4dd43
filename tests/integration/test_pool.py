"""The pool as users run it: real processes on 127.0.0.1, signals, load, and the control socket."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import stat
import time
from pathlib import Path
from typing import Any

from tests.support import Load, get_json, held_workers, inflight, workers

FAST_HEALTH = ("--health-interval", "0.3", "--health-timeout", "1")


def test_default_is_one_worker_per_core(pool_factory: Any) -> None:
    pool = pool_factory("corepool.demo:app", workers=None).start()
    assert pool.status()["workers_wanted"] == len(os.sched_getaffinity(0))


def test_demo_answers_pid_and_generation_from_every_worker(pool_factory: Any) -> None:
    pool = pool_factory("corepool.demo:app", workers=2).start()
    assert {w.pid for w in workers(pool.port, 2)} == pool.pids()  # every worker answers (the kernel picks which)
    assert get_json(pool.port)["generation"] == 1


def test_kill_9_worker_under_load_is_replaced(pool_factory: Any) -> None:
    pool = pool_factory("corepool.demo:app", workers=2).start()
    victim = sorted(pool.pids())[0]
    with Load(pool.port, keepalive=4, fresh=4) as load:
        time.sleep(0.5)
        os.kill(victim, signal.SIGKILL)
        pool.wait_for(lambda s: s["workers_ready"] == 2 and victim not in {w["pid"] for w in s["workers"]}, 10)
        time.sleep(0.5)
    result = load.stop()
    assert victim not in pool.pids() and len(pool.pids()) == 2
    # Only requests in flight on the killed worker may fail: at most one per client.
    assert result.failed <= 8, result.errors
    assert result.ok > 100


def test_sigstopped_worker_is_killed_and_replaced(pool_factory: Any) -> None:
    pool = pool_factory("corepool.demo:app", *FAST_HEALTH, workers=2).start()
    victim = sorted(pool.pids())[0]
    os.kill(victim, signal.SIGSTOP)
    status = pool.wait_for(lambda s: victim not in {w["pid"] for w in s["workers"]} and s["workers_ready"] == 2, 10)
    assert len(status["workers"]) == 2
    assert "no pong within health_timeout" in pool.log()


def test_worker_with_blocked_event_loop_is_killed_and_replaced(pool_factory: Any) -> None:
    pool = pool_factory("switchable:app", *FAST_HEALTH, workers=2).start()
    import http.client

    before = pool.pids()  # before the block: once wedged, its worker may be replaced before a status answers
    conn = http.client.HTTPConnection("127.0.0.1", pool.port, timeout=0.5)
    conn.request("GET", "/block")  # one worker takes it and wedges its loop
    time.sleep(0.3)
    conn.close()
    status = pool.wait_for(
        lambda s: len(before - {w["pid"] for w in s["workers"]}) == 1 and s["workers_ready"] == 2, 10
    )
    assert len(status["workers"]) == 2
    assert "no pong within health_timeout" in pool.log()


def test_reload_under_load_fails_no_request_and_replaces_every_pid(pool_factory: Any) -> None:
    pool = pool_factory("corepool.demo:app", workers=2).start()
    with Load(pool.port, keepalive=4, fresh=4) as load:
        time.sleep(0.3)
        for round_ in range(3):
            before = pool.pids()
            out = pool.ctl("reload", "--wait", "--timeout", "60")
            assert out.returncode == 0, out.stderr
            after = pool.pids()
            assert not before & after, f"round {round_}: old pids still serving: {before & after}"
            # Once the reload returned, no retired worker takes a new connection.
            assert {get_json(pool.port)["pid"] for _ in range(10)} <= after
            time.sleep(0.3)
    result = load.stop()
    assert result.failed == 0, result.errors[:10]
    assert result.ok > 200
    assert pool.status()["generation"] == 4


def test_sigusr2_reload_under_load(pool_factory: Any) -> None:
    pool = pool_factory("corepool.demo:app", workers=2).start()
    before = pool.pids()
    with Load(pool.port, keepalive=4, fresh=4) as load:
        time.sleep(0.3)
        pool.signal(signal.SIGUSR2)
        pool.wait_for(lambda s: s["generation"] == 2 and not s["reloading"], 30)
        time.sleep(0.5)
    result = load.stop()
    assert result.failed == 0, result.errors[:10]
    assert not before & pool.pids()
    assert result.pids & before and result.pids - before  # served by both generations


def test_reload_to_broken_code_keeps_old_workers(pool_factory: Any, tmp_path: Path) -> None:
    switch = tmp_path / "switch"
    switch.write_text("ok")
    pool = pool_factory("switchable:app", workers=2, env={"SWITCH_FILE": str(switch)}).start()
    before = pool.pids()
    switch.write_text("broken")
    with Load(pool.port, keepalive=2, fresh=2) as load:
        out = pool.ctl("reload", "--wait", "--timeout", "60")
    result = load.stop()
    assert out.returncode == 1
    assert "rolled back" in out.stderr and "RuntimeError: switchable: broken on purpose" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert pool.pids() == before
    assert result.failed == 0 and result.pids == before
    status = pool.status()
    assert status["last_reload"]["ok"] is False
    assert status["workers_ready"] == 2


def test_slow_importing_app_reload_keeps_capacity(pool_factory: Any, tmp_path: Path, mode: str) -> None:
    switch = tmp_path / "switch"
    switch.write_text("ok")
    pool = pool_factory("switchable:app", workers=2, env={"SWITCH_FILE": str(switch)}).start()
    switch.write_text("slow:3")
    with Load(pool.port, keepalive=4, fresh=4) as load:
        time.sleep(0.3)
        start = time.monotonic()
        out = pool.ctl("reload", "--wait", "--timeout", "60")
        end = time.monotonic()
    result = load.stop()
    assert out.returncode == 0, out.stderr
    if mode == "lazy":
        assert end - start >= 6  # each of the two new workers imports for 3 s, one at a time
    assert result.failed == 0, result.errors[:10]
    # No request waited for an import: one that did would wait its 3 s. (Not a timing target: a loaded CI
    # machine stretches an ordinary request past 1 s, which made this flaky when the bound was 1 s.)
    assert result.max_latency(start, end) < 3.0


def test_sigterm_lets_a_slow_request_finish(pool_factory: Any) -> None:
    pool = pool_factory("corepool.demo:app", workers=2).start()
    import threading

    answers: list[Any] = []
    t = threading.Thread(target=lambda: answers.append(get_json(pool.port, "/slow?seconds=1.5", timeout=10)))
    t.start()
    pool.wait_for(lambda s: inflight(s) == 1, 10, "the slow request running")
    pool.signal(signal.SIGTERM)
    t.join(10)
    assert answers and answers[0]["slept"] == 1.5
    assert pool.wait_exit() == 0


def test_sigterm_kills_stragglers_after_graceful_timeout(pool_factory: Any) -> None:
    """A request still running at graceful_timeout ends with its worker's SIGKILL: the client sees the
    connection drop (never a made-up 500) and the pool exits 1, saying how many workers it killed."""
    pool = pool_factory("corepool.demo:app", "--graceful-timeout", "1", workers=1).start()
    import threading

    outcome: list[BaseException | Any] = []

    def slow() -> None:
        try:
            outcome.append(get_json(pool.port, "/slow?seconds=30", timeout=10))
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=slow)
    t.start()
    pool.wait_for(lambda s: inflight(s) == 1, 10, "the slow request running")
    started = time.monotonic()
    pool.signal(signal.SIGTERM)
    code = pool.wait_exit()
    assert code == 1
    assert time.monotonic() - started < 5
    assert "1 worker(s) killed with requests still running" in pool.log()
    t.join(10)
    (result,) = outcome
    assert isinstance(result, (ConnectionError, http.client.RemoteDisconnected, http.client.IncompleteRead)), result


def _swallow(fn: Any) -> None:
    with contextlib.suppress(Exception):
        fn()


def test_broadcast_reaches_every_other_worker(pool_factory: Any) -> None:
    # One kept connection to each worker (which worker takes a fresh connection is the kernel's choice: asking
    # on fresh ones, a worker could go unasked for seconds on a loaded machine).
    pool = pool_factory("corepool.demo:app", "--keepalive-timeout", "300", workers=3).start()
    with held_workers(pool.port, 3) as (sender, *others):
        sender.conn.request("POST", "/broadcast", body=b'{"hello": 1}')
        response = sender.conn.getresponse()
        assert json.loads(response.read())["pid"] == sender.pid
        deadline = time.monotonic() + 10
        heard = {w.pid: w.get("/messages")["received"] for w in others}
        while not all(heard.values()) and time.monotonic() < deadline:
            time.sleep(0.02)
            heard = {w.pid: w.get("/messages")["received"] for w in others}
        assert heard == {w.pid: [{"from": sender.pid, "note": {"hello": 1}}] for w in others}
        assert sender.get("/messages")["received"] == []
        assert {sender.pid, *heard} == pool.pids()


def test_crash_loop_backs_off_visibly(pool_factory: Any, tmp_path: Path) -> None:
    switch = tmp_path / "switch"
    switch.write_text("ok")
    pool = pool_factory("switchable:app", workers=1, env={"SWITCH_FILE": str(switch)}).start()
    switch.write_text("exit")
    (victim,) = pool.pids()
    os.kill(victim, signal.SIGKILL)
    status = pool.wait_for(lambda s: s["slots"][0]["failures"] >= 4, 20, "4 failures")
    slot = status["slots"][0]
    assert slot["retry_in"] is not None and "exit code 7" in slot["last_error"]
    text = pool.ctl("status").stdout
    assert "failures in a row" in text and "backoff" in text
    time.sleep(2)
    spawned = pool.log().count("spawned (slot 0")
    assert spawned <= 8, f"{spawned} forks in ~3 s: no backoff"
    switch.write_text("ok")
    pool.wait_for(lambda s: s["workers_ready"] == 1, 30, "recovery after backoff")


def test_ttin_ttou_change_the_worker_count(pool_factory: Any) -> None:
    pool = pool_factory("corepool.demo:app", workers=1).start()
    pool.signal(signal.SIGTTIN)
    pool.wait_for(lambda s: s["workers_wanted"] == 2 and s["workers_ready"] == 2, 10)
    pool.signal(signal.SIGTTOU)
    pool.wait_for(lambda s: s["workers_wanted"] == 1 and len(s["workers"]) == 1, 10)


def test_primary_sigkill_leaves_no_orphans(pool_factory: Any) -> None:
    pool = pool_factory("corepool.demo:app", workers=2).start()
    workers = pool.pids()
    pool.signal(signal.SIGKILL)
    pool.wait_exit()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_wsgi_app_is_served(pool_factory: Any) -> None:
    pool = pool_factory("wsgiapp:app", workers=2).start()
    answer = get_json(pool.port)
    assert answer["interface"] == "wsgi" and answer["pid"] in pool.pids()


def test_busy_wsgi_threads_are_not_dead_but_an_overdue_request_retires_its_worker(pool_factory: Any) -> None:
    """Every request stuck (a slow upstream): the serving loop still answers pings, so no health kill; the
    requests past request_timeout get the worker replaced surge-first, and the log names the request."""
    pool = pool_factory("wsgiapp:app", *FAST_HEALTH, "--request-timeout", "2", "--graceful-timeout", "1",
                        workers=1).start()
    (victim,) = pool.pids()
    conns = []
    for _ in range(12):
        conn = http.client.HTTPConnection("127.0.0.1", pool.port, timeout=10)
        conn.request("GET", "/stuck")
        conns.append(conn)
    busy = pool.wait_for(lambda s: s["workers"][0]["busy_threads"] == 12, 10)
    assert busy["workers"][0]["threads"] == 64 and busy["workers"][0]["pid"] == victim
    after = pool.wait_for(lambda s: victim not in {w["pid"] for w in s["workers"]} and s["workers_ready"] == 1, 15)
    assert get_json(pool.port)["pid"] != victim
    log = pool.log()
    assert "no pong" not in log, "busy is not dead"
    assert "GET /stuck" in log and "request_timeout" in log
    assert after["slots"][0]["deaths"] == {"request_timeout": 1}
    for conn in conns:
        conn.close()


def test_raw_handler_is_served(pool_factory: Any) -> None:
    import socket

    pool = pool_factory("rawapp:handler", "--interface", "raw", workers=2).start()
    with socket.create_connection(("127.0.0.1", pool.port), timeout=5) as s:
        s.sendall(b"hello\n")
        answer = s.makefile().readline()
    pid, _, text = answer.partition(" ")
    assert int(pid) in pool.pids() and text == "hello\n"


def test_control_socket_is_private(pool_factory: Any) -> None:
    pool = pool_factory("corepool.demo:app", workers=1).start()
    assert stat.S_IMODE(os.stat(pool.control).st_mode) == 0o600
    assert f"control socket {pool.control}" in pool.log()


def test_malformed_control_request_gets_an_error_and_pool_keeps_serving(pool_factory: Any) -> None:
    import socket

    pool = pool_factory("corepool.demo:app", workers=1).start()
    for garbage in (b"not json\n", b'{"cmd": 3}\n', b'{"cmd": "explode"}\n', b"[1,2]\n"):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(pool.control)
            s.sendall(garbage)
            answer = s.makefile().readline()
        assert '"ok": false' in answer, answer
    assert get_json(pool.port)["pid"] in pool.pids()


def test_a_burst_of_keepalive_connections_is_shared_fairly(pool_factory: Any) -> None:
    import json
    import socket

    pool = pool_factory("corepool.demo:app", workers=2).start()
    conns = [socket.create_connection(("127.0.0.1", pool.port), timeout=10) for _ in range(64)]
    try:
        per_pid: dict[int, int] = {}
        for conn in conns:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        for conn in conns:
            data = b""
            while b"}" not in data:
                data += conn.recv(4096)
            pid = json.loads(data.split(b"\r\n\r\n", 1)[1])["pid"]
            per_pid[pid] = per_pid.get(pid, 0) + 1
    finally:
        for conn in conns:
            conn.close()
    # Each worker holds its share of the connections, within ±15 % of 1/N.
    assert set(per_pid) == pool.pids()
    assert all(abs(n / 64 - 0.5) <= 0.15 for n in per_pid.values()), per_pid


def test_second_pool_on_the_same_control_socket_is_refused(pool_factory: Any) -> None:
    import subprocess
    import sys

    from tests.support import free_port

    pool = pool_factory("corepool.demo:app", workers=1).start()
    out = subprocess.run(
        [sys.executable, "-m", "corepool", "serve", "corepool.demo:app", "--bind", f"127.0.0.1:{free_port()}",
         "--control", pool.control], capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 1
    assert f"control socket {pool.control}: a running server listens on" in out.stderr
    assert get_json(pool.port)["pid"] in pool.pids()  # the running pool is untouched


def test_sighup_rereads_the_config_and_a_bad_one_keeps_the_pool_running(pool_factory: Any, tmp_path: Path) -> None:
    config = tmp_path / "pool.toml"
    config.write_text("workers = 1\n")
    pool = pool_factory("corepool.demo:app", "--config", str(config), workers=None).start()
    assert pool.status()["workers_wanted"] == 1
    config.write_text("workers = 2\n")
    pool.signal(signal.SIGHUP)
    status = pool.wait_for(lambda s: s["workers_ready"] == 2 and s["generation"] == 2 and not s["reloading"], 30)
    assert status["config_error"] is None
    config.write_text("workers = 'many'\n")
    before = pool.pids()
    pool.signal(signal.SIGHUP)
    status = pool.wait_for(lambda s: s["config_error"] is not None, 10)
    assert "workers: expected a whole number" in status["config_error"]
    assert "config not reloaded" in pool.ctl("status").stdout
    assert pool.pids() == before and status["generation"] == 2
    assert get_json(pool.port)["pid"] in before


def test_idle_keepalive_connection_survives_a_reload_and_is_closed_politely(pool_factory: Any) -> None:
    import http.client

    # keepalive_timeout: longer than a reload on a loaded machine (the idle timer runs from the first answer
    # until the drain restarts it), well under graceful_timeout (30 s) and the clients' timeout.
    pool = pool_factory("corepool.demo:app", "--keepalive-timeout", "8", workers=1).start()
    conn = http.client.HTTPConnection("127.0.0.1", pool.port, timeout=20)
    idle = http.client.HTTPConnection("127.0.0.1", pool.port, timeout=20)
    for c in (conn, idle):
        c.request("GET", "/")
        first = c.getresponse()
        old_pid = json.loads(first.read())["pid"]
        assert not first.will_close
    assert pool.ctl("reload", "--wait").returncode == 0
    # Within keepalive_timeout of the drain: a retired worker still answers on an idle connection.
    conn.request("GET", "/")
    second = conn.getresponse()
    assert json.loads(second.read())["pid"] == old_pid
    assert second.will_close  # answered with Connection: close, then closed: the client never saw a reset
    conn.close()
    # A connection left idle is closed after keepalive_timeout (not graceful_timeout), with a FIN, not a reset.
    assert idle.sock is not None
    assert idle.sock.recv(1) == b""
    idle.close()


def test_the_control_directory_a_pool_created_is_gone_after_it_stops(pool_factory: Any, tmp_path: Path) -> None:
    control = tmp_path / "run" / "corepool" / "control.sock"
    pool = pool_factory("corepool.demo:app", "--control", str(control), workers=1)
    pool.control = str(control)
    pool.start()
    assert control.exists()
    pool.signal(signal.SIGTERM)
    assert pool.wait_exit() == 0
    assert not (tmp_path / "run").exists()


def test_status_reports_fresh_request_counts(pool_factory: Any) -> None:
    pool = pool_factory("corepool.demo:app", workers=2).start()  # health_interval stays at 10 s
    for _ in range(7):
        get_json(pool.port)
    # Each status pings the workers for fresh counts (waiting briefly for the pongs); within 5 s, well before the
    # next regular ping, only those pings can have brought them.
    status = pool.wait_for(lambda s: s["requests"] == 7, 5, "fresh counts")
    assert status["requests"] == 7
    assert sum(w["requests"] for w in status["workers"]) == 7
    assert all(w["last_pong_ago"] is not None for w in status["workers"])


def test_requests_served_since_the_last_pong_survive_a_reload(pool_factory: Any) -> None:
    """A retired worker's last requests (after its last ping) still count: it reports them as it drains."""
    pool = pool_factory("corepool.demo:app", workers=2).start()  # health_interval stays at 10 s: no ping
    for _ in range(9):
        get_json(pool.port)
    assert pool.ctl("reload", "--wait").returncode == 0
    pool.wait_for(lambda s: all(w["state"] == "ready" and w["generation"] == 2 for w in s["workers"]))
    assert pool.status()["requests"] == 9
