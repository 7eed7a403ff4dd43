"""WebSockets on a real pool, with a real ``websockets`` client: echo, limits, and 1001 on stop and reload."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import signal
import socket
import subprocess
import sys
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

APP = "http_asgi:app"


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
    pytest.importorskip("wsproto")
    pool = pool_factory(APP, "--ws", "wsproto", workers=1).start()

    async def run() -> None:
        async with connect(url(pool)) as ws:
            await ws.recv()
            await ws.send("hi")
            assert await ws.recv() == "hi"

    asyncio.run(run())
    pool.signal(signal.SIGTERM)
    assert pool.wait_exit() == 0


@pytest.mark.parametrize("impl", ["websockets", "wsproto"])
def test_a_stop_closes_open_websockets_with_1001(pool_factory: Any, impl: str) -> None:
    if impl == "wsproto":
        pytest.importorskip("wsproto")
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


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each whole unmasked server frame in ``data``."""
    frames, i = [], 0
    while i + 2 <= len(data):
        opcode, length, i = data[i] & 0x0F, data[i + 1] & 0x7F, i + 2
        if length == 126:
            length, i = int.from_bytes(data[i:i + 2], "big"), i + 2
        elif length == 127:
            length, i = int.from_bytes(data[i:i + 8], "big"), i + 8
        frames.append((opcode, data[i:i + length]))
        i += length
    return frames


@pytest.mark.parametrize("impl", ["websockets", "wsproto"])
def test_a_peer_that_never_answers_pings_is_closed_after_ws_ping_timeout(pool_factory: Any, impl: str) -> None:
    if impl == "wsproto":
        pytest.importorskip("wsproto")
    pool = pool_factory(APP, "--ws", impl, "--ws-ping-interval", "0.3", "--ws-ping-timeout", "0.3", workers=1).start()
    with socket.create_connection(("127.0.0.1", pool.port), timeout=10) as sock:
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
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
