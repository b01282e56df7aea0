"""Stepping over a msgpack item by hand (transport/deepitems.py) lands where msgpack's own reader
does, for every msgpack type; a page is read around its too-deep items only within the bound."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from agent_worker.transport.deepitems import MAX_SKIPPED_BYTES, TooDeep, _end_of, items_around_deep

VALUES: list[Any] = [
    None, True, False, 0, 127, -1, -32, 200, -200, 70_000, -70_000, 2**40, -(2**40), 2**63, 1.5, 2.5,
    "", "a" * 31, "b" * 200, "c" * 70_000, b"", b"x" * 300, b"y" * 70_000,
    msgpack.ExtType(1, b"z"), msgpack.ExtType(2, b"zz"), msgpack.ExtType(3, b"z" * 4),
    msgpack.ExtType(4, b"z" * 8), msgpack.ExtType(5, b"z" * 16), msgpack.ExtType(6, b"z" * 3),
    msgpack.ExtType(7, b"z" * 300), msgpack.ExtType(8, b"z" * 70_000),
    list(range(20)), list(range(70_000)), {str(i): i for i in range(20)},
    {str(i): [i, {"k": b"v"}] for i in range(70_000)},
]  # fmt: skip


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_each_type_is_stepped_over_exactly(value: Any) -> None:
    packed = msgpack.packb(value, use_single_float=isinstance(value, float) and value == 1.5)
    assert _end_of(packed + b"\xc0", 0, len(packed) + 1) == len(packed)


def deep(levels: int) -> bytes:
    inner: bytes = msgpack.packb({"s": "x" * 300, "b": b"y", "n": [1.5, -7]})
    return b"\x81\xa4data" + b"\x91" * levels + inner


def test_a_page_is_read_around_its_deep_items_within_the_bound() -> None:
    ok = [{"serial": f"s{i}", "data": VALUES[i]} for i in range(3)]
    body = (
        b"\x95" + msgpack.packb(ok[0]) + deep(2000) + msgpack.packb(ok[1]) + deep(5000) + msgpack.packb(ok[2])
    )
    with pytest.raises(msgpack.StackError):
        msgpack.unpackb(body)
    assert items_around_deep(body) == (ok, 2)
    over = b"\x92" + deep(MAX_SKIPPED_BYTES) + msgpack.packb(ok[0])
    with pytest.raises(TooDeep):
        items_around_deep(over)
