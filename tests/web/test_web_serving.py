"""Serving the web client: the routes, the page's configuration, the on/off defaults, and the CORS the
embedded server answers browsers with (so ably-js on the worker's origin can read history)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from agent_worker.agent import Agent
from agent_worker.config import AblyConfig, Config, HttpConfig, Secret, WorkerConfig
from agent_worker.providers.echo import EchoProvider
from agent_worker.server import EmbeddedServer
from agent_worker.web import WebSettings, static_file, web_defaults, web_settings
from agent_worker.worker.http import serve
from agent_worker.worker.service import Worker
from tests.web.web_support import agent_settings


@pytest.fixture
async def base(ably_server: EmbeddedServer) -> AsyncIterator[str]:
    worker = Worker(transport=agent_settings(ably_server), agent=Agent(EchoProvider()))
    await worker.start()
    web_client = WebSettings(ably_host="127.0.0.1", ably_port=ably_server.port, tls=False)
    runner = await serve(
        worker,
        HttpConfig(port=0, dev_token_endpoint=True),
        port=0,
        token_key=ably_server.default_key,
        web_client=web_client,
    )
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await runner.cleanup()
    await worker.close(drain_timeout_s=5)


async def test_the_page_its_assets_and_its_config_are_served(base: str, ably_server: EmbeddedServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/?clientId=alice") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            page = await resp.read()
            etag = resp.headers["ETag"]
        assert page == static_file("index.html") and b'<div id="root">' in page
        async with http.get(f"{base}/app.js") as resp:  # aiohttp accepts gzip and decodes it
            assert resp.status == 200 and resp.content_type == "text/javascript"
            assert resp.headers["Content-Encoding"] == "gzip"
            assert await resp.read() == static_file("app.js")
        async with http.get(f"{base}/app.js", headers={"Accept-Encoding": "identity"}) as resp:
            assert "Content-Encoding" not in resp.headers
            assert await resp.read() == static_file("app.js")
        async with http.get(f"{base}/app.css") as resp:
            assert resp.content_type == "text/css"
        async with http.get(f"{base}/", headers={"If-None-Match": etag}) as resp:
            assert resp.status == 304
        async with http.get(f"{base}/api/web/config") as resp:
            config = await resp.json()
        assert config == {
            "ably": {"endpoint": "127.0.0.1", "port": ably_server.port, "tls": False},
            "api": "/api/chat",
            "authUrl": "/api/auth/token",
            "defaultSession": "conversations:demo",
            "agentClientId": "agent-worker",
            "cancelPolicy": "owner",
            "admins": [],
        }
        async with http.get(f"{base}/api/auth/token", params={"clientId": "alice"}) as resp:
            assert resp.status == 200 and resp.content_type == "application/jwt"


async def test_without_web_settings_there_is_no_page(ably_server: EmbeddedServer) -> None:
    worker = Worker(transport=agent_settings(ably_server), agent=Agent(EchoProvider()))
    await worker.start()
    runner = await serve(worker, HttpConfig(port=0), port=0)
    host, port = runner.addresses[0][:2]
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://{host}:{port}/") as resp:
            assert resp.status == 404
    finally:
        await runner.cleanup()
        await worker.close(drain_timeout_s=5)


EMBEDDED = "127.0.0.1:8080"


def test_web_and_dev_tokens_default_on_with_the_embedded_server() -> None:
    http, web = web_defaults(Config(), EMBEDDED)
    assert http.dev_token_endpoint is True
    assert web == WebSettings(ably_host="127.0.0.1", ably_port=8080, tls=False)


def test_web_and_dev_tokens_default_off_when_pointed_at_ably() -> None:
    cfg = Config(ably=AblyConfig(endpoint=None, key=Secret("app.key:secret")))
    http, web = web_defaults(cfg, None)
    assert http.dev_token_endpoint is False and web is None


def test_web_can_be_turned_on_against_ably_and_off_with_the_embedded_server() -> None:
    cfg = Config(
        ably=AblyConfig(key=Secret("app.key:secret"), client_id="support-bot"),
        http=HttpConfig(web=True),
        worker=WorkerConfig(admin_client_ids=("ops",)),
    )
    http, web = web_defaults(cfg, None)
    assert web is not None and http.dev_token_endpoint is False
    # Ably itself over TLS; no token endpoint here, so the page says it needs one.
    assert web.to_json()["ably"] == {"endpoint": None, "port": None, "tls": True}
    assert web.auth_url is None and web.agent_client_id == "support-bot" and web.admins == ("ops",)
    off = Config(http=HttpConfig(web=False))
    assert web_defaults(off, EMBEDDED)[1] is None


def test_web_settings_follow_a_configured_local_endpoint() -> None:
    cfg = Config(ably=AblyConfig(endpoint="localhost:9000"), http=HttpConfig(path="/agent"))
    settings = web_settings(cfg, None, token_endpoint=True)
    assert (settings.ably_host, settings.ably_port, settings.tls) == ("localhost", 9000, False)
    assert settings.api == "/agent" and settings.auth_url == "/api/auth/token"


async def test_the_embedded_server_answers_browsers_with_cors(ably_server: EmbeddedServer) -> None:
    origin = "http://127.0.0.1:8787"
    url = f"http://{ably_server.endpoint}/channels/conversations:cors/messages"
    token = ably_server.mint_token(client_id="alice")
    async with aiohttp.ClientSession() as http:
        preflight = {
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization,x-ably-version",
        }
        async with http.options(url, headers=preflight) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == origin
            assert resp.headers["Access-Control-Allow-Credentials"] == "true"
            assert resp.headers["Access-Control-Allow-Headers"] == "authorization,x-ably-version"
        headers = {"Origin": origin, "Authorization": f"Bearer {token}"}
        async with http.get(url, headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == origin
            assert "Link" in resp.headers["Access-Control-Expose-Headers"]
        async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
            assert "Access-Control-Allow-Origin" not in resp.headers  # no Origin, no CORS
