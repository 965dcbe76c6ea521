"""TLS for ``wss://``: one server ``SSLContext`` per worker, shared by all of its connections.

Each worker loads the certificate when it starts, so a rolling restart (SIGHUP) picks up a renewed
certificate without dropping the listening port. The TLS handshake runs in the event loop's own TLS layer
(``ssl_handshake_timeout`` = ``--handshake-timeout``) before the WebSocket handshake begins.
"""

from __future__ import annotations

import ssl

from ..errors import BootError


def server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A server context with modern defaults (TLS 1.2+, no compression, ALPN http/1.1)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        detail = getattr(exc, "strerror", None) or str(exc)
        raise BootError(f"cannot load certificate {certfile!r} / key {keyfile!r}: {detail}") from None
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx
