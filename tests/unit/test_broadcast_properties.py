"""Broadcast flow control: every message offered is delivered, refused (False) or dropped and counted — for any
interleaving of sends, reads and writable events. Real channels (socketpairs), no mocks."""

from __future__ import annotations

import asyncio
import selectors
import socket
import types
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corepool import bus, channel, relay
from corepool.bus import Outbox


def _drain(sock: socket.socket) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while True:
        try:
            raw = sock.recv(channel.recv_size(), socket.MSG_DONTWAIT)
        except BlockingIOError:
            return got
        got.append(channel.decode(raw, channel.MAX_FRAME))


@given(st.lists(st.tuples(st.floats(0, 2), st.integers(0, 5_000_000)), max_size=200))
def test_budget_never_admits_more_than_rate_times_time_plus_burst(steps: list[tuple[float, int]]) -> None:
    budget = relay.Budget(rate=10, byte_rate=1000, messages=10, size=1000)
    now, admitted, admitted_bytes = 0.0, 0, 0
    for dt, nbytes in steps:
        now += dt
        if budget.take(nbytes % 1500, now):
            admitted += 1
            admitted_bytes += nbytes % 1500
    assert admitted <= 10 + 10 * now + 1e-6
    assert admitted_bytes <= 1000 + 1000 * now + 1e-6


def test_budget_refills() -> None:
    budget = relay.Budget(rate=2, byte_rate=100, messages=2, size=100)
    assert budget.take(10, 0.0) and budget.take(10, 0.0) and not budget.take(10, 0.0)
    assert budget.take(10, 0.5)
    assert not budget.take(101, 100.0), "a message larger than the whole byte budget never passes"


@settings(max_examples=40)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("send"), st.integers(1, 400), st.integers(0, 3000)),
            st.tuples(st.just("read"), st.integers(0, 500), st.just(0)),
            st.tuples(st.just("flush"), st.just(0), st.just(0)),
        ),
        max_size=30,
    )
)
def test_outbox_accounts_for_every_message(steps: list[tuple[str, int, int]]) -> None:
    primary_end, worker_end = channel.pair()
    worker_end.setblocking(False)
    outbox = Outbox(worker_end, 64 * 1024, loop=None)
    outbox.budget = relay.Budget(rate=1e9, byte_rate=1e12, messages=1e9, size=1e12)  # flow control alone here
    offered = received = 0
    try:
        for kind, n, size in steps:
            if kind == "send":
                for _ in range(n):
                    offered += 1
                    outbox.offer("t", "x" * size)
            elif kind == "read":
                for _ in range(n):
                    try:
                        raw = primary_end.recv(channel.recv_size())
                    except BlockingIOError:
                        break
                    assert channel.decode(raw)["t"] == "broadcast"
                    received += 1
            else:
                outbox.flush()
            assert len(outbox.frames) <= relay.QUEUE_MESSAGES
            assert channel.queued_bytes(worker_end) <= worker_end.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        while outbox.frames or channel.queued_bytes(worker_end):
            received += len(_drain(primary_end))
            outbox.flush()
        assert outbox.accepted + outbox.refused == offered
        assert received == outbox.accepted and outbox.lost == 0
    finally:
        primary_end.close()
        worker_end.close()


def test_outbox_refuses_what_it_cannot_deliver() -> None:
    primary_end, worker_end = channel.pair()
    outbox = Outbox(worker_end, 1000, loop=None)
    try:
        fits = 1000 - len(channel.encode("broadcast", topic="t", data=""))
        assert outbox.offer("t", "x" * fits), "a message of exactly max_message_bytes encoded is sent"
        assert not outbox.offer("t", "x" * (fits + 1)), "one byte more is refused"
        assert not outbox.offer("t", object()), "not JSON"
        assert channel.decode(primary_end.recv(channel.recv_size()), 1000)["data"] == "x" * fits
        assert (outbox.accepted, outbox.refused) == (1, 2)
    finally:
        primary_end.close()
        worker_end.close()


