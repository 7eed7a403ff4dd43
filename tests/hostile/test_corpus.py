"""gunicorn's request corpus (tests/hostile/corpus.py) against a WSGI and an ASGI pool: every invalid request is
refused without reaching the app, every valid one reaches it as gunicorn parses it — except where corepool
answers otherwise on purpose (:data:`DIFFERENCES`, also in docs/robustness.md).

A valid HTTP/1.1 case without a ``Host`` field gets one (``Host: corpus.example``, after its first request line),
since RFC 9112 §3.2 requires a server to refuse it otherwise (tests/hostile/cases.py checks that refusal); a
later request of a pipelined case without one must be refused then.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest

from tests.hostile import corpus, granian
from tests.hostile.conftest import HostilePool, send_raw

SERVED, REFUSED, FIRST_ONLY = "served", "refused", "first only"

# Where corepool's answer differs from gunicorn's (with the settings each case gives gunicorn), and why.
_TE = "a Transfer-Encoding other than chunked: 501, as nginx answers (RFC 9112 §6.1)"
_CONNECT = "CONNECT: 501, corepool is an origin server, not a proxy"
_LENIENT = "needs a gunicorn leniency corepool does not have ({}): refused, as gunicorn does by default"
DIFFERENCES: dict[str, tuple[str, str]] = {
    "valid/005": (REFUSED, "a fragment (#) in the target, which is no part of a request target (RFC 9112 §3.2): 400"),
    "valid/013": (REFUSED, "white space around a chunk extension's ';': llhttp refuses it (RFC 9112 allows it): 400"),
    "valid/024": (REFUSED, "an 8,200-byte request line, for which gunicorn raises its limits: over corepool's 8 KiB"),
    "valid/025": (REFUSED, _TE),
    "valid/025_line": (REFUSED, _TE),
    "valid/026": (REFUSED, "an 8,200-byte field, for which gunicorn raises its limit: over corepool's 8 KiB"),
    "valid/028": (REFUSED, _LENIENT.format("strip_header_spaces")),
    "valid/029": (REFUSED, _TE),
    "valid/030": (REFUSED, _TE),
    "valid/031": (REFUSED, "a method llhttp does not know (-BLARGH): 400"),
    "valid/031compat": (REFUSED, _LENIENT.format("permit_unconventional_http_method")),
    "valid/031compat2": (REFUSED, _LENIENT.format("permit_unconventional_http_method")),
    "valid/022": (FIRST_ONLY, "HTTP/1.0 with Connection: keep-alive: answered, then closed (uvicorn's engine keeps "
                              "no HTTP/1.0 connection alive), so its second request is not read"),
    "valid/099": (REFUSED, "its Content-Length (17,914) is longer than its body (8,599): the body never ends, and "
                           "the request is not answered when the client closes"),
    "valid/compat_obs_fold": (REFUSED, _LENIENT.format("permit_obsolete_folding")),
    "valid/compat_obs_fold_huge": (REFUSED, _LENIENT.format("permit_obsolete_folding")),
    "valid/pp_01": (REFUSED, _LENIENT.format("proxy_protocol")),
    "valid/pp_02": (REFUSED, _LENIENT.format("proxy_protocol")),
    "valid/pp_04": (REFUSED, _LENIENT.format("proxy_protocol")),
    "valid/pp_05": (REFUSED, _LENIENT.format("proxy_protocol")),
    "valid/rfc9112_smuggle_gzip_chunked_01": (REFUSED, _TE),
    "valid/rfc9112_smuggle_te_identity_chunked_01": (REFUSED, _TE),
    "valid/rfc9112_target_absolute_userinfo_01": (REFUSED, "user:password@ in the target: 400 (RFC 9110 §4.2.4: "
                                                           "a recipient SHOULD treat it as an error)"),
    "valid/rfc9112_target_authority_connect_01": (REFUSED, _CONNECT),
    "valid/rfc9112_target_authority_ipv6_01": (REFUSED, _CONNECT),
    "invalid/006": (SERVED, "a 4,200-byte request line: corepool's limit is nginx's 8 KiB (gunicorn's 4,094)"),
    "invalid/008": (SERVED, "an 8,191-byte field: corepool's limit is 8 KiB a line (gunicorn's 8,190)"),
    "invalid/011": (SERVED, "over the limit of 2 fields gunicorn is given: within corepool's 100"),
    "invalid/012": (SERVED, "over the limit of 98 bytes a field gunicorn is given: within corepool's 8 KiB"),
    "invalid/040": (SERVED, "a field name with an underscore, which gunicorn is told to refuse: the WSGI bridge "
                            "drops it (gunicorn's default), an ASGI app gets it as sent (uvicorn's)"),
    "invalid/limit_header_default_01": (SERVED, "an 8,190-byte field: within corepool's 8 KiB"),
    "invalid/rfc9110_trailer_forbidden_host_01": (SERVED, "a Host trailer: corepool drops every trailer, so it "
                                                          "cannot become a header; the request is served"),
    "invalid/rfc9112_leading_crlf_02": (SERVED, "two empty lines before the request line: llhttp skips them "
                                                "(RFC 9112 §2.2: a server SHOULD skip at least one)"),
}

_REQUEST_LINE = re.compile(rb"^[^\r\n]* HTTP/1\.1\r\n")
CASES = corpus.load()


def _with_host(case: corpus.CorpusCase) -> bytes:
    """The case's bytes, with a Host field after the first request line when its first request needs one."""
    first = case.expected[0] if case.expected else None
    if first is None or first.version != (1, 1) or any(n.lower() == "host" for n, _ in first.headers):
        return case.data
    return _REQUEST_LINE.sub(lambda m: m.group(0) + b"Host: corpus.example\r\n", case.data, count=1)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_corpus_request_gets_gunicorns_answer_or_a_documented_one(hostile: HostilePool,
                                                                       case: corpus.CorpusCase) -> None:
    verdict = DIFFERENCES.get(case.name, (SERVED if case.valid else REFUSED, ""))[0]
    if hostile.interface == "granian":  # granian's own answers (tests/hostile/granian.py says why)
        if case.name in granian.SKIPPED:
            pytest.skip(granian.SKIPPED[case.name])
        verdict = granian.CORPUS.get(case.name, (verdict, ""))[0]
    before = hostile.calls()
    answers = send_raw(hostile.port, _with_host(case), answers=max(1, len(case.expected)))
    called = hostile.calls() - before
    first = answers[0]
    if verdict == REFUSED:
        assert first.status is None or first.status >= 400, (first.status, first.raw[:200])
        assert first.seen is None
        # An ASGI app is called once a head is in: a request refused for its body reaches it as a disconnect.
        assert called == 0 or (hostile.interface == "asgi" and called == 1 and first.status in (None, 400)), called
        return
    if not case.valid:  # served although gunicorn refuses it (DIFFERENCES says why)
        assert first.status == 200 and first.seen is not None, (first.status, first.raw[:200])
        assert called == 1
        return
    expected_requests = case.expected[:1] if verdict == FIRST_ONLY else case.expected
    served = 0
    for expected, answer in zip(expected_requests, answers, strict=False):
        if served and expected.version == (1, 1) and not any(n.lower() == "host" for n, _ in expected.headers):
            assert answer.status == 400, answer  # a later request of the pipeline with no Host: refused
            break
        assert answer.status == 200 and answer.seen is not None, (answer.status, answer.raw[:200])
        _check_seen(hostile.interface, expected, answer.seen)
        served += 1
    if verdict == FIRST_ONLY:
        assert answers[1:2] == [] or answers[1].status is None, answers[1]
    assert called == served


def _check_seen(interface: str, expected: corpus.Expected, seen: dict[str, object]) -> None:
    assert seen["method"] == expected.method
    assert seen["path"] == (unquote(expected.path) if interface == "asgi" else unquote(expected.path, "latin-1"))
    assert seen["query"] == expected.query
    assert str(seen["body"]).encode("latin-1") == expected.body
    names = {str(name) for name, _ in seen["headers"]}  # type: ignore[attr-defined]
    for name, _ in expected.headers:
        name = name.lower()
        if "_" in name and interface != "asgi":
            continue  # dropped by the WSGI bridge, as gunicorn does by default; granian makes it a "-"
        assert name in names, (name, sorted(names))
