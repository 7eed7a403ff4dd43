"""A real systemd (252) booted as PID 1 of private PID, mount, cgroup, UTS and IPC namespaces, for tests.

The host's PID 1 need not be systemd. Confinement, all of which matters:

* inside the namespace, tmpfs is mounted over /run, /tmp, /var/tmp, /var/log (and /dev/shm) *before* systemd
  starts, so nothing systemd or a unit does there (tmpfiles, PrivateTmp, journald) reaches the host;
* the cgroup namespace is rooted at a fresh child of the host's cgroup2 hierarchy
  (``/sys/fs/cgroup/unified`` on a hybrid host, else ``/sys/fs/cgroup``) and cgroup2 is mounted over
  ``/sys/fs/cgroup`` inside, so systemd never moves host processes around;
* ``SYSTEMD_UNIT_PATH`` holds only the test's units plus empty stub targets, never /lib/systemd/system;
* the network namespace is the host's: use free 127.0.0.1 ports (see ``tests.support.free_port``).

With ``root=DIR`` it boots the systemd of another root filesystem instead (a Debian 13 root made by
mmdebstrap, say, for systemd 257): the boot script mounts /proc, /sys, cgroup2, /dev and the tmpfs dirs inside
DIR, pivots into it and execs DIR's own systemd; ``run()`` executes inside DIR; the units and files live in
DIR/var/lib/corepool-sandbox/<name> (``write_file`` returns the path as seen inside).

Files of the sandbox (its state dir with the units, the test venv) live under /var/lib/corepool-tests, which
no tmpfs covers. ``stop()`` SIGKILLs the namespace's systemd (the death of a PID namespace's init kills all
inside it), waits for the cgroup to empty, removes the cgroup tree and the state dir.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

BASE_DIR = Path("/var/lib/corepool-tests")
SYSTEMD = Path("/lib/systemd/systemd")
SYSTEM_UNIT_DIR = Path("/lib/systemd/system")
HOST_PYTHON = Path("/usr/bin/python3")
CHECKOUT = Path(__file__).resolve().parents[2]

STUB_TARGETS = (
    "sysinit",
    "basic",
    "sockets",
    "shutdown",
    "multi-user",
    "default",
    "network",
    "network-online",
    "local-fs",
    "remote-fs",
    "paths",
    "timers",
    "slices",
)
TMPFS_DIRS = ("/run", "/tmp", "/var/tmp", "/var/log", "/dev/shm")
JOURNALD_UNITS = ("systemd-journald.service", "systemd-journald.socket", "systemd-journald-dev-log.socket")
NSENTER_FLAGS = ("-m", "-p", "-C", "-u", "-i")

_live: set[Sandbox] = set()
T = TypeVar("T")


class SandboxError(RuntimeError):
    pass


def _cgroup2_root() -> Path | None:
    """The host's cgroup2 mount: /sys/fs/cgroup/unified on a hybrid host, else /sys/fs/cgroup."""
    mounts: dict[str, str] = {}
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3:
                mounts[fields[1]] = fields[2]
    for candidate in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if mounts.get(candidate) == "cgroup2":
            return Path(candidate)
    return None


