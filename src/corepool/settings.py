"""One validated settings object, from a TOML file and command-line flags (flags win).

Every setting is declared once in :data:`FIELDS`; the CLI's flags, the validation, ``corepool check`` and the
README's table all come from that declaration.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INTERFACES = ("auto", "asgi", "wsgi", "raw")
LOG_LEVELS = ("debug", "info", "warning", "error")


class SettingsError(ValueError):
    """A setting is missing, unknown or has a bad value; the message says which and how to fix it."""


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Field:
    """How one setting is given and checked; its default lives in :class:`Settings`."""

    name: str
    kind: type
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    repeat: bool = False  # a list of strings; the flag may be given several times
    flag_name: str | None = None

    @property
    def flag(self) -> str:
        return "--" + (self.flag_name or self.name.replace("_", "-"))


FIELDS: tuple[Field, ...] = (
    Field("app", str, "the app to serve, as module:attribute (for example myapp:app)"),
    Field("interface", str, "how to call the app: auto, asgi, wsgi or raw", choices=INTERFACES),
    Field("bind", str, "[NAME=]HOST:PORT, [NAME=][IPv6]:PORT or [NAME=]unix:PATH to listen on",
          repeat=True),
    Field("routes", dict, "NAME=module:attribute: serve another app on the sockets named NAME", repeat=True,
          flag_name="route"),
    Field("workers", int, "number of workers (default: one per CPU core)", minimum=1),
    Field("mode", str, "preload: import the app once per generation and fork workers from it; "
          "lazy: every worker imports the app itself", choices=("preload", "lazy")),
    Field("app_dir", str, "directory added to sys.path before importing the app"),
    Field("name", str, "the pool's name, used for the default control socket path"),
    Field("control", str, "path of the control socket (default: printed at start)"),
    Field("health_interval", float, "seconds between health pings of each worker", minimum=0.05),
    Field("health_timeout", float, "seconds a worker has to answer a ping before SIGKILL", minimum=0.05),
    Field("boot_timeout", float, "seconds a new worker has to load the app and accept", minimum=0.1),
    Field("graceful_timeout", float, "seconds to finish in-flight requests on stop/retire", minimum=0.1),
    Field("backoff_max", float, "longest wait before retrying a slot whose workers keep failing",
          minimum=0.1),
    Field("keepalive_timeout", float, "seconds an idle keep-alive connection stays open", minimum=0.0),
    Field("max_message_bytes", int, "largest broadcast payload, in bytes", minimum=16),
    Field("backlog", int, "listen backlog of the sockets corepool binds", minimum=1),
    Field("access_log", bool, "log every request (costs throughput)"),
    Field("log_level", str, "debug, info, warning or error", choices=LOG_LEVELS),
)
FIELD_BY_NAME = {f.name: f for f in FIELDS}


@dataclass(frozen=True)
class Settings:
    """Everything a pool needs to run. Build it with :func:`load`."""

    app: str | None = None
    interface: str = "auto"
    bind: tuple[str, ...] = ("127.0.0.1:8000",)
    routes: tuple[tuple[str, str], ...] = ()
    workers: int = field(default_factory=_default_workers)
    mode: str = "preload"
    app_dir: str = "."
    name: str = "corepool"
    control: str | None = None
    health_interval: float = 10.0
    health_timeout: float = 5.0
    boot_timeout: float = 60.0
    graceful_timeout: float = 30.0
    backoff_max: float = 30.0
    keepalive_timeout: float = 5.0
    max_message_bytes: int = 64 * 1024
    backlog: int = 2048
    access_log: bool = False
    log_level: str = "info"
    config_path: str | None = None

    def control_path(self) -> str:
        """Where the control socket lives: the setting, else ``control.sock`` in the pool's runtime directory."""
        if self.control:
            return self.control
        return str(runtime_dir(self.name) / "control.sock")


def runtime_dir(name: str) -> Path:
    """systemd's RuntimeDirectory= (``/run/corepool/NAME`` in the shipped unit), else the same layout under
    /run/corepool (root), $XDG_RUNTIME_DIR/corepool or /tmp/corepool-UID — so ``corepool status --name NAME``
    run by an administrator finds a pool that systemd started."""
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return Path(runtime.split(":")[0])
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        base = Path(xdg) / "corepool"
    elif os.geteuid() == 0:
        base = Path("/run/corepool")
    else:
        base = Path(f"/tmp/corepool-{os.geteuid()}")
    return base / name


