"""WebSockets on a real pool, with a real ``websockets`` client: echo, limits, and 1001 on stop and reload."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

APP = "http_asgi:app"


def _uvicorn_has(module: str, attribute: str | None = None) -> bool:
    try:
        found = __import__(f"uvicorn.protocols.websockets.{module}", fromlist=["_"])
    except ImportError:
        return False
    return attribute is None or any(hasattr(cls, attribute) for cls in vars(found).values() if isinstance(cls, type))


# uvicorn < 0.35 (Debian 13 has 0.32): no sans-I/O websockets protocol (ws = websockets is refused there, auto
# takes wsproto), and its wsproto protocol sends no pings.
SANSIO = _uvicorn_has("websockets_sansio_impl")
WSPROTO_PINGS = _uvicorn_has("wsproto_impl", "start_keepalive")


def needs(impl: str, pings: bool = False) -> None:
    """Skip a case this uvicorn cannot serve."""
    if impl == "wsproto":
        pytest.importorskip("wsproto")
        if pings and not WSPROTO_PINGS:
            pytest.skip("this uvicorn's wsproto protocol sends no pings (uvicorn < 0.35)")
    elif not SANSIO:
        pytest.skip("this uvicorn has no sans-I/O websockets protocol (uvicorn < 0.35)")


@pytest.fixture
def mode() -> str:
    """WebSockets are the same in both pool modes: these tests run in preload mode only."""
    return "preload"


def url(pool: Any) -> str:
    return f"ws://127.0.0.1:{pool.port}/ws"


def test_websocket_echo_and_max_size(pool_factory: Any) -> None:
    pool = pool_factory(APP, "--ws-max-size", "1000", workers=1).start()

    async def run() -> int | None:
        async with connect(url(pool)) as ws:
            hello = json.loads(await ws.recv())
            assert hello["pid"] in pool.pids() and hello["client"] == "127.0.0.1" and hello["scheme"] == "ws"
            await ws.send("ping")
            assert await ws.recv() == "ping"
            await ws.send("x" * 1001)  # over ws_max_size: the server closes with 1009 (message too big)
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            return closed.value.rcvd.code if closed.value.rcvd else None

    assert asyncio.run(run()) == 1009


def test_wsproto_is_available_as_the_alternative(pool_factory: Any) -> None:
    needs("wsproto")
    pool = pool_factory(APP, "--ws", "wsproto", workers=1).start()

    async def run() -> None:
        async with connect(url(pool)) as ws:
            await ws.recv()
            await ws.send("hi")
            assert await ws.recv() == "hi"

    asyncio.run(run())
    pool.signal(signal.SIGTERM)
    assert pool.wait_exit() == 0


def test_a_ws_ping_interval_the_protocol_cannot_honour_is_said_at_start(pool_factory: Any) -> None:
    """uvicorn < 0.35's wsproto protocol sends no pings: the worker says ws_ping_interval has no effect (and says
    nothing where it does)."""
    needs("wsproto")
    pool = pool_factory(APP, "--ws", "wsproto", workers=1).start()
    assert ("ws_ping_interval (20s) has no effect" in pool.log()) is not WSPROTO_PINGS, pool.log()


@pytest.mark.parametrize("impl", ["websockets", "wsproto"])
def test_a_stop_closes_open_websockets_with_1001(pool_factory: Any, impl: str) -> None:
    needs(impl)
    pool = pool_factory(APP, "--ws", impl, "--graceful-timeout", "60", workers=2).start()

    async def run() -> list[tuple[int | None, bool]]:
        clients = [await connect(url(pool)) for _ in range(10)]
        for ws in clients:
            await ws.recv()
        pool.signal(signal.SIGTERM)
        results = []
        for ws in clients:
            try:
                await asyncio.wait_for(ws.recv(), 30)
            except ConnectionClosed as exc:  # OK: the closing handshake completed, no reset
                results.append((exc.rcvd.code if exc.rcvd else None, isinstance(exc, ConnectionClosedOK)))
        return results

    assert asyncio.run(run()) == [(1001, True)] * 10
    assert pool.wait_exit(timeout=30) == 0  # long before graceful_timeout: the clients answered the close


def test_a_thousand_websockets_across_a_rolling_reload(pool_factory: Any) -> None:
    """1,000 clients; a rolling reload closes each with 1001 (never a reset) and each reconnects until it
    reaches the new generation."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:  # our 1,000 sockets, and the workers' (they inherit the limit)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    pool = pool_factory(APP, workers=2).start()
    clients = 1000

    async def client(ready: asyncio.Semaphore, connected: list[int], codes: list[int]) -> int:
        generation = 0
        first = True
        while generation < 2:
            if first:
                async with ready:
                    ws = await connect(url(pool), open_timeout=30)
            else:
                ws = await connect(url(pool), open_timeout=30)
            generation = json.loads(await ws.recv())["generation"]
            if first:
                connected.append(1)
                first = False
            if generation >= 2:
                await ws.close()
                break
            try:
                await ws.recv()  # the app only echoes: the next thing is the close
            except ConnectionClosedOK as exc:
                codes.append(exc.rcvd.code if exc.rcvd else -1)
            # anything else (a reset, a protocol error) propagates and fails the test
        return generation

    async def run() -> tuple[list[int], list[int], subprocess.CompletedProcess[str]]:
        ready = asyncio.Semaphore(100)  # connect 100 at a time, within the listen backlog
        connected: list[int] = []
        codes: list[int] = []
        tasks = [asyncio.create_task(client(ready, connected, codes)) for _ in range(clients)]
        while len(connected) < clients:
            await asyncio.sleep(0.1)
            for task in tasks:
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        reload = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "corepool", "reload", "--wait", "--control", pool.control],
            capture_output=True, text=True, timeout=120,
        )
        generations = await asyncio.wait_for(asyncio.gather(*tasks), 120)
        return generations, codes, reload

    generations, codes, reload = asyncio.run(run())
    assert reload.returncode == 0, reload.stderr
    assert generations == [2] * clients
    print(f"websockets across a reload: {clients} clients, {len(codes)} closes, codes {sorted(set(codes))}")
    assert len(codes) >= clients and set(codes) == {1001}