def test_outbox_budget_refuses_a_flood(monkeypatch: pytest.MonkeyPatch) -> None:
    # The clock stands still: on the real one the bucket refills one message a millisecond, so the flood's last
    # offer got in whenever a millisecond had passed (6 in 3,000 runs on an idle machine).
    monkeypatch.setattr(bus, "time", types.SimpleNamespace(monotonic=lambda: 100.0))
    primary_end, worker_end = channel.pair()
    outbox = Outbox(worker_end, 64 * 1024, loop=None)
    try:
        results = [outbox.offer("t", i) for i in range(int(relay.RATE) * 3)]
        assert sum(results) == relay.RATE, "a burst spends one second's budget, no more"
        assert all(results[: int(relay.RATE)]) and not any(results[int(relay.RATE):])
    finally:
        primary_end.close()
        worker_end.close()


def test_outbox_flushes_on_the_loop_when_the_channel_has_room() -> None:
    """Through a real event loop: a burst larger than the channel is queued and flushed as the primary reads."""
    primary_end, worker_end = channel.pair()
    worker_end.setblocking(False)
    received: list[int] = []

    async def main() -> Outbox:
        outbox = Outbox(worker_end, 64 * 1024, asyncio.get_running_loop())
        results = [outbox.offer("t", {"i": i, "pad": "y" * 2000}) for i in range(500)]
        assert all(results) and outbox.frames, "500 x 2 KB fit the budget, but not the channel: some are queued"
        primary_end.setblocking(False)
        for _ in range(100_000):
            await asyncio.sleep(0)
            received.extend(m["data"]["i"] for m in _drain(primary_end))
            if len(received) == 500:
                break
        return outbox

    try:
        outbox = asyncio.run(main())
        assert received == list(range(500)), "in order, none lost"
        assert not outbox.frames and not outbox._armed
    finally:
        primary_end.close()
        worker_end.close()


class _Pool:
    """The primary's side of a few workers: a selector with each channel registered for reading, as primary.py
    does, and the worker ends to read from."""

    def __init__(self, n: int) -> None:
        self.selector = selectors.DefaultSelector()
        self.relay = relay.Relay(self.selector)
        self.ends: dict[int, tuple[socket.socket, socket.socket]] = {}
        self.reads: dict[int, int] = {}
        for wid in range(n):
            p, w = channel.pair()
            w.setblocking(False)
            self.ends[wid] = (p, w)
            self.reads[wid] = 0
            self.selector.register(p, selectors.EVENT_READ, lambda _m, wid=wid: self._read(wid))

    def _read(self, wid: int) -> None:
        self.reads[wid] += 1

    def targets(self) -> dict[int, tuple[int | None, socket.socket]]:
        return {wid: (1000 + wid, p) for wid, (p, _w) in self.ends.items()}

    def turn(self) -> None:
        for key, mask in self.selector.select(0):
            key.data(mask)

    def close(self) -> None:
        for p, w in self.ends.values():
            p.close()
            w.close()
        self.selector.close()


@settings(max_examples=30)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("send"), st.integers(0, 2), st.integers(1, 700)),
            st.tuples(st.just("read"), st.integers(0, 2), st.integers(0, 1500)),
            st.tuples(st.just("turn"), st.just(0), st.just(0)),
        ),
        max_size=25,
    )
)
def test_relay_delivers_or_counts_every_message(steps: list[tuple[str, int, int]]) -> None:
    pool = _Pool(3)
    sent = {wid: 0 for wid in pool.ends}  # messages meant for each destination
    received = {wid: 0 for wid in pool.ends}
    now = 0.0
    try:
        for kind, wid, n in steps:
            if kind == "send":
                for _ in range(n):
                    now += 0.01  # within the guard's budget: queues, not the rate limit, are under test
                    pool.relay.forward(wid, 1000 + wid, {"t": "broadcast", "topic": "t", "data": "z" * 100},
                                       pool.targets(), 64 * 1024, now)
                    for other in pool.ends:
                        sent[other] += other != wid
            elif kind == "read":
                _p, w = pool.ends[wid]
                for _ in range(n):
                    try:
                        raw = w.recv(channel.recv_size())
                    except BlockingIOError:
                        break
                    assert channel.decode(raw)["sender"] != 1000 + wid, "never relayed back to its sender"
                    received[wid] += 1
            else:
                pool.turn()
            for queue in pool.relay.queues.values():
                assert len(queue.frames) <= relay.QUEUE_MESSAGES
        for _ in range(10_000):
            for wid, (_p, w) in pool.ends.items():
                received[wid] += len(_drain(w))
            pool.turn()
            if not pool.relay.queues:
                break
        for wid in pool.ends:
            received[wid] += len(_drain(pool.ends[wid][1]))
        assert not pool.relay.queues, "every queue drains once its worker reads"
        assert sum(received.values()) + pool.relay.dropped == sum(sent.values())
        assert pool.relay.relayed == sum(received.values())
        # The primary's own read callbacks were restored: no queue, no write interest left behind.
        assert all(key.events == selectors.EVENT_READ for key in pool.selector.get_map().values())
    finally:
        pool.close()


