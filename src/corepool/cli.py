"""The ``corepool`` command: flags → settings, and the subcommands serve, status, reload, check, units."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from corepool import __version__, apps, control, engines, settings
from corepool.exits import EXIT_FAILURE, EXIT_USAGE

if TYPE_CHECKING:
    from corepool.listeners import Acquired
    from corepool.systemd import Notifier


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming what is wrong and where to look."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _fail(code: int, message: str) -> int:
    print(f"corepool: error: {message}", file=sys.stderr)
    return code


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("app", nargs="?", help="the app as module:attribute (for example corepool.demo:app)")
    parser.add_argument("--config", "-c", metavar="FILE", help="TOML settings file; flags override it")
    for f in settings.FIELDS:
        if f.name == "app":
            continue
        if f.kind is bool:
            parser.add_argument(f.flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=f.help)
        elif f.repeat:
            parser.add_argument(f.flag, dest=f.name, action="append", metavar=f.name.upper(), help=f.help)
        else:
            parser.add_argument(f.flag, dest=f.name, metavar=f.name.upper(), help=f.help)


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(args, f.name, None) for f in settings.FIELDS if getattr(args, f.name, None) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="corepool",
        description="A systemd-native, socket-activated pre-fork worker pool for Python web services.",
    )
    parser.add_argument("--version", action="version", version=f"corepool {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    serve = sub.add_parser("serve", help="run a pool", description="Run the app on one worker per CPU core.")
    _add_settings_flags(serve)

    check = sub.add_parser("check", help="validate settings and import the app, without serving")
    _add_settings_flags(check)

    units = sub.add_parser("units", help="print a systemd socket + service pair for your app",
                           description="Print (or write) NAME.socket and NAME.service running APP under corepool.")
    units.add_argument("--app", required=True, help="the app as module:attribute")
    units.add_argument("--name", required=True, help="the units' name (NAME.socket, NAME.service)")
    units.add_argument("--listen", action="append", metavar="ADDRESS",
                       help="ListenStream= of the socket (repeat; default 127.0.0.1:8000)")
    units.add_argument("--app-dir", default=".", help="directory holding the app (default: the current one)")
    units.add_argument("--config", help="a settings file for ExecStart= (default: none)")
    units.add_argument("--user", help="run as this user instead of a DynamicUser=")
    units.add_argument("--output", metavar="DIR", help="write the two files into DIR instead of printing them")

    for name, text in (("status", "show the running pool and each worker"), ("reload", "rolling reload"),
                       ("drain", "take this host out of its load balancers: the health endpoint answers 503 while "
                        "the pool still serves")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--control", metavar="PATH", help="control socket of the pool (default: from --name)")
        p.add_argument("--name", default="corepool", help="pool name, for the default control socket path")
        p.add_argument("--config", "-c", metavar="FILE", help="take name/control from this settings file")
        if name == "status":
            p.add_argument("--json", action="store_true", help="print the status as JSON")
            p.add_argument("--watch", action="store_true",
                           help="redraw the table every second (requests/s, p99, ...); plain frames when not a TTY")
        elif name == "drain":
            what = p.add_mutually_exclusive_group()
            what.add_argument("--stop", action="store_true", help="stop gracefully once drain_seconds are over")
            what.add_argument("--cancel", action="store_true", help="end a drain: health checks pass again")
        else:
            p.add_argument("--wait", action="store_true", help="return when the reload is over; exit 1 if rolled back")
            p.add_argument("--timeout", type=float, default=None, metavar="S", help="give up waiting after S seconds")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"serve": _serve, "check": _check, "status": _status, "reload": _reload, "drain": _drain,
               "units": _units}[args.command]
    try:
        code = handler(args)
        sys.stdout.flush()  # here, so a reader that went away (status | head -1) is noticed below
        return code
    except settings.SettingsError as exc:
        return _fail(EXIT_USAGE, str(exc))
    except control.ControlError as exc:
        return _fail(EXIT_FAILURE, str(exc))
    except BrokenPipeError:
        return _reader_gone()


def _reader_gone() -> int:
    """stdout's reader closed the pipe (``corepool status | head -1``): stop quietly, as the Python docs advise.

    stdout is pointed at /dev/null so that the interpreter's own flush at exit does not raise again.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_FAILURE


