"""Decode caps shared by every path that parses untrusted input (WebSocket frames, REST bodies,
token requests, the worker's invocation endpoint).

Why: CPython's ``json`` and ``msgpack`` decoders recurse in C up to ~1000 levels, and everything
downstream that walks the result (copying, sizing, re-encoding, logging) recurses in Python; one
2 KB frame nested 1000 deep used to end in a ``RecursionError`` deep inside a handler. So the depth
is checked right after decoding, iteratively, and the byte size before decoding; each refusal is a
:class:`~agent_worker.errors.ProtocolError` with Ably's code (40000 too deep, 40009 too large,
40013 undecodable).
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import msgpack

from agent_worker.errors import ProtocolError

__all__ = [
    "MAX_DEPTH",
    "check_depth",
    "check_finite",
    "loads_json",
    "loads_msgpack",
    "may_nest_json",
    "may_nest_msgpack",
    "read_body",
    "too_large",
]

#: Containers nested deeper than this are refused (AIT payloads nest < 10 deep).
MAX_DEPTH = 64


def check_depth(obj: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raise ``ProtocolError(40000)`` if ``obj`` nests lists/dicts deeper than ``max_depth``.

    Iterative, one nesting level at a time (so it cannot itself hit the recursion limit); it runs
    on every inbound realtime frame, hence a tuple for ``isinstance`` (a ``X | Y`` union is slower)
    and a comprehension per container rather than a stack entry per child."""
    containers = (dict, list, tuple)
    level = [obj]
    depth = 0
    while level:
        depth += 1
        deeper: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                children: Any = item.values()
            elif isinstance(item, (list, tuple)):
                children = item
            else:
                continue
            if depth > max_depth:
                msg = f"payload nests deeper than {max_depth} levels"
                raise ProtocolError(msg, code=40000, status_code=400)
            deeper += [c for c in children if isinstance(c, containers)]
        level = deeper


# What a decoded value's nesting can be bounded by without walking it. Every container (and, in
# msgpack, every ext value: ``ExtType`` is a tuple) opens with a byte of its own in the encoded
# input, so a value nests at most as many levels as the input holds such bytes: a frame with at
# most MAX_DEPTH of them cannot be too deep, and most frames have far fewer (an AIT append has ~6).
# The counts include bytes inside strings and numbers, so they only overestimate: a frame over the
# bound is walked, never refused for it. JSON: ``[`` and ``{`` (bytes input may be UTF-16/32, whose
# code units for them still hold the byte). msgpack: fixmap/fixarray 0x80-0x9f, array/map 16/32
# 0xdc-0xdf, ext 0xc7-0xc9 and fixext 0xd4-0xd8.
_MSGPACK_OPENERS = frozenset((*range(0x80, 0xA0), 0xC7, 0xC8, 0xC9, *range(0xD4, 0xD9), *range(0xDC, 0xE0)))
_MSGPACK_OTHERS = bytes(b for b in range(256) if b not in _MSGPACK_OPENERS)


def may_nest_json(raw: str | bytes, max_depth: int = MAX_DEPTH) -> bool:
    """False when JSON text ``raw`` cannot decode to a value nested deeper than ``max_depth``."""
    if len(raw) <= max_depth:
        return False
    if isinstance(raw, str):
        return raw.count("[") + raw.count("{") > max_depth
    return raw.count(b"[") + raw.count(b"{") > max_depth


def may_nest_msgpack(raw: bytes, max_depth: int = MAX_DEPTH) -> bool:
    """False when msgpack ``raw`` cannot decode to a value nested deeper than ``max_depth``."""
    return len(raw) > max_depth and len(raw.translate(None, _MSGPACK_OTHERS)) > max_depth


def _too_deep(what: str) -> ProtocolError:
    return ProtocolError(f"{what} nests deeper than {MAX_DEPTH} levels", code=40000, status_code=400)


class _NotJson(ValueError):
    """A value JSON cannot carry: ``NaN``, ``Infinity``, ``-Infinity`` (Python's ``json`` reads them)."""


def _refuse_constant(name: str) -> Any:
    msg = f"{name} is not a JSON number"
    raise _NotJson(msg)


# NaN / Infinity are refused: Python reads them, but a message carrying one was re-encoded as
# ``NaN`` to every JSON subscriber and in every history page, which JSON.parse (ably-js, browsers)
# cannot read — one publish broke the channel's history for them all. One decoder, made once (it
# is also ~0.7 µs faster per frame than ``json.loads``, which checks its arguments every call).
_JSON = json.JSONDecoder(parse_constant=_refuse_constant)


