"""The browser client the worker serves at ``GET /`` (``[http] web``).

The page is a React app built on the official ``@ably/ai-transport`` 0.8.0 React bindings and
ably-js 2.28 (sources in ``web/``, bundled by esbuild into ``static/``, shipped as package data, so
serving it needs no Node). The worker adds these routes: the page, its assets, the service worker
``sw.js`` (push notifications, at the root so its scope is the page), and
``GET /api/web/config`` — where the browser's ably-js should connect, which endpoints to use and the
cancel policy, so one bundle works against the embedded server and against Ably.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import web

from agent_worker.config import Config, HttpConfig

__all__ = ["STATIC_FILES", "WebSettings", "add_web_routes", "static_file", "web_defaults", "web_settings"]

STATIC_FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "app.css": "text/css",
    "sw.js": "text/javascript",
}


@dataclass(frozen=True, slots=True)
class WebSettings:
    """What the page needs to know; served as JSON at ``/api/web/config``."""

    ably_host: str | None
    """Host the browser's ably-js connects to; ``None`` = Ably's default endpoint."""
    ably_port: int | None = None
    tls: bool = True
    api: str = "/api/chat"
    auth_url: str | None = "/api/auth/token"
    """The token endpoint (one verified clientId per tab); ``None`` when the worker serves none."""
    default_session: str = "conversations:demo"
    agent_client_id: str = "agent-worker"
    cancel_policy: str = "owner"
    admins: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            "ably": {"endpoint": self.ably_host, "port": self.ably_port, "tls": self.tls},
            "api": self.api,
            "authUrl": self.auth_url,
            "defaultSession": self.default_session,
            "agentClientId": self.agent_client_id,
            "cancelPolicy": self.cancel_policy,
            "admins": list(self.admins),
        }


def web_settings(cfg: Config, embedded_endpoint: str | None, *, token_endpoint: bool) -> WebSettings:
    """The page's settings for a worker: its Ably endpoint as a browser reaches it (the embedded
    server's ``host:port``, else ``[ably] endpoint``, else Ably itself), its HTTP paths and policy."""
    endpoint = embedded_endpoint or cfg.ably.endpoint
    host: str | None = None
    port: int | None = None
    if endpoint:
        name, sep, number = endpoint.rpartition(":")
        host, port = (name, int(number)) if sep and number.isdigit() else (endpoint, None)
    tls = cfg.ably.tls
    if tls is None:
        tls = host not in {"127.0.0.1", "localhost", "::1"}
    return WebSettings(
        ably_host=host,
        ably_port=port,
        tls=False if embedded_endpoint else tls,
        api=cfg.http.path,
        auth_url="/api/auth/token" if token_endpoint else None,
        agent_client_id=cfg.ably.client_id,
        cancel_policy=cfg.worker.cancel_policy,
        admins=cfg.worker.admin_client_ids,
    )


def web_defaults(cfg: Config, embedded_endpoint: str | None) -> tuple[HttpConfig, WebSettings | None]:
    """``[http]`` with its defaults resolved, and the page's settings (``None``: no page).

    Unset, the dev token endpoint and the page are on only with the embedded server
    (``embedded_endpoint``, the offline default) and off when the worker is pointed at Ably.
    """
    http = cfg.http
    if http.dev_token_endpoint is None:
        http = http.model_copy(update={"dev_token_endpoint": embedded_endpoint is not None})
    serve = http.web if http.web is not None else embedded_endpoint is not None
    if not serve:
        return http, None
    return http, web_settings(cfg, embedded_endpoint, token_endpoint=bool(http.dev_token_endpoint))


def static_file(name: str) -> bytes:
    """The shipped bytes of one of :data:`STATIC_FILES`."""
    return (resources.files(__package__) / "static" / name).read_bytes()


def add_web_routes(app: web.Application, settings: WebSettings) -> None:
    """Serve the page at ``/`` (and ``/index.html``), its assets and its configuration."""
    config = settings.to_json()

    async def web_config(_request: web.Request) -> web.Response:
        return web.json_response(config, headers={"Cache-Control": "no-store"})

    app.router.add_get("/", _Asset("index.html").serve)
    app.router.add_get("/index.html", _Asset("index.html").serve)
    app.router.add_get("/app.js", _Asset("app.js").serve)
    app.router.add_get("/app.css", _Asset("app.css").serve)
    app.router.add_get("/sw.js", _Asset("sw.js").serve)  # at the root: its scope is the whole page
    app.router.add_get("/api/web/config", web_config)


class _Asset:
    """One shipped file, revalidated by ETag and sent gzip-compressed to browsers that accept it
    (the bundle shrinks about 4x). Compression happens once, off the event loop, on first use."""

    def __init__(self, name: str) -> None:
        self.body = static_file(name)
        self.content_type = STATIC_FILES[name]
        self.etag = f'"{hashlib.sha256(self.body).hexdigest()[:20]}"'
        self._gzipped: bytes | None = None
        self._gzipping: asyncio.Future[bytes] | None = None  # the one compression, shared

    async def serve(self, request: web.Request) -> web.StreamResponse:
        headers = {"ETag": self.etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
        if request.headers.get("If-None-Match") == self.etag:
            return web.Response(status=304, headers=headers)
        body = self.body
        if "gzip" in request.headers.get("Accept-Encoding", "") and len(body) > 1024:
            if self._gzipped is None:
                # One compression however many ask before it is done: each first request started
                # its own (35 ms of CPU for the bundle), so a burst of them cost a burst of those.
                if self._gzipping is None:
                    self._gzipping = asyncio.ensure_future(asyncio.to_thread(gzip.compress, body, 6, mtime=0))
                self._gzipped = await asyncio.shield(self._gzipping)  # a caller gone does not cancel it
            body = self._gzipped
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, content_type=self.content_type, charset="utf-8", headers=headers)
