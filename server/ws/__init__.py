"""WebSocket framing (RFC 6455) and the opening handshake. Pure: bytes in, frames and events out."""
