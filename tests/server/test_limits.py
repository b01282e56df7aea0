"""maxMessageSize and the optional Ably rate limits."""

from __future__ import annotations

import aiohttp
import pytest
import structlog
from ably.util.exceptions import AblyException

from agent_worker.server import EmbeddedServer, ServerConfig
from agent_worker.server.testing import python_realtime, python_rest
from tests.server.server_support import ACK, NACK, RawClient


async def test_oversized_messages_are_refused() -> None:
    """Over maxMessageSize: realtime NACK 40009 and REST 400/40009; the connection keeps working."""
    async with EmbeddedServer(ServerConfig(max_message_size=1024)) as server:
        rt = python_realtime(server, client_id="big")
        rest = python_rest(server, client_id="big")
        try:
            ch = rt.channels.get("size")
            with pytest.raises(AblyException) as info:
                await ch.publish("n", "x" * 2000)
            assert info.value.code == 40009
            assert (await ch.publish("n", "small")).serials
            with pytest.raises(AblyException) as rest_info:
                await rest.channels.get("size").publish("n", "y" * 2000)
            assert (rest_info.value.code, rest_info.value.status_code) == (40009, 400)
            assert [m.data for m in (await rest.channels.get("size").history()).items] == ["small"]
        finally:
            await rt.close()
            await rest.close()


async def test_extras_and_name_count_towards_size() -> None:
    """Size is name + data + clientId + extras, as Ably counts it."""
    async with EmbeddedServer(ServerConfig(max_message_size=100)) as server:
        c = await RawClient.connect(server)
        try:
            await c.publish("s", [{"name": "n" * 40, "data": "d" * 40, "extras": {"k": "v" * 40}}])
            assert (await c.expect(NACK))["error"]["code"] == 40009
        finally:
            await c.close()


async def test_per_connection_rate_limit() -> None:
    """With --enforce-rate-limits a burst beyond 50/s on one connection gets NACK 42911."""
    async with EmbeddedServer(ServerConfig(enforce_rate_limits=True)) as server:
        c = await RawClient.connect(server, echo="false")
        try:
            for i in range(80):
                await c.publish(f"rate-{i % 4}", [{"data": str(i)}])  # spread over channels
            outcomes = await c.outcomes(80)
            codes = {f["error"]["code"] for f in outcomes if f["action"] == NACK}  # type: ignore[index]
            assert codes == {42911}
            assert sum(1 for f in outcomes if f["action"] == ACK) >= 50
        finally:
            await c.close()


async def test_a_flooding_connection_is_logged_once_and_others_are_served() -> None:
    """500 publishes past the limit on one connection: NACK 42911 for each, one log line for them
    all (each used to log its own), and another connection publishing meanwhile is ACKed."""
    async with EmbeddedServer(ServerConfig(enforce_rate_limits=True)) as server:
        flood = await RawClient.connect(server, echo="false")
        other = await RawClient.connect(server, echo="false")
        try:
            with structlog.testing.capture_logs() as logs:
                for i in range(500):
                    await flood.publish(f"flood-{i % 4}", [{"data": str(i)}])
                for i in range(5):
                    await other.publish("quiet", [{"data": str(i)}])
                outcomes = await flood.outcomes(500)
                theirs = await other.outcomes(5)
            nacked = [f for f in outcomes if f["action"] == NACK]
            assert len(nacked) > 1
            assert {f["error"]["code"] for f in nacked} == {42911}  # type: ignore[index]
            assert [f["action"] for f in theirs] == [ACK] * 5
            refused = [e for e in logs if e["event"] == "publish_refused"]
            assert [(e["code"], e["connection_id"]) for e in refused] == [(42911, flood.connection_id)]
        finally:
            await flood.close()
            await other.close()


async def test_per_channel_rate_limit() -> None:
    """Two connections each under their own limit, together over 50/s on one channel: 42910."""
    async with EmbeddedServer(ServerConfig(enforce_rate_limits=True)) as server:
        a = await RawClient.connect(server, echo="false")
        b = await RawClient.connect(server, echo="false")
        try:
            for i in range(45):
                await a.publish("hot", [{"data": f"a{i}"}])
                await b.publish("hot", [{"data": f"b{i}"}])
            outcomes = await a.outcomes(45) + await b.outcomes(45)
            codes = {f["error"]["code"] for f in outcomes if f["action"] == NACK}  # type: ignore[index]
            assert codes == {42910}
        finally:
            await a.close()
            await b.close()


async def test_no_rate_limits_by_default(ably_server: EmbeddedServer) -> None:
    """Without the flag the same burst is all ACKed."""
    c = await RawClient.connect(ably_server, echo="false")
    try:
        for i in range(80):
            await c.publish("free", [{"data": str(i)}])
        assert all(f["action"] == ACK for f in await c.outcomes(80))
    finally:
        await c.close()


async def test_oversized_http_body_is_refused(ably_server: EmbeddedServer) -> None:
    """A request body far beyond any message limit is an Ably-style 4xx, never a crash."""
    token = ably_server.mint_token()
    url = f"http://{ably_server.endpoint}/channels/x/messages"
    body = b'{"data":"' + b"z" * (5 << 20) + b'"}'
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
        assert 400 <= resp.status < 500
