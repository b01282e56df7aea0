"""History pages assembled from per-message encodings (MessageRecord.history_item + codec.join_items)
are byte for byte the pages encoded afresh, for JSON and msgpack readers, and follow every change."""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp
import msgpack
import pytest
from yarl import URL

from agent_worker.server import EmbeddedServer, codec
from agent_worker.server.log import APPEND, DELETE, UPDATE, ChannelLog, MessageRecord
from agent_worker.server.testing import python_rest

FORMATS = [codec.JSON, codec.MSGPACK]
EXTRAS = {"ai": {"transport": {"run-id": "r1", "stream": "true"}, "codec": {"k": [1, None]}}}


def _fresh(records: list[MessageRecord], fmt: codec.Format) -> bytes:
    """A page as the REST handler encoded it before pages were assembled from cached items."""
    return codec.encode_body([codec.outbound_payload(r.render_latest(), fmt) for r in records], fmt)


def _assembled(records: list[MessageRecord], fmt: codec.Format) -> bytes:
    return codec.join_items([r.history_item(fmt) for r in records], fmt)


def _page(log: ChannelLog) -> list[MessageRecord]:
    return log.history(backwards=True, limit=1000)[0]


def _log() -> tuple[ChannelLog, list[str]]:
    log = ChannelLog("c")
    now = 1_800_000_000_000
    created = log.publish(
        [
            {"name": "text", "data": "hello", "clientId": "u1"},
            {"name": "bin", "data": b"\x00\x01\xff", "encoding": "utf-8"},
            {"name": "obj", "data": {"a": None, "b": [1, 2]}, "extras": EXTRAS, "id": "msg-1"},
            {"name": "stream", "data": "", "extras": EXTRAS},
            {"name": "gone", "data": "x"},
            {"data": None},
        ],
        connection_id="conn1",
        client_id="u1",
        now_ms=now,
    )
    return log, [s for s in created.serials if s is not None]


@pytest.mark.parametrize("fmt", FORMATS)
def test_assembled_page_is_the_fresh_page(fmt: codec.Format) -> None:
    log, _ = _log()
    page = _page(log)
    assert _assembled(page, fmt) == _fresh(page, fmt)
    decoded = (
        msgpack.unpackb(_assembled(page, fmt)) if fmt == codec.MSGPACK else json.loads(_assembled(page, fmt))
    )
    assert [m.get("name") for m in decoded] == [None, "gone", "stream", "obj", "bin", "text"]
    binary = next(m for m in decoded if m.get("name") == "bin")
    if fmt == codec.JSON:  # binary data is base64 for a JSON reader, raw for msgpack
        assert (binary["data"], binary["encoding"]) == (
            base64.b64encode(b"\x00\x01\xff").decode(),
            "utf-8/base64",
        )
    else:
        assert (binary["data"], binary["encoding"]) == (b"\x00\x01\xff", "utf-8")


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_new_version_is_encoded_again(fmt: codec.Format) -> None:
    log, serials = _log()
    stream, gone, text = serials[3], serials[4], serials[0]
    before = _assembled(_page(log), fmt)
    now = 1_800_000_001_000
    steps: list[dict[str, Any]] = [
        {"action": APPEND, "serial": stream, "data": "tok1"},
        {
            "action": APPEND,
            "serial": stream,
            "data": "tok2",
            "extras": {"ai": {"transport": {"status": "done"}}},
        },
        {"action": UPDATE, "serial": text, "data": "hello, edited", "version": {"description": "fix"}},
        {"action": DELETE, "serial": gone},
    ]
    pages = [before]
    for i, step in enumerate(steps):
        log.publish([step], connection_id="conn2", client_id="u2", now_ms=now + i)
        page = _page(log)
        assembled = _assembled(page, fmt)
        assert assembled == _fresh(page, fmt)
        assert assembled not in pages  # each change shows in the next read
        pages.append(assembled)
    decoded = msgpack.unpackb(pages[-1]) if fmt == codec.MSGPACK else json.loads(pages[-1])
    by_name = {m.get("name"): m for m in decoded}
    assert by_name["stream"]["data"] == "tok1tok2"
    assert by_name["stream"]["extras"] == {"ai": {"transport": {"status": "done"}}}
    assert by_name["text"]["data"] == "hello, edited"
    assert by_name["text"]["version"]["description"] == "fix"
    assert by_name["gone"]["action"] == DELETE


@pytest.mark.parametrize("n", [0, 1, 15, 16, 65535, 65536])
def test_join_items_is_encode_body_of_the_list(n: int) -> None:
    items = [{"i": i, "s": "x" * (i % 3)} for i in range(n)]
    for fmt in FORMATS:
        joined = codec.join_items([codec.encode_body(item, fmt) for item in items], fmt)
        assert joined == codec.encode_body(items, fmt)


@pytest.mark.parametrize("accept", ["application/json", "application/x-msgpack"])
async def test_rest_history_pages_match_fresh_encoding(ably_server: EmbeddedServer, accept: str) -> None:
    """Over HTTP, for both formats, every page of a paged history read (one message streamed with
    appends, published creates) is the fresh encoding of that page's records."""
    rest = python_rest(ably_server, client_id="seed")
    try:
        ch = rest.channels.get("enc")
        for i in range(25):
            await ch.publish("n", f"m{i}")
    finally:
        await rest.close()
    log = ably_server.hub.channel("enc").log
    first = log.order[0]
    log.publish(
        [{"action": APPEND, "serial": first, "data": "+more"}],
        connection_id=None,
        client_id="seed",
        now_ms=log._last_ms + 1,
    )
    fmt = codec.format_from_accept(accept)
    auth = base64.b64encode(ably_server.default_key.encode()).decode()
    url: str | None = f"http://127.0.0.1:{ably_server.port}/channels/enc/messages?limit=10"
    seen: list[Any] = []
    async with aiohttp.ClientSession() as http:
        while url is not None:
            async with http.get(url, headers={"Authorization": f"Basic {auth}", "Accept": accept}) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == accept
                body = await resp.read()
                links = resp.links
            items = msgpack.unpackb(body) if fmt == codec.MSGPACK else json.loads(body)
            records = [log.records[m["serial"]] for m in items]
            assert body == _fresh(records, fmt)
            seen += items
            nxt = links.get("next")
            url = str(resp.url.join(URL(str(nxt["url"])))) if nxt is not None else None
    assert [m["data"] for m in seen] == [f"m{i}" for i in range(24, 0, -1)] + ["m0+more"]