def _load_settings(args: argparse.Namespace) -> settings.Settings:
    flags = _flags(args)
    if args.app:
        flags["app"] = args.app
    s = settings.load(args.config, flags)
    from corepool import backends

    backends.check(s.broadcast)
    if not s.app:
        raise settings.SettingsError(
            "no app given: pass module:attribute (for example: corepool serve corepool.demo:app) "
            "or set app in the config"
        )
    return s


def _serve(args: argparse.Namespace) -> int:
    from corepool import listeners, log
    from corepool.primary import Primary
    from corepool.systemd import Notifier

    s = _load_settings(args)
    engine, why = engines.wsgi_engine(s.http)  # before anything is bound: a start error
    log.setup(s.log_level)
    failure = _tls_failure(s)
    if failure is not None:
        return _fail(EXIT_FAILURE, failure)
    notifier = Notifier()
    try:
        acquired = listeners.acquire(s.bind, s.backlog, os.environ, _endpoints(s))
    except listeners.ListenerError as exc:
        return _fail(EXIT_FAILURE, str(exc))
    if acquired.warning:
        log.event("listen", acquired.warning, warning=True)
    names = {lst.name for lst in acquired.listeners}
    unknown = sorted({name for name, _ in s.routes} - names)
    if unknown:
        for lst in acquired.listeners:
            lst.close()
        raise settings.SettingsError(
            f"routes: no socket named {', '.join(unknown)} (the sockets are named {', '.join(sorted(names))}; "
            "name them with FileDescriptorName= or --bind NAME=ADDRESS)"
        )
    _keep_in_fd_store(notifier, acquired)
    # said once the start can no longer fail on bad input (a refused start stays one line)
    log.event("start", f"WSGI apps are served by {_ENGINE_NAMES[engine]}: {why}")
    flags = _flags(args)
    if args.app:
        flags["app"] = args.app
    return Primary(s, acquired.listeners, notifier, flags).run()


_ENGINE_NAMES = {"granian": "granian's Rust worker", "bridge": "the bridge (uvicorn and corepool's app threads)"}


def _endpoints(s: settings.Settings) -> tuple[tuple[str, str, int], ...]:
    """The primary's own sockets to bind (or take back from the fd store): (name, address, backlog)."""
    from corepool import health, metrics

    return tuple((name, address, backlog) for name, address, backlog in (
        (metrics.NAME, s.metrics_bind, metrics.BACKLOG), (health.NAME, s.health_bind, health.BACKLOG)) if address)


def _keep_in_fd_store(notifier: Notifier, acquired: Acquired) -> None:
    """Sockets corepool bound itself (the app's, the health and metrics endpoints') go into systemd's fd store,
    so a restarted primary finds them open."""
    from corepool.listeners import FDSTORE_PREFIX

    own = [lst for lst in acquired.listeners if lst.source in ("bind", "fdstore")]
    if not own or not notifier.can_store_fds or not acquired.store_changed:
        return
    names = {FDSTORE_PREFIX + lst.name for lst in own} | acquired.stale_store_names
    notifier.store_fds([(FDSTORE_PREFIX + lst.name, lst.sock.fileno()) for lst in own], names)
    for lst in own:
        lst.unix_path = None  # systemd keeps the socket for the next run: leave its file in place


def _tls_failure(s: settings.Settings) -> str | None:
    """Why the TLS settings cannot serve (one line), or None: a start fails at once rather than in every worker."""
    from corepool.engines import tls

    try:
        tls.context(s.http)
    except tls.TLSError as exc:
        return str(exc)
    return None