def _upgrade(path: str = "/ws") -> bytes:
    """A WebSocket opening handshake request, written by hand (the tests below need the raw connection)."""
    return (f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def _read_head(stream: Any) -> tuple[bytes, dict[bytes, bytes]]:
    status = stream.readline()
    headers = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def _read_frame(stream: Any) -> tuple[int, bytes]:
    """One unmasked frame from the server: (opcode, payload); (-1, b"") at the end of the stream."""
    head = stream.read(2)
    if len(head) < 2:
        return -1, b""
    first, second = head
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(stream.read(2), "big")
    elif length == 127:
        length = int.from_bytes(stream.read(8), "big")
    return first & 0x0F, stream.read(length)


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each unmasked server frame in ``data``."""
    stream, frames = io.BytesIO(data), []
    while (frame := _read_frame(stream))[0] != -1:
        frames.append(frame)
    return frames


def _first_message_then_going_away(sock: socket.socket, stream: Any) -> Any:
    """After an upgrade request: 101, the app's first message (returned, decoded), then at once a close frame
    with 1001; answering it ends the connection cleanly (the closing handshake completes, no reset)."""
    status, _ = _read_head(stream)
    assert status.startswith(b"HTTP/1.1 101 "), status
    opcode, payload = _read_frame(stream)
    assert opcode == 0x1, (opcode, payload)
    opcode, close = _read_frame(stream)
    assert opcode == 0x8 and int.from_bytes(close[:2], "big") == 1001, (opcode, close)
    mask, code = b"\x01\x02\x03\x04", (1001).to_bytes(2, "big")
    sock.sendall(b"\x88\x82" + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(code)))
    assert stream.read(1) == b""
    return json.loads(payload)


@pytest.mark.parametrize("impl", ["websockets", "wsproto"])
def test_a_peer_that_never_answers_pings_is_closed_after_ws_ping_timeout(pool_factory: Any, impl: str) -> None:
    needs(impl, pings=True)
    pool = pool_factory(APP, "--ws", impl, "--ws-ping-interval", "0.3", "--ws-ping-timeout", "0.3", workers=1).start()
    with socket.create_connection(("127.0.0.1", pool.port), timeout=10) as sock:
        sock.sendall(_upgrade())
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):  # never a pong: read until the server gives up on us
                data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    opcodes = [opcode for opcode, _ in _frames(rest)]
    assert 0x9 in opcodes  # pinged (within 10 s: ws_ping_interval was applied, not the 20 s default)
    closes = [payload for opcode, payload in _frames(rest) if opcode == 0x8]
    assert closes and int.from_bytes(closes[0][:2], "big") == 1011  # "keepalive ping timeout"



def test_a_websocket_opened_on_a_draining_worker_is_opened_then_closed_with_1001(pool_factory: Any) -> None:
    """An idle keep-alive connection of a draining worker may still carry one request: when that request is a
    WebSocket upgrade, the WebSocket opens (the app sees it) and is closed with 1001 at once, like every other
    WebSocket of that worker, instead of living until graceful_timeout and a reset."""
    pool = pool_factory(APP, "--keepalive-timeout", "30", workers=1).start()
    with socket.create_connection(("127.0.0.1", pool.port), timeout=10) as sock:
        stream = sock.makefile("rb")
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers = _read_head(stream)
        assert status.startswith(b"HTTP/1.1 200 ")
        old = json.loads(stream.read(int(headers[b"content-length"])))["pid"]
        assert pool.ctl("reload", "--wait").returncode == 0  # our idle connection's worker is draining
        sock.sendall(_upgrade())
        assert _first_message_then_going_away(sock, stream)["pid"] == old  # served by the old worker


def test_a_websocket_still_opening_when_its_worker_drains_is_opened_then_closed_with_1001(
    pool_factory: Any, tmp_path: Path
) -> None:
    """A drain that finds a WebSocket's opening handshake unfinished (the app has not accepted yet): it opens when
    the app accepts and is closed with 1001 at once — not answered 500, which a client sees as a failed
    connection during a reload."""
    pool = pool_factory(APP, workers=1).start()
    with socket.create_connection(("127.0.0.1", pool.port), timeout=10) as sock:
        stream = sock.makefile("rb")
        sock.sendall(_upgrade(f"/ws?hold={tmp_path}"))
        deadline = time.monotonic() + 10
        while not (tmp_path / "arrived").exists():
            assert time.monotonic() < deadline, "the app never saw the WebSocket"
            time.sleep(0.01)
        assert pool.ctl("reload", "--wait").returncode == 0  # its worker drains while the app holds the handshake
        (tmp_path / "go").touch()
        assert _first_message_then_going_away(sock, stream)["generation"] == 1
