"""Talking to systemd: sd_notify(3) messages and the watchdog interval.

libsystemd (systemd-python's ``systemd.daemon.notify``, the optional ``corepool[systemd]`` extra, or the
distribution's python3-systemd) is used where it loads; the pure-Python ``sdnotify`` (a hard dependency, so that
``pip install corepool`` needs no compiler) where it does not: READY=1, the watchdog and the fd store work with
either. Without ``NOTIFY_SOCKET`` every call is a no-op. Only the primary talks to systemd
(``NotifyAccess=main`` is enough): every forked process removes ``NOTIFY_SOCKET`` and ``WATCHDOG_*`` from its
environment first (:data:`PRIMARY_ONLY_VARIABLES`); the primary keeps them, because libsystemd reads
``NOTIFY_SOCKET`` on every call.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, MutableMapping

Sender = Callable[[str, list[int] | None], None]


def _libsystemd_sender() -> Sender | None:
    try:
        from systemd import daemon
    except ImportError:
        return None

    def send(message: str, fds: list[int] | None = None) -> None:
        if fds:
            daemon.notify(message, fds=fds)
        else:  # systemd-python 235 raises TypeError for fds=None
            daemon.notify(message)

    return send


def _sdnotify_sender() -> Sender | None:
    try:
        import sdnotify
    except ImportError:
        return None
    # debug=True: sdnotify raises what failed (the socket gone, systemd gone) instead of dropping it silently, so
    # that Notifier.send can say so; a socket it could not even connect to fails every send the same way.
    try:
        notifier = sdnotify.SystemdNotifier(debug=True)
    except Exception as exc:
        failure = exc

        def cannot_send(message: str, fds: list[int] | None = None) -> None:
            raise failure

        return cannot_send

    def send(message: str, fds: list[int] | None = None) -> None:
        if fds:  # sdnotify cannot pass file descriptors (FDSTORE=1): SCM_RIGHTS on its connected socket, as
            # sd_pid_notify_with_fds(3) does
            socket.send_fds(notifier.socket, [message.encode()], fds)
        else:
            notifier.notify(message)

    return send


PRIMARY_ONLY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """sd_notify for the primary."""

    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.socket = env.get("NOTIFY_SOCKET")
        self.watchdog_usec = _watchdog_usec(env)
        self._send: Sender | None = None
        self.backend = "none"
        if self.socket:
            self._send = _libsystemd_sender()
            self.backend = "libsystemd"
            if self._send is None:
                self._send = _sdnotify_sender()
                self.backend = "sdnotify" if self._send else "none"
        self._last_status = ""
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._send is not None

    def send(self, *fields: str, fds: list[int] | None = None) -> None:
        """Send one notification; a failure (systemd gone, socket removed) is logged once and survived."""
        if self._send is None:
            return
        try:
            self._send("\n".join(fields), fds)
        except Exception as exc:  # the primary must never die of its own reporting
            if not self._failed:
                self._failed = True
                logging.getLogger("corepool").warning("sd_notify to %s failed: %s (further failures are not logged)",
                                                      self.socket, exc)
        else:
            self._failed = False

    @property
    def can_store_fds(self) -> bool:
        return self.enabled  # both senders pass file descriptors

    def store_fds(self, named: list[tuple[str, int]], names_to_drop: set[str]) -> None:
        """Keep sockets in systemd's fd store (needs FileDescriptorStoreMax=) so a restart gets them back."""
        for name in sorted(names_to_drop):
            self.send("FDSTOREREMOVE=1", f"FDNAME={name}")
        for name, fd in named:
            self.send("FDSTORE=1", f"FDNAME={name}", fds=[fd])

    def ready(self, status: str) -> None:
        self._last_status = status
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        if status != self._last_status:
            self._last_status = status
            self.send(f"STATUS={status}")

    def reloading(self, status: str) -> None:
        # systemd >= 253 requires MONOTONIC_USEC with RELOADING=1 to match the reload to its start time.
        self._last_status = status
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
                  f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self._last_status = status
        self.send("STOPPING=1", f"STATUS={status}")

    def extend_timeout(self, seconds: float) -> None:
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None without a watchdog."""
        return None if not self.watchdog_usec or not self.enabled else self.watchdog_usec / 2_000_000


def _watchdog_usec(env: MutableMapping[str, str]) -> int | None:
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid is not None and pid != str(os.getpid()):
        return None
    return int(usec)


def journal_stream_is_stderr(environ: MutableMapping[str, str] | None = None) -> bool:
    """True when stderr is connected to journald (``JOURNAL_STREAM`` names stderr's device:inode)."""
    env = os.environ if environ is None else environ
    stream = env.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"
