"""What a request head must be before an app sees it: RFC 9112's MUSTs and nginx's strictness, as pure checks.

The parser (llhttp, through httptools) already refuses bad syntax: bare CR or LF, obs-fold, control bytes and
NUL in fields, a Content-Length that is not digits, two Content-Lengths, Content-Length with
Transfer-Encoding, bad chunk sizes and extensions. What it lets through, and these checks refuse:

==========================================================  ======  =========================================
what                                                        status  why
==========================================================  ======  =========================================
no HTTP version in the request line (``GET /``: HTTP/0.9)   400     RFC 9112 §2.3; every response is HTTP/1.x
a major version other than 1 (``HTTP/2.0`` in HTTP/1)       505     RFC 9110 §15.6.6 (nginx answers the same)
no ``Host`` in HTTP/1.1, or more than one ``Host``          400     RFC 9112 §3.2: a server MUST answer 400
a ``Host`` that is not ``host[:port]``                      400     RFC 9112 §3.2; nginx refuses the same
``*`` as the target of anything but OPTIONS                 400     RFC 9112 §3.2.4
an authority (``host:port``) as the target: CONNECT         501     corepool is an origin server, not a proxy
any other target that is not a path or an http(s) URL       400     RFC 9112 §3.2
a fragment (``#``) in the target                            400     RFC 9112 §3.2: not part of a target
``Transfer-Encoding`` in an HTTP/1.0 request                400     RFC 9112 §6.1: faulty framing (and close)
a ``Transfer-Encoding`` other than ``chunked``              501     RFC 9112 §6.1 (nginx answers the same)
two of a field that is not a list (:data:`SINGLETONS`)      400     RFC 9110 §5.3: which one would the app use?
==========================================================  ======  =========================================

An absolute target (``GET http://host/path``) is accepted, as RFC 9112 §3.2.2 requires of a server, and its
authority replaces the ``Host`` field (the same section says to ignore the field then).
"""

from __future__ import annotations

import re

# Fields whose value is one item, never a comma-separated list (RFC 9110 §5.3): two lines of one of them make a
# request whose meaning depends on which line a component reads, the root of header-smuggling bugs.
SINGLETONS = frozenset({
    b"host", b"content-length", b"content-type", b"transfer-encoding", b"authorization", b"proxy-authorization",
    b"range", b"if-range", b"if-modified-since", b"if-unmodified-since", b"max-forwards",
})  # fmt: skip

# host = IP-literal / IPv4address / reg-name (RFC 3986 §3.2.2), then an optional port.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]{0,5})?")
_ABSOLUTE = re.compile(rb"(?i)(https?)://([^/?#]*)([^#]*)")


class Reject(Exception):
    """A request that must not reach the app: answer ``status`` (with ``reason`` as the body), then close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status, self.reason = status, reason


def check_head(method: bytes, target: bytes, version: str, headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """Refuse (raise :class:`Reject`) what the table in the module docstring refuses.

    ``headers`` are (lower-case name, value) pairs. Returns the authority of an absolute target (which then
    replaces ``Host``), else None.
    """
    if version != "1.1" and version != "1.0":
        if version.startswith("0."):
            raise Reject(400, "Bad Request: no HTTP version in the request line")
        raise Reject(505, "HTTP Version Not Supported")
    authority = _check_target(method, target)
    hosts = 0
    seen: set[bytes] = set()
    for name, value in headers:
        if name in SINGLETONS:
            if name in seen:
                raise Reject(400, f"Bad Request: more than one {name.decode('latin-1')} field")
            seen.add(name)
            if name == b"host":
                hosts += 1
                if _HOST.fullmatch(value) is None:
                    raise Reject(400, "Bad Request: invalid Host")
            elif name == b"transfer-encoding":
                if version == "1.0":
                    raise Reject(400, "Bad Request: Transfer-Encoding in an HTTP/1.0 request")
                if value.strip().lower() != b"chunked":
                    raise Reject(501, "Not Implemented: only Transfer-Encoding: chunked is supported")
    if hosts == 0 and version == "1.1":
        raise Reject(400, "Bad Request: no Host field (required in HTTP/1.1)")
    return authority


def _check_target(method: bytes, target: bytes) -> bytes | None:
    """The four request-target forms of RFC 9112 §3.2; the authority of an absolute one."""
    if target[:1] == b"/":  # origin-form: the common case first
        if b"#" in target:
            raise Reject(400, "Bad Request: a fragment in the request target")
        return None
    if target == b"*":
        if method != b"OPTIONS":
            raise Reject(400, "Bad Request: * is a target for OPTIONS only")
        return None
    if method == b"CONNECT":
        raise Reject(501, "Not Implemented: CONNECT (this is not a proxy)")
    match = _ABSOLUTE.fullmatch(target)
    if match is None:
        raise Reject(400, "Bad Request: invalid request target")
    authority = match.group(2)
    if not authority or _HOST.fullmatch(authority) is None or b"@" in authority:
        raise Reject(400, "Bad Request: invalid authority in the request target")
    if b"#" in target:
        raise Reject(400, "Bad Request: a fragment in the request target")
    return authority


def origin_form(target: bytes) -> bytes:
    """The path and query of an absolute target (``http://h/p?q`` → ``/p?q``; no path → ``/``)."""
    match = _ABSOLUTE.fullmatch(target)
    rest = match.group(3) if match is not None else target
    return rest if rest[:1] == b"/" else b"/" + rest