def loads_json(raw: str | bytes, what: str = "JSON", *, code: int = 40013) -> Any:
    """``json.loads`` with the depth cap, refusing ``NaN`` / ``Infinity``; undecodable input is
    ``ProtocolError(code)``."""
    try:
        text = raw if isinstance(raw, str) else raw.decode(json.detect_encoding(raw), "surrogatepass")
        obj = _JSON.decode(text)
    except RecursionError:
        raise _too_deep(what) from None
    except _NotJson as exc:
        msg = f"unable to decode {what}: {exc}"
        raise ProtocolError(msg, code=code, status_code=400) from None
    except json.JSONDecodeError as exc:  # where, not the input (it is the client's text)
        msg = f"unable to decode {what}: {exc.msg} at character {exc.pos}"
        raise ProtocolError(msg, code=code, status_code=400) from None
    except UnicodeDecodeError:
        msg = f"unable to decode {what}: not UTF-8 text"
        raise ProtocolError(msg, code=code, status_code=400) from None
    except (ValueError, TypeError) as exc:  # e.g. an integer of more than 4300 digits
        msg = f"unable to decode {what}: {type(exc).__name__}"
        raise ProtocolError(msg, code=code, status_code=400) from None
    if may_nest_json(raw):
        check_depth(obj)
    return obj


def check_finite(obj: Any) -> None:
    """``ProtocolError(40013)`` if ``obj`` holds a NaN or infinite float (iterative, like
    :func:`check_depth`; call it after that, on a value whose depth is bounded)."""
    level = [obj]
    while level:
        deeper: list[Any] = []
        for item in level:
            if isinstance(item, float):
                if not math.isfinite(item):
                    msg = f"{item} is not a finite number: JSON subscribers could not read it"
                    raise ProtocolError(msg, code=40013, status_code=400)
            elif isinstance(item, dict):
                deeper += item.values()
            elif isinstance(item, (list, tuple)):
                deeper += item
        level = deeper


def loads_msgpack(raw: bytes, what: str = "msgpack", *, code: int = 40013) -> Any:
    """``msgpack.unpackb`` with the depth cap, refusing NaN / infinite floats (see ``loads_json``);
    undecodable input is ``ProtocolError(code)``."""
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except (msgpack.StackError, RecursionError):
        raise _too_deep(what) from None
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, TypeError) as exc:
        msg = f"unable to decode {what}: {type(exc).__name__}"
        raise ProtocolError(msg, code=code, status_code=400) from None
    if may_nest_msgpack(raw):
        check_depth(obj)
    # A float is a 0xca / 0xcb byte and its bytes: without either byte (most frames: AIT carries
    # strings) there is none to check. The bytes also occur inside strings and binary: then the
    # value is walked, never refused for it.
    if b"\xcb" in raw or b"\xca" in raw:
        try:
            check_finite(obj)
        except ProtocolError as exc:
            msg = f"unable to decode {what}: {exc.message}"
            raise ProtocolError(msg, code=code, status_code=400) from None
    return obj


def too_large(limit: int) -> ProtocolError:
    return ProtocolError(f"request body larger than {limit} bytes", code=40009, status_code=413)


async def read_body(request: Any, limit: int, timeout_s: float | None = None) -> bytes:
    """An aiohttp request body of at most ``limit`` bytes, refused (40009/413) before it is read
    when ``Content-Length`` says it is larger, and after ``limit + 1`` bytes when chunked; one not
    whole within ``timeout_s`` is refused with 40800/408 (a sender stalling mid-body would
    otherwise hold the connection and its handler for as long as it likes)."""
    length = request.content_length
    if length is not None and length > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    total = 0
    try:
        async with asyncio.timeout(timeout_s):
            # ``read(n)`` returns what is buffered (up to n): loop until EOF or one byte past the cap.
            while total <= limit:
                chunk: bytes = await request.content.read(limit + 1 - total)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
    except (ConnectionError, ValueError):
        msg = "could not read the request body"
        raise ProtocolError(msg, code=40000, status_code=400) from None
    except TimeoutError:
        msg = f"the request body did not arrive within {timeout_s:g}s"
        raise ProtocolError(msg, code=40800, status_code=408) from None
    if total > limit:
        raise too_large(limit)
    return b"".join(chunks)
