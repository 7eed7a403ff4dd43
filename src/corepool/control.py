"""The control socket: ``corepool status`` and ``corepool reload`` talk to a running primary through it.

A unix stream socket, mode 0600 (only the pool's user). A client sends one JSON object on one line and gets one
JSON object on one line back; ``{"cmd": "reload", "wait": true}`` gets its answer when the reload is over.

==========================  ======================================================================
request                     answer
==========================  ======================================================================
``{"cmd": "status"}``       ``{"ok": true, "status": {...}}``: the pool and each worker
``{"cmd": "reload"}``       ``{"ok": true, "generation": N}`` once the reload is started or queued
``{"cmd": "reload",         ``{"ok": true|false, "generation": N, "reason": "..."}`` when it is done
"wait": true}``             (``ok`` false: rolled back, the old workers still serve)
anything else               ``{"ok": false, "error": "..."}``
==========================  ======================================================================
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corepool.listeners import clear_unix_path

MAX_REQUEST = 64 * 1024
Reply = Callable[[dict[str, Any]], None]
Handler = Callable[[dict[str, Any], Reply], None]


class ControlError(Exception):
    """The control socket cannot be created or reached; the message says why and what to do."""


class ControlServer:
    """Accepts control clients on the primary's selector; never blocks the primary's loop."""

    def __init__(self, path: str, selector: selectors.BaseSelector, handler: Handler) -> None:
        self.path = path
        self.selector = selector
        self.handler = handler
        self.sock: socket.socket | None = None
        self._buffers: dict[socket.socket, bytearray] = {}
        self._created_dirs: list[Path] = []

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
        return [s.fileno() for s in [*socks, *self._buffers]]

    def close(self) -> None:
        for conn in list(self._buffers):
            self._drop(conn)
        if self.sock is not None:
            self.selector.unregister(self.sock)
            self.sock.close()
            self.sock = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            for directory in self._created_dirs:
                with contextlib.suppress(OSError):
                    directory.rmdir()

    def _accept(self, _mask: int) -> None:
        assert self.sock is not None
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            conn.setblocking(False)
            self._buffers[conn] = bytearray()
            self.selector.register(conn, selectors.EVENT_READ, lambda _m, c=conn: self._readable(c))

    def _readable(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        buffer = self._buffers.get(conn)
        if buffer is None:
            return
        if not data:
            self._drop(conn)  # the client went away (a waiting reload continues regardless)
            return
        buffer += data
        if b"\n" not in buffer:
            if len(buffer) > MAX_REQUEST:
                self._answer(conn, {"ok": False, "error": f"request over {MAX_REQUEST} bytes"})
            return
        line = bytes(buffer.split(b"\n", 1)[0])
        self.selector.unregister(conn)
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                raise ValueError('expected a JSON object with a string "cmd"')
        except ValueError as exc:
            self._answer(conn, {"ok": False, "error": f"bad control request: {exc}"})
            return
        self.handler(request, lambda answer: self._answer(conn, answer))

    def _answer(self, conn: socket.socket, answer: dict[str, Any]) -> None:
        if conn not in self._buffers:
            return
        try:
            conn.setblocking(True)
            conn.settimeout(1.0)
            conn.sendall(json.dumps(answer).encode() + b"\n")
        except OSError:
            pass
        self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        self._buffers.pop(conn, None)
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
        except OSError as exc:
            raise ControlError(f"cannot reach the pool at {path}: {exc.strerror or exc}") from None
        sock.sendall(json.dumps(payload).encode() + b"\n")
        chunks = bytearray()
        while b"\n" not in chunks:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise ControlError(f"no answer from the pool at {path} within {timeout:g}s") from None
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
