"""The listening sockets: handed over by systemd (``LISTEN_FDS``), or bound by corepool from ``--bind``.

Either way the primary owns them before any worker exists, and workers inherit them through fork, so the
code after this module is the same in production and in dev mode.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import stat
from collections.abc import MutableMapping
from dataclasses import dataclass, field

SD_LISTEN_FDS_START = 3
DEFAULT_NAME = "http"
# Sockets corepool bound itself and keeps in systemd's fd store carry this prefix in their FDNAME=.
FDSTORE_PREFIX = "corepool."


class ListenerError(ValueError):
    """A socket cannot be bound or inherited; the message names the address or variable and the fix."""


@dataclass
class Listener:
    """One listening stream socket and where it came from."""

    sock: socket.socket
    name: str  # systemd's FileDescriptorName=, or NAME= in --bind; "http" when unnamed. Routes select by it.
    address: str  # for humans: 127.0.0.1:8000, [::1]:8000, unix:/run/x.sock
    source: str  # "systemd" (a socket unit), "fdstore" (bound by an earlier corepool, kept by systemd) or "bind"
    unix_path: str | None = None  # a unix socket file corepool created (and removes at exit)

    def close(self) -> None:
        self.sock.close()
        if self.unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.unix_path)


def split_name(spec: str) -> tuple[str, str]:
    """``metrics=127.0.0.1:9100`` → ("metrics", "127.0.0.1:9100"); unnamed addresses are "http"."""
    name, sep, address = spec.partition("=")
    if sep and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        return name, address
    return DEFAULT_NAME, spec


def parse_bind(spec: str) -> tuple[socket.AddressFamily, str | tuple[str, int]]:
    """``HOST:PORT``, ``[IPV6]:PORT``, ``:PORT`` (all IPv4 addresses) or ``unix:PATH``, after an optional NAME=."""
    spec = split_name(spec)[1]
    if spec.startswith("unix:"):
        path = spec[len("unix:") :]
        if not path:
            raise ListenerError(f"bind {spec!r}: empty unix socket path (use unix:/run/myapp.sock)")
        return socket.AF_UNIX, path
    host, sep, port_text = spec.rpartition(":")
    if not sep or not port_text.isascii() or not port_text.isdigit():
        raise ListenerError(f"bind {spec!r}: expected HOST:PORT, [IPV6]:PORT or unix:PATH (for example 127.0.0.1:8000)")
    if int(port_text) > 65535:
        raise ListenerError(f"bind {spec!r}: port {int(port_text)} is out of range (0 to 65535)")
    if host.startswith("[") and host.endswith("]"):
        return socket.AF_INET6, (host[1:-1], int(port_text))
    if ":" in host:
        raise ListenerError(f"bind {spec!r}: put IPv6 addresses in brackets, for example [::1]:8000")
    return socket.AF_INET, (host or "0.0.0.0", int(port_text))


def bind(spec: str, backlog: int) -> Listener:
    """Bind and listen on one ``--bind`` address."""
    name, _ = split_name(spec)
    family, address = parse_bind(spec)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_UNIX:
            assert isinstance(address, str)
            busy = clear_unix_path(address)
            if busy:
                raise ListenerError(f"cannot bind {spec}: {busy} (stop it, remove it or choose another path)")
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        hint = {
            errno.EADDRINUSE: "another process listens there; stop it or choose another --bind",
            errno.EACCES: "ports below 1024 need root or CAP_NET_BIND_SERVICE; use socket activation or a higher port",
            errno.EADDRNOTAVAIL: "that address is not on this machine; use 127.0.0.1, 0.0.0.0 or one of its addresses",
        }.get(exc.errno or 0, "choose another --bind")
        raise ListenerError(f"cannot bind {spec}: {exc.strerror or exc} ({hint})") from None
    sock.set_inheritable(True)
    unix_path = address if isinstance(address, str) else None
    return Listener(sock, name, _format(sock), "bind", unix_path=unix_path)


def clear_unix_path(path: str) -> str | None:
    """Make ``path`` free for a unix socket: remove a socket nobody listens on (left by a process that died).

    Returns None when the path is free, else why it is not.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(mode):
        return f"{path} exists and is not a socket"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return None
    except OSError as exc:
        return f"{path} cannot be checked: {exc.strerror or exc}"
    finally:
        probe.close()
    return f"a running server listens on {path}"


def _format(sock: socket.socket) -> str:
    if sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


