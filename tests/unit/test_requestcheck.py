"""The request-head checks (corepool.engines.requestcheck), without a socket."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corepool.engines.requestcheck import Reject, check_head, origin_form

HOST = [(b"host", b"example.com")]


def status(method: bytes, target: bytes, version: str = "1.1", headers: list[tuple[bytes, bytes]] = HOST) -> int:
    try:
        check_head(method, target, version, headers)
    except Reject as exc:
        return exc.status
    return 200


def test_an_ordinary_request_passes() -> None:
    assert check_head(b"GET", b"/a?b=c", "1.1", [*HOST, (b"accept", b"*/*")]) is None
    assert status(b"POST", b"/", "1.0", []) == 200  # HTTP/1.0 needs no Host


@pytest.mark.parametrize(("headers", "expected"), [
    ([], 400),
    ([(b"host", b"a"), (b"host", b"b")], 400),
    ([(b"host", b"a b")], 400),
    ([(b"host", b"user@a")], 400),
    ([(b"host", b"[::1]:8080")], 200),
    ([(b"host", b"")], 200),  # empty is allowed by the grammar (a target without an authority)
    ([*HOST, (b"content-type", b"a"), (b"content-type", b"b")], 400),
    ([*HOST, (b"authorization", b"a"), (b"authorization", b"b")], 400),
    ([*HOST, (b"cookie", b"a=1"), (b"cookie", b"b=2")], 200),
    ([*HOST, (b"transfer-encoding", b"gzip, chunked")], 501),
    ([*HOST, (b"transfer-encoding", b" Chunked ")], 200),
])  # fmt: skip
def test_fields(headers: list[tuple[bytes, bytes]], expected: int) -> None:
    assert status(b"GET", b"/", "1.1", headers) == expected


def test_transfer_encoding_in_http10_is_faulty_framing() -> None:
    assert status(b"POST", b"/", "1.0", [(b"transfer-encoding", b"chunked")]) == 400


@pytest.mark.parametrize(("method", "target", "expected"), [
    (b"GET", b"*", 400), (b"OPTIONS", b"*", 200), (b"GET", b"a:443", 400), (b"CONNECT", b"a:443", 501),
    (b"GET", b"relative", 400), (b"GET", b"/a#b", 400), (b"GET", b"http://a/b", 200), (b"GET", b"HTTPS://a", 200),
    (b"GET", b"ftp://a/b", 400), (b"GET", b"http://u@a/b", 400), (b"GET", b"http:///b", 400),
    (b"GET", b"http://a/b#c", 400),
])  # fmt: skip
def test_targets(method: bytes, target: bytes, expected: int) -> None:
    assert status(method, target) == expected


@pytest.mark.parametrize(("version", "expected"), [("0.9", 400), ("2.0", 505), ("3.0", 505), ("1.0", 200)])
def test_versions(version: str, expected: int) -> None:
    assert status(b"GET", b"/", version) == expected


def test_an_absolute_target_gives_its_authority_and_origin_form() -> None:
    assert check_head(b"GET", b"http://good.example:8080/p?q", "1.1", [(b"host", b"other")]) == b"good.example:8080"
    assert origin_form(b"http://good.example:8080/p?q") == b"/p?q"
    assert origin_form(b"http://good.example") == b"/"
    assert origin_form(b"http://good.example?q") == b"/?q"


@given(st.binary(max_size=20), st.binary(max_size=40), st.sampled_from(["0.9", "1.0", "1.1", "2.0"]),
       st.lists(st.tuples(st.sampled_from([b"host", b"content-type", b"transfer-encoding", b"x", b"cookie"]),
                          st.binary(max_size=20)), max_size=6))  # fmt: skip
def test_any_head_is_passed_or_refused_with_a_status(method: bytes, target: bytes, version: str,
                                                     headers: list[tuple[bytes, bytes]]) -> None:
    try:
        authority = check_head(method, target, version, headers)
    except Reject as exc:
        assert exc.status in (400, 501, 505) and exc.reason
        return
    assert authority is None or target.lower().startswith((b"http://", b"https://"))
