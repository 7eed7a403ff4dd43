"""Broadcast backends: how a broadcast leaves this host (``broadcast`` setting).

* ``local`` (the default): nothing leaves the host; the primary's relay (:mod:`corepool.relay`) hands each
  broadcast to every other worker of this pool. No dependency.
* ``redis://HOST:PORT/DB`` (also ``rediss://`` and ``unix://PATH?db=N``): the primary also publishes each
  broadcast on the pub/sub channel ``broadcast_channel`` and relays what other hosts publish there to its own
  workers (:mod:`corepool.backends.redis`: a bridge process forked by the primary imports redis-py).

The interface every backend has and the ``local`` one are :mod:`corepool.backends.base`; the Redis one
(:mod:`corepool.backends.redis`) imports that base, and this package imports it only for a Redis URL. A backend is
driven by the primary: :meth:`Backend.publish` is called for every broadcast a worker sent
(after the local relay), and the backend calls ``deliver(topic, data)`` on the primary's loop for each message
from another host. A backend never blocks the primary's loop.
"""

from __future__ import annotations

import importlib.util
from urllib.parse import urlsplit

from corepool.backends.base import Backend, LocalBackend, redact
from corepool.settings import SettingsError

__all__ = ["Backend", "LocalBackend", "check", "make", "redact"]

REDIS_SCHEMES = ("redis", "rediss", "unix")


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
    from corepool.backends.redis import RedisBackend

    return RedisBackend(url, channel, max_message_bytes)
