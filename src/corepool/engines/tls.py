"""TLS: the server's SSL context, built from the settings by every generation's workers as they boot, so a reload
puts renewed certificates into service and a certificate that does not load fails that generation's boot (the
reload rolls back, the old workers keep serving with the old certificate).

Defaults are modern: TLS 1.2 at least, OpenSSL's default ciphers at its default security level unless
``ssl_ciphers`` says otherwise, no compression, and ALPN offering what the worker speaks. A path written
``credential:NAME`` is ``$CREDENTIALS_DIRECTORY/NAME``: a key systemd passes with ``LoadCredential=`` (which works
with ``DynamicUser=``; docs/systemd.md).
"""

from __future__ import annotations

import os
import ssl

from corepool.settings import HttpOptions

CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


class TLSError(Exception):
    """The certificate, key or CA bundle cannot be used; the message names the setting and the file."""


def resolve(path: str) -> str:
    """A setting's path, with ``credential:NAME`` read from systemd's credentials directory."""
    if not path.startswith("credential:"):
        return path
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise TLSError(f"{path}: CREDENTIALS_DIRECTORY is not set (give the unit LoadCredential=)")
    return os.path.join(directory, path.removeprefix("credential:"))


def context(options: HttpOptions, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext | None:
    """The SSL context for these settings, or None without ``ssl_certfile``; :class:`TLSError` when it cannot be
    made."""
    if not options.ssl_certfile:
        if options.ssl_keyfile:
            raise TLSError("ssl_keyfile is set but ssl_certfile is not")
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    certfile = resolve(options.ssl_certfile)
    keyfile = resolve(options.ssl_keyfile) if options.ssl_keyfile else None
    try:
        ctx.load_cert_chain(certfile, keyfile, password=options.ssl_keyfile_password or None)
    except (OSError, ssl.SSLError, ValueError) as exc:
        what = f"ssl_certfile {certfile}" + (f" / ssl_keyfile {keyfile}" if keyfile else "")
        raise TLSError(f"{what}: {_why(exc)}") from None
    if options.ssl_ca_certs:
        cafile = resolve(options.ssl_ca_certs)
        try:
            ctx.load_verify_locations(cafile)
        except (OSError, ssl.SSLError) as exc:
            raise TLSError(f"ssl_ca_certs {cafile}: {_why(exc)}") from None
    ctx.verify_mode = CERT_REQS[options.ssl_cert_reqs]
    if options.ssl_cert_reqs != "none" and not options.ssl_ca_certs:
        raise TLSError(f"ssl_cert_reqs = {options.ssl_cert_reqs} needs ssl_ca_certs (the CAs client certificates "
                       "must come from)")
    if options.ssl_ciphers:
        try:
            ctx.set_ciphers(options.ssl_ciphers)
        except ssl.SSLError:
            raise TLSError(f"ssl_ciphers {options.ssl_ciphers!r}: no cipher matches (an OpenSSL cipher list)") from None
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def _why(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, ssl.SSLError):  # OpenSSL's words: say what they mean
        if "PEM lib" in text or "NO_START_LINE" in text or "no start line" in text:
            return "not a PEM certificate or key, or a wrong password"
        if "KEY_VALUES_MISMATCH" in text or "key values mismatch" in text:
            return "the key does not match the certificate"
        return text
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return text or type(exc).__name__
