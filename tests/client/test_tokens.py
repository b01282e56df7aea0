"""`agent-worker token`, the shared JWT minting, and the dev token endpoint handler."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from typer.testing import CliRunner

from agent_worker.cli import app
from agent_worker.client.tokens import ApiKey, decode_token, make_token_handler, mint_token, parse_ttl
from agent_worker.errors import ConfigError, TransportError
from agent_worker.server import DEFAULT_DEV_KEY, EmbeddedServer
from tests.client.client_support import DeviceFactory
from tests.node_support import JS_ROOT, node_config, run_node_async


class TestMint:
    def test_token_command_prints_a_decodable_jwt(self) -> None:
        """The command signs with the given key: kid = key name, capability as a JSON string, clientId."""
        key = "app1.key1:s3cret-value"
        capability = '{"conversations:alice":["publish","subscribe","history"]}'
        before = int(time.time())
        result = CliRunner().invoke(
            app, ["token", "--client-id", "alice", "--capability", capability, "--ttl", "30m", "--key", key]
        )
        assert result.exit_code == 0, result.output
        token = result.output.strip()
        header = jwt.get_unverified_header(token)
        assert header == {"alg": "HS256", "kid": "app1.key1", "typ": "JWT"}
        claims = decode_token(token, key)  # verifies the HS256 signature with the secret
        assert claims["x-ably-clientId"] == "alice"
        assert json.loads(claims["x-ably-capability"]) == json.loads(capability)
        assert isinstance(claims["x-ably-capability"], str)
        assert claims["exp"] - claims["iat"] == 1800
        assert claims["iat"] >= before
        assert "s3cret" not in result.output

    def test_defaults_and_errors(self) -> None:
        """Without flags: the local dev key, one hour, an anonymous token; bad input is refused."""
        result = CliRunner().invoke(app, ["token"])
        assert result.exit_code == 0, result.output
        claims = decode_token(result.output.strip(), DEFAULT_DEV_KEY)
        assert "x-ably-clientId" not in claims
        assert claims["exp"] - claims["iat"] == 3600
        bad = CliRunner().invoke(app, ["token", "--capability", "[1,2]"])
        assert bad.exit_code != 0
        assert CliRunner().invoke(app, ["token", "--ttl", "3 weeks"]).exit_code != 0
        with pytest.raises(ConfigError):
            ApiKey.parse("no-colon")
        assert parse_ttl("90s") == 90 and parse_ttl("2h") == 7200 and parse_ttl(60) == 60
        assert "hunter2" not in repr(ApiKey.parse("a.b:hunter2"))


class TestConnect:
    async def test_minted_token_connects_and_identifies(
        self, ably_server: EmbeddedServer, device: DeviceFactory
    ) -> None:
        """A JWT from `agent-worker token` connects a chat device; its clientId comes from the claim."""
        token = mint_token(ably_server.default_key, client_id="carol", ttl_s=600)
        carol = await device("conversations:tokens", None, key=None, token=token)
        assert carol.client_id == "carol"
        sent = await carol.send_text("hi from a token")
        assert sent.headers["run-client-id"] == "carol"
        assert "carol" in await carol.who()

    async def test_scoped_token_is_refused_on_other_channels(
        self, ably_server: EmbeddedServer, device: DeviceFactory
    ) -> None:
        """A token scoped to one session works there and is refused on another session."""
        capability = {"conversations:alice:*": ["publish", "subscribe", "history", "presence"]}
        token = mint_token(ably_server.default_key, client_id="alice", capability=capability)
        mine = await device("conversations:alice:1", None, key=None, token=token)
        await mine.send_text("allowed")
        with pytest.raises(TransportError) as refused:
            await device("conversations:bob-1", None, key=None, token=token)
        assert refused.value.code == 40160


class TestDevEndpoint:
    async def test_handler_serves_jwts_for_auth_url(self, ably_server: EmbeddedServer) -> None:
        """GET ?clientId= answers a bare JWT (application/jwt) with the server-chosen capability."""
        capability = {"conversations:*": ["publish", "subscribe", "history"]}
        web_app = web.Application()
        web_app.router.add_get("/api/auth/token", make_token_handler(ably_server.default_key, capability))
        async with TestClient(TestServer(web_app, host="127.0.0.1")) as client:
            resp = await client.get("/api/auth/token", params={"clientId": "dave", "ttl": "10m"})
            assert resp.status == 200
            assert resp.content_type == "application/jwt"
            token = await resp.text()
            claims = decode_token(token, ably_server.default_key)
            assert claims["x-ably-clientId"] == "dave"
            assert json.loads(claims["x-ably-capability"]) == capability
            assert claims["exp"] - claims["iat"] == 600
            bad = await client.get("/api/auth/token", params={"ttl": "forever"})
            assert bad.status == 400
            anonymous = decode_token(await (await client.get("/api/auth/token")).text())
            assert "x-ably-clientId" not in anonymous

    async def test_refused_publish_removes_the_optimistic_message(
        self, ably_server: EmbeddedServer, device: DeviceFactory
    ) -> None:
        """Without publish capability the send fails and the message does not linger on screen."""
        capability = {"conversations:read-only": ["subscribe", "history", "presence"]}
        token = mint_token(ably_server.default_key, client_id="eve", capability=capability)
        eve = await device("conversations:read-only", None, key=None, token=token)
        with pytest.raises(TransportError) as refused:
            await eve.send_text("let me in")
        assert refused.value.code == 40160
        assert eve.visible_messages() == []
        assert eve.pending_own() == []


@pytest.mark.node
async def test_ably_js_uses_the_dev_endpoint_as_auth_url(ably_server: EmbeddedServer) -> None:
    """ably-js (as a browser would) gets its JWT from the handler via `authUrl`; the capability holds."""
    capability = {"conversations:*": ["publish", "subscribe", "history", "presence"]}
    web_app = web.Application()
    web_app.router.add_get("/api/auth/token", make_token_handler(ably_server.default_key, capability))
    async with TestServer(web_app, host="127.0.0.1") as http:
        env = node_config(
            host="127.0.0.1",
            port=ably_server.port,
            authUrl=str(http.make_url("/api/auth/token")),
            clientId="frank",
            channel="conversations:browser",
        )
        result = await run_node_async(JS_ROOT / "client" / "auth_url.mjs", env=env, timeout=60)
    assert result["clientId"] == "frank"
    assert result["refused"] is not None and result["refused"]["code"] == 40160
