"""Messages between the primary and one worker (or one loader).

Each worker gets one end of an ``AF_UNIX``/``SOCK_SEQPACKET`` socketpair: the kernel keeps message boundaries,
so a message is one ``send`` and one ``recv`` with no framing code, and a peer that dies shows up as EOF.
A message is a JSON object whose ``"t"`` names its type (w: worker, l: loader, p: primary):

=================  =========  ============================================================================
``t``              direction  fields
=================  =========  ============================================================================
``hello``          w → p      ``pid``: a worker forked by a loader names itself first
``ready``          w, l → p   the app is loaded (a worker: and it is accepting)
``boot_error``     w, l → p   ``error``, ``detail``: why the app could not be loaded, and the traceback
``draining``       w → p      a retired worker closed its listening sockets
``pong``           w → p      ``seq`` and the worker's stats: ``requests``, ``inflight``, ``oldest``,
                              ``connections``, ``threads``, ``busy_threads``, ...
``broadcast``      w → p      ``topic``, ``data``: relay to every other worker (:mod:`corepool.relay`)
``ping``           p → w      ``seq``
``limit``          p → w      ``requests``: report on reaching this many requests (``max_requests``)
``share``          p → w      ``capped``: keep to a share of accepted connections (a reload's canary)
``message``        p → w      ``topic``, ``data``, ``sender`` (pid): a relayed broadcast
``fork``           p → l      ``wid``, ``slot``, and the new worker's channel end by SCM_RIGHTS
``forked``         l → p      ``wid``, ``pid`` (0 when the fork failed)
=================  =========  ============================================================================

Sizes: :func:`decode` refuses a message over ``max_message_bytes`` + 1 KiB, and a channel carries at most
:data:`MAX_FRAME` bytes whole; a broadcast is refused before it is sent if its encoded size is over
``max_message_bytes`` (:mod:`corepool.bus`). :func:`send` never blocks; bulk senders (queued broadcasts) stop at
half of the send buffer (:func:`has_room`), so pings and pongs always find room.
"""

from __future__ import annotations

import fcntl
import json
import socket
import struct
import termios
from typing import Any

DEFAULT_MAX_MESSAGE = 64 * 1024
# Room for the envelope around a payload of max_message bytes.
_ENVELOPE = 1024
_BUFFER = 4 * (DEFAULT_MAX_MESSAGE + _ENVELOPE)
# The largest message a channel carries whole: one recv() of recv_size() bytes, with room for the few bytes the
# primary adds when it relays a broadcast ("sender"). A broadcast larger than this is refused whatever the setting.
MAX_FRAME = _BUFFER - _ENVELOPE


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
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, a 5,000-digit number, [[[[...
        raise ChannelError(f"message is not JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
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


def queued_bytes(sock: socket.socket) -> int:
    """Bytes sent on ``sock`` that its peer has not read yet, as the kernel charges them (SIOCOUTQ)."""
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    except (OSError, ValueError):
        return 0
    return int(struct.unpack("i", raw)[0])


def has_room(sock: socket.socket) -> bool:
    """True while less than half of the send buffer is taken.

    Bulk senders (queued broadcasts) stop there, so the other half stays free for pings, pongs and the
    lifecycle messages: a broadcast flood never makes a health ping fail. The kernel reports the socket
    writable again once a quarter of its buffer is in use.
    """
    try:
        limit = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2
    except OSError:
        return False
    return queued_bytes(sock) < limit
