"""REST history paging of the transport: a small first page, then pages of up to 1,000 (each read
while the caller folds the previous one); items read as the SDK reads them."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
from ably.types.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_worker.protocol.wire import InboundMessage
from agent_worker.server import EmbeddedServer
from agent_worker.server.testing import python_rest
from agent_worker.transport.ably import AblyTransport
from agent_worker.transport.history import HistoryPage
from agent_worker.transport.inbound import history_item, history_messages, to_inbound
from tests.runtime.runtime_support import worker_settings


async def test_later_history_pages_are_large(ably_server: EmbeddedServer) -> None:
    """After a first page of ``page_size``, the transport asks for ``later_page_size`` per page:
    250 messages come back as 10 + 200 + 40, newest first, each exactly once."""
    rest = python_rest(ably_server, client_id="writer")
    try:
        channel = rest.channels.get("conversations:long")
        for start in range(0, 250, 50):
            await channel.publish(messages=[Message(name="m", data=str(i)) for i in range(start, start + 50)])
    finally:
        await rest.close()
    transport = AblyTransport(worker_settings(ably_server))
    await transport.connect()
    try:
        ch = await transport.open_channel("conversations:long")
        pages = [p async for p in ch.history_pages(page_size=10, later_page_size=200)]
        assert [len(p) for p in pages] == [10, 200, 40]
        assert [m.data for p in pages for m in p] == [str(i) for i in reversed(range(250))]
    finally:
        await transport.close()


async def test_reading_ahead_stops_with_the_reader(ably_server: EmbeddedServer) -> None:
    """Past the first page the next one is read while the caller folds; a caller that stops early
    leaves no read-ahead behind once it closes the pages (and the pages it read are exact)."""
    rest = python_rest(ably_server, client_id="writer")
    try:
        channel = rest.channels.get("conversations:ahead")
        await channel.publish(messages=[Message(name="m", data=str(i)) for i in range(60)])
    finally:
        await rest.close()
    transport = AblyTransport(worker_settings(ably_server))
    await transport.connect()
    try:
        ch = await transport.open_channel("conversations:ahead")
        pages = ch.history_pages(page_size=5, later_page_size=10)
        first, second = await anext(pages), await anext(pages)
        assert [m.data for m in first + second] == [str(i) for i in reversed(range(45, 60))]
        ahead = [t for t in asyncio.all_tasks() if "_with_retries" in repr(t.get_coro())]
        assert len(ahead) == 1  # the third page, requested before the second is folded
        await pages.aclose()
        await asyncio.sleep(0)
        assert ahead[0].cancelled() or ahead[0].done()
        assert not [t for t in asyncio.all_tasks() if "_with_retries" in repr(t.get_coro())]
    finally:
        await transport.close()


async def test_the_next_page_is_requested_before_this_one_is_decoded(ably_server: EmbeddedServer) -> None:
    """Past the first page, the next page's GET is on its way before the current body is decoded
    (the server prepares it while the worker decodes and folds); at most one page is read ahead."""
    rest = python_rest(ably_server, client_id="writer")
    try:
        channel = rest.channels.get("conversations:overlap")
        await channel.publish(messages=[Message(name="m", data=str(i)) for i in range(40)])
    finally:
        await rest.close()
    transport = AblyTransport(worker_settings(ably_server))
    await transport.connect()
    events: list[str] = []
    reader = transport.history_reader
    page = reader.page

    class Logged(HistoryPage):
        __slots__ = ("index",)
        index: int

        def messages(self, read: Any) -> list[InboundMessage]:
            events.append(f"decode {self.index}")
            return super().messages(read)

    async def logged_page(path_qs: str) -> HistoryPage:
        index = sum(e.startswith("sent") for e in events)
        events.append(f"sent {index}")
        got = await page(path_qs)
        logged = Logged(got.items, got.next)
        logged.index = index
        events.append(f"got {index}")
        return logged

    reader.page = logged_page  # type: ignore[method-assign]
    try:
        ch = await transport.open_channel("conversations:overlap")
        pages = [p async for p in ch.history_pages(page_size=5, later_page_size=10)]
        assert [len(p) for p in pages] == [5, 10, 10, 10, 5]
        assert [m.data for p in pages for m in p] == [str(i) for i in reversed(range(40))]
        # Page 0 then page 1 on demand; from page 1 on, page n+1 is sent before page n is decoded,
        # and never before page n arrived (one read ahead at most).
        for n in range(1, 4):
            assert events.index(f"got {n}") < events.index(f"sent {n + 1}") < events.index(f"decode {n}")
        assert events.index("decode 0") < events.index("sent 1")
    finally:
        await transport.close()


def _sdk_read(raw: dict[str, Any]) -> InboundMessage:
    return to_inbound(Message.from_encoded(dict(raw)))


ITEMS: list[dict[str, Any]] = [
    {
        "id": "a:0:0",
        "name": "ai-output",
        "data": "tok",
        "serial": "s1",
        "action": 5,
        "clientId": "c",
        "connectionId": "a",
        "timestamp": 7,
        "extras": {"ai": {"transport": {"run-id": "r"}}},
        "version": {"serial": "v2", "timestamp": 8},
    },
    {"name": "m", "data": {"k": [1, None]}, "serial": "s2", "action": 0},
    {"name": "m", "data": '{"k": 1}', "encoding": "json", "serial": "s3"},
    {"name": "m", "data": "aGk=", "encoding": "base64", "serial": "s4"},
    {"name": "m", "data": b"\x00\x01", "serial": "s5"},
    {"name": "m", "data": "x", "serial": "s6", "action": 9, "extras": ["not", "a", "map"]},
    {"name": "m", "data": "x", "serial": "s7", "action": "5", "version": {"timestamp": 3}},
    {"name": "m", "serial": "s8", "annotations": {"summary": {}}},
]


@pytest.mark.parametrize("raw", ITEMS)
def test_history_items_read_as_the_sdk_reads_them(raw: dict[str, Any]) -> None:
    """Items with nothing to decode skip the SDK's Message; every item still reads exactly as
    ``to_inbound(Message.from_encoded(item))`` does (data, action, version serial, extras)."""
    ours, sdk = history_item(raw), _sdk_read(raw)
    assert ours == sdk
    assert type(ours.data) is type(sdk.data)
    assert ours.transport_headers == sdk.transport_headers


PLAIN = ITEMS[0]
NEEDS_MORE = [
    ITEMS[2],
    ITEMS[3],
    ITEMS[4],
    ITEMS[7],
    {"name": "m", "serial": "s9", "version": ["not", "a", "map"]},
]


def _page(items: list[Any]) -> HistoryPage:
    return HistoryPage(None, None, body=msgpack.packb(items), content_type="application/x-msgpack")


@pytest.mark.parametrize("raw", [*ITEMS, {"serial": "s10"}, {"name": 3, "timestamp": "t", "extras": None}])
def test_msgpack_pages_read_straight_into_messages_as_item_by_item(raw: dict[str, Any]) -> None:
    """A msgpack page decoded straight into messages (every item plain) or, when an item needs
    the SDK's decoding, item by item: either way exactly what :func:`history_item` makes of each."""
    items = [PLAIN, raw, {**PLAIN, "serial": "s0", "data": "other"}]
    expected = [history_item(r) for r in items]
    got = _page(items).messages(history_item)
    assert got == expected
    assert [type(m.data) for m in got] == [type(m.data) for m in expected]
    assert [m.transport_headers for m in got] == [m.transport_headers for m in expected]
    fast = history_messages(msgpack.packb(items))
    assert (fast is None) == (raw in NEEDS_MORE)


