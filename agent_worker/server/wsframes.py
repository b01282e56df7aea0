"""Server-to-client WebSocket frames (RFC 6455 §5.2), built for one socket write per batch.

Pure: no I/O. The realtime writer sends every frame it has queued in one ``transport.write`` (one
syscall, one wake-up of the client) instead of one write per frame through aiohttp's writer; the
frames are what aiohttp's ``WebSocketWriter`` writes for them uncompressed: FIN set, no RSV bits,
no mask (a server never masks), the shortest length encoding.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

__all__ = ["frames"]

_TEXT, _BINARY = 0x81, 0x82  # FIN + opcode
_LEN2 = struct.Struct("!BBH").pack
_LEN8 = struct.Struct("!BBQ").pack


def frames(messages: Iterable[str | bytes]) -> bytes:
    """The frames of ``messages`` back to back: text frames for ``str``, binary for ``bytes``."""
    parts: list[bytes] = []
    for message in messages:
        if isinstance(message, str):
            payload, first = message.encode(), _TEXT
        else:
            payload, first = message, _BINARY
        n = len(payload)
        if n < 126:
            parts.append(bytes((first, n)))
        elif n < 65536:
            parts.append(_LEN2(first, 126, n))
        else:
            parts.append(_LEN8(first, 127, n))
        parts.append(payload)
    return b"".join(parts)
