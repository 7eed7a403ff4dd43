"""The control socket: ``corepool status``, ``reload`` and ``drain`` talk to a running primary through it.

A unix stream socket, mode 0600. A client sends one JSON object on one line and gets one JSON object on one line
back; ``{"cmd": "reload", "wait": true}`` gets its answer when the reload is over.

==========================  ======================================================================
request                     answer
==========================  ======================================================================
``{"cmd": "status"}``       ``{"ok": true, "status": {...}}``: the pool and each worker
``{"cmd": "reload"}``       ``{"ok": true, "generation": N, "queued": bool}`` once the reload to
                            generation N is started, or queued behind the roll (or start-up) in progress
``{"cmd": "reload",         ``{"ok": true|false, "generation": N, "reason": "..."}`` when it is done
"wait": true}``             (``ok`` false: rolled back, the old workers still serve)
``{"cmd": "drain",          ``{"ok": true, "health": 503, "reason": "...", "drain_seconds": S}``: the
"stop": bool,               health endpoint answers 503 while every worker serves on (``stop``: then
"cancel": bool}``           a graceful stop after ``drain_seconds``; ``cancel``: 200 again)
anything else               ``{"ok": false, "error": "..."}``
==========================  ======================================================================

Every refusal (an unknown command, a reload or drain while the pool is stopping, a drain without a health
endpoint, a bad request) is ``{"ok": false, "error": "..."}``; ``reason`` is only ever a result's.

Bad clients cost the primary nothing: a client whose uid (``SO_PEERCRED``, taken at connect) is neither the
pool's nor root's is answered ``{"ok": false, ...}`` whatever the socket's mode; a request that is not JSON, over
:data:`MAX_REQUEST` bytes or of an unknown command gets an error answer; a client that sends nothing (or no
newline) is dropped after :data:`IDLE_TIMEOUT` seconds, or sooner when more than :data:`MAX_CLIENTS` are pending;
answers are written without blocking, so a client that never reads holds one socket, never the loop.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import selectors
import socket
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corepool import log
from corepool.listeners import clear_unix_path

MAX_REQUEST = 64 * 1024
IDLE_TIMEOUT = 10.0  # seconds a client may take to send its request line (or to read its answer)
MAX_CLIENTS = 64  # clients sending a request or reading an answer at once; the oldest goes beyond that
Reply = Callable[[dict[str, Any]], None]
Handler = Callable[[dict[str, Any], Reply], None]
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class ControlError(Exception):
    """The control socket cannot be created or reached; the message says why and what to do."""


class _Stage(enum.Enum):
    READING = "reading"  # sending its request line
    WAITING = "waiting"  # handed to the primary (a reload --wait may take minutes)
    WRITING = "writing"  # its answer is being written


@dataclass(eq=False)
class _Client:
    sock: socket.socket
    since: float
    stage: _Stage = _Stage.READING
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytes = b""


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process that connected ``sock`` (as it was at connect time), or None if unknown."""
    try:
        _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except OSError:
        return None
    return int(uid)


