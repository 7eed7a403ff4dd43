"""What every broadcast backend is to the primary (:class:`Backend`), the ``local`` one, and the URL
redaction both the backends and ``corepool status`` use."""

from __future__ import annotations

import selectors
import socket
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

Deliver = Callable[[str, Any], None]  # (topic, data) from another host, called on the primary's loop
Changed = Callable[[str, bool], None]  # (what happened, is it bad news) when the backend's link goes up or down
# The primary's fork: runs the function in a child that closed the primary's private descriptors (and those in
# the list), returns the child's pid.
Fork = Callable[[Callable[[], int], list[socket.socket]], int]


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


def redact(url: str) -> str:
    """The URL without its password, for logs and ``corepool status``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
