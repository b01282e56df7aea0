"""REST history paging of the transport: a small first page, then pages of up to 1,000 (each read
while the caller folds the previous one); items read as the SDK reads them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ably.types.message import Message

from agent_worker.protocol.wire import InboundMessage
from agent_worker.server import EmbeddedServer
from agent_worker.server.testing import python_rest
from agent_worker.transport.ably import AblyTransport
from agent_worker.transport.inbound import history_item, to_inbound
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


def _sdk_read(raw: dict[str, Any]) -> InboundMessage:
    return to_inbound(Message.from_encoded(dict(raw)))


@pytest.mark.parametrize(
    "raw",
    [
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
    ],
)
def test_history_items_read_as_the_sdk_reads_them(raw: dict[str, Any]) -> None:
    """Items with nothing to decode skip the SDK's Message; every item still reads exactly as
    ``to_inbound(Message.from_encoded(item))`` does (data, action, version serial, extras)."""
    ours, sdk = history_item(raw), _sdk_read(raw)
    assert ours == sdk
    assert type(ours.data) is type(sdk.data)
    assert ours.transport_headers == sdk.transport_headers
