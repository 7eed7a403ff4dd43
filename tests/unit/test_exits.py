"""A child's end as data: from its wait status, with the signal as a field (never read back out of prose)."""

from __future__ import annotations

import os
import signal

from corepool import exits


def _wait_status_of(child: int) -> int:
    _pid, status = os.waitpid(child, 0)
    return status


def test_an_exit_code_and_its_meaning() -> None:
    child = os.fork()
    if child == 0:
        os._exit(3)
    ended = exits.Ended.of(_wait_status_of(child))
    assert (ended.code, ended.signal) == (3, None)
    assert ended.description == "exit code 3 (app failed to boot)" and not ended.as_told


def test_a_signal_is_a_field() -> None:
    child = os.fork()
    if child == 0:
        os.kill(os.getpid(), signal.SIGKILL)
        os._exit(0)
    ended = exits.Ended.of(_wait_status_of(child))
    assert ended == exits.killed("SIGKILL") and ended.description == "killed by SIGKILL"


def test_what_doing_as_told_means() -> None:
    assert exits.exited(0).as_told and exits.killed("SIGTERM").as_told
    assert not exits.killed("SIGKILL").as_told and not exits.lost("fork failed: EAGAIN").as_told
    assert exits.lost("gone before its pid was known").description == "gone before its pid was known"