def from_systemd(environ: MutableMapping[str, str]) -> tuple[list[Listener], str | None]:
    """Sockets passed by systemd, and a warning to log (or None).

    Follows sd_listen_fds(3): ``LISTEN_PID`` must be our pid (else the variables were meant for another
    process: ignored, with a warning), ``LISTEN_FDS`` counts fds from 3, ``LISTEN_FDNAMES`` names them. The
    variables are removed so that workers and anything they exec do not see them.
    """
    if "LISTEN_FDS" not in environ:
        return [], None
    pid_text = environ.get("LISTEN_PID", "")
    count_text = environ.get("LISTEN_FDS", "")
    names_text = environ.get("LISTEN_FDNAMES")
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(key, None)
    if not (pid_text.isascii() and pid_text.isdigit()):
        raise ListenerError(
            f"LISTEN_PID={pid_text!r} is not a process id (unset LISTEN_FDS/LISTEN_PID or fix the unit)"
        )
    if int(pid_text) != os.getpid():
        return [], f"LISTEN_PID={pid_text} is not this process ({os.getpid()}): ignoring LISTEN_FDS={count_text}"
    if not (count_text.isascii() and count_text.isdigit()):
        raise ListenerError(f"LISTEN_FDS={count_text!r} is not a number of file descriptors (fix the unit or unset it)")
    count = int(count_text)
    names = names_text.split(":") if names_text else []
    if names_text is not None and len(names) != count:
        raise ListenerError(
            f"LISTEN_FDNAMES={names_text!r} names {len(names)} fds but LISTEN_FDS={count} (fix FileDescriptorName=)"
        )
    listeners: list[Listener] = []
    try:
        for i in range(count):
            fd = SD_LISTEN_FDS_START + i
            name = names[i] if names else f"fd{fd}"
            listeners.append(_adopt(fd, name))
    except ListenerError:
        for lst in listeners:
            lst.close()
        raise
    return listeners, None


def _adopt(fd: int, name: str) -> Listener:
    try:
        st = os.fstat(fd)
    except OSError:
        raise ListenerError(
            f"LISTEN_FDS: fd {fd} ({name}) is not open (the unit passed fewer sockets than it says)"
        ) from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenerError(f"LISTEN_FDS: fd {fd} ({name}) is not a socket (use ListenStream= in the .socket unit)")
    sock = socket.socket(fileno=fd)
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise ListenerError(
            f"LISTEN_FDS: fd {fd} ({name}) is not a listening stream socket (use ListenStream= with Accept=no)"
        )
    sock.set_inheritable(True)
    return Listener(sock, name, _format(sock), "systemd")


@dataclass
class Acquired:
    """The pool's listeners, and what the fd store needs to hear about them."""

    listeners: list[Listener]
    warning: str | None = None
    # True when the sockets corepool bound differ from those systemd kept for it: the store must be rewritten.
    store_changed: bool = False
    stale_store_names: set[str] = field(default_factory=set)  # FDNAMEs systemd kept that are no longer wanted


def acquire(binds: tuple[str, ...], backlog: int, environ: MutableMapping[str, str],
            endpoints: tuple[tuple[str, str, int], ...] = ()) -> Acquired:
    """The sockets to serve.

    A socket unit's sockets win when systemd passed any. Otherwise each ``--bind`` address is taken from the
    sockets systemd kept in its fd store for an earlier run of this service (so connections queue in the
    kernel across a crash and restart instead of being refused), or bound afresh. ``endpoints`` are the
    primary's own sockets, ``(name, address, backlog)`` (``health``/``metrics`` from ``health_bind``/
    ``metrics_bind``): taken from the fd store or bound the same way, unless a socket of that name was passed.
    """
    inherited, warning = from_systemd(environ)
    from_unit = [lst for lst in inherited if not lst.name.startswith(FDSTORE_PREFIX)]
    stored = [lst for lst in inherited if lst.name.startswith(FDSTORE_PREFIX)]
    result: list[Listener] = list(from_unit)
    changed = False
    try:
        for spec in () if from_unit else binds:
            listener, fresh = _stored_or_bound(spec, backlog, stored)
            result.append(listener)
            changed |= fresh
        for name, address, endpoint_backlog in endpoints:
            if any(lst.name == name for lst in result):
                continue  # a socket unit's socket of that name (or --bind NAME=ADDR) is the endpoint's
            try:
                listener, fresh = _stored_or_bound(f"{name}={address}", endpoint_backlog, stored)
            except ListenerError as exc:
                raise ListenerError(f"{name}_bind: {exc}") from None
            result.append(listener)
            changed |= fresh
    except ListenerError:
        for lst in result + stored:
            lst.close()
        raise
    for lst in stored:  # kept for addresses no longer configured
        lst.close()
        changed = True
    return Acquired(result, warning, changed, {lst.name for lst in stored})


def _stored_or_bound(spec: str, backlog: int, stored: list[Listener]) -> tuple[Listener, bool]:
    """The socket for ``[NAME=]ADDRESS`` that systemd kept (removed from ``stored``), or a fresh one (True)."""
    name, _ = split_name(spec)
    family, address = parse_bind(spec)
    wanted = FDSTORE_PREFIX + name
    kept = next((lst for lst in stored if lst.name == wanted and _bound_to(lst, family, address)), None)
    if kept is None:
        return bind(spec, backlog), True
    stored.remove(kept)
    kept.name, kept.source = name, "fdstore"
    return kept, False


def _bound_to(listener: Listener, family: socket.AddressFamily, address: str | tuple[str, int]) -> bool:
    sock = listener.sock
    if sock.family != family:
        return False
    if family == socket.AF_UNIX:
        return bool(sock.getsockname() == address)
    host, port = sock.getsockname()[:2]
    assert isinstance(address, tuple)
    return (host, port) == address or (port == address[1] and address[0] in ("0.0.0.0", "::") and host == address[0])
