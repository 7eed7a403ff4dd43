"""Where WSGI on granian answers a hostile request otherwise than the bridge, and why (docs/robustness.md, "On
granian", lists the same). granian's parser is hyper's; corepool's WSGI wrapper refuses what it can see in
granian's environ (a duplicate Host, an unknown method, Transfer-Encoding rules, the head limits), but hyper
hands over no raw head: what it accepts, drops or joins before the environ is built is listed here.

The suites assert these answers, so that a granian that changes its answer fails them and this table (and the
docs) are updated.
"""

from __future__ import annotations

from typing import NamedTuple


class Answer(NamedTuple):
    status: int | None  # the first answer's status (None: the connection closes without one)
    then: tuple[int | None, ...] | None  # the answers to what follows (None: the case's own)
    why: str


_CHUNK = ("a chunked body hyper cannot parse ends, for the app, where the bad framing starts (granian's wsgi.input "
          "turns hyper's error into the end of the body): the app is called and answers")
_LENGTH_DROPPED = ("Content-Length beside Transfer-Encoding: chunked: hyper reads the body as chunked and drops "
                   "the length (RFC 9112 §6.1 allows it); corepool closes the connection after the answer, so "
                   "nothing a proxy framed by the length is read as a next request")
_TARGET = "hyper hands over only the path and query of the target: {}"
_UNDERSCORE = ("a field name with '_' reaches the app as if it had '-' (granian maps both to the same environ "
               "key; the bridge drops such a field)")
_TRAILERS = "hyper reads trailers and drops them, within its own head buffer bound, not corepool's trailer limits"

CASES: dict[str, Answer] = {
    "cl-te": Answer(200, None, _LENGTH_DROPPED),
    "te-cl": Answer(200, None, _LENGTH_DROPPED),
    "pipelined-after-smuggled-body": Answer(200, (None,), _LENGTH_DROPPED),
    "te-xchunked": Answer(400, None, "hyper refuses an unknown coding itself, with 400 (the bridge: 501)"),
    "te-underscore": Answer(200, None, _UNDERSCORE + ": the app sees a Transfer-Encoding that did not frame the body"),
    "cl-twice-same": Answer(200, None, "hyper accepts a repeated identical Content-Length (RFC 9110 §8.6 allows it)"),
    "chunk-size-overflow": Answer(200, None, _CHUNK),
    "chunk-size-sign": Answer(200, None, _CHUNK),
    "chunk-size-not-hex": Answer(200, None, _CHUNK),
    "chunk-extension-control": Answer(200, None, "hyper accepts a control character in a chunk extension"),
    "chunk-extension-open-quote": Answer(200, None, "hyper accepts an unclosed quote in a chunk extension"),
    "chunk-data-too-long": Answer(200, None, _CHUNK),
    "chunk-bare-lf": Answer(200, None, _CHUNK),
    "bare-lf": Answer(200, None, "hyper accepts a bare LF as a line end"),
    "non-ascii-target": Answer(200, None, "hyper accepts bytes over 0x7F in the target (the app gets them decoded)"),
    "obs-text-value": Answer(200, None, "a field value with bytes over 0x7F reaches the app empty (granian keeps "
                                        "only visible-ASCII values)"),
    "content-type-twice": Answer(200, None, "granian gives the app the first Content-Type and drops the second"),
    "authorization-twice": Answer(200, None, "granian joins two Authorization fields with ',' (its value may hold "
                                             "commas: the wrapper cannot tell)"),
    "trailer-too-many": Answer(200, None, _TRAILERS),
    "trailer-too-long": Answer(200, None, _TRAILERS),
    "absolute-form": Answer(200, None, _TARGET.format("Host stays the Host field, not the target's authority")),
    "absolute-form-userinfo": Answer(200, None, _TARGET.format("user:password@ is not seen")),
    "absolute-form-other-scheme": Answer(200, None, _TARGET.format("a scheme other than http is not seen")),
    "fragment": Answer(200, None, _TARGET.format("hyper strips a fragment")),
    "http2-version": Answer(400, None, "hyper refuses another HTTP version with 400 (the bridge: 505)"),
    "http3-version": Answer(400, None, "hyper refuses another HTTP version with 400 (the bridge: 505)"),
    "upgrade-h2c": Answer(200, (200,), "hyper ignores Upgrade: h2c and goes on reading the connection"),
}

# Cases granian cannot pass in this harness: a body that never ends holds its app thread (no body timeout).
SKIPPED = {
    "incomplete-body": "granian has no body timeout: the app waits in wsgi.input for the client (README, Engines)",
    "invalid/rfc9112_chunked_missing_final_crlf_01": "granian has no body timeout (README, Engines)",
    "valid/099": "granian has no body timeout: a Content-Length longer than the body holds the app (README, Engines)",
}

SERVED, REFUSED, FIRST_ONLY = "served", "refused", "first only"
CORPUS: dict[str, tuple[str, str]] = {
    "valid/005": (SERVED, _TARGET.format("hyper strips a fragment")),
    "valid/013": (SERVED, "hyper accepts white space around a chunk extension's ';' (RFC 9112 allows it)"),
    "valid/014": (REFUSED, "hyper refuses '\"' in the target: 400"),
    "valid/022": (SERVED, "hyper keeps an HTTP/1.0 Keep-Alive connection open: the second request is read (and "
                          "refused for its missing Host)"),
    "valid/023": (FIRST_ONLY, "a chunked request, then a pipelined one: after a chunked request corepool closes "
                              "the connection on granian (see cl-te), so the second is not read"),
    "valid/040": (REFUSED, _UNDERSCORE + ": Transfer_Encoding in HTTP/1.0 is refused as Transfer-Encoding"),
    "valid/040_compat": (REFUSED, _UNDERSCORE + ": Transfer_Encoding in HTTP/1.0 is refused as Transfer-Encoding"),
    "valid/rfc9112_target_absolute_userinfo_01": (SERVED, _TARGET.format("user:password@ is not seen")),
    "invalid/008": (REFUSED, "two Someheader fields granian joins into one over max_header_line_bytes"),
    "invalid/040": (REFUSED, _UNDERSCORE + ": Transfer_Encoding in HTTP/1.0 is refused as Transfer-Encoding"),
    "invalid/041": (SERVED, "granian gives the app the first Content-Type and drops the second"),
    "invalid/rfc9110_trailer_forbidden_cl_01": (SERVED, _TRAILERS),
    "invalid/rfc9110_trailer_forbidden_te_01": (SERVED, _TRAILERS),
    "invalid/rfc9112_bare_lf_01": (SERVED, "hyper accepts a bare LF as a line end"),
    "invalid/rfc9112_chunked_size_minus_sign_01": (SERVED, _CHUNK),
    "invalid/rfc9112_chunked_size_plus_sign_01": (SERVED, _CHUNK),
    "invalid/rfc9112_smuggle_cl_te_chunked_01": (SERVED, _LENGTH_DROPPED),
    "invalid/rfc9112_target_non_ascii_02": (SERVED, "hyper accepts bytes over 0x7F in the target"),
}
