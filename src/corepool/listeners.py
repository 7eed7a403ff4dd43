"""The listening sockets: handed over by systemd (``LISTEN_FDS``), or bound by corepool from ``--bind``.

Either way the primary owns them before any worker exists, and workers inherit them through fork, so the
code after this module is the same in production and in dev mode.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import MutableMapping
from dataclasses import dataclass

SD_LISTEN_FDS_START = 3


class ListenerError(ValueError):
    """A socket cannot be bound or inherited; the message names the address or variable and the fix."""


@dataclass
class Listener:
    """One listening stream socket and where it came from."""

    sock: socket.socket
    name: str  # the systemd FileDescriptorName=, or the --bind string
    address: str  # for humans: 127.0.0.1:8000, [::1]:8000, unix:/run/x.sock
    source: str  # "systemd" or "bind"
    unix_path: str | None = None  # a unix socket file corepool created (and removes at exit)

    def close(self) -> None:
        self.sock.close()
        if self.unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.unix_path)


def parse_bind(spec: str) -> tuple[socket.AddressFamily, str | tuple[str, int]]:
    """``HOST:PORT``, ``[IPV6]:PORT``, ``:PORT`` (all IPv4 addresses) or ``unix:PATH``."""
    if spec.startswith("unix:"):
        path = spec[len("unix:") :]
        if not path:
            raise ListenerError(f"bind {spec!r}: empty unix socket path (use unix:/run/myapp.sock)")
        return socket.AF_UNIX, path
    host, sep, port_text = spec.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ListenerError(f"bind {spec!r}: expected HOST:PORT, [IPV6]:PORT or unix:PATH (for example 127.0.0.1:8000)")
    if host.startswith("[") and host.endswith("]"):
        return socket.AF_INET6, (host[1:-1], int(port_text))
    if ":" in host:
        raise ListenerError(f"bind {spec!r}: put IPv6 addresses in brackets, for example [::1]:8000")
    return socket.AF_INET, (host or "0.0.0.0", int(port_text))


def bind(spec: str, backlog: int) -> Listener:
    """Bind and listen on one ``--bind`` address."""
    family, address = parse_bind(spec)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_UNIX:
            assert isinstance(address, str)
            _remove_stale_unix_socket(spec, address)
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
    shown = spec if family == socket.AF_UNIX else _format(sock)
    return Listener(sock, spec, shown, "bind", unix_path=address if isinstance(address, str) else None)


def _remove_stale_unix_socket(spec: str, path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ListenerError(f"cannot bind {spec}: {path} exists and is not a socket (remove it or choose another path)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: a leftover from a process that died
        return
    except OSError:
        return
    finally:
        probe.close()
    raise ListenerError(f"cannot bind {spec}: a running server listens on {path} (stop it or choose another path)")


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
    if not pid_text.isdigit():
        raise ListenerError(
            f"LISTEN_PID={pid_text!r} is not a process id (unset LISTEN_FDS/LISTEN_PID or fix the unit)"
        )
    if int(pid_text) != os.getpid():
        return [], f"LISTEN_PID={pid_text} is not this process ({os.getpid()}): ignoring LISTEN_FDS={count_text}"
    if not count_text.isdigit():
        raise ListenerError(f"LISTEN_FDS={count_text!r} is not a number of file descriptors (fix the unit or unset it)")
    count = int(count_text)
    names = names_text.split(":") if names_text else []
    if names_text is not None and len(names) != count:
        raise ListenerError(
            f"LISTEN_FDNAMES={names_text!r} names {len(names)} fds but LISTEN_FDS={count} (fix FileDescriptorName=)"
        )
    listeners = []
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        name = names[i] if names else f"fd{fd}"
        listeners.append(_adopt(fd, name))
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


def acquire(
    binds: tuple[str, ...], backlog: int, environ: MutableMapping[str, str]
) -> tuple[list[Listener], str | None]:
    """systemd's sockets when it passed any, else bind every ``--bind`` address. Returns (listeners, warning)."""
    listeners, warning = from_systemd(environ)
    if listeners:
        return listeners, warning
    bound: list[Listener] = []
    try:
        for spec in binds:
            bound.append(bind(spec, backlog))
    except ListenerError:
        for listener in bound:
            listener.close()
        raise
    return bound, warning
