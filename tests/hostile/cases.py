"""Hand-made hostile requests, each with the answer it must get (docs/robustness.md, "The hostile client", lists
them with nginx's and gunicorn's answers).

``status`` None means the connection must close with no answer. ``seen`` (for requests that are served) checks
the request as the app saw it. A refused request never reaches the app, with one exception (``body_error``): an
ASGI app is called once the head is in and checked, before its body arrives, so a body whose framing turns out
bad (a chunk size, a trailer over the limits, a body cut short) reaches it as ``http.disconnect`` — never a byte
of the bad framing. A WSGI app is not called at all then: the bridge reads the body first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Seen = Callable[[dict[str, str], dict[str, Any]], bool]  # (headers, everything the app saw) -> as it should be


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    status: int | None
    seen: Seen | None = None
    then: tuple[int | None, ...] = field(default=())  # the answers to what follows on the same connection
    body_error: bool = False  # refused for its body: an ASGI app was called and saw http.disconnect


def _head(*lines: bytes, method: bytes = b"GET", target: bytes = b"/", version: bytes = b"HTTP/1.1") -> bytes:
    return b"%s %s %s\r\n" % (method, target, version) + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


def _chunked(*trailers: bytes) -> bytes:
    return (_head(b"Host: good.example", b"Transfer-Encoding: chunked", method=b"POST", target=b"/upload")
            + b"5\r\nhello\r\n0\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n")


def _no_trailer(headers: dict[str, str], seen: dict[str, Any]) -> bool:
    smuggled = {"authorization", "cookie", "x-forwarded-for", "x-forwarded-proto", "content-type"}
    return headers.get("host") == "good.example" and not smuggled & set(headers) and seen["body"] == "hello"


CASES: tuple[Case, ...] = (
    # Request smuggling: framing that two parsers could read two ways.
    Case("cl-te", _head(b"Host: a", b"Content-Length: 6", b"Transfer-Encoding: chunked", method=b"POST")
         + b"0\r\n\r\nX", 400),
    Case("te-cl", _head(b"Host: a", b"Transfer-Encoding: chunked", b"Content-Length: 6", method=b"POST")
         + b"0\r\n\r\nX", 400),
    Case("te-te", _head(b"Host: a", b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity", method=b"POST")
         + b"0\r\n\r\n", 400),
    Case("te-xchunked", _head(b"Host: a", b"Transfer-Encoding: xchunked", method=b"POST") + b"0\r\n\r\n", 501),
    Case("te-chunked-identity", _head(b"Host: a", b"Transfer-Encoding: chunked, identity", method=b"POST")
         + b"0\r\n\r\n", 400),  # chunked not last: RFC 9112 §6.3 says 400
    Case("te-gzip-chunked", _head(b"Host: a", b"Transfer-Encoding: gzip, chunked", method=b"POST")
         + b"0\r\n\r\n", 501),
    Case("te-space-before-colon", _head(b"Host: a", b"Transfer-Encoding : chunked", method=b"POST")
         + b"0\r\n\r\n", 400),
    Case("te-obs-fold", _head(b"Host: a", b"X: y", b" Transfer-Encoding: chunked", method=b"POST")
         + b"0\r\n\r\n", 400),
    Case("te-in-http10", _head(b"Transfer-Encoding: chunked", method=b"POST", version=b"HTTP/1.0")
         + b"5\r\nhello\r\n0\r\n\r\n", 400),
    Case("te-underscore", _head(b"Host: a", b"Transfer_Encoding: chunked", b"Content-Length: 5", method=b"POST")
         + b"hello", 200, lambda h, s: s["body"] == "hello" and "transfer-encoding" not in h),
    Case("te-uppercase", _head(b"Host: a", b"Transfer-Encoding: CHUNKED", method=b"POST")
         + b"5\r\nhello\r\n0\r\n\r\n", 200, lambda h, s: s["body"] == "hello"),
    Case("cl-twice-same", _head(b"Host: a", b"Content-Length: 5", b"Content-Length: 5", method=b"POST")
         + b"hello", 400),
    Case("cl-twice-different", _head(b"Host: a", b"Content-Length: 5", b"Content-Length: 6", method=b"POST")
         + b"hello!", 400),
    Case("cl-list", _head(b"Host: a", b"Content-Length: 5, 5", method=b"POST") + b"hello", 400),
    Case("cl-plus", _head(b"Host: a", b"Content-Length: +5", method=b"POST") + b"hello", 400),
    Case("cl-negative", _head(b"Host: a", b"Content-Length: -1", method=b"POST"), 400),
    Case("cl-hex", _head(b"Host: a", b"Content-Length: 0x5", method=b"POST") + b"hello", 400),
    Case("chunk-size-overflow", _head(b"Host: a", b"Transfer-Encoding: chunked", method=b"POST")
         + b"FFFFFFFFFFFFFFFFF1\r\nhello\r\n0\r\n\r\n", 400, body_error=True),
    Case("chunk-size-sign", _head(b"Host: a", b"Transfer-Encoding: chunked", method=b"POST")
         + b"-5\r\nhello\r\n0\r\n\r\n", 400, body_error=True),
    Case("chunk-size-not-hex", _head(b"Host: a", b"Transfer-Encoding: chunked", method=b"POST")
         + b"5g\r\nhello\r\n0\r\n\r\n", 400, body_error=True),
    Case("chunk-extension-control", _head(b"Host: a", b"Transfer-Encoding: chunked", method=b"POST")
         + b"5;\x01\r\nhello\r\n0\r\n\r\n", 400, body_error=True),
    Case("chunk-extension-open-quote", _head(b"Host: a", b"Transfer-Encoding: chunked", method=b"POST")
         + b'5;a="b\r\nhello\r\n0\r\n\r\n', 400, body_error=True),
    Case("chunk-data-too-long", _head(b"Host: a", b"Transfer-Encoding: chunked", method=b"POST")
         + b"3\r\nhello\r\n0\r\n\r\n", 400, body_error=True),
    Case("chunk-bare-lf", _head(b"Host: a", b"Transfer-Encoding: chunked", method=b"POST")
         + b"5\nhello\n0\n\n", 400, body_error=True),
    # Line endings, folding, bytes that have no place in a head.
    Case("bare-lf", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    Case("bare-cr", b"GET / HTTP/1.1\rHost: a\r\n\r\n", 400),
    Case("bare-cr-in-value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400),
    Case("obs-fold", _head(b"Host: a", b"X: one", b" two"), 400),
    Case("leading-space-first-field", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400),
    Case("nul-in-value", _head(b"Host: a", b"X: a\x00b"), 400),
    Case("nul-in-name", _head(b"Host: a", b"X\x00: b"), 400),
    Case("nul-in-target", _head(b"Host: a", target=b"/a\x00b"), 400),
    Case("control-in-value", _head(b"Host: a", b"X: a\x01b"), 400),
    Case("del-in-value", _head(b"Host: a", b"X: a\x7fb"), 400),
    Case("control-in-target", _head(b"Host: a", target=b"/a\x01b"), 400),
    Case("space-in-target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    Case("non-ascii-target", _head(b"Host: a", target=b"/\xc3\xa9"), 400),
    Case("bad-field-name", _head(b"Host: a", b"X(y): 1"), 400),
    Case("value-trailing-space", _head(b"Host: a", b"X-Value: \tabc \t"), 200,
         lambda h, s: h.get("x-value") == "abc"),
    Case("obs-text-value", _head(b"Host: a", b"X-Value: caf\xc3\xa9"), 200,
         lambda h, s: h.get("x-value") == "caf\xc3\xa9"),
    # Host.
    Case("host-twice", _head(b"Host: a", b"Host: b"), 400),
    Case("host-missing-http11", _head(), 400),
    Case("host-missing-http10", _head(version=b"HTTP/1.0"), 200),
    Case("host-with-space", _head(b"Host: a b"), 400),
    Case("host-with-slash", _head(b"Host: a/b"), 400),
    Case("host-with-userinfo", _head(b"Host: user@a"), 400),
    Case("host-ipv6", _head(b"Host: [::1]:8000"), 200, lambda h, s: h.get("host") == "[::1]:8000"),
    # Other fields that are one value, never a list.
    Case("content-type-twice", _head(b"Host: a", b"Content-Type: a/b", b"Content-Type: c/d"), 400),
    Case("authorization-twice", _head(b"Host: a", b"Authorization: Basic a", b"Authorization: Basic b"), 400),
    Case("cookie-twice", _head(b"Host: a", b"Cookie: a=1", b"Cookie: b=2"), 200),
    # Trailers never become headers.
    Case("trailer-authorization", _chunked(b"Authorization: Bearer injected"), 200, _no_trailer),
    Case("trailer-host", _chunked(b"Host: evil.example"), 200, _no_trailer),
    Case("trailer-cookie", _chunked(b"Cookie: session=stolen"), 200, _no_trailer),
    Case("trailer-forwarded", _chunked(b"X-Forwarded-For: 10.0.0.1", b"X-Forwarded-Proto: https"), 200, _no_trailer),
    Case("trailer-content-type", _chunked(b"Content-Type: text/evil"), 200, _no_trailer),
    Case("trailer-harmless", _chunked(b"X-Checksum: abc"), 200, lambda h, s: "x-checksum" not in h),
    Case("trailer-too-many", _chunked(*[b"T%d: x" % i for i in range(101)]), 431, body_error=True),
    Case("trailer-too-long", _chunked(b"T: " + b"x" * 9000), 431, body_error=True),
    # Sizes.
    Case("request-line-too-long", _head(b"Host: a", target=b"/" + b"a" * 9000), 414),
    Case("field-too-long", _head(b"Host: a", b"X: " + b"a" * 9000), 431),
    Case("too-many-fields", _head(b"Host: a", *[b"a:b"] * 5000), 431),
    Case("fields-101", _head(b"Host: a", *[b"x%d: b" % i for i in range(100)]), 431),
    Case("fields-100", _head(b"Host: a", *[b"x%d: b" % i for i in range(99)]), 200),
    Case("head-too-big", _head(b"Host: a", *[b"x%d: " % i + b"b" * 4000 for i in range(9)]), 431),
    # Targets.
    Case("absolute-form", _head(b"Host: other.example", target=b"http://good.example/p?q=1"), 200,
         lambda h, s: s["path"] == "/p" and s["query"] == "q=1" and h.get("host") == "good.example"),
    Case("absolute-form-no-path", _head(b"Host: good.example", target=b"http://good.example"), 200,
         lambda h, s: s["path"] == "/" and h.get("host") == "good.example"),
    Case("absolute-form-userinfo", _head(b"Host: a", target=b"http://user:pw@a/"), 400),
    Case("absolute-form-other-scheme", _head(b"Host: a", target=b"ftp://a/"), 400),
    Case("authority-form-get", _head(b"Host: a:443", target=b"a:443"), 400),
    Case("connect", _head(b"Host: a:443", method=b"CONNECT", target=b"a:443"), 501),
    Case("asterisk-get", _head(b"Host: a", target=b"*"), 400),
    Case("asterisk-options", _head(b"Host: a", method=b"OPTIONS", target=b"*"), 200),
    Case("relative-target", _head(b"Host: a", target=b"relative"), 400),
    Case("fragment", _head(b"Host: a", target=b"/page#frag"), 400),
    Case("double-slash", _head(b"Host: a", target=b"//a//b"), 200, lambda h, s: s["path"] == "//a//b"),
    # Versions and methods.
    Case("no-version", b"GET /\r\nHost: a\r\n\r\n", 400),
    Case("http09-version", _head(b"Host: a", version=b"HTTP/0.9"), 400),
    Case("http2-version", _head(b"Host: a", version=b"HTTP/2.0"), 505),
    Case("http3-version", _head(b"Host: a", version=b"HTTP/3.0"), 505),
    Case("http12-version", _head(b"Host: a", version=b"HTTP/1.2"), 400),
    Case("lowercase-version", _head(b"Host: a", version=b"http/1.1"), 400),
    Case("unknown-method", _head(b"Host: a", method=b"FOO"), 501),
    Case("lowercase-method", _head(b"Host: a", method=b"get"), 400),
    Case("method-with-nul", _head(b"Host: a", method=b"G\x00ET"), 400),
    # Served as it is, and nothing more on that connection.
    Case("upgrade-h2c", _head(b"Host: a", b"Upgrade: h2c", b"Connection: Upgrade, HTTP2-Settings",
                              b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA") + _head(b"Host: a"), 200, then=(None,)),
    # A pipelined request after a refusal is never served.
    Case("pipelined-after-refusal", _head(b"Host: a", b"Host: b") + _head(b"Host: a"), 400, then=(None,)),
    Case("pipelined-after-smuggled-body", _head(b"Host: a", b"Content-Length: 5", b"Transfer-Encoding: chunked",
                                                method=b"POST") + b"0\r\n\r\n" + _head(b"Host: a"), 400, then=(None,)),
    # A request the client cut short is not answered (and not served).
    Case("incomplete-head", b"GET / HTTP/1.1\r\nHost: a\r\n", None),
    Case("incomplete-body", _head(b"Host: a", b"Content-Length: 10", method=b"POST") + b"hello", None, body_error=True),
)