def test_msgpack_page_items_stay_maps() -> None:
    """``items`` of an undecoded page are the maps the SDK's ``request()`` would give, and a body
    that is one map (not an array) reads as a page of that one item."""
    page = _page([PLAIN, ITEMS[1]])
    assert page.items == [PLAIN, ITEMS[1]]
    one = HistoryPage(None, None, body=msgpack.packb(ITEMS[1]), content_type="application/x-msgpack")
    assert one.messages(history_item) == [history_item(ITEMS[1])]
    assert history_messages(msgpack.packb(ITEMS[1])) is None
    assert _page([PLAIN, "not a map"]).messages(history_item) == [history_item(PLAIN)]


_scalars = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
_items = st.fixed_dictionaries(
    {},
    optional={
        "id": _scalars,
        "name": _scalars,
        "data": _values,
        "serial": _scalars,
        "action": _scalars,
        "clientId": _scalars,
        "connectionId": _scalars,
        "timestamp": _scalars,
        "extras": st.none()
        | st.fixed_dictionaries(
            {},
            optional={
                # Both header sections, or either of any shape (read as no headers unless a map).
                "ai": st.fixed_dictionaries(
                    {},
                    optional={
                        "transport": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)
                        | _values,
                        "codec": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)
                        | _values,
                    },
                )
                | _values,
                "other": _values,
            },
        )
        | _values,
        "version": st.none()
        | st.fixed_dictionaries({}, optional={"serial": _scalars, "timestamp": _scalars}),
        "other": _values,
    },
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_items, max_size=5))
def test_msgpack_pages_read_like_item_by_item_for_any_plain_items(items: list[dict[str, Any]]) -> None:
    """Any page of plain items (no ``encoding``, no binary data, no annotations; fields of any
    shape, unknown fields too) reads exactly as item by item."""
    expected = [history_item(r) for r in items]
    got = _page(items).messages(history_item)
    assert got == expected
    assert [(type(m.data), m.transport_headers, m.codec_headers) for m in got] == [
        (type(m.data), m.transport_headers, m.codec_headers) for m in expected
    ]
