"""One validated settings object, from a TOML file and command-line flags (flags win).

Every setting is declared once, as an attribute of :class:`Settings` (or, an HTTP engine's, of
:class:`HttpOptions`) with its default, help and checks (:func:`setting`); :data:`FIELDS` is read off those
declarations, and the CLI's flags, the validation, ``corepool check`` and the man page come from it. A new setting
is one attribute::

    max_widgets: int = setting(8, "most widgets per worker", minimum=1)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INTERFACES = ("auto", "asgi", "wsgi", "raw")
LOG_LEVELS = ("debug", "info", "warning", "error")
WSGI_ENGINES = ("auto", "bridge", "granian")


class SettingsError(ValueError):
    """A setting is missing, unknown or has a bad value; the message says which and how to fix it."""


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Field:
    """How one setting is given and checked (read off its declaration in :class:`Settings` or
    :class:`HttpOptions`): its name, type, help, allowed values and flag."""

    name: str
    kind: type
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    repeat: bool = False  # a list of strings; the flag may be given several times
    flag_name: str | None = None
    restart: bool = False  # a SIGHUP that changes it is told it takes effect on restart
    engine: bool = False  # an HTTP engine's setting: part of HttpOptions, what a worker is given

    @property
    def flag(self) -> str:
        return "--" + (self.flag_name or self.name.replace("_", "-"))


@dataclass(frozen=True)
class _Declared:
    help: str
    choices: tuple[str, ...]
    minimum: float | None
    flag_name: str | None
    restart: bool


def setting(default: Any, help: str, *, choices: tuple[str, ...] = (), minimum: float | None = None,
            flag: str | None = None, restart: bool = False, factory: Callable[[], Any] | None = None) -> Any:
    """Declare one setting where its value lives: its default (or ``factory``), its help line, what it accepts
    (``choices``, ``minimum``), its flag if not ``--name-with-dashes``, and ``restart``: a SIGHUP does not apply
    it. Its type is the attribute's annotation."""
    metadata = {"setting": _Declared(help, choices, minimum, flag, restart)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def pool_setting() -> Any:
    """An :class:`HttpOptions` field that is one of the pool's settings (declared in :class:`Settings`, under the
    same name) which the engine is shown too: a :class:`Settings` copies its value in; a bare ``HttpOptions()``
    has the setting's default."""
    return field(default=None, metadata={"pool": True})


@dataclass(frozen=True)
class HttpOptions:
    """The HTTP engine's settings: all a worker's engine is given of the settings (a worker never sees the whole
    file). Declared here, once; :class:`Settings` holds them as ``http``, and TOML and flags name them flat.
    A few of the pool's own settings are shown to the engine too (:func:`pool_setting`)."""

    # The primary judges both; the worker watches them too, to log a stuck request's stack before it is replaced
    # (corepool.engines.stuck).
    request_timeout: float = pool_setting()
    health_timeout: float = pool_setting()

    def __post_init__(self) -> None:
        for name in POOL_SETTINGS:
            if getattr(self, name) is None:
                object.__setattr__(self, name, _SETTING_DEFAULTS[name])

    threads: int = setting(64, "WSGI app threads per worker", minimum=1)
    wsgi_engine: str = setting("auto", "what serves WSGI apps: auto (granian when corepool[granian] is installed and "
                               "there is no TLS, else the bridge), bridge (corepool's HTTP and thread pool) or "
                               "granian (granian's Rust worker; HTTP/1.1, no TLS)",
                               choices=WSGI_ENGINES)
    keepalive_timeout: float = setting(5.0, "seconds an idle keep-alive connection stays open", minimum=0.0)
    access_log: bool = setting(False, "log every request (costs throughput)")
    access_log_format: str = setting('%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)sms',
                                     "access log line, in gunicorn's atoms: %%(h)s %%(r)s %%(s)s %%(b)s %%(M)s ...")
    max_header_bytes: int = setting(32 * 1024, "largest request head (request line and headers), in bytes; 431 "
                                    "beyond", minimum=1024)
    max_request_line_bytes: int = setting(8 * 1024, "longest request line (method, target, version), in bytes; 414 "
                                          "beyond", minimum=256)
    max_header_line_bytes: int = setting(8 * 1024, "longest header (or trailer) line, in bytes; 431 beyond",
                                         minimum=256)
    max_headers: int = setting(100, "most header (or trailer) lines in a request; 431 beyond", minimum=1)
    ssl_certfile: str | None = setting(None, "TLS: the certificate chain (PEM; credential:NAME reads "
                                       "$CREDENTIALS_DIRECTORY/NAME)")
    ssl_keyfile: str | None = setting(None, "TLS: the private key (PEM), if not in ssl_certfile")
    ssl_keyfile_password: str | None = setting(None, "TLS: the private key's password")
    ssl_ca_certs: str | None = setting(None, "TLS: CA certificates that client certificates must come from (PEM)")
    ssl_cert_reqs: str = setting("none", "TLS: client certificates: none, optional or required",
                                 choices=("none", "optional", "required"))
    ssl_ciphers: str = setting("", "TLS: an OpenSSL cipher list (default: OpenSSL's, at its security level)")
    http2: bool = setting(True, "HTTP/2: ALPN h2 over TLS, and h2c with prior knowledge on cleartext sockets")
    h2_max_concurrent_streams: int = setting(100, "HTTP/2: streams open at once per connection", minimum=1)
    h2_max_resets_per_second: int = setting(100, "HTTP/2: streams a client may reset per connection and second "
                                            "before the connection is closed (rapid reset, CVE-2023-44487)",
                                            minimum=1)
    header_timeout: float = setting(30.0, "seconds a client has to send the whole request head (408 after)",
                                    minimum=0.1)
    body_timeout: float = setting(60.0, "seconds a request body may stay silent before the connection is closed",
                                  minimum=0.1)
    max_body_bytes: int = setting(100 * 1024 * 1024, "largest request body, in bytes; 413 beyond (0: no limit)",
                                  minimum=0)
    max_connections: int = setting(1000, "open connections per worker; 503 beyond", minimum=1)
    ws: str = setting("auto", "WebSocket implementation: auto, websockets, wsproto or none",
                      choices=("auto", "websockets", "wsproto", "none"))
    ws_ping_interval: float = setting(20.0, "seconds between WebSocket pings (0: none)", minimum=0.0)
    ws_ping_timeout: float = setting(20.0, "seconds to wait for a WebSocket pong", minimum=0.1)
    ws_max_size: int = setting(16 * 1024 * 1024, "largest WebSocket message, in bytes", minimum=1)
    proxy_headers: bool = setting(True, "trust X-Forwarded-For/-Proto from forwarded_allow_ips")
    forwarded_allow_ips: str = setting("127.0.0.1,::1", "comma-separated proxy addresses or networks to trust, or "
                                       "*; peers on unix sockets are always trusted")
    root_path: str = setting("", "the prefix the app is mounted under behind a proxy (ASGI root_path, WSGI "
                             "SCRIPT_NAME)")
    server_header: bool = setting(True, "send a Server: header")
    date_header: bool = setting(True, "send a Date: header")


@dataclass(frozen=True)
class Settings:
    """Everything a pool needs to run, every setting declared once. Build it with :func:`load`."""

    app: str | None = setting(None, "the app to serve, as module:attribute (for example myapp:app)")
    interface: str = setting("auto", "how to call the app: auto, asgi, wsgi or raw", choices=INTERFACES)
    bind: tuple[str, ...] = setting(("127.0.0.1:8000",), "[NAME=]HOST:PORT, [NAME=][IPv6]:PORT or [NAME=]unix:PATH "
                                    "to listen on", restart=True)
    routes: tuple[tuple[str, str], ...] = setting((), "NAME=module:attribute: serve another app on the sockets named "
                                                  "NAME", flag="route")
    workers: int = setting(None, "number of workers (default: one per CPU core)", minimum=1,
                           factory=_default_workers)
    mode: str = setting("preload", "preload: import the app once per generation and fork workers from it; "
                        "lazy: every worker imports the app itself", choices=("preload", "lazy"))
    app_dir: str = setting(".", "directory added to sys.path before importing the app")
    name: str = setting("corepool", "the pool's name, used for the default control socket path")
    control: str | None = setting(None, "path of the control socket (default: printed at start)")
    health_interval: float = setting(10.0, "seconds between health pings of each worker", minimum=0.05)
    health_timeout: float = setting(5.0, "seconds a worker has to answer a ping before SIGKILL", minimum=0.05)
    boot_timeout: float = setting(60.0, "seconds a new worker has to load the app and accept", minimum=0.1)
    graceful_timeout: float = setting(30.0, "seconds to finish in-flight requests on stop/retire", minimum=0.1)
    backoff_max: float = setting(30.0, "longest wait before retrying a slot whose workers keep failing",
                                 minimum=0.1)
    max_message_bytes: int = setting(64 * 1024, "largest broadcast, encoded (topic + payload + ~30 bytes), in "
                                     "bytes", minimum=16)
    backlog: int = setting(2048, "listen backlog of the sockets corepool binds", minimum=1)
    log_level: str = setting("info", "debug, info, warning or error", choices=LOG_LEVELS)
    # Crash policy, liveness and recycling.
    request_timeout: float = setting(30.0, "seconds a request may run before its worker is retired (0: off)",
                                     minimum=0.0)
    max_spawn_rate: float = setting(20.0, "most workers forked per second across the pool (a pool with no ready "
                                    "worker is exempt)", minimum=0.1)
    max_requests: int = setting(0, "retire a worker after this many requests (0: never)", minimum=0)
    max_requests_jitter: int = setting(0, "add up to this many requests to max_requests, per worker", minimum=0)
    max_rss: float = setting(0.0, "retire a worker whose resident memory stays above this many MiB (0: never)",
                             minimum=0.0)
    max_lifetime: float = setting(0.0, "retire a worker after this many seconds (0: never)", minimum=0.0)
    # Lifecycle hooks, as module:callable.
    post_fork: str | None = setting(None, "module:callable run in each new worker before it serves "
                                    "(hook(slot, generation))")
    worker_exit: str | None = setting(None, "module:callable run in a worker as it exits (hook(slot, generation))")
    when_ready: str | None = setting(None, "module:callable run in the primary when the pool is first ready "
                                     "(hook(status))")
    on_reload: str | None = setting(None, "module:callable run in the primary when a reload starts "
                                    "(hook(generation))")
    # The HTTP front line: the engine's settings (FIELDS lists them here, flat).
    http: HttpOptions = field(default_factory=HttpOptions)
    reload: bool = setting(False, "development: roll the pool when a .py file under app_dir changes")
    # Observability and canary reloads.
    metrics_bind: str | None = setting(None, "HOST:PORT or unix:PATH of the Prometheus metrics endpoint (default: "
                                       "off, or the systemd socket named metrics)")
    canary_seconds: float = setting(0.0, "after a reload's first new worker is ready, watch it this long before "
                                    "rolling on (0: no canary)", minimum=0.0)
    canary_max_error_rate: float = setting(0.02, "roll back when the canary's 5xx rate exceeds the old "
                                           "generation's by more than this (0.02: two points)", minimum=0.0)
    canary_max_p99_ratio: float = setting(2.0, "roll back when the canary's p99 latency exceeds the old "
                                          "generation's by more than this factor", minimum=1.0)
    # Many hosts.
    broadcast: str = setting("local", "broadcast backend: local, or redis://HOST:PORT/DB to reach every host's "
                             "workers", restart=True)
    broadcast_channel: str = setting("corepool", "the Redis pub/sub channel pools of one service share",
                                     restart=True)
    health_bind: str | None = setting(None, "HOST:PORT or unix:PATH of the load-balancer health endpoint (default: "
                                      "off, or the systemd socket named health)", restart=True)
    drain_seconds: float = setting(10.0, "on corepool drain or stop, seconds the health endpoint answers 503 "
                                   "while the pool still serves, before connections close", minimum=0.0)
    config_path: str | None = None  # the file these came from (not a setting)

    def __post_init__(self) -> None:
        shown = {name: getattr(self, name) for name in POOL_SETTINGS}
        if any(getattr(self.http, name) != value for name, value in shown.items()):
            object.__setattr__(self, "http", dataclasses.replace(self.http, **shown))

    def value(self, name: str) -> Any:
        """A setting's value by its name (an engine's too)."""
        return getattr(self.http if FIELD_BY_NAME[name].engine else self, name)

    def control_path(self) -> str:
        """Where the control socket lives: the setting, else ``control.sock`` in the pool's runtime directory."""
        if self.control:
            return self.control
        return str(runtime_dir(self.name) / "control.sock")


def _field_of(declared: dataclasses.Field[Any], hint: Any, engine: bool) -> Field:
    meta: _Declared = declared.metadata["setting"]
    kind, repeat = hint, False
    if typing.get_origin(hint) in (types.UnionType, typing.Union):  # X | None: an optional setting
        (kind,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if typing.get_origin(kind) is tuple:  # a list of strings, or (routes) a table of name = app
        nested = typing.get_origin(typing.get_args(kind)[0]) is tuple
        kind, repeat = (dict, True) if nested else (str, True)
    return Field(declared.name, kind, meta.help, meta.choices, meta.minimum, repeat, meta.flag_name, meta.restart,
                 engine)


def _declared(cls: type, engine: bool = False) -> list[Field]:
    """The settings ``cls`` declares, in order; :class:`Settings`' ``http`` stands for the engine's."""
    hints = typing.get_type_hints(cls)
    out: list[Field] = []
    for declared in dataclasses.fields(cls):
        if "setting" in declared.metadata:
            out.append(_field_of(declared, hints[declared.name], engine))
        elif hints[declared.name] is HttpOptions:
            out += _declared(HttpOptions, engine=True)
    return out


FIELDS: tuple[Field, ...] = tuple(_declared(Settings))
# The pool's settings an engine is shown too (HttpOptions' pool_setting fields), and their defaults.
POOL_SETTINGS = tuple(f.name for f in dataclasses.fields(HttpOptions) if f.metadata.get("pool"))
_SETTING_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Settings) if f.name in POOL_SETTINGS}
FIELD_BY_NAME = {f.name: f for f in FIELDS}


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
        if name in PRIMARY_SOCKETS:
            raise SettingsError(f"{f.name}: a socket named {name} is the pool's own {name} endpoint, never an "
                                f"app's; name the app's socket otherwise ({_where(source, f)})")
    return tuple(sorted(pairs))