class ControlServer:
    """Accepts control clients on the primary's selector; never blocks the primary's loop."""

    def __init__(self, path: str, selector: selectors.BaseSelector, handler: Handler) -> None:
        self.path = path
        self.selector = selector
        self.handler = handler
        self.sock: socket.socket | None = None
        self.allowed_uids = {os.geteuid(), 0}
        self.refused = 0  # clients refused for their uid
        self._clients: dict[socket.socket, _Client] = {}
        self._created_dirs: list[Path] = []
        self._uids_logged: set[int] = set()

    def open(self) -> None:
        directory = Path(self.path).parent
        # Directories this pool creates are removed again at exit (when empty), leaving no trace in /run.
        self._created_dirs = [d for d in (directory, *directory.parents) if not d.exists()]
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            busy = clear_unix_path(self.path)
            if busy:
                raise ControlError(
                    f"control socket {self.path}: {busy} (another corepool? stop it, or pass --control / --name)"
                )
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old_umask = os.umask(0o177)
            try:
                sock.bind(self.path)
            finally:
                os.umask(old_umask)
            os.chmod(self.path, 0o600)
            sock.listen(16)
        except OSError as exc:
            raise ControlError(
                f"cannot create control socket {self.path}: {exc.strerror or exc} (pass --control PATH)"
            ) from None
        sock.setblocking(False)
        self.sock = sock
        self.selector.register(sock, selectors.EVENT_READ, self._accept)

    def fds(self) -> list[int]:
        """Every descriptor this server holds (a forked worker closes them)."""
        socks = [self.sock] if self.sock else []
        return [s.fileno() for s in [*socks, *self._clients]]

    def close(self) -> None:
        for conn in list(self._clients):
            self._drop(conn)
        if self.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(self.sock)
            self.sock.close()
            self.sock = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            for directory in self._created_dirs:
                with contextlib.suppress(OSError):
                    directory.rmdir()

    # ---------------------------------------------------------------------------------------- clients

    def _accept(self, _mask: int) -> None:
        assert self.sock is not None
        now = time.monotonic()
        self._sweep(now)
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # nothing more to accept, or out of descriptors: the pool goes on either way
                return
            conn.setblocking(False)
            client = _Client(conn, now)
            self._clients[conn] = client
            self._evict_beyond_limit()
            uid = peer_uid(conn)
            if uid not in self.allowed_uids:
                self._refuse(client, uid)
                continue
            self.selector.register(conn, selectors.EVENT_READ, lambda _m, c=client: self._readable(c))

    def _refuse(self, client: _Client, uid: int | None) -> None:
        self.refused += 1
        allowed = " and ".join(str(u) for u in sorted(self.allowed_uids, reverse=True))
        key = -1 if uid is None else uid
        if key not in self._uids_logged and len(self._uids_logged) < 100:
            self._uids_logged.add(key)
            log.event("control", f"refused a control client of uid {uid} (only uid {allowed} may control the "
                      "pool); further refusals of that uid are not logged", warning=True)
        self._write(client, {"ok": False, "error": f"uid {uid} may not control this pool (uid {allowed} may)"})

    def _readable(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if client.sock not in self._clients:
            return
        if not data:
            self._drop(client.sock)  # the client went away
            return
        client.inbox += data
        line, newline, _rest = bytes(client.inbox).partition(b"\n")
        if len(line) > MAX_REQUEST:
            self._write(client, {"ok": False, "error": f"request over {MAX_REQUEST} bytes"})
            return
        if not newline:
            return
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                raise ValueError('expected a JSON object with a string "cmd"')
        except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, a 5,000-digit number, [[[[...
            self._write(client, {"ok": False, "error": f"bad control request: {type(exc).__name__}: {exc}"})
            return
        client.stage = _Stage.WAITING
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(client.sock)

        def reply(answer: dict[str, Any]) -> None:
            self._write(client, answer)

        try:
            self.handler(request, reply)
        except Exception as exc:  # a control request must never take the primary down
            log.event("control", f"control request {request.get('cmd')!r} failed: {type(exc).__name__}: {exc}",
                      warning=True)
            self._write(client, {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"})

    def _write(self, client: _Client, answer: dict[str, Any]) -> None:
        """Queue the one answer and send what the socket takes now; the rest when it is writable."""
        if client.sock not in self._clients or client.stage is _Stage.WRITING:
            return  # gone, or answered already
        client.stage = _Stage.WRITING
        client.since = time.monotonic()
        client.outbox = json.dumps(answer).encode() + b"\n"
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(client.sock)
        self._writable(client)
        if client.sock in self._clients:
            self.selector.register(client.sock, selectors.EVENT_WRITE, lambda _m, c=client: self._writable(c))

    def _writable(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.outbox, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            sent = len(client.outbox)  # the client went away: nothing more to do for it
        client.outbox = client.outbox[sent:]
        if not client.outbox:
            self._drop(client.sock)

    def _sweep(self, now: float) -> None:
        """Drop clients that sent no request line, or read no answer, within IDLE_TIMEOUT."""
        for client in list(self._clients.values()):
            if client.stage is not _Stage.WAITING and now - client.since > IDLE_TIMEOUT:
                self._drop(client.sock)

    def _evict_beyond_limit(self) -> None:
        pending = [c for c in self._clients.values() if c.stage is not _Stage.WAITING]
        for client in pending[: max(0, len(pending) - MAX_CLIENTS)]:  # oldest first (dicts keep order)
            self._drop(client.sock)

    def _drop(self, conn: socket.socket) -> None:
        self._clients.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn)
        conn.close()


def request(path: str, payload: dict[str, Any], timeout: float | None = 10.0) -> dict[str, Any]:
    """Send one request to the pool at ``path`` and return its answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlError(f"no control socket at {path}: is the pool running? (pass --control PATH)") from None
        except ConnectionRefusedError:
            if not _is_socket(path):
                raise ControlError(f"{path} is not a control socket (pass --control PATH)") from None
            raise ControlError(f"nothing listens on {path}: the pool that made it is gone (is it running?)") from None
        except PermissionError:
            raise ControlError(f"no permission to use {path}: run as the pool's user or root") from None
        except OSError as exc:
            raise ControlError(f"cannot reach the pool at {path}: {exc.strerror or exc}") from None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(json.dumps(payload).encode() + b"\n")  # if the pool refused us, its answer says why
        chunks = bytearray()
        while b"\n" not in chunks:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise ControlError(f"no answer from the pool at {path} within {timeout:g}s") from None
            except OSError:
                data = b""
            if not data:
                break
            chunks += data
    finally:
        sock.close()
    try:
        answer = json.loads(bytes(chunks).split(b"\n", 1)[0])
    except ValueError:
        raise ControlError(f"the pool at {path} closed the connection without an answer") from None
    if not isinstance(answer, dict):
        raise ControlError(f"the pool at {path} sent a malformed answer")
    return answer


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False
