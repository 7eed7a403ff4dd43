"""Broadcast backends: how a broadcast leaves this host (``broadcast`` setting).

* ``local`` (the default): nothing leaves the host; the primary's relay (:mod:`corepool.relay`) hands each
  broadcast to every other worker of this pool. No dependency.
* ``redis://HOST:PORT/DB`` (also ``rediss://`` and ``unix://PATH?db=N``): the primary also publishes each
  broadcast on the pub/sub channel ``broadcast_channel`` and relays what other hosts publish there to its own
  workers (:mod:`corepool.broadcast_redis`: a bridge process forked by the primary imports redis-py).

A backend is driven by the primary: :meth:`Backend.publish` is called for every broadcast a worker sent
(after the local relay), and the backend calls ``deliver(topic, data)`` on the primary's loop for each message
from another host. A backend never blocks the primary's loop.
"""

from __future__ import annotations

import importlib.util
import selectors
import socket
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

from corepool.settings import SettingsError

Deliver = Callable[[str, Any], None]  # (topic, data) from another host, called on the primary's loop
Changed = Callable[[str, bool], None]  # (what happened, is it bad news) when the backend's link goes up or down
# The primary's fork: runs the function in a child that closed the primary's private descriptors (and those in
# the list), returns the child's pid.
Fork = Callable[[Callable[[], int], list[socket.socket]], int]

REDIS_SCHEMES = ("redis", "rediss", "unix")


class Backend(Protocol):
    """What the primary needs from a broadcast backend."""

    name: str

    def open(self, selector: selectors.BaseSelector, deliver: Deliver, changed: Changed, fork: Fork) -> None:
        """Start (connecting in the background); ``deliver`` and ``changed`` are called on the loop."""

    def publish(self, topic: str, data: Any) -> None:
        """Send one broadcast of this host's to the other hosts (never blocks; may drop, and counts it)."""

    def exited(self, pid: int, description: str) -> bool:
        """The primary reaped ``pid``: True when it was the backend's (a helper process)."""

    def status(self) -> dict[str, Any]:
        """The backend as data, for ``corepool status``."""

    def line(self) -> str | None:
        """A short note for STATUS= when something is wrong (None: nothing to say)."""

    def fds(self) -> list[int]:
        """Descriptors a forked child must close."""

    def close(self) -> None:
        """Stop (at most a moment: the backend's threads are told to stop, never waited for long)."""


class LocalBackend:
    """Broadcasts stay on this host: the relay alone does the job."""

    name = "local"

    def open(self, selector: selectors.BaseSelector, deliver: Deliver, changed: Changed, fork: Fork) -> None:
        pass

    def exited(self, pid: int, description: str) -> bool:
        return False

    def publish(self, topic: str, data: Any) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {"backend": "local"}

    def line(self) -> str | None:
        return None

    def fds(self) -> list[int]:
        return []

    def close(self) -> None:
        pass


def check(url: str) -> None:
    """Refuse a ``broadcast`` setting that is neither ``local`` nor a Redis URL (:class:`SettingsError`)."""
    if url == "local":
        return
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES or (parts.scheme != "unix" and not parts.hostname):
        raise SettingsError(f"broadcast {url!r}: expected local or redis://HOST:PORT/DB (for example "
                            "redis://127.0.0.1:6379/0)")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError as exc:
        raise SettingsError(f"broadcast {url!r}: {exc}") from None


def make(url: str, channel: str, max_message_bytes: int) -> Backend:
    """The backend the ``broadcast`` setting names; redis-py is imported only for a Redis URL."""
    check(url)
    if url == "local":
        return LocalBackend()
    if importlib.util.find_spec("redis") is None:  # imported by the bridge process only, never here
        raise SettingsError(f"broadcast {redact(url)!r} needs redis-py: pip install 'corepool[redis]' "
                            "(or apt install python3-redis)")
    from corepool.broadcast_redis import RedisBackend

    return RedisBackend(url, channel, max_message_bytes)


def redact(url: str) -> str:
    """The URL without its password, for logs and ``corepool status``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
