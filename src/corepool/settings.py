"""One validated settings object, from a TOML file and command-line flags (flags win).

Every setting is declared once in :data:`FIELDS`; the CLI's flags, the validation, ``corepool check`` and the
README's table all come from that declaration.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
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
    Field("max_message_bytes", int, "largest broadcast, encoded (topic + payload + ~30 bytes), in bytes",
          minimum=16),
    Field("backlog", int, "listen backlog of the sockets corepool binds", minimum=1),
    Field("access_log", bool, "log every request (costs throughput)"),
    Field("access_log_format", str, "access log line, in gunicorn's atoms: %%(h)s %%(r)s %%(s)s %%(b)s %%(M)s ..."),
    Field("log_level", str, "debug, info, warning or error", choices=LOG_LEVELS),
    # Crash policy, liveness and recycling.
    Field("threads", int, "WSGI app threads per worker", minimum=1),
    Field("wsgi_engine", str, "what serves WSGI apps: auto (granian when corepool[granian] is installed and there "
          "is no TLS, else the bridge), bridge (corepool's HTTP and thread pool) or "
          "granian (granian's Rust worker; HTTP/1.1, no TLS)",
          choices=WSGI_ENGINES),
    Field("request_timeout", float, "seconds a request may run before its worker is retired (0: off)",
          minimum=0.0),
    Field("max_spawn_rate", float, "most workers forked per second across the pool (a pool with no ready "
          "worker is exempt)", minimum=0.1),
    Field("max_requests", int, "retire a worker after this many requests (0: never)", minimum=0),
    Field("max_requests_jitter", int, "add up to this many requests to max_requests, per worker", minimum=0),
    Field("max_rss", float, "retire a worker whose resident memory stays above this many MiB (0: never)",
          minimum=0.0),
    Field("max_lifetime", float, "retire a worker after this many seconds (0: never)", minimum=0.0),
    # Lifecycle hooks, as module:callable.
    Field("post_fork", str, "module:callable run in each new worker before it serves (hook(slot, generation))"),
    Field("worker_exit", str, "module:callable run in a worker as it exits (hook(slot, generation))"),
    Field("when_ready", str, "module:callable run in the primary when the pool is first ready (hook(status))"),
    Field("on_reload", str, "module:callable run in the primary when a reload starts (hook(generation))"),
    # HTTP front line.
    Field("max_header_bytes", int, "largest request head (request line and headers), in bytes; 431 beyond",
          minimum=1024),
    Field("max_request_line_bytes", int, "longest request line (method, target, version), in bytes; 414 beyond",
          minimum=256),
    Field("max_header_line_bytes", int, "longest header (or trailer) line, in bytes; 431 beyond", minimum=256),
    Field("max_headers", int, "most header (or trailer) lines in a request; 431 beyond", minimum=1),
    Field("ssl_certfile", str, "TLS: the certificate chain (PEM; credential:NAME reads $CREDENTIALS_DIRECTORY/NAME)"),
    Field("ssl_keyfile", str, "TLS: the private key (PEM), if not in ssl_certfile"),
    Field("ssl_keyfile_password", str, "TLS: the private key's password"),
    Field("ssl_ca_certs", str, "TLS: CA certificates that client certificates must come from (PEM)"),
    Field("ssl_cert_reqs", str, "TLS: client certificates: none, optional or required",
          choices=("none", "optional", "required")),
    Field("ssl_ciphers", str, "TLS: an OpenSSL cipher list (default: OpenSSL's, at its security level)"),
    Field("http2", bool, "HTTP/2: ALPN h2 over TLS, and h2c with prior knowledge on cleartext sockets"),
    Field("h2_max_concurrent_streams", int, "HTTP/2: streams open at once per connection", minimum=1),
    Field("h2_max_resets_per_second", int, "HTTP/2: streams a client may reset per connection and second before the "
          "connection is closed (rapid reset, CVE-2023-44487)", minimum=1),
    Field("header_timeout", float, "seconds a client has to send the whole request head (408 after)",
          minimum=0.1),
    Field("body_timeout", float, "seconds a request body may stay silent before the connection is closed",
          minimum=0.1),
    Field("max_body_bytes", int, "largest request body, in bytes; 413 beyond (0: no limit)", minimum=0),
    Field("max_connections", int, "open connections per worker; 503 beyond", minimum=1),
    Field("ws", str, "WebSocket implementation: auto, websockets, wsproto or none",
          choices=("auto", "websockets", "wsproto", "none")),
    Field("ws_ping_interval", float, "seconds between WebSocket pings (0: none)", minimum=0.0),
    Field("ws_ping_timeout", float, "seconds to wait for a WebSocket pong", minimum=0.1),
    Field("ws_max_size", int, "largest WebSocket message, in bytes", minimum=1),
    Field("proxy_headers", bool, "trust X-Forwarded-For/-Proto from forwarded_allow_ips"),
    Field("forwarded_allow_ips", str, "comma-separated proxy addresses or networks to trust, or *; peers on "
          "unix sockets are always trusted"),
    Field("root_path", str, "the prefix the app is mounted under behind a proxy (ASGI root_path, WSGI SCRIPT_NAME)"),
    Field("server_header", bool, "send a Server: header"),
    Field("date_header", bool, "send a Date: header"),
    Field("reload", bool, "development: roll the pool when a .py file under app_dir changes"),
    # Observability and canary reloads.
    Field("metrics_bind", str, "HOST:PORT or unix:PATH of the Prometheus metrics endpoint (default: off, or the "
          "systemd socket named metrics)"),
    Field("canary_seconds", float, "after a reload's first new worker is ready, watch it this long before rolling "
          "on (0: no canary)", minimum=0.0),
    Field("canary_max_error_rate", float, "roll back when the canary's 5xx rate exceeds the old generation's by "
          "more than this (0.02: two points)", minimum=0.0),
    Field("canary_max_p99_ratio", float, "roll back when the canary's p99 latency exceeds the old generation's "
          "by more than this factor", minimum=1.0),
    # Many hosts.
    Field("broadcast", str, "broadcast backend: local, or redis://HOST:PORT/DB to reach every host's workers"),
    Field("broadcast_channel", str, "the Redis pub/sub channel pools of one service share"),
    Field("health_bind", str, "HOST:PORT or unix:PATH of the load-balancer health endpoint (default: off, or the "
          "systemd socket named health)"),
    Field("drain_seconds", float, "on corepool drain or stop, seconds the health endpoint answers 503 while "
          "the pool still serves, before connections close", minimum=0.0),
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
    access_log_format: str = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)sms'
    log_level: str = "info"
    threads: int = 64
    wsgi_engine: str = "auto"
    request_timeout: float = 30.0
    max_spawn_rate: float = 20.0
    max_requests: int = 0
    max_requests_jitter: int = 0
    max_rss: float = 0.0
    max_lifetime: float = 0.0
    post_fork: str | None = None
    worker_exit: str | None = None
    when_ready: str | None = None
    on_reload: str | None = None
    max_header_bytes: int = 32 * 1024
    max_request_line_bytes: int = 8 * 1024
    max_header_line_bytes: int = 8 * 1024
    max_headers: int = 100
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_keyfile_password: str | None = None
    ssl_ca_certs: str | None = None
    ssl_cert_reqs: str = "none"
    ssl_ciphers: str = ""
    http2: bool = True
    h2_max_concurrent_streams: int = 100
    h2_max_resets_per_second: int = 100
    header_timeout: float = 30.0
    body_timeout: float = 60.0
    max_body_bytes: int = 100 * 1024 * 1024
    max_connections: int = 1000
    ws: str = "auto"
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 20.0
    ws_max_size: int = 16 * 1024 * 1024
    proxy_headers: bool = True
    forwarded_allow_ips: str = "127.0.0.1,::1"
    root_path: str = ""
    server_header: bool = True
    date_header: bool = True
    reload: bool = False
    metrics_bind: str | None = None
    canary_seconds: float = 0.0
    canary_max_error_rate: float = 0.02
    canary_max_p99_ratio: float = 2.0
    broadcast: str = "local"
    broadcast_channel: str = "corepool"
    health_bind: str | None = None
    drain_seconds: float = 10.0
    config_path: str | None = None

    def control_path(self) -> str:
        """Where the control socket lives: the setting, else ``control.sock`` in the pool's runtime directory."""
        if self.control:
            return self.control
        return str(runtime_dir(self.name) / "control.sock")


