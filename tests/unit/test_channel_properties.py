"""The channel's framing, by property: encode/decode round-trips any message, decode raises nothing but
ChannelError on any bytes, and the size limit holds."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from corepool import channel

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
field_names = st.text(min_size=1, max_size=12).filter(lambda k: k != "t")


@given(st.text(max_size=20), st.dictionaries(field_names, json_values, max_size=6))
def test_encode_decode_round_trip(kind: str, fields: dict[str, Any]) -> None:
    raw = channel.encode(kind, **fields)
    assert channel.decode(raw, max_bytes=len(raw)) == {"t": kind, **fields}


@given(st.binary(max_size=4096))
@example(b"[" * 60_000)  # deep nesting: RecursionError inside json
@example(b'{"t":"x","n":' + b"1" * 5000 + b"}")  # a number over int's digit limit: ValueError
@example(b"\xff\xfe{\x00")  # a UTF-16 byte order mark
@example(b'{"t":"\xed\xa0\x80"}')  # a UTF-8 encoded surrogate
@example(b'{"t": null}')
@example(b"null")
def test_decode_raises_only_channel_error(raw: bytes) -> None:
    try:
        message = channel.decode(raw)
    except channel.ChannelError:
        return
    assert isinstance(message, dict) and isinstance(message["t"], str)


@settings(max_examples=50)
@given(st.integers(16, 200_000), st.integers(0, 300_000))
def test_size_limit(max_bytes: int, size: int) -> None:
    raw = channel.encode("broadcast", topic="t", data="x" * size)
    if len(raw) > max_bytes + 1024:
        with pytest.raises(channel.ChannelError, match="over the"):
            channel.decode(raw, max_bytes)
    else:
        assert channel.decode(raw, max_bytes)["data"] == "x" * size


def test_the_largest_frame_crosses_a_channel_whole() -> None:
    a, b = channel.pair()
    try:
        raw = channel.encode("message", topic="t", data="")
        raw = channel.encode("message", topic="t", data="x" * (channel.MAX_FRAME + 64 - len(raw)))
        assert len(raw) == channel.MAX_FRAME + 64  # the relay's slack on top of the largest broadcast
        assert channel.send(a, raw)
        assert b.recv(channel.recv_size()) == raw
    finally:
        a.close()
        b.close()
