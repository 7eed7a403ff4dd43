from __future__ import annotations

import os
import socket

import pytest

from corepool import channel, listeners


@pytest.mark.parametrize(
    ("spec", "family", "address"),
    [
        ("127.0.0.1:8000", socket.AF_INET, ("127.0.0.1", 8000)),
        (":8000", socket.AF_INET, ("0.0.0.0", 8000)),
        ("[::1]:8080", socket.AF_INET6, ("::1", 8080)),
        ("unix:/run/x.sock", socket.AF_UNIX, "/run/x.sock"),
    ],
)
def test_parse_bind(spec: str, family: socket.AddressFamily, address: object) -> None:
    assert listeners.parse_bind(spec) == (family, address)


@pytest.mark.parametrize("spec", ["localhost", "1.2.3.4:http", "::1:80", "unix:", "h:70000", "h:\u00b2", "h:-1",
                                  "h:", "h:8 0"])
def test_parse_bind_rejects(spec: str) -> None:
    with pytest.raises(listeners.ListenerError, match="bind"):
        listeners.parse_bind(spec)


def test_listen_fds_that_are_not_plain_digits_are_refused() -> None:
    for count in ("\u00b2", "\u0663", " 1", "1.0"):  # str.isdigit says yes to the first two; int() to the third
        env = {"LISTEN_FDS": count, "LISTEN_PID": str(os.getpid())}
        with pytest.raises(listeners.ListenerError, match="is not a number"):
            listeners.from_systemd(env)


def test_queued_traffic_leaves_half_the_channel_for_pings() -> None:
    a, b = channel.pair()
    try:
        filler = channel.encode("message", topic="t", data="x" * 1000)
        while channel.has_room(a):
            assert channel.send(a, filler)
        assert channel.queued_bytes(a) >= a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2
        for seq in range(100):  # what the primary and workers send directly still goes through
            assert channel.send(a, channel.encode("ping", seq=seq))
    finally:
        a.close()
        b.close()


def test_listen_pid_of_another_process_is_ignored_with_a_warning() -> None:
    env = {"LISTEN_FDS": "1", "LISTEN_PID": "1", "LISTEN_FDNAMES": "http"}
    found, warning = listeners.from_systemd(env)
    assert found == [] and warning is not None and "not this process" in warning
    assert env == {}, "the variables are removed either way"


def test_listen_fds_adopts_named_sockets() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    saved = os.dup(3) if _fd_open(3) else None
    try:
        os.dup2(server.fileno(), 3)
        env = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": "http"}
        (found,), warning = listeners.from_systemd(env)
        assert warning is None and found.name == "http" and found.source == "systemd"
        assert found.address == f"127.0.0.1:{server.getsockname()[1]}"
        found.sock.detach()
    finally:
        if saved is not None:
            os.dup2(saved, 3)
            os.close(saved)
        else:
            os.close(3)
        server.close()


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_listen_fdnames_count_must_match() -> None:
    env = {"LISTEN_FDS": "2", "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": "http"}
    with pytest.raises(listeners.ListenerError, match="names 1 fds but LISTEN_FDS=2"):
        listeners.from_systemd(env)


def test_channel_round_trip_keeps_message_boundaries() -> None:
    a, b = channel.pair()
    try:
        assert channel.send(a, channel.encode("ping", seq=1))
        assert channel.send(a, channel.encode("ping", seq=2))
        assert channel.decode(b.recv(channel.recv_size())) == {"t": "ping", "seq": 1}
        assert channel.decode(b.recv(channel.recv_size())) == {"t": "ping", "seq": 2}
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"{nope", "not JSON"), (b"[1]", "JSON object"), (b'{"t": 1}', "JSON object"), (b"x" * 80000, "over the")],
)
def test_channel_rejects_malformed_messages(raw: bytes, message: str) -> None:
    with pytest.raises(channel.ChannelError, match=message):
        channel.decode(raw)


def test_send_to_a_full_channel_never_blocks() -> None:
    a, b = channel.pair()
    try:
        big = channel.encode("message", data="x" * 60000)
        results = [channel.send(a, big) for _ in range(200)]
        assert results[0] and not results[-1]
    finally:
        a.close()
        b.close()