def sandbox_available(root: Path | None = None) -> str | None:
    """None if a sandbox can be booted here (of the root filesystem ``root``), else the reason why not."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("unshare", "nsenter", "mount", *(() if root else ("systemctl", "journalctl"))):
        if shutil.which(tool) is None:
            return f"no {tool} on PATH"
    systemd = SYSTEMD if root is None else root / "usr/lib/systemd/systemd"
    if not os.access(systemd, os.X_OK):
        return f"no {systemd}"
    if _cgroup2_root() is None:
        return "no cgroup2 hierarchy mounted at /sys/fs/cgroup/unified or /sys/fs/cgroup"
    return None


def _journald_unit(name: str, root: Path | None = None) -> str:
    """Debian's journald unit, adjusted to run in the sandbox without touching the host's /dev."""
    out: list[str] = []
    unit_dir = SYSTEM_UNIT_DIR if root is None else root / "usr/lib/systemd/system"
    for line in (unit_dir / name).read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if key == "Symlinks":  # /dev is the host's devtmpfs: no /dev/log symlink there
            continue
        if key == "Sockets":  # the audit socket (netlink, host-wide) is not wanted in a sandbox
            socks = [s for s in line.split("=", 1)[1].split() if s != "systemd-journald-audit.socket"]
            line = "Sockets=" + " ".join(socks)
        out.append(line)
    return "\n".join(out) + "\n"


class Sandbox:
    """One systemd booted in private namespaces. Use as a context manager or call start()/stop()."""

    pid: int
    state_dir: Path

    def __init__(self, units: dict[str, str] | Path, *, journald: bool = True, root: Path | None = None) -> None:
        self._units = units
        self.journald = journald
        self.root = root.resolve() if root is not None else None
        self.pid = 0
        self.state_dir = Path()
        self.cgroup = Path()
        self._proc: subprocess.Popen[bytes] | None = None
        self._console_fds: tuple[int, int] | None = None
        self._console_pump: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    @property
    def inner_dir(self) -> Path:
        """The sandbox's own directory (units, files) as seen inside it."""
        return self.state_dir if self.root is None else Path("/var/lib/corepool-sandbox") / self.state_dir.name

    def outside(self, inner: Path) -> Path:
        """The host's path of a path inside the sandbox."""
        return inner if self.root is None else self.root / inner.relative_to("/")

    @property
    def unit_dir(self) -> Path:
        """The unit directory, host's path."""
        return self.outside(self.inner_dir / "units")

    def start(self, timeout: float = 30) -> None:
        if self._proc is not None:
            raise SandboxError("sandbox already started")
        reason = sandbox_available(self.root)
        if reason is not None:
            raise SandboxError(f"sandbox not available: {reason}")
        BASE_DIR.mkdir(parents=True, exist_ok=True)
        BASE_DIR.chmod(0o755)
        self.state_dir = Path(tempfile.mkdtemp(prefix="sandbox-", dir=BASE_DIR))
        self.state_dir.chmod(0o755)  # files written here may be read by DynamicUser services
        _live.add(self)
        try:
            self._prepare_units()
            boot = self.state_dir / "boot"
            master, slave = os.openpty()
            self._console_fds = (master, slave)
            self._console_pump = threading.Thread(
                target=_pump_console, args=(master, self.state_dir / "pid1-console.log"), daemon=True
            )
            self._console_pump.start()
            boot.write_text(self._boot_script(os.ttyname(slave)))
            boot.chmod(0o755)
            root = _cgroup2_root()
            assert root is not None
            self.cgroup = root / f"corepool-{self.state_dir.name}"
            self.cgroup.mkdir()
            (self.state_dir / "cgroup").write_text(f"{self.cgroup}\n")
            # The shell moves itself into the fresh cgroup, then unshare's cgroup namespace is rooted there.
            mount_proc = "--mount-proc" if self.root is None else ""  # with a root, the boot script mounts it
            launch = (
                f"echo $$ > {shlex.quote(str(self.cgroup / 'cgroup.procs'))} && exec unshare --cgroup --pid"
                f" --fork --mount {mount_proc} --uts --ipc --propagation private {shlex.quote(str(boot))}"
            )
            with open(self.state_dir / "console.log", "wb") as console:
                self._proc = subprocess.Popen(
                    ["/bin/sh", "-c", launch],
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._wait_booted(timeout)
        except BaseException:
            self.stop()
            raise

    def _prepare_units(self) -> None:
        units = self.unit_dir
        units.mkdir(parents=True)
        if self.root is not None:
            self.outside(self.inner_dir).chmod(0o755)
        if isinstance(self._units, Path):
            shutil.copytree(self._units, units, dirs_exist_ok=True, symlinks=True)
        else:
            for name, text in self._units.items():
                (units / name).write_text(text)
        for t in STUB_TARGETS:
            target = units / f"{t}.target"
            if not target.exists():
                target.write_text(f"[Unit]\nDescription=sandbox stub {t}\n")
        if self.journald:
            for name in JOURNALD_UNITS:
                if not (units / name).exists():
                    (units / name).write_text(_journald_unit(name, self.root))
            # Debian enables these through static .wants symlinks, which are not on our unit path.
            for wants, name in (
                ("sockets.target.wants", "systemd-journald.socket"),
                ("sockets.target.wants", "systemd-journald-dev-log.socket"),
                ("sysinit.target.wants", "systemd-journald.service"),
            ):
                (units / wants).mkdir(exist_ok=True)
                link = units / wants / name
                if not link.exists():
                    link.symlink_to(Path("..") / name)

    def _boot_script(self, console_tty: str) -> str:
        # without journald, PID1's log and the units' output go to the console, i.e. pid1-console.log
        pid1_args = "--log-target=journal" if self.journald else "--log-target=console --default-standard-output=tty"
        if self.root is not None:
            return self._boot_script_root(console_tty, pid1_args)
        mounts = "\n".join(f"mount -t tmpfs -o mode=1777 tmpfs {d}" for d in TMPFS_DIRS)
        return f"""#!/bin/sh
# Runs as PID 1 of the new namespaces, then becomes systemd. Written by tests/systemd/sandbox.py.
set -e
{mounts}
chmod 0755 /run /var/log
# /dev/console is the host's: give systemd a pty of ours instead (copied to pid1-console.log)
mount --bind {shlex.quote(console_tty)} /dev/console
umount -R /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /run/systemd/journald.conf.d
# journald: volatile (in the tmpfs /run), no host kernel log, no rate limit dropping a busy test's lines
printf '[Journal]\nStorage=volatile\nReadKMsg=no\nRateLimitIntervalSec=0\n' \
  > /run/systemd/journald.conf.d/sandbox.conf
export container=corepool-sandbox SYSTEMD_COLORS=0 SYSTEMD_UNIT_PATH={shlex.quote(str(self.unit_dir))}
exec {SYSTEMD} --system --unit=default.target {pid1_args}
"""

    def _boot_script_root(self, console_tty: str, pid1_args: str) -> str:
        assert self.root is not None
        r = shlex.quote(str(self.root))
        mounts = "\n".join(f"mount -t tmpfs -o mode=1777 tmpfs {r}{d}" for d in TMPFS_DIRS)
        inner_units = shlex.quote(str(self.inner_dir / "units"))
        return f"""#!/bin/sh
# Runs as PID 1 of the new namespaces, pivots into {r} and becomes its systemd. Written by tests/systemd/sandbox.py.
set -e
mount --bind {r} {r}
mount -t proc proc {r}/proc
mount -t sysfs sysfs {r}/sys
mount -t cgroup2 cgroup2 {r}/sys/fs/cgroup
mount --rbind /dev {r}/dev
{mounts}
chmod 0755 {r}/run {r}/var/log
# /dev/console is the host's: give systemd a pty of ours instead (copied to pid1-console.log)
mount --bind {shlex.quote(console_tty)} {r}/dev/console
mkdir -p {r}/run/systemd/journald.conf.d
printf '[Journal]\\nStorage=volatile\\nReadKMsg=no\\nRateLimitIntervalSec=0\\n' \\
  > {r}/run/systemd/journald.conf.d/sandbox.conf
cd {r}
mkdir -p .oldroot
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot
export container=corepool-sandbox SYSTEMD_COLORS=0 SYSTEMD_UNIT_PATH={inner_units}
exec /usr/lib/systemd/systemd --system --unit=default.target {pid1_args}
"""

    def _wait_booted(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise SandboxError(f"sandbox exited early; console:\n{self.console()}")
            if not self.pid:
                self.pid = self._find_pid()
            if self.pid:
                r = self._nsenter(["systemctl", "is-system-running"], check=False, timeout=10)
                last = r.stdout.strip()
                if last in ("running", "degraded"):
                    (self.state_dir / "pid").write_text(f"{self.pid}\n")
                    if last == "degraded":
                        failed = self.systemctl("--failed", "--no-legend", check=False).stdout
                        raise SandboxError(f"sandbox booted degraded:\n{failed}\nconsole:\n{self.console()}")
                    return
            time.sleep(0.1)
        raise SandboxError(f"systemd did not come up in {timeout}s (last state {last!r}); console:\n{self.console()}")

    def _find_pid(self) -> int:
        try:
            pids = (self.cgroup / "init.scope" / "cgroup.procs").read_text().split()
        except OSError:
            return 0
        return int(pids[0]) if pids else 0

    def console(self) -> str:
        """The tail of what the boot script and systemd (on its /dev/console) printed."""
        out = []
        for name in ("console.log", "pid1-console.log"):
            with contextlib.suppress(OSError):
                out.append(f"[{name}]\n" + (self.state_dir / name).read_text(errors="replace")[-6000:])
        return "\n".join(out)

    def _cgroup_pids(self) -> list[int]:
        pids: list[int] = []
        if not self.cgroup.is_dir():
            return pids
        for procs in self.cgroup.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.extend(int(p) for p in procs.read_text().split())
        return pids

    def stop(self) -> None:
        """Kill everything and remove the cgroup tree and the state dir. Safe to call twice."""
        _live.discard(self)
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self._proc is not None:
            if self._proc.poll() is None and not self.pid:
                # systemd never showed up: kill what we launched (its own session/process group).
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
        if self.cgroup != Path() and self.cgroup.is_dir():
            deadline = time.monotonic() + 5
            while self._cgroup_pids() and time.monotonic() < deadline:
                time.sleep(0.05)
            for pid in self._cgroup_pids():  # only what we launched can be in there
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while self._cgroup_pids() and time.monotonic() < deadline:
                time.sleep(0.05)
            leftover = self._cgroup_pids()
            if leftover:
                raise SandboxError(f"cgroup {self.cgroup} still holds pids {leftover} after SIGKILL")
            dirs = sorted((p for p in self.cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            for d in [*dirs, self.cgroup]:
                with contextlib.suppress(FileNotFoundError):
                    d.rmdir()
        if self._console_fds is not None:  # everything inside is dead: closing our end lets the pump see EOF
            master, slave = self._console_fds
            os.close(slave)
            if self._console_pump is not None:
                self._console_pump.join(timeout=5)
            os.close(master)
            self._console_fds = self._console_pump = None
        if self.root is not None and self.state_dir != Path():
            shutil.rmtree(self.outside(self.inner_dir), ignore_errors=True)
        if self.state_dir != Path() and self.state_dir.is_dir():
            shutil.rmtree(self.state_dir)
        self.pid = 0
        self._proc = None

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- running things inside ---------------------------------------------------------------------------

    def _nsenter(
        self, argv: list[str], *, check: bool, timeout: float, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        flags = NSENTER_FLAGS if self.root is None else (*NSENTER_FLAGS, "-r", "-w")
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), *flags, *argv],
            check=check,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )

    def run(
        self, *argv: str, check: bool = True, timeout: float = 30, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the sandbox's namespaces (text mode, output captured)."""
        if not self.pid:
            raise SandboxError("sandbox not running")
        try:
            return self._nsenter(list(argv), check=check, timeout=timeout, input=input)
        except subprocess.CalledProcessError as e:
            raise SandboxError(
                f"{shlex.join(argv)} exited {e.returncode}\nstdout: {e.stdout}\nstderr: {e.stderr}"
            ) from e

    def systemctl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, check=check, timeout=timeout)

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "-p", prop, "--value", unit).stdout.rstrip("\n")

    def write_unit(self, name: str, text: str) -> None:
        (self.unit_dir / name).write_text(text)
        self.daemon_reload()

    def write_file(self, relpath: str, text: str, mode: int = 0o644) -> Path:
        """Write a file (an app, a config) under the sandbox's dir; returns its path inside the sandbox (the same
        as outside unless it boots another root: see :meth:`outside`)."""
        inner = self.inner_dir / "files" / relpath
        path = self.outside(inner)
        top = self.outside(self.inner_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        for d in [path.parent, *path.parent.parents]:
            if d == top:
                break
            d.chmod(0o755)
        path.write_text(text)
        path.chmod(mode)
        return inner

    def daemon_reload(self) -> None:
        self.systemctl("daemon-reload")

    def journal(self, unit: str | None = None, **match: str) -> list[dict[str, str]]:
        """Journal entries (journalctl -o json), optionally for one unit and/or FIELD=value matches."""
        argv = ["journalctl", "--no-pager", "-o", "json", "--all"]
        if unit is not None:
            argv += ["-u", unit]
        argv += [f"{k}={v}" for k, v in match.items()]
        self.run("journalctl", "--sync", check=False, timeout=10)
        out = self.run(*argv, check=False).stdout
        return [_journal_entry(json.loads(line)) for line in out.splitlines() if line.startswith("{")]

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10, what: str = "condition") -> T:
        """Poll predicate until it returns something truthy, and return that."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise SandboxError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.1)

    def unit_pids(self, unit: str) -> list[int]:
        """PIDs (as numbered inside the sandbox) of the processes in the unit's cgroup and its children."""
        cg = self.show(unit, "ControlGroup")
        if not cg:
            return []
        path = self.cgroup / cg.lstrip("/")
        pids: list[int] = []
        for procs in [path / "cgroup.procs", *sorted(path.rglob("*/cgroup.procs"))]:
            try:
                host_pids = [int(p) for p in procs.read_text().split()]
            except OSError:
                continue
            for hp in host_pids:
                ns_pid = _innermost_pid(hp)
                if ns_pid is not None:
                    pids.append(ns_pid)
        return pids

    def kill(self, pid: int, sig: str) -> None:
        """kill -SIG pid, run inside the sandbox (pid in its numbering)."""
        self.run("kill", f"-{sig.removeprefix('SIG')}", str(pid))


def _pump_console(master: int, log: Path) -> None:
    with open(log, "ab") as out:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: no slave end open any more
                return
            if not data:
                return
            out.write(data.replace(b"\r\n", b"\n"))
            out.flush()




def _innermost_pid(host_pid: int) -> int | None:
    try:
        with open(f"/proc/{host_pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except OSError:
        return None
    return None


def _journal_entry(raw: dict[str, Any]) -> dict[str, str]:
    entry: dict[str, str] = {}
    for key, value in raw.items():
        if isinstance(value, str):
            entry[key] = value
        elif isinstance(value, list) and all(isinstance(v, int) for v in value):  # binary field
            entry[key] = bytes(value).decode(errors="replace")
        elif isinstance(value, list):  # the field occurs more than once
            entry[key] = "\n".join(v if isinstance(v, str) else bytes(v).decode(errors="replace") for v in value)
        elif value is not None:
            entry[key] = str(value)
    return entry


@atexit.register
def _stop_all() -> None:
    for sb in list(_live):
        with contextlib.suppress(Exception):
            sb.stop()


# -- the venv that units run corepool from ----------------------------------------------------------------


def _package_files(checkout: Path) -> list[Path]:
    """What the wheel is built from: pyproject.toml, README/LICENSE files, src/ and units/ (force-included)."""
    files = [checkout / "pyproject.toml"]
    files += sorted(p for p in checkout.glob("*") if p.is_file() and p.name.startswith(("README", "LICENSE")))
    for tree in ("src", "units"):
        files += sorted(
            p
            for p in (checkout / tree).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
        )
    return files


def _source_hash(checkout: Path) -> str:
    h = hashlib.sha256()
    for p in _package_files(checkout):
        h.update(str(p.relative_to(checkout)).encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _flock(path: Path, op: int) -> IO[str] | None:
    """Open path and flock() it (None if op has LOCK_NB and it is busy), retrying if it was unlinked meanwhile."""
    while True:
        f = open(path, "a")  # noqa: SIM115 (returned open: the lock lives as long as the file)
        try:
            fcntl.flock(f, op)
        except BlockingIOError:
            f.close()
            return None
        try:
            if os.fstat(f.fileno()).st_ino == os.stat(path).st_ino:
                return f
        except FileNotFoundError:
            pass
        f.close()


# venv -> its "use" lock, held shared until this process exits so that no other process prunes it meanwhile
_venvs_in_use: dict[Path, IO[str]] = {}
_VENV_NAME = re.compile(r"venv-([0-9a-f]{16})(?:\.(?:build\.lock|use\.lock|log))?")
_VENV_DONE = ".corepool-test-venv-complete"


def test_venv(checkout: Path = CHECKOUT, keep: int = 3) -> Path:
    """A venv of /usr/bin/python3 with this checkout pip-installed (not editable), built once per source hash.

    It lives at /var/lib/corepool-tests/venv-<hash> (hash of pyproject.toml, README/LICENSE and src/),
    readable by DynamicUser services; units run ``<venv>/bin/corepool`` and ``<venv>/bin/python``. Parallel
    callers wait for one build. Venvs of other source trees are removed unless in use or among the ``keep``
    most recently used.
    """
    BASE_DIR.mkdir(parents=True, exist_ok=True)
    BASE_DIR.chmod(0o755)
    key = _source_hash(checkout)
    venv = BASE_DIR / f"venv-{key}"
    if venv in _venvs_in_use:
        return venv
    build = _flock(BASE_DIR / f"venv-{key}.build.lock", fcntl.LOCK_EX)
    assert build is not None
    with build:
        if not (venv / _VENV_DONE).exists():
            _build_venv(checkout, venv)
        use = _flock(BASE_DIR / f"venv-{key}.use.lock", fcntl.LOCK_SH)
        assert use is not None
        _venvs_in_use[venv] = use
        (venv / _VENV_DONE).touch()  # last used: see _prune_venvs
    _prune_venvs(keep)
    return venv


def _build_venv(checkout: Path, venv: Path) -> None:
    if venv.exists():
        shutil.rmtree(venv)  # a build that died half-way
    log = venv.with_name(venv.name + ".log")
    # Build from a snapshot of the package files: others may be editing the checkout meanwhile, and a checkout
    # without README.md (which pyproject.toml names) still installs.
    with tempfile.TemporaryDirectory(prefix=f"{venv.name}-src-", dir=BASE_DIR) as src, open(log, "w") as out:
        for p in _package_files(checkout):
            dest = Path(src) / p.relative_to(checkout)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest)
        readme = Path(src) / "README.md"
        if not readme.exists():
            readme.write_text("corepool (snapshot for tests)\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        for argv in (
            [str(HOST_PYTHON), "-m", "venv", str(venv)],
            # [systemd]: systemd-python, for journald's structured fields (the tests read EVENT= etc.)
            [str(venv / "bin/python"), "-m", "pip", "install", "--quiet", f"{src}[systemd]"],
        ):
            r = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=900)
            if r.returncode != 0:
                raise SandboxError(f"{shlex.join(argv)} failed; see {log}:\n{log.read_text()[-4000:]}")
    for p in [venv, *venv.rglob("*")]:  # readable by any (dynamic) user whatever the umask
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | (0o555 if p.is_dir() else 0o444))
    (venv / _VENV_DONE).write_text(f"{checkout}\n")


def _prune_venvs(keep: int) -> None:
    """Remove venvs that no process uses and that are not among the ``keep`` most recently used."""
    keys = {m.group(1) for p in BASE_DIR.iterdir() if (m := _VENV_NAME.fullmatch(p.name))}

    def last_used(key: str) -> float:
        try:
            return (BASE_DIR / f"venv-{key}" / _VENV_DONE).stat().st_mtime
        except OSError:
            return 0.0  # half-built or gone

    for key in sorted(keys, key=last_used, reverse=True)[keep:]:
        venv = BASE_DIR / f"venv-{key}"
        if venv in _venvs_in_use:
            continue
        build = _flock(BASE_DIR / f"venv-{key}.build.lock", fcntl.LOCK_EX | fcntl.LOCK_NB)
        if build is None:
            continue  # being built
        with build:
            use = _flock(BASE_DIR / f"venv-{key}.use.lock", fcntl.LOCK_EX | fcntl.LOCK_NB)
            if use is None:
                continue  # some test process uses it
            with use:
                shutil.rmtree(venv, ignore_errors=True)
                for suffix in (".log", ".use.lock", ".build.lock"):
                    (BASE_DIR / f"venv-{key}{suffix}").unlink(missing_ok=True)
