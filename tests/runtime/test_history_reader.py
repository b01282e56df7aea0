"""The transport's lean REST history GET (transport/history.py): the request ably-python's
``request()`` would send, token renewal on a token error, the SDK as fallback on 5xx, error answers
with Ably's code; and, against the embedded server, the same items as the SDK read for msgpack and
JSON, and a capability refusal surfaced with its code."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

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
from agent_worker.transport.history import HistoryReader, HistoryRefused, _tls_context, with_limit
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


def _rest(port: int, tokens: list[str]) -> AblyRest:
    async def token() -> str:
        tokens.append(f"token-{len(tokens)}")
        return tokens[-1]

    settings = AblySettings(endpoint=f"127.0.0.1:{port}", token_source=token, tls=False)
    opts = settings.client_options()
    opts.pop("realtime_request_timeout")
    return AblyRest(**opts)


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


async def test_unreachable_primary_leaves_reads_to_the_sdk(fake: FakeAbly) -> None:
    """A connection error on the lean GET: that page and the following ones go through the SDK's
    request() (and its fallback hosts) for the SDK's fallback period, without a lean attempt each."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]  # closed again below: nothing listens there
    rest = _rest(fake.port, [])
    reader = HistoryReader(rest, binary=True, max_connections=4)
    lean_urls: list[str] = []

    def unreachable(path_qs: str) -> str:
        lean_urls.append(path_qs)
        return f"http://127.0.0.1:{dead}{path_qs}"

    reader._url = unreachable  # type: ignore[method-assign]
    try:
        first = await reader.page(PATH)
        second = await reader.page(PATH)
        assert [p.items[0]["data"] for p in (first, second)] == ["d1", "d2"]
        assert len(lean_urls) == 1  # tried once, then the SDK for the fallback period
        assert all("aiohttp" not in r["headers"]["User-Agent"] for r in fake.requests)
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