def _where(source: str, f: Field) -> str:
    if source == "flag":
        return f"fix the flag {f.flag}"
    return f"fix '{f.name}' in {source} or pass {f.flag}"


def coerce(f: Field, value: Any, source: str) -> Any:
    """Check and convert one value; raise SettingsError naming the setting and how to fix it."""
    if f.kind is dict:
        return _routes(f, value, source)
    if f.repeat:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
            raise SettingsError(f"{f.name}: expected a list of non-empty strings, got {value!r} ({_where(source, f)})")
        return tuple(items)
    if value is None:
        return None
    converters: dict[type, Callable[[Any], Any]] = {
        int: _to_int, float: _to_float, bool: _to_bool, str: _to_str
    }
    try:
        out = converters[f.kind](value)
    except (TypeError, ValueError):
        expected = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}[f.kind]
        raise SettingsError(f"{f.name}: expected {expected}, got {value!r} ({_where(source, f)})") from None
    if f.choices and out not in f.choices:
        raise SettingsError(
            f"{f.name}: {out!r} is not one of {', '.join(f.choices)} ({_where(source, f)})"
        )
    if f.minimum is not None and out < f.minimum:
        raise SettingsError(f"{f.name}: must be at least {f.minimum:g}, got {out!r} ({_where(source, f)})")
    return out


def _routes(f: Field, value: Any, source: str) -> tuple[tuple[str, str], ...]:
    """A TOML table {name = "module:attr"} or flags ["name=module:attr", ...] as sorted (name, app) pairs."""
    pairs: list[tuple[Any, Any]]
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        pairs = [tuple(item.split("=", 1)) if "=" in item else (item, "") for item in value]
    else:
        raise SettingsError(f"{f.name}: expected a table of NAME = \"module:attribute\" ({_where(source, f)})")
    for name, app in pairs:
        if not isinstance(name, str) or not SOCKET_NAME.fullmatch(name):
            raise SettingsError(
                f"{f.name}: {name!r} is not a socket name (letters, digits, . _ -) ({_where(source, f)})"
            )
        if not isinstance(app, str) or not APP_SPEC.fullmatch(app):
            raise SettingsError(f"{f.name}: {name} = {app!r} is not module:attribute ({_where(source, f)})")
    return tuple(sorted(pairs))


def _to_int(value: Any) -> int:
    if isinstance(value, (bool, float)):
        raise TypeError
    return int(value)


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError
    return float(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
        return False
    raise ValueError


def _to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


def read_file(path: str) -> dict[str, Any]:
    """Parse a TOML settings file; errors name the file and what is wrong."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist (check the --config path)") from None
    except OSError as exc:
        raise SettingsError(f"config file {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
    return data


def load(config_path: str | None = None, flags: Mapping[str, Any] | None = None) -> Settings:
    """Merge defaults, the TOML file and the flags (in that order) into one checked :class:`Settings`."""
    values: dict[str, Any] = {}
    if config_path is not None:
        data = read_file(config_path)
        for key, value in data.items():
            f = FIELD_BY_NAME.get(key)
            if f is None:
                known = ", ".join(sorted(FIELD_BY_NAME))
                raise SettingsError(f"unknown setting '{key}' in {config_path} (known settings: {known})")
            values[key] = coerce(f, value, config_path)
    for key, value in (flags or {}).items():
        if value is None:
            continue
        f = FIELD_BY_NAME.get(key)
        if f is None:
            raise SettingsError(f"unknown setting '{key}'")
        values[key] = coerce(f, value, "flag")
    values = {k: v for k, v in values.items() if v is not None}
    app = values.get("app")
    if app is not None and not APP_SPEC.fullmatch(app):
        raise SettingsError(f"app: {app!r} is not module:attribute (for example myapp:app or corepool.demo:app)")
    if values.get("routes") and values.get("interface") == "raw":
        raise SettingsError("routes: a raw handler owns its sockets; remove routes or use interface asgi/wsgi/auto")
    return Settings(config_path=config_path, **values)


APP_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
SOCKET_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
