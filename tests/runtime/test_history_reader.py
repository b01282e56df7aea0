"""The transport's lean REST history GET (transport/history.py): the request ably-python's
``request()`` would send, token renewal on a token error, the SDK as fallback on 5xx and connection
errors (held only while the SDK keeps to a fallback host), error answers
with Ably's code; and, against the embedded server, the same items as the SDK read for msgpack and
JSON, and a capability refusal surfaced with its code."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from ably import AblyRest
from ably.types.message import Message
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent_worker.errors import TransportError
from agent_worker.server import EmbeddedServer
from agent_worker.server.testing import python_rest
from agent_worker.transport.ably import AblySettings, AblyTransport
from agent_worker.transport.history import (
    LEAN_BACKOFF_S,
    HistoryReader,
    HistoryRefused,
    _tls_context,
    with_limit,
)
from tests.runtime.runtime_support import worker_settings


class FakeAbly:
    """A REST history endpoint that records each request and answers from a script."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: list[tuple[int, dict[str, str]]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        app = web.Application()
        app.router.add_get("/channels/{name}/messages", self.history)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def history(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.requests.append(
            {
                "path": request.path_qs,
                "headers": dict(request.headers),
                "query": dict(request.query),
                "peer": peer,
            }
        )
        status, headers = self.answers.pop(0) if self.answers else (200, {})
        if status != 200:
            body = {"error": {"code": int(headers.get("X-Ably-Errorcode", 50000)), "message": "no"}}
            ctype = {"Content-Type": "application/x-msgpack"}
            return web.Response(status=status, body=msgpack.packb(body), headers={**ctype, **headers})
        items = [{"name": "m", "data": f"d{len(self.requests)}", "serial": f"s{len(self.requests)}"}]
        link = '<./messages?limit=5&direction=backwards&cursor=abc>; rel="next"'
        return web.Response(
            body=msgpack.packb(items),
            headers={"Content-Type": "application/x-msgpack", "Link": link, **headers},
        )


@pytest.fixture
async def fake() -> AsyncIterator[FakeAbly]:
    server = FakeAbly()
    await server.start()
    yield server
    assert server.runner is not None
    await server.runner.cleanup()


def _rest(port: int, tokens: list[str], *, host: str = "127.0.0.1", **extra: Any) -> AblyRest:
    async def token() -> str:
        tokens.append(f"token-{len(tokens)}")
        return tokens[-1]

    settings = AblySettings(endpoint=f"{host}:{port}", token_source=token, tls=False)
    opts = settings.client_options()
    opts.pop("realtime_request_timeout")
    return AblyRest(**{**opts, **extra})


PATH = "/channels/conversations%3Aa/messages?limit=100&direction=backwards&from_serial=x%40y"


async def test_lean_read_is_the_sdk_request(fake: FakeAbly) -> None:
    tokens: list[str] = []
    rest = _rest(fake.port, tokens)
    reader = HistoryReader(rest, binary=True, max_connections=4)
    try:
        sdk = await rest.request("GET", PATH, "5")
        page = await reader.page(PATH)
        theirs, ours = fake.requests
        assert ours["path"] == theirs["path"] == PATH
        for name in ("Accept", "X-Ably-Version", "Ably-Agent", "Authorization"):
            assert ours["headers"][name] == theirs["headers"][name], name
        assert ours["headers"]["Accept"] == "application/x-msgpack"
        assert ours["headers"]["Authorization"] == "Bearer " + base64.b64encode(b"token-0").decode()
        assert "httpx" in theirs["headers"]["User-Agent"] and "aiohttp" in ours["headers"]["User-Agent"]
        assert sdk.items[0]["data"] == "d1" and page.items == [{"name": "m", "data": "d2", "serial": "s2"}]
        assert page.next == "/channels/conversations%3Aa/messages?limit=5&direction=backwards&cursor=abc"
        assert with_limit(page.next, 1000).endswith("?limit=1000&direction=backwards&cursor=abc")
        assert with_limit(page.next, 2).endswith("?limit=5&direction=backwards&cursor=abc")
    finally:
        await reader.close()
        await rest.close()


async def test_reads_reuse_a_bounded_set_of_connections(fake: FakeAbly) -> None:
    """A burst of reads shares the reader's keep-alive connections (at most ``max_connections``,
    kept between bursts) instead of opening one per read: b4's profile found opening them a third
    of a start's first history page (docs/benchmarks.md)."""
    rest = _rest(fake.port, [])
    reader = HistoryReader(rest, binary=True, max_connections=2)
    try:
        for _ in range(2):
            pages = await asyncio.gather(*(reader.page(PATH) for _ in range(6)))
            assert all(len(page.items) == 1 for page in pages)
        peers = {r["peer"] for r in fake.requests}
        assert len(fake.requests) == 12 and None not in peers
        assert len(peers) <= 2
    finally:
        await reader.close()
        await rest.close()


async def test_token_error_renews_once(fake: FakeAbly) -> None:
    tokens: list[str] = []
    rest = _rest(fake.port, tokens)
    reader = HistoryReader(rest, binary=True, max_connections=4)
    fake.answers = [(401, {"X-Ably-Errorcode": "40142"})]
    try:
        page = await reader.page(PATH)
        assert page.items[0]["data"] == "d2"
        first, second = (r["headers"]["Authorization"] for r in fake.requests)
        assert first != second and len(tokens) == 2  # a new token for the retry
        fake.answers = [(401, {"X-Ably-Errorcode": "40142"}), (401, {"X-Ably-Errorcode": "40142"})]
        with pytest.raises(HistoryRefused) as refused:  # only once
            await reader.page(PATH)
        assert (refused.value.code, refused.value.status_code) == (40142, 401)
    finally:
        await reader.close()
        await rest.close()


async def test_server_errors_go_through_the_sdk(fake: FakeAbly) -> None:
    rest = _rest(fake.port, [])
    reader = HistoryReader(rest, binary=True, max_connections=4)
    try:
        fake.answers = [(503, {"X-Ably-Errorcode": "50003"})]
        page = await reader.page(PATH)  # the lean GET got a 503: the SDK's request() read it
        assert [("aiohttp" in r["headers"]["User-Agent"]) for r in fake.requests] == [True, False]
        assert page.items[0]["data"] == "d2" and page.next is not None
        fake.answers = [(503, {"X-Ably-Errorcode": "50003"})] * 2
        with pytest.raises(HistoryRefused) as refused:
            await reader.page(PATH)
        assert refused.value.code == 50003
        fake.answers = [(404, {"X-Ably-Errorcode": "40400"})]
        with pytest.raises(HistoryRefused) as missing:  # a 4xx is the answer: no SDK retry
            await reader.page(PATH)
        assert missing.value.code == 40400 and len(fake.requests) == 5
    finally:
        await reader.close()
        await rest.close()


def _dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again: nothing listens there


def _lean_urls(reader: HistoryReader, *, dead: int | None = None) -> list[str]:
    """The reader's lean GETs, recorded; the first one sent to the ``dead`` port if given."""
    urls: list[str] = []
    real = reader._url

    def url(path_qs: str) -> str:
        urls.append(path_qs)
        return f"http://127.0.0.1:{dead}{path_qs}" if dead and len(urls) == 1 else real(path_qs)

    reader._url = url  # type: ignore[method-assign]
    return urls


def _lean(requests: list[dict[str, Any]]) -> list[bool]:
    return ["aiohttp" in r["headers"]["User-Agent"] for r in requests]


async def test_a_lean_failure_the_primary_host_answers_costs_one_read(fake: FakeAbly) -> None:
    """A lean GET that cannot connect (or times out: a busy loop in a burst) while the SDK's
    request() then reads the page from the primary host: the next read is lean again, not the SDK's
    ~2 ms more per page for its whole fallback period."""
    rest = _rest(fake.port, [])  # an endpoint: no fallback hosts, the SDK only has the primary
    reader = HistoryReader(rest, binary=True, max_connections=4)
    lean_urls = _lean_urls(reader, dead=_dead_port())
    try:
        first = await reader.page(PATH)  # the lean GET refused: the SDK read it
        second = await reader.page(PATH)
        assert [p.items[0]["data"] for p in (first, second)] == ["d1", "d2"]
        assert len(lean_urls) == 2 and _lean(fake.requests) == [False, True]
    finally:
        await reader.close()
        await rest.close()


async def test_a_fallback_host_the_sdk_settled_on_keeps_reads_on_the_sdk(fake: FakeAbly) -> None:
    """The primary host refuses and the SDK settles on a fallback host: reads keep to the SDK (and
    so to that host) for as long as it does (RSC15f), without a lean attempt each."""
    # The fake listens on 127.0.0.1 only: the primary 127.0.0.2 refuses, the fallback answers
    # (a host written as the endpoint is, "host:port/", as the SDK joins it to its default port).
    fallback = f"127.0.0.1:{fake.port}/"
    rest = _rest(fake.port, [], host="127.0.0.2", fallback_hosts=[fallback])
    reader = HistoryReader(rest, binary=True, max_connections=4)
    lean_urls = _lean_urls(reader)
    try:
        pages = [await reader.page(PATH) for _ in range(3)]
        assert [p.items[0]["data"] for p in pages] == ["d1", "d2", "d3"]
        assert len(lean_urls) == 1 and _lean(fake.requests) == [False] * 3
        assert rest.http.get_hosts()[0] == fallback
    finally:
        await reader.close()
        await rest.close()


async def test_no_host_answering_backs_the_lean_get_off(fake: FakeAbly) -> None:
    """Neither the lean GET nor the SDK reaches a host: the next read, failing as well, is left to
    the SDK alone (a short back-off), not tried on the lean path first again."""
    rest = _rest(_dead_port(), [])
    reader = HistoryReader(rest, binary=True, max_connections=4)
    lean_urls = _lean_urls(reader)
    try:
        for _ in range(2):
            with pytest.raises(httpx.ConnectError):
                await reader.page(PATH)
        assert len(lean_urls) == 1 and 0 < reader._sdk_until - time.monotonic() <= LEAN_BACKOFF_S
    finally:
        await reader.close()
        await rest.close()


@pytest.mark.parametrize("binary", [True, False])
async def test_items_are_the_sdk_read(ably_server: EmbeddedServer, binary: bool) -> None:
    """msgpack and JSON: every item (text, binary and JSON data, extras) reads as the SDK reads it."""
    rest = python_rest(ably_server, client_id="writer")
    try:
        channel = rest.channels.get("conversations:formats")
        await channel.publish(
            messages=[
                Message(name="text", data="hello", extras={"ai": {"transport": {"run-id": "r"}}}),
                Message(name="bin", data=b"\x00\xff"),
                Message(name="obj", data={"a": [1, None]}),
            ]
        )
        sdk_items = (await channel.history()).items
    finally:
        await rest.close()
    settings = worker_settings(ably_server)
    transport = AblyTransport(AblySettings(**{**_fields(settings), "use_binary_protocol": binary}))
    await transport.connect()
    try:
        ch = await transport.open_channel("conversations:formats")
        pages = [p async for p in ch.history_pages()]
        got = [(m.name, m.data, m.extras, m.serial) for p in pages for m in p]
        assert got == [(m.name, m.data, m.extras or None, m.serial) for m in sdk_items]
    finally:
        await transport.close()


async def test_refused_history_keeps_its_code(ably_server: EmbeddedServer) -> None:
    """A token without the history capability: the read fails at once with Ably's 40160."""

    async def token() -> dict[str, Any]:
        return ably_server.token_details(client_id="agent-worker", capability={"*": ["subscribe", "publish"]})

    settings = AblySettings(
        endpoint=f"{ably_server.host}:{ably_server.port}",
        token_source=token,
        tls=False,
        client_id="agent-worker",
    )
    transport = AblyTransport(settings)
    await transport.connect()
    try:
        ch = await transport.open_channel("conversations:secret")
        with pytest.raises(TransportError) as refused:
            await anext(ch.history_pages())
        assert refused.value.code == 40160
        assert "history of conversations:secret failed" in refused.value.message
    finally:
        await transport.close()


def _fields(settings: AblySettings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in AblySettings.__dataclass_fields__}


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


async def test_lean_read_trusts_what_the_sdk_trusts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over TLS the lean GET verifies against the SDK's trust store (httpx's: certifi, or
    SSL_CERT_FILE), not the system's: a host the SDK trusts is read by the lean GET itself instead
    of every page failing its handshake and falling back to the SDK's request()."""
    cert_file, key_file = _self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    _tls_context.cache_clear()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_file, key_file)
    fake = FakeAbly()
    await fake.start(ssl_context=server_tls)
    settings = AblySettings(endpoint=f"127.0.0.1:{fake.port}", token_source=_token, tls=True)
    opts = settings.client_options()
    opts.pop("realtime_request_timeout")
    rest = AblyRest(**opts)
    reader = HistoryReader(rest, binary=True, max_connections=4)
    try:
        page = await reader.page(PATH)
        assert page.items[0]["data"] == "d1"
        assert ["aiohttp" in r["headers"]["User-Agent"] for r in fake.requests] == [True]
    finally:
        await reader.close()
        await rest.close()
        assert fake.runner is not None
        await fake.runner.cleanup()
        _tls_context.cache_clear()


async def _token() -> str:
    return "token"
