"""DNS rebinding: bound to loopback, the embedded server answers REST and realtime only for a ``Host``
that is a loopback name, an IP address or one of ``allowed_hosts``; others get 421 / 42100 (the
upgrade to a WebSocket included), logged once per Host value. The official SDKs name the endpoint
they were given (``127.0.0.1:PORT`` / ``localhost:PORT``), so they are unaffected."""

from __future__ import annotations

import aiohttp
import structlog

from agent_worker.server import EmbeddedServer, ServerConfig
from agent_worker.server.config import DEFAULT_DEV_KEY, server_settings
from agent_worker.server.testing import python_rest


async def _get(server: EmbeddedServer, path: str, host: str, **headers: str) -> tuple[int, object]:
    auth = aiohttp.BasicAuth(*DEFAULT_DEV_KEY.split(":", 1))
    url = f"http://127.0.0.1:{server.port}{path}"
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"Host": host, **headers}, auth=auth) as resp,
    ):
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body


async def test_rest_and_realtime_refuse_a_rebinding_host() -> None:
    async with EmbeddedServer(ServerConfig(port=0)) as server:
        evil = f"evil.example:{server.port}"
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                status, body = await _get(server, "/channels/x/messages", evil)
                assert status == 421
                assert isinstance(body, dict) and body["error"]["code"] == 42100
                assert "--allowed-host" in body["error"]["message"]
            upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}
            status, _ = await _get(server, "/?key=" + DEFAULT_DEV_KEY, evil, **upgrade)
            assert status == 421
        assert [e["event"] for e in logs].count("http_host_refused") == 1, "once per Host value"
        for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "10.1.2.3"):
            assert (await _get(server, "/channels/x/messages", host))[0] == 200, host
        # ably-python's REST client against the same server: unaffected.
        rest = python_rest(server)
        try:
            await rest.channels.get("x").publish("n", "hello")
            assert [m.data for m in (await rest.channels.get("x").history()).items] == ["hello"]
        finally:
            await rest.close()


async def test_allowed_hosts_from_the_config() -> None:
    settings = server_settings({"allowed_hosts": ["ably.test", "*.dev.test"]})
    assert settings == {"allowed_hosts": ("ably.test", "*.dev.test")}
    async with EmbeddedServer(ServerConfig(port=0, **settings)) as server:
        assert (await _get(server, "/time", "ably.test"))[0] == 200
        assert (await _get(server, "/time", "a.dev.test:80"))[0] == 200
        assert (await _get(server, "/time", "other.test"))[0] == 421