def _check(args: argparse.Namespace) -> int:
    s = _load_settings(args)
    failure = _tls_failure(s)
    if failure is not None:
        return _fail(EXIT_FAILURE, failure)
    try:
        app = apps.load(s.app or "", s.app_dir)
    except apps.AppLoadError as exc:
        if exc.detail:
            print(exc.detail.rstrip(), file=sys.stderr)
        return _fail(EXIT_FAILURE, str(exc))
    interface = apps.detect_interface(app, s.interface)
    engine, _ = engines.wsgi_engine(s.http)
    from corepool.policy import counted
    served = f"wsgi on {_ENGINE_NAMES[engine]}" if interface == "wsgi" else interface
    print(
        f"ok: {s.app} ({served}), {counted(s.workers, 'worker')}, bind {' '.join(s.bind)}, "
        f"control socket {s.control_path()}"
    )
    return 0


def _units(args: argparse.Namespace) -> int:
    from pathlib import Path

    from corepool import unitgen

    if not settings.APP_SPEC.fullmatch(args.app):
        raise settings.SettingsError(f"--app {args.app!r} is not module:attribute (for example myapp:app)")
    req = unitgen.UnitRequest(app=args.app, name=args.name, listen=tuple(args.listen or ("127.0.0.1:8000",)),
                              app_dir=args.app_dir, config=args.config, user=args.user)
    try:
        files = unitgen.render(req)
    except unitgen.UnitError as exc:
        return _fail(EXIT_USAGE, str(exc))
    for warning in unitgen.warnings_for(req):
        print(f"corepool: warning: {warning}", file=sys.stderr)
    if args.output:
        for file_name, text in files.items():
            (Path(args.output) / file_name).write_text(text)
            print(f"wrote {Path(args.output) / file_name}")
        return 0
    for file_name, text in files.items():
        print(f"# ---- {file_name}\n{text}")
    return 0


def _control_path(args: argparse.Namespace) -> str:
    if args.control:
        return str(args.control)
    if args.config:
        return settings.load(args.config).control_path()
    return settings.Settings(name=args.name).control_path()


def _status(args: argparse.Namespace) -> int:
    if args.watch:
        from corepool import watch

        path = _control_path(args)
        return watch.run(lambda: _fetch_status(path))
    answer = control.request(_control_path(args), {"cmd": "status"})
    if not answer.get("ok"):
        return _fail(EXIT_FAILURE, str(answer.get("error")))
    status = answer["status"]
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        from corepool.status import format_text

        print(format_text(status))
    return 0


def _fetch_status(path: str) -> dict[str, Any]:
    answer = control.request(path, {"cmd": "status"})
    if not answer.get("ok"):
        raise control.ControlError(str(answer.get("error")))
    return dict(answer["status"])


def _reload(args: argparse.Namespace) -> int:
    timeout = args.timeout if args.wait else 10.0
    answer = control.request(_control_path(args), {"cmd": "reload", "wait": bool(args.wait)}, timeout=timeout)
    if "error" in answer:  # refused (the pool is stopping, ...): the one shape of every refusal
        return _fail(EXIT_FAILURE, str(answer["error"]))
    if not args.wait:
        print("reload queued behind the current one" if answer.get("queued") else "reload started")
        return 0
    reason = answer.get("reason", "")
    if answer.get("ok"):
        print(f"reload done: {reason}")
        return 0
    return _fail(EXIT_FAILURE, f"reload failed: {reason}")


def _drain(args: argparse.Namespace) -> int:
    answer = control.request(_control_path(args), {"cmd": "drain", "stop": args.stop, "cancel": args.cancel})
    if not answer.get("ok"):
        return _fail(EXIT_FAILURE, str(answer.get("error")))
    if args.cancel:
        print(f"drain cancelled: health {answer['health']}: {answer['reason']}")
    else:
        then = "then a graceful stop" if args.stop else "until corepool drain --cancel"
        print(f"draining: health {answer['health']} for {answer['drain_seconds']:g}s at least, {then}: "
              f"{answer['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