@dataclass(frozen=True)
class HttpOptions:
    """What a worker's HTTP engine needs from the settings (a worker never sees the whole file); the
    defaults are the settings' own."""

    # The primary judges both; the worker watches them too, to log a stuck request's stack before it is replaced
    # (corepool.engines.stuck).
    request_timeout: float = Settings.request_timeout
    health_timeout: float = Settings.health_timeout

    threads: int = Settings.threads
    wsgi_engine: str = Settings.wsgi_engine
    keepalive_timeout: float = Settings.keepalive_timeout
    access_log: bool = Settings.access_log
    access_log_format: str = Settings.access_log_format
    max_header_bytes: int = Settings.max_header_bytes
    max_request_line_bytes: int = Settings.max_request_line_bytes
    max_header_line_bytes: int = Settings.max_header_line_bytes
    max_headers: int = Settings.max_headers
    ssl_certfile: str | None = Settings.ssl_certfile
    ssl_keyfile: str | None = Settings.ssl_keyfile
    ssl_keyfile_password: str | None = Settings.ssl_keyfile_password
    ssl_ca_certs: str | None = Settings.ssl_ca_certs
    ssl_cert_reqs: str = Settings.ssl_cert_reqs
    ssl_ciphers: str = Settings.ssl_ciphers
    http2: bool = Settings.http2
    h2_max_concurrent_streams: int = Settings.h2_max_concurrent_streams
    h2_max_resets_per_second: int = Settings.h2_max_resets_per_second
    header_timeout: float = Settings.header_timeout
    body_timeout: float = Settings.body_timeout
    max_body_bytes: int = Settings.max_body_bytes
    max_connections: int = Settings.max_connections
    ws: str = Settings.ws
    ws_ping_interval: float = Settings.ws_ping_interval
    ws_ping_timeout: float = Settings.ws_ping_timeout
    ws_max_size: int = Settings.ws_max_size
    proxy_headers: bool = Settings.proxy_headers
    forwarded_allow_ips: str = Settings.forwarded_allow_ips
    root_path: str = Settings.root_path
    server_header: bool = Settings.server_header
    date_header: bool = Settings.date_header

    @classmethod
    def of(cls, s: Settings) -> HttpOptions:
        return cls(**{f.name: getattr(s, f.name) for f in dataclasses.fields(cls)})


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
    return Settings(config_path=config_path, **values)


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
