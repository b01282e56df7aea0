"""A msgpack history page with an item nested deeper than msgpack decodes: the other items.

msgpack's C unpacker stops at 1,024 levels (``StackError``) and cannot skip an item it cannot
decode, so one such item made its whole page unreadable, and with it the session's history past it.
Here each item is decoded on its own; a too-deep one is stepped over by reading its headers by hand
(iteratively: no depth limit) and left out. That hand-reading is a Python loop per object header,
so it is bounded per page (:data:`MAX_SKIPPED_BYTES`); past it the page is refused as before.
Only called once the whole-page decode has failed: nothing here runs for a readable page.
"""

from __future__ import annotations

import io
from typing import Any

import msgpack

__all__ = ["MAX_SKIPPED_BYTES", "TooDeep", "items_around_deep"]

#: Bytes of too-deep items one page may have stepped over by hand before it is refused whole: 4 items
#: of Ably's 64 KiB message size limit, or ~250 just past the depth limit (~65 ms of CPU at worst).
MAX_SKIPPED_BYTES = 1 << 18

# Object headers: fixed payload sizes, length-prefixed payloads (prefix width, type bytes), and
# container sizes (prefix width, children per entry). Everything else is a 1-byte fix type.
_FIXED = {
    0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17,
}  # fmt: skip
_SIZED = {0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1),
          0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0)}  # fmt: skip
_CONTAINERS = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}


class TooDeep(ValueError):
    """The page cannot be read around its too-deep items (garbled, or over the skip bound)."""


def _end_of(body: bytes, at: int, limit: int) -> int:
    """The offset just after the object starting at ``at``; :class:`TooDeep` past ``limit``."""
    pending = 1
    end = min(len(body), limit)
    while pending:
        if at >= end:
            raise TooDeep  # past the bound, or the body is truncated
        b = body[at]
        at += 1
        pending -= 1
        if b <= 0x7F or b >= 0xE0:
            continue
        if b <= 0x8F:
            pending += 2 * (b & 0x0F)
        elif b <= 0x9F:
            pending += b & 0x0F
        elif b <= 0xBF:
            at += b & 0x1F
        elif (size := _FIXED.get(b)) is not None:
            at += size
        elif (sized := _SIZED.get(b)) is not None:
            width, type_bytes = sized
            at += width + type_bytes + int.from_bytes(body[at : at + width], "big")
        elif (container := _CONTAINERS.get(b)) is not None:
            width, per_entry = container
            pending += per_entry * int.from_bytes(body[at : at + width], "big")
            at += width
        else:
            raise TooDeep  # 0xc1: never used in msgpack
    if at > end:
        raise TooDeep  # past the bound, or the body is truncated
    return at


def items_around_deep(body: bytes) -> tuple[list[Any], int]:
    """The page's items (an array, decoded as ``msgpack.unpackb`` decodes it) without those nested
    too deep, and how many were left out. :class:`TooDeep` if the page is not readable that way."""
    stream = io.BytesIO(body)

    def unpacker_at(offset: int) -> msgpack.Unpacker:
        stream.seek(offset)
        return msgpack.Unpacker(stream, max_buffer_size=max(len(body), 1))

    try:
        unpacker = unpacker_at(0)
        count = unpacker.read_array_header()
        base = 0
        items: list[Any] = []
        left_out = skipped = 0
        for _ in range(count):
            at = base + unpacker.tell()
            try:
                items.append(unpacker.unpack())
                continue
            except (msgpack.StackError, RecursionError):
                pass
            end = _end_of(body, at, at + MAX_SKIPPED_BYTES - skipped)
            skipped += end - at
            left_out += 1
            base = end
            unpacker = unpacker_at(end)
        if base + unpacker.tell() != len(body):
            raise TooDeep  # trailing bytes after the items
    except TooDeep:
        raise
    except Exception:  # garbled elsewhere: OutOfData, FormatError, ValueError, ...
        raise TooDeep from None
    return items, left_out
