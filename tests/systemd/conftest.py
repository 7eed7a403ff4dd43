"""Fixtures for tests that run units under a real systemd booted in private namespaces (see sandbox.py).

* ``sandbox_factory``: call it with units (``{name: text}`` or a directory) to get a started ``Sandbox``;
  every sandbox it made is stopped at teardown, whether the test passed or not.
* ``corepool_venv``: the path of a venv (of /usr/bin/python3) with this checkout installed, for units to run
  ``<venv>/bin/corepool`` or ``<venv>/bin/python``. Built once per source tree, shared by the session.
* ``free_port()`` (from ``tests.support``): a free TCP port on 127.0.0.1; the network is the host's.

Everything collected under tests/systemd is marked ``systemd`` and skipped, with the reason, where a sandbox
cannot be booted (not root, no unshare/nsenter, no systemd, no cgroup2).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

# test_venv is imported under another name: a test_* name would be collected as a test.
from tests.systemd.sandbox import Sandbox, sandbox_available
from tests.systemd.sandbox import test_venv as build_test_venv

HERE = Path(__file__).resolve().parent
_UNAVAILABLE = sandbox_available()

SandboxFactory = Callable[..., Sandbox]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.systemd)
            if _UNAVAILABLE is not None:
                item.add_marker(pytest.mark.skip(reason=f"systemd sandbox unavailable: {_UNAVAILABLE}"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, object, object]:
    report = yield
    if isinstance(report, pytest.TestReport) and report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def sandbox_factory(request: pytest.FixtureRequest) -> Iterator[SandboxFactory]:
    made: list[Sandbox] = []

    def make(units: dict[str, str] | Path, *, journald: bool = True) -> Sandbox:
        sb = Sandbox(units, journald=journald)
        made.append(sb)
        sb.start()
        return sb

    yield make

    if request.node.stash.get(_FAILED, False):
        for sb in made:  # shows up in the report's "Captured stdout teardown"
            if sb.pid:
                log = sb.run("journalctl", "--no-pager", "-n", "150", "-o", "short-monotonic", check=False)
                print(f"--- journal of sandbox {sb.state_dir} (pid {sb.pid}) ---\n{log.stdout}")
    errors: list[BaseException] = []
    for sb in reversed(made):
        try:
            sb.stop()
        except Exception as e:
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture(scope="session")
def corepool_venv() -> Path:
    if _UNAVAILABLE is not None:
        pytest.skip(f"systemd sandbox unavailable: {_UNAVAILABLE}")
    return build_test_venv()
