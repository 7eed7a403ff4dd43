"""The installed .deb under a real systemd: what ``packaging/test-install`` runs, on the host's systemd (Debian 12:
252) and in a Debian 13 root (systemd 257, Python 3.13).

    python3 packaging/scenario.py host --deb DEB --log DIR
    python3 packaging/scenario.py root --root DIR --dsc DSC --log DIR [--unit-tests]

``host``: the .deb is already installed on the host; its units are copied into the sandbox's unit dir.
``root``: DIR is a scratch copy of a Debian 13 root (packaging/test-install makes it from the cached one, which
has no build tool); its systemd is booted in the sandbox, and inside it a git clone of this checkout's HEAD runs
``packaging/build all``, which must install every tool it uses (pip, lintian, the build dependencies, rpm and
rpmlint) and build a lintian-clean .deb and an rpmlint-clean .rpm; then, without network, the .deb is built
from the host's .dsc (``dpkg-source -x`` + ``dpkg-buildpackage -b``) and installed with dpkg; with
``--unit-tests``, corepool's tests/unit then run there on its Python and libraries.

Then, on the pool ``shop`` (tests/apps/switchable.py; /etc/corepool/shop.toml) and the packaged demo:
start (socket activation), ``systemctl reload`` blocks until only the new generation answers; three bad deploys
(an import error, a hang at import, a canary answering 500s: tests/systemd/rollback.py), each on a pool of its
own, roll back and FAIL ``systemctl reload`` with the unit active, the old workers serving and the reason in
``systemctl status`` and the journal; SIGKILL of the primary under continuous load with 0 refused connections,
stop, upgrade (dpkg -i again: postinst restarts the running pool), purge (prerm stops every pool and removes the
sockets its units made, never a hand-started pool's). Prints ``ok ...`` lines; the last line of
DIR/sandbox.result names the first failure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hostile import corpus  # noqa: E402
from tests.support import APPS, Load, free_port, get_json  # noqa: E402
from tests.systemd.rollback import BAD_DEPLOYS, BadDeploy, check_reload_fails, config_for  # noqa: E402
from tests.systemd.sandbox import Sandbox, SandboxError, sandbox_available  # noqa: E402

NAME = "shop"
SERVICE, SOCKET = f"corepool@{NAME}.service", f"corepool@{NAME}.socket"
CONFIG = """\
app = "switchable:app"
app_dir = "{app_dir}"
workers = 2
boot_timeout = 20.0
graceful_timeout = 5.0
"""


class Failed(Exception):
    pass


class Report:
    def __init__(self, log: Path) -> None:
        self.log = log
        self.result = open(log / "sandbox.result", "w")  # noqa: SIM115 (open for the whole run)

    def ok(self, line: str) -> None:
        print(f"ok   {line}", flush=True)
        self.result.write(f"ok   {line}\n")
        self.result.flush()

    def fail(self, reason: str) -> None:
        self.result.write(reason + "\n")
        self.result.flush()


def journal_tail(sb: Sandbox, log: Path) -> str:
    r = sb.run("journalctl", "--no-pager", "-n", "300", check=False)
    (log / "journal.txt").write_text(r.stdout)
    lines = [ln for ln in r.stdout.splitlines() if "corepool" in ln] or ["(no journal)"]
    errors = [ln for ln in lines if "rror" in ln]
    return (errors or lines)[-1]


def active(sb: Sandbox, unit: str, timeout: float = 60) -> None:
    sb.wait_for(lambda: sb.show(unit, "ActiveState") == "active", timeout, f"{unit} active")


def generations(port: int, n: int = 6) -> list[int]:
    return [int(get_json(port, timeout=20)["generation"]) for _ in range(n)]


def scenario(sb: Sandbox, deb_inside: Path, unit_src: Path, report: Report, log: Path) -> None:
    """Everything after the install: unit_src is where the package put its units (host path)."""
    # The sandbox's unit path holds copies of exactly what the package installed, plus our instance's drop-ins.
    for p in unit_src.glob("corepool@*"):
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, sb.unit_dir / p.name)
    port, demo_port = free_port(), free_port()
    (sb.unit_dir / f"{SOCKET}.d").mkdir()
    (sb.unit_dir / f"{SOCKET}.d/port.conf").write_text(f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n")
    (sb.unit_dir / "corepool@demo.socket.d/zz-port.conf").write_text(
        f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{demo_port}\n")
    switch = sb.write_file("apps/switch", "ok\n")
    app = sb.write_file("apps/switchable.py", (APPS / "switchable.py").read_text())
    sb.write_file("apps/canary_app.py", (APPS / "canary_app.py").read_text())
    (sb.unit_dir / f"{SERVICE}.d").mkdir()
    (sb.unit_dir / f"{SERVICE}.d/switch.conf").write_text(f"[Service]\nEnvironment=SWITCH_FILE={switch}\n")
    config = sb.outside(Path(f"/etc/corepool/{NAME}.toml"))
    config.write_text(CONFIG.format(app_dir=app.parent))
    sb.daemon_reload()
    unit_type = sb.run("systemctl", "show", "-p", "Type", "--value", SERVICE).stdout.strip()
    version = sb.run("systemctl", "--version").stdout.split()[1]
    report.ok(f"systemd {version}: {SERVICE} is Type={unit_type}")
    # one form on every systemd: Type=notify, and ExecReload= fails the reload job when the pool rolled back;
    # `corepool units` (the installed command) renders the same
    units = sb.run("/usr/bin/corepool", "units", "--app", "switchable:app", "--name", "mine", "--app-dir", "/srv")
    rendered = [ln for ln in units.stdout.splitlines() if ln.startswith(("Type=", "ExecReload=", "ReloadSignal="))]
    if unit_type != "notify" or len(rendered) != 2 or rendered[0] != "Type=notify" \
            or not rendered[1].endswith(" reload --wait --control /run/corepool/mine/control.sock"):
        raise Failed(f"on systemd {version} {SERVICE} is Type={unit_type}; corepool units rendered {rendered}")
    report.ok(f"corepool units on systemd {version}: {rendered[0]}, {rendered[1]}")

    # start
    sb.systemctl("start", SOCKET, "corepool@demo.socket")
    first = get_json(port, timeout=30)
    demo = get_json(demo_port, timeout=30)
    active(sb, SERVICE)
    report.ok(f"start: {SOCKET} -> {json.dumps(first)}; the packaged demo -> {json.dumps(demo)}")

    # a blocking reload: when systemctl returns, only the new generation answers
    gen = max(generations(port))
    t0 = time.monotonic()
    r = sb.systemctl("reload", SERVICE, check=False, timeout=120)
    took = time.monotonic() - t0
    if r.returncode != 0:
        raise Failed(f"systemctl reload {SERVICE} failed: {r.stderr.strip()}; journal: {journal_tail(sb, log)}")
    after = generations(port)
    if min(after) <= gen:
        raise Failed(f"systemctl reload returned ({took:.1f} s) while generation {gen} still answers: {after}")
    report.ok(f"systemctl reload blocks until the roll is over ({took:.1f} s): then only generation "
              f"{min(after)} answers (was {gen})")

    # bad deploys: each rolls back, and systemctl reload fails honestly
    for deploy in BAD_DEPLOYS:
        report.ok(bad_deploy(sb, deploy, app.parent, log))

    # SIGKILL of the primary under load: systemd holds the socket, restarts the pool, nobody is refused
    main = int(sb.show(SERVICE, "MainPID"))
    restarts = int(sb.show(SERVICE, "NRestarts") or 0)
    with Load(port, keepalive=2, fresh=4) as load:
        time.sleep(1.0)
        # python3, not kill(1): a minbase root has no procps
        sb.run("python3", "-c", "import os, sys; os.kill(int(sys.argv[1]), 9)", str(main))
        sb.wait_for(lambda: sb.show(SERVICE, "MainPID") not in ("0", str(main)), 60, "a new primary")
        active(sb, SERVICE)
        time.sleep(1.0)
    result = load.stop()
    refused = [e for e in result.errors if "ConnectionRefusedError" in e]
    if refused or result.ok == 0:
        raise Failed(f"SIGKILL of the primary: {len(refused)} refused connections, {result.ok} ok: {refused[:3]}")
    report.ok(f"SIGKILL of the primary (pid {main}) under load: restarted (NRestarts {restarts} -> "
              f"{sb.show(SERVICE, 'NRestarts')}), {result.ok} requests ok, 0 refused, {result.failed} other errors "
              "(connections the killed workers held)")

    # stop
    sb.systemctl("stop", SOCKET, SERVICE, timeout=120)
    for unit in (SERVICE, SOCKET):
        st, res = sb.show(unit, "ActiveState"), sb.show(unit, "Result")
        if st != "inactive" or res != "success":
            raise Failed(f"after stop {unit} is {st} (result {res}); journal: {journal_tail(sb, log)}")
    if sb.unit_pids(SERVICE):
        raise Failed(f"after stop {SERVICE} still has processes {sb.unit_pids(SERVICE)}")
    report.ok(f"systemctl stop: {SERVICE} and {SOCKET} inactive, result success, no process left")

    # upgrade: dpkg -i of the package again, under this systemd, restarts the running pool
    sb.systemctl("start", SOCKET)
    get_json(port, timeout=30)
    active(sb, SERVICE)
    main = int(sb.show(SERVICE, "MainPID"))
    r = sb.run("env", "DEBIAN_FRONTEND=noninteractive", "dpkg", "-i", str(deb_inside), check=False, timeout=300)
    if r.returncode != 0:
        raise Failed(f"dpkg -i (upgrade) failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    active(sb, SERVICE)
    get_json(port, timeout=30)
    if int(sb.show(SERVICE, "MainPID")) == main:
        raise Failed(f"the upgrade did not restart the running pool (MainPID still {main})")
    report.ok(f"upgrade (dpkg -i) under systemd: postinst restarted the running pool (MainPID {main} -> "
              f"{sb.show(SERVICE, 'MainPID')}), it answers")

    # purge: stops every pool, removes the sockets its units made, leaves a hand-started pool's socket alone
    hand = "/run/corepool/byhand/control.sock"
    sb.run("python3", "-c", "import os, socket, sys; os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True); "
           "socket.socket(socket.AF_UNIX).bind(sys.argv[1])", hand)
    config.unlink()  # the admin's file: purge would rightly leave it (and /etc/corepool)
    r = sb.run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "purge", "-y", "-qq", "corepool",
               check=False, timeout=300)
    (log / "apt-purge-in-sandbox.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        raise Failed(f"apt-get purge failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    for unit in (SERVICE, SOCKET, "corepool@demo.service", "corepool@demo.socket"):
        if (st := sb.show(unit, "ActiveState")) != "inactive":
            raise Failed(f"apt-get purge left {unit} {st} (prerm should stop every instance)")
    left = sb.run("sh", "-c", "ls -A /run/corepool", check=False).stdout.split()
    if left != ["byhand"] or sb.run("test", "-S", hand, check=False).returncode != 0:
        raise Failed(f"after purge /run/corepool holds {left}: only the hand-started pool's byhand/ should stay")
    if sb.run("test", "-e", "/etc/corepool", check=False).returncode == 0:
        raise Failed("apt-get purge left /etc/corepool")
    report.ok("apt-get purge under systemd: every pool stopped, its sockets removed, /etc/corepool gone; "
              f"a hand-started pool's {hand} left alone")
    sb.run("rm", "-rf", "/run/corepool/byhand")


def bad_deploy(sb: Sandbox, deploy: BadDeploy, apps: Path, log: Path) -> str:
    """The pool corepool@NAME (NAME: the deploy's) serving deploy.good, then reloaded to deploy.bad; stopped after."""
    name = deploy.name
    service, socket = f"corepool@{name}.service", f"corepool@{name}.socket"
    port = free_port()
    (sb.unit_dir / f"{socket}.d").mkdir()
    (sb.unit_dir / f"{socket}.d/port.conf").write_text(f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n")
    switch = sb.write_file(f"apps/{name}.switch", deploy.good + "\n")
    (sb.unit_dir / f"{service}.d").mkdir()
    (sb.unit_dir / f"{service}.d/switch.conf").write_text(  # switchable.py reads SWITCH_FILE, canary_app CANARY_FILE
        f"[Service]\nEnvironment=SWITCH_FILE={switch} CANARY_FILE={switch} CANARY_BASE=0.01\n")
    config = sb.outside(Path(f"/etc/corepool/{name}.toml"))
    config.write_text(config_for(deploy, CONFIG.format(app_dir=apps)))
    sb.daemon_reload()
    sb.systemctl("start", socket)
    get_json(port, timeout=30)
    active(sb, service)

    def status() -> dict[str, Any]:
        out = sb.run("/usr/bin/corepool", "status", "--json", "--control", f"/run/corepool/{name}/control.sock")
        return dict(json.loads(out.stdout))

    try:
        line = check_reload_fails(sb, service, port, deploy, lambda text: sb.write_file(f"apps/{name}.switch", text),
                                  status)
    except AssertionError as exc:
        raise Failed(f"bad deploy {name}: {exc}; journal: {journal_tail(sb, log)}") from None
    sb.systemctl("stop", socket, service, timeout=120)
    config.unlink()
    return "bad deploy " + line


# What packaging/build installs for itself: a root that has any of them already would prove nothing.
BUILD_TOOLS = ("python3-pip", "lintian", "dpkg-dev", "debhelper", "build-essential", "rpm", "rpmlint")


def installed(sb: Sandbox, packages: tuple[str, ...]) -> list[str]:
    r = sb.run("dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\\n", *packages, check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.endswith(" installed")]


def clone_build_in_root(sb: Sandbox, report: Report, log: Path) -> None:
    """`git clone` of HEAD inside the root, then `packaging/build all` there, with the network (apt, PyPI)."""
    if there := installed(sb, BUILD_TOOLS):
        raise Failed(f"the Debian 13 root has {there} installed before packaging/build ran: it proves nothing")
    bundle = sb.outside(Path("/build/corepool.bundle"))
    bundle.parent.mkdir(parents=True, exist_ok=True)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    subprocess.run(["git", "-C", str(ROOT), "bundle", "create", "--quiet", str(bundle), "HEAD"], check=True)
    t0 = time.monotonic()
    r = sb.run("sh", "-c", "rm -rf /build/clone && git -c advice.detachedHead=false -c init.defaultBranch=main "
               "clone --quiet /build/corepool.bundle /build/clone && cd /build/clone && git rev-parse HEAD && "
               "packaging/build all && python3 packaging/rpm_requires.py check dist/corepool-*.rpm pyproject.toml",
               check=False, timeout=1200)
    (log / "clone-build-in-root.log").write_text(r.stdout + r.stderr)
    lines = (r.stdout + r.stderr).strip().splitlines()
    if r.returncode != 0:
        raise Failed(f"packaging/build all from a clone in the Debian 13 root failed: {lines[-3:]}")
    if not lines or lines[0] != head:
        raise Failed(f"the clone in the root is at {lines[:1]}, not HEAD {head}")
    if missing := sorted(set(BUILD_TOOLS) - set(installed(sb, BUILD_TOOLS))):
        raise Failed(f"packaging/build all succeeded but {missing} are not installed: what did it build with?")
    summary = [ln.removeprefix("packaging/build: ") for ln in lines if ln.startswith("packaging/build: ")
               and ("lintian" in ln or "rpmlint" in ln or "apt-get" in ln)] + lines[-1:]
    report.ok(f"git clone of HEAD + packaging/build all in the Debian 13 root, no build tool there before "
              f"({time.monotonic() - t0:.0f} s): {'; '.join(summary)}")


def build_in_root(sb: Sandbox, dsc: Path, report: Report, log: Path) -> Path:
    """Build the .deb from the .dsc inside the root, without network; returns the .deb's path inside."""
    build = sb.outside(Path("/build"))
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir()
    for f in dsc.parent.glob(dsc.name.removesuffix(".dsc") + ".*"):
        if f.suffix != ".deb":
            shutil.copy2(f, build / f.name)
    t0 = time.monotonic()
    r = sb.run("unshare", "--net", "sh", "-c",
               f"cd /build && dpkg-source -x {dsc.name} src && cd src && dpkg-buildpackage -b -us -uc --no-sign",
               check=False, timeout=600)
    (log / "deb-in-root.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        raise Failed(f"dpkg-buildpackage in the root failed: {(r.stdout + r.stderr).strip().splitlines()[-3:]}")
    debs = sorted(build.glob("corepool_*.deb"))
    if len(debs) != 1:
        raise Failed(f"expected one .deb in the root's /build, found {debs}")
    rules = next((ln for ln in r.stdout.splitlines() if ln.startswith("rules:")), "")
    report.ok(f"dpkg-source -x + dpkg-buildpackage -b in the root, no network ({time.monotonic() - t0:.0f} s): "
              f"{debs[0].name}; {rules}")
    return Path("/build") / debs[0].name


def install_in_root(sb: Sandbox, deb: Path, report: Report) -> None:
    # as a user would: dependencies the root does not have yet come from the Debian archive
    r = sb.run("sh", "-c", f"apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {deb}",
               check=False, timeout=600)
    if r.returncode != 0:
        raise Failed(f"apt-get install {deb} failed: {(r.stderr or r.stdout).strip().splitlines()[-3:]}")
    fields = sb.run("dpkg-query", "-W", "-f", "${Version} ${Architecture}; Depends: ${Depends}", "corepool").stdout
    if "a2wsgi" in fields:
        raise Failed(f"the package depends on a2wsgi, which corepool no longer uses: {fields}")
    report.ok(f"apt-get install {deb.name}: {fields}")
    checks = {
        "/usr/bin/corepool --version": ["/usr/bin/corepool", "--version"],
        "python3 -m corepool --version": ["python3", "-m", "corepool", "--version"],
    }
    outs = {k: sb.run(*argv, check=False) for k, argv in checks.items()}
    texts = {k: (r.stdout or r.stderr).strip() for k, r in outs.items()}
    if any(r.returncode != 0 for r in outs.values()) or len(set(texts.values())) != 1:
        raise Failed(f"the command and the public module differ: {texts}")
    # corepool's WSGI bridge is its own: a2wsgi must be neither bundled nor needed
    where = sb.run("python3", "-c", "import corepool, uvicorn, httptools, uvloop, pathlib; "
                   "assert not list(pathlib.Path('/usr/lib/corepool').glob('a2wsgi*')), 'a2wsgi is bundled'; "
                   "print(f'uvicorn {uvicorn.__version__} ({uvicorn.__file__}), httptools {httptools.__version__} "
                   "({httptools.__file__}); a2wsgi not bundled')", check=False)
    if where.returncode != 0:
        raise Failed(f"import corepool and its engines: {where.stderr.strip().splitlines()[-1:]}")
    report.ok(f"python3 -m corepool --version = /usr/bin/corepool --version = {next(iter(texts.values()))!r}; "
              f"{where.stdout.strip()}")
    check = sb.run("env", "PYTHONPATH=/usr/lib/corepool", "python3", "-m", "pip", "check", check=False)
    ours, theirs = pip_check_findings(check.stdout, bundled_names(sb))
    if ours:
        raise Failed(f"pip check in the package's environment: {'; '.join(ours)}")
    # A distribution's own packages may disagree among themselves (Debian 13: python3-h2 4.2.0 declares
    # hyperframe>=6.1, Debian ships 6.0.0): said, not ours to fail on.
    note = f"; the distribution's own: {'; '.join(theirs)}" if theirs else ""
    report.ok(f"pip check (PYTHONPATH=/usr/lib/corepool): nothing of corepool's or what it bundles{note}")


def bundled_names(sb: Sandbox) -> set[str]:
    """corepool and the distributions bundled in /usr/lib/corepool, normalized."""
    private = sb.outside(Path("/usr/lib/corepool"))
    return {"corepool"} | {p.name.split("-")[0].lower().replace("_", "-") for p in private.glob("*.dist-info")}


def pip_check_findings(output: str, ours: set[str]) -> tuple[list[str], list[str]]:
    """pip check's lines about corepool or what it bundles, and the others ("No broken requirements" is none)."""
    mine, others = [], []
    for line in output.strip().splitlines():
        if line.startswith("No broken requirements"):
            continue
        name = line.split(" ", 1)[0].lower().replace("_", "-")
        (mine if name in ours else others).append(line.strip())
    return mine, others


# Integration tests run there too: real pools (both modes) on the root's Python, uvicorn and websockets.
ROOT_TESTS = ("tests/unit", "tests/integration/test_pool.py", "tests/integration/test_preload.py",
              "tests/integration/test_websocket.py", "tests/integration/test_http_front.py", "tests/hostile",
              "tests/integration/test_hooks.py", "tests/integration/test_notify.py",
              "tests/integration/test_http2.py")


def unit_tests_in_root(sb: Sandbox, report: Report, log: Path) -> None:
    """corepool's tests/unit and the pool's integration tests on the root's Python and Debian 13's libraries (the
    checkout's src/)."""
    dest = sb.outside(Path("/opt/corepool-tests"))
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):  # pytest's settings; the settings test reads the README
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for tree in ("src", "units", "tests", "bench", "docs"):
        shutil.copytree(ROOT / tree, dest / tree, ignore=ignore)
    # gunicorn's request corpus (tests/hostile): the sdist the host's run already fetched, checked, not fetched again
    cache = dest / ".cache" / "corepool-tests"
    cache.mkdir(parents=True)
    shutil.copy2(corpus.sdist(), cache)
    py = sb.run("python3", "--version").stdout.strip()
    t0 = time.monotonic()
    # The checkout's src/ (what the tests are for) on Debian 13's Python and libraries; the private directory
    # after it for httptools, which Debian 13 has too old.
    r = sb.run("sh", "-c", "cd /opt/corepool-tests && XDG_CACHE_HOME=/opt/corepool-tests/.cache "
               "PYTHONPATH=/opt/corepool-tests/src:/usr/lib/corepool "
               f"python3 -m pytest -q -rfE -p no:cacheprovider {' '.join(ROOT_TESTS)}", check=False, timeout=900)
    (log / "unit-tests-in-root.log").write_text(r.stdout + r.stderr)
    lines = r.stdout.strip().splitlines() or ["(no output)"]
    summary = lines[-1]
    if r.returncode != 0:
        # CI shows only this line: it names what failed (pytest's short summary), the log has the rest
        failed = "; ".join(line for line in lines if line.startswith(("FAILED ", "ERROR ")))
        raise Failed(f"tests with {py} in the root: {summary}: {failed} (log: {log / 'unit-tests-in-root.log'})")
    report.ok(f"{', '.join(ROOT_TESTS)} with {py} and Debian 13's libraries in the root: {summary} "
              f"({time.monotonic() - t0:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("host", "root"))
    ap.add_argument("--deb", type=Path)
    ap.add_argument("--root", type=Path)
    ap.add_argument("--dsc", type=Path)
    ap.add_argument("--log", type=Path, required=True)
    ap.add_argument("--unit-tests", action="store_true")
    args = ap.parse_args(argv)
    report = Report(args.log)
    if (why := sandbox_available(args.root)) is not None:
        report.fail(f"cannot boot a sandboxed systemd here: {why}")
        return 1
    sb = Sandbox({}, root=args.root)
    try:
        sb.start(timeout=60)
        if args.mode == "host":
            if Path("/usr/sbin/policy-rc.d").exists():
                # This image's policy-rc.d answers 101 ("touch no service", as in Docker images), which
                # deb-systemd-invoke rightly obeys; inside the sandbox's own mount namespace it allows.
                allow = sb.write_file("policy-rc.d", "#!/bin/sh\nexit 0\n", mode=0o755)
                sb.run("mount", "--bind", str(allow), "/usr/sbin/policy-rc.d")
            deb_inside = sb.write_file(args.deb.name, "")  # the checkout may lie under /tmp (a tmpfs inside)
            shutil.copyfile(args.deb, deb_inside)
        else:
            clone_build_in_root(sb, report, args.log)
            deb_inside = build_in_root(sb, args.dsc, report, args.log)
            install_in_root(sb, deb_inside, report)
            if args.unit_tests:
                unit_tests_in_root(sb, report, args.log)
        where = sb.run("sh", "-c", "dpkg -L corepool | grep '/corepool@.service$'").stdout.strip()
        scenario(sb, deb_inside, sb.outside(Path(where).parent), report, args.log)
    except (Failed, SandboxError, OSError, TimeoutError, ValueError) as exc:
        tail = ""
        if sb.pid:
            tail = f"; journal: {journal_tail(sb, args.log)}"
        report.fail(f"{type(exc).__name__}: {exc}{tail}"[:2000])
        return 1
    except Exception as exc:
        report.fail(f"{type(exc).__name__}: {exc}"[:2000])
        raise
    finally:
        sb.stop()
    report.ok("sandbox stopped (systemd killed by pid, cgroup removed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