def test_relay_rate_guard_drops_and_counts_a_flood_from_one_sender() -> None:
    pool = _Pool(2)
    try:
        for _ in range(int(relay.RATE * relay.GUARD) + 500):
            pool.relay.forward(0, 1000, {"t": "broadcast", "topic": "t", "data": 1}, pool.targets(), 65536, 5.0)
            pool.turn()
            _drain(pool.ends[1][1])
        assert pool.relay.dropped == 500 and pool.relay.relayed == relay.RATE * relay.GUARD
    finally:
        pool.close()


def test_relay_refuses_what_a_worker_could_not_read() -> None:
    pool = _Pool(2)
    try:
        message = {"t": "broadcast", "topic": "t", "data": "x" * 2000}
        pool.relay.forward(0, 1000, message, pool.targets(), 1000, 0.0)
        pool.relay.forward(0, 1000, {"t": "broadcast", "topic": 5}, pool.targets(), 65536, 0.0)
        assert pool.relay.dropped == 2 and _drain(pool.ends[1][1]) == []
    finally:
        pool.close()


def test_broadcast_from_app_threads_is_flushed_by_the_loop() -> None:
    """WSGI apps call broadcast() on their thread pool: the outbox is shared safely, the loop flushes it."""
    import threading

    primary_end, worker_end = channel.pair()
    worker_end.setblocking(False)
    primary_end.setblocking(False)
    received: list[int] = []

    async def main() -> Outbox:
        outbox = Outbox(worker_end, 64 * 1024, asyncio.get_running_loop())
        results: list[bool] = []

        def app_thread(base: int) -> None:
            results.extend(outbox.offer("t", {"i": base + i, "pad": "y" * 2000}) for i in range(100))

        threads = [threading.Thread(target=app_thread, args=(k * 100,)) for k in range(4)]
        for t in threads:
            t.start()
        for _ in range(30_000):  # bounded: a flush that never comes fails below instead of hanging
            await asyncio.sleep(0.001)
            received.extend(m["data"]["i"] for m in _drain(primary_end))
            if len(received) == 400:
                break
        for t in threads:
            t.join()
        assert all(results) and len(results) == 400
        return outbox

    try:
        outbox = asyncio.run(main())
        assert sorted(received) == list(range(400)), "each one once"
        for k in range(4):  # each thread's own messages stay in order
            mine = [i for i in received if k * 100 <= i < (k + 1) * 100]
            assert mine == sorted(mine)
        assert not outbox.frames
    finally:
        primary_end.close()
        worker_end.close()


def test_relay_from_a_sender_that_is_not_a_worker_reaches_every_worker_and_is_guarded() -> None:
    """Another host's broadcasts (the primary's backend) come in under a sender id no worker has."""
    pool = _Pool(3)
    try:
        limit = int(relay.RATE * relay.GUARD)
        for _ in range(limit + 10):
            pool.relay.forward(-1, None, {"topic": "t", "data": 1}, pool.targets(), 65536, 7.0)
            for _p, w in pool.ends.values():
                _drain(w)
            pool.turn()
        for _p, w in pool.ends.values():
            _drain(w)
        assert pool.relay.relayed == 3 * limit, "every worker, the guard applies to it too"
        assert pool.relay.dropped == 3 * 10, "each refused message counted once per destination"
    finally:
        pool.close()


def test_relay_state_does_not_grow_with_worker_replacements() -> None:
    pool = _Pool(2)
    try:
        for n in range(10_000):  # a new sender id every time, as 10,000 replacements would give
            pool.relay.forward(100 + n, 5000 + n, {"topic": "t", "data": n}, pool.targets(), 65536, n * 0.5)
            for _p, w in pool.ends.values():
                _drain(w)
        assert len(pool.relay.budgets) <= 2 and len(pool.relay.senders) <= 2 and not pool.relay.queues
    finally:
        pool.close()
