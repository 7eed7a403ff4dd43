"""Messages between the primary and one worker.

Each worker gets one end of an ``AF_UNIX``/``SOCK_SEQPACKET`` socketpair: the kernel keeps message boundaries,
so a message is one ``send`` and one ``recv`` with no framing code, and a peer that dies shows up as EOF.
A message is a JSON object whose ``"t"`` names its type:

=================  =========  ====================================================
``t``              direction  fields
=================  =========  ====================================================
``ready``          w → p      the app is loaded and the worker is accepting
``boot_error``     w → p      ``error``: why the app could not be loaded
``draining``       w → p      a retired worker closed its listening sockets
``pong``           w → p      ``seq``, ``requests`` (requests served so far)
``broadcast``      w → p      ``topic``, ``data``: relay to every other worker
``ping``           p → w      ``seq``
``message``        p → w      ``topic``, ``data``, ``sender`` (pid): a relayed broadcast
=================  =========  ====================================================
"""

from __future__ import annotations

import json
import socket
from typing import Any

DEFAULT_MAX_MESSAGE = 64 * 1024
# Room for the envelope around a payload of max_message bytes.
_ENVELOPE = 1024
_BUFFER = 4 * (DEFAULT_MAX_MESSAGE + _ENVELOPE)


class ChannelError(ValueError):
    """A message that is malformed, of an unknown type or too large."""


def pair() -> tuple[socket.socket, socket.socket]:
    """A (primary end, worker end) pair; both non-inheritable across exec, the primary's non-blocking."""
    primary_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in (primary_end, worker_end):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUFFER)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER)
    primary_end.setblocking(False)
    return primary_end, worker_end


def encode(kind: str, **fields: Any) -> bytes:
    """One message as bytes, ready for a single ``send``."""
    return json.dumps({"t": kind, **fields}, separators=(",", ":")).encode()


def decode(raw: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE) -> dict[str, Any]:
    """Parse one message; raise :class:`ChannelError` saying what is wrong with it."""
    if len(raw) > max_bytes + _ENVELOPE:
        raise ChannelError(f"message of {len(raw)} bytes is over the {max_bytes}-byte limit")
    try:
        message = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ChannelError(f"message is not JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise ChannelError('message is not a JSON object with a string "t"')
    return message


def recv_size() -> int:
    """A receive buffer large enough for any message, so the kernel never truncates one."""
    return _BUFFER


def send(sock: socket.socket, payload: bytes) -> bool:
    """Send without ever blocking; False when the peer is gone or not reading (its buffer is full)."""
    try:
        sock.send(payload, socket.MSG_DONTWAIT)
    except (BlockingIOError, BrokenPipeError, ConnectionResetError, OSError):
        return False
    return True
