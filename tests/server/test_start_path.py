"""What a conversation's start costs the embedded server, made cheaper without changing the wire
(docs/benchmarks.md, "Embedded server CPU per start, tenth round"): the ATTACHED frame encoded
without the ``None`` walk, history pages' Link headers, the Bearer header's decoding remembered,
``latest_action`` as a loop, and new messages' history encodes deferred off the publish path."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import random
from typing import Any
from urllib.parse import quote_plus, urlencode

import msgpack
import pytest

from agent_worker.errors import AuthError
from agent_worker.server import EmbeddedServer, ServerConfig
from agent_worker.server import constants as C
from agent_worker.server import hub as hub_module
from agent_worker.server.auth import ApiKey, KeyRing
from agent_worker.server.codec import JSON, MSGPACK, Format, encode_frame, encode_item
from agent_worker.server.config import DEFAULT_DEV_KEY
from agent_worker.server.connection import RealtimeConnection
from agent_worker.server.log import APPEND, CREATE, DELETE, UPDATE, ChannelLog, MessageRecord, Version
from agent_worker.server.rest import RestApi, _quote_plus, _urlencode
from agent_worker.server.store import MemoryStore
from agent_worker.server.testing import python_rest


class _Capture:
    closing = False

    def __init__(self) -> None:
        self.frames: list[str | bytes] = []

    def enqueue(self, data: str | bytes) -> None:
        self.frames.append(data)

    def abort(self) -> None:
        return None

    def close_soon(self) -> None:
        return None


def _connection(server: EmbeddedServer, fmt: Format) -> tuple[RealtimeConnection, _Capture]:
    gateway = server._gateway
    assert gateway is not None
    principal = gateway.authenticate({"key": server.default_key, "clientId": "c1"})
    conn = RealtimeConnection(gateway, principal, "c1", fmt, True)
    capture = _Capture()
    conn.transport = capture  # type: ignore[assignment]
    gateway.connections[conn.id] = conn
    return conn, capture


# -- ATTACHED ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [JSON, MSGPACK])
@pytest.mark.parametrize(
    "params",
    [
        None,
        {},
        {"agent": "x/1"},
        {"rewind": "1", "agent": "x/1"},
        {"modes": "subscribe,publish", "delta": "vcdiff"},
    ],
)
async def test_attached_is_the_frame_the_walk_encoded(fmt: Format, params: dict[str, str] | None) -> None:
    async with EmbeddedServer(ServerConfig(host="127.0.0.1", port=0)) as server:
        conn, capture = _connection(server, fmt)
        frame: dict[str, Any] = {"action": C.ATTACH, "channel": "room:1"}
        if params is not None:
            frame["params"] = params
        conn.handle(frame)
        assert len(capture.frames) == 1
        head = server.hub.channels["room:1"].log.head
        echoed = {k: v for k, v in (params or {}).items() if k in ("rewind", "delta", "modes")}
        modes = C.MODE_SUBSCRIBE | C.MODE_PUBLISH if params and "modes" in params else C.DEFAULT_MODES
        expected = encode_frame(
            {
                "action": C.ATTACHED,
                "channel": "room:1",
                "flags": modes,
                "channelSerial": head,
                "params": echoed or None,
                "error": None,
            },
            fmt,
        )
        assert capture.frames[0] == expected


@pytest.mark.parametrize("fmt", [JSON, MSGPACK])
async def test_attached_with_an_error_still_carries_it(fmt: Format) -> None:
    async with EmbeddedServer(ServerConfig(host="127.0.0.1", port=0)) as server:
        conn, capture = _connection(server, fmt)
        # A channelSerial that cannot be resumed: attached at the current position, with 90005.
        conn.handle({"action": C.ATTACH, "channel": "room:2", "channelSerial": "00000000000001-000@nope"})
        raw = capture.frames[0]
        decoded = msgpack.unpackb(raw) if fmt == MSGPACK else json.loads(raw)
        assert decoded["action"] == C.ATTACHED
        assert decoded["error"]["code"] == 90005
        assert "params" not in decoded


# -- Link headers --------------------------------------------------------------------------------


def _old_links(base: str, params: dict[str, str], cursor: str | None) -> dict[str, str]:
    """RestApi._links before this round: three ``urlencode`` calls."""
    plain = {k: v for k, v in params.items() if k != "cursor"}
    links = [
        f'<./{base}?{urlencode(plain)}>; rel="first"',
        f'<./{base}?{urlencode(params)}>; rel="current"',
    ]
    if cursor is not None:
        links.append(f'<./{base}?{urlencode(dict(plain, cursor=cursor))}>; rel="next"')
    return {"Link": ", ".join(links)}


_CHARS = [chr(c) for c in range(128)] + ["é", "€", "😀", "ß", "\u2028"]


def test_quote_plus_and_urlencode_match_the_standard_library() -> None:
    for c in range(128):
        assert _quote_plus(chr(c)) == quote_plus(chr(c))
    rng = random.Random(11)
    for _ in range(3000):
        text = "".join(rng.choice(_CHARS) for _ in range(rng.randint(0, 12)))
        assert _quote_plus(text) == quote_plus(text)
        params = {"".join(rng.choice(_CHARS) for _ in range(rng.randint(0, 4))): text for _ in range(3)}
        assert _urlencode(params) == urlencode(params)


def test_links_are_the_links_built_with_urlencode() -> None:
    values = ["", "100", "backwards", "01796251346710-000@03d5d72054", "a b&c=d", "é+%"]
    cursors = [None, "", "01796251346710-000@03d5d72054:001", "x y"]
    rng = random.Random(7)
    names = ["limit", "direction", "cursor", "from_serial", "x y", "é"]
    for k in range(len(names) + 1):
        for keys in itertools.permutations(names, k):
            params = {key: rng.choice(values) for key in keys}
            for cursor in cursors:
                assert RestApi._links("messages", params, cursor) == _old_links("messages", params, cursor)


async def test_history_pages_link_to_the_next_page_over_http() -> None:
    async with EmbeddedServer(ServerConfig(host="127.0.0.1", port=0)) as server:
        rest = python_rest(server)
        channel = rest.channels.get("links:1")
        for i in range(3):
            await channel.publish("m", f"v{i}")
        page = await channel.history(limit=2)
        assert [m.data for m in page.items] == ["v2", "v1"]
        assert page.has_next()
        older = await page.next()
        assert [m.data for m in older.items] == ["v0"]
        assert not older.has_next()
        await rest.close()


# -- Bearer tokens -------------------------------------------------------------------------------


async def test_a_remembered_bearer_header_still_meets_the_clock_checks() -> None:
    async with EmbeddedServer(ServerConfig(host="127.0.0.1", port=0)) as server:
        details = server.token_details(client_id="w", ttl_s=60)
        header = base64.b64encode(details["token"].encode()).decode()
        keyring = server.hub.keyring
        now = details["issued"] + 1000
        first = keyring.check_bearer_header(header, now)
        assert keyring._bearer.get(header) == details["token"]
        assert keyring.check_bearer_header(header, now) == first
        with pytest.raises(AuthError) as expired:
            keyring.check_bearer_header(header, details["expires"] + 1)
        assert expired.value.code == 40142
        # A header that does not verify is refused every time and not remembered.
        forged = base64.b64encode((details["token"][:-2] + "xx").encode()).decode()
        for _ in range(2):
            with pytest.raises(AuthError):
                keyring.check_bearer_header(forged, now)
        assert forged not in keyring._bearer


# -- latest_action -------------------------------------------------------------------------------


def _reference_latest_action(actions: tuple[int, ...]) -> int:
    last_full = next((a for a in reversed(actions) if a != APPEND), CREATE)
    if last_full == DELETE:
        return DELETE
    return CREATE if len(actions) == 1 else UPDATE


def test_latest_action_over_every_short_version_history() -> None:
    for n in range(1, 6):
        for tail in itertools.product([UPDATE, DELETE, APPEND], repeat=n - 1):
            actions = (CREATE, *tail)
            versions = [Version(f"s{i}", f"c{i}", a, i, {}) for i, a in enumerate(actions)]
            record = MessageRecord("s0", "c0", None, None, None, 0, versions, {})
            assert record.latest_action == _reference_latest_action(actions), actions


# -- deferred history encodes --------------------------------------------------------------------


def _publish(server: EmbeddedServer, channel: str, items: list[dict[str, Any]]) -> list[MessageRecord]:
    conn, _ = _connection(server, MSGPACK)
    conn._limiter.tokens = 1e9
    serial = conn._top_serial + 1
    conn.handle({"action": C.MESSAGE, "channel": channel, "msgSerial": serial, "messages": items})
    log = server.hub.channels[channel].log
    return [log.records[s] for s in log.order[-len(items) :]]


async def test_a_new_message_is_encoded_for_history_after_the_delay_not_at_publish(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hub_module, "PREENCODE_DELAY_S", 0.05)
    async with EmbeddedServer(ServerConfig(host="127.0.0.1", port=0)) as server:
        plain, stream = _publish(
            server, "defer:1", [{"name": "a", "data": "x"}, {"name": "s", "data": "", "extras": {"k": 1}}]
        )
        assert plain._wire is None and stream._wire is None  # nothing encoded on the publish path
        _publish(server, "defer:1", [{"action": APPEND, "serial": stream.serial, "data": "tok"}])
        await asyncio.sleep(0.2)
        assert plain._wire is not None
        assert plain._wire[MSGPACK] == (1, encode_item(plain.render_latest(), MSGPACK))
        assert stream._wire is None  # appended meanwhile: left to the next read, as appends always were
        assert stream.history_item(MSGPACK) == encode_item(stream.render_latest(), MSGPACK)


async def test_a_read_before_the_delay_encodes_what_it_needs_and_close_drops_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hub_module, "PREENCODE_DELAY_S", 3600.0)
    async with EmbeddedServer(ServerConfig(host="127.0.0.1", port=0)) as server:
        rest = python_rest(server)
        await rest.channels.get("defer:2").publish("m", "hello")
        page = await rest.channels.get("defer:2").history()
        assert [m.data for m in page.items] == ["hello"]
        await rest.close()
        assert server.hub._preencode  # still waiting for its turn
    assert not server.hub._preencode and server.hub._preencode_timer is None


async def test_many_pending_encodes_go_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_module, "PREENCODE_DELAY_S", 0.01)
    async with EmbeddedServer(ServerConfig(host="127.0.0.1", port=0)) as server:
        n = hub_module.PREENCODE_CHUNK * 2 + 5
        records = _publish(server, "defer:3", [{"name": "m", "data": str(i)} for i in range(n)])
        await asyncio.sleep(0.05)
        assert all(r._wire is not None for r in records)
        assert server.hub._preencode_timer is None and not server.hub._preencode


def test_a_hub_without_a_loop_encodes_at_once() -> None:
    log = ChannelLog("c")
    published = log.publish([{"name": "m", "data": "x"}], connection_id=None, client_id=None, now_ms=1)
    record = published.items[0][0]
    config = ServerConfig(host="127.0.0.1", port=0)
    hub = hub_module.Hub(
        config, KeyRing([ApiKey.parse(config.keys[0] if config.keys else DEFAULT_DEV_KEY)]), MemoryStore()
    )
    hub._encode_soon(record)
    assert record._wire is not None and not hub._preencode