def _to_int(value: Any) -> int:
    if isinstance(value, (bool, float)):
        raise TypeError
    return int(value)


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError
    number = float(value)
    if not math.isfinite(number):  # nan compares false with any minimum; inf makes no sense as seconds or bytes
        raise ValueError
    return number


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


def did_you_mean(key: str) -> str:
    """`` (did you mean 'workers'?)`` for a key close to a setting's name, else nothing: the README and
    ``corepool serve --help`` list them all."""
    close = difflib.get_close_matches(key, FIELD_BY_NAME, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def load(config_path: str | None = None, flags: Mapping[str, Any] | None = None) -> Settings:
    """Merge defaults, the TOML file and the flags (in that order) into one checked :class:`Settings`."""
    values: dict[str, Any] = {}
    if config_path is not None:
        data = read_file(config_path)
        for key, value in data.items():
            f = FIELD_BY_NAME.get(key)
            if f is None:
                raise SettingsError(f"unknown setting '{key}' in {config_path}{did_you_mean(key)}")
            values[key] = coerce(f, value, config_path)
    for key, value in (flags or {}).items():
        if value is None:
            continue
        f = FIELD_BY_NAME.get(key)
        if f is None:  # flags come from FIELDS: only a caller passing its own dict gets here
            raise SettingsError(f"unknown setting '{key}'{did_you_mean(key)}")
        values[key] = coerce(f, value, "flag")
    values = {k: v for k, v in values.items() if v is not None}
    app = values.get("app")
    if app is not None and not APP_SPEC.fullmatch(app):
        raise SettingsError(f"app: {app!r} is not module:attribute (for example myapp:app or corepool.demo:app)")
    for hook in HOOKS:
        if values.get(hook) is not None and not APP_SPEC.fullmatch(values[hook]):
            raise SettingsError(f"{hook}: {values[hook]!r} is not module:callable (for example myhooks:{hook})")
    _check_binds(values.get("bind", ()), "flag" if flags and flags.get("bind") is not None else config_path or "flag")
    if values.get("routes") and values.get("interface") == "raw":
        raise SettingsError("routes: a raw handler owns its sockets; remove routes or use interface asgi/wsgi/auto")
    engine = {k: values.pop(k) for k in list(values) if FIELD_BY_NAME[k].engine}
    return Settings(config_path=config_path, http=HttpOptions(**engine), **values)


def _check_binds(binds: tuple[str, ...], source: str) -> None:
    """Refuse a --bind address that could never be bound (bad syntax, port out of range) as a usage error."""
    from corepool.listeners import ListenerError, parse_bind

    for spec in binds:
        try:
            parse_bind(spec)
        except ListenerError as exc:
            raise SettingsError(f"{exc} ({_where(source, FIELD_BY_NAME['bind'])})") from None


HOOKS = ("post_fork", "worker_exit", "when_ready", "on_reload")
PRIMARY_SOCKETS = ("metrics", "health")  # sockets with these names are served by the primary itself
APP_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
SOCKET_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
