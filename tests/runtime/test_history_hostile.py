"""The lean REST history GET (transport/history.py) against answers no honest Ably host sends, over
real HTTP with ably-python's REST client: a ``Link`` that points at another host, channel or path
is not followed (the key never leaves the REST host), a body past the page bound is refused before
it is held whole, a garbled body is refused with AIT's 104011 rather than a decoder's exception."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import pytest
import structlog
from ably import AblyRest
from aiohttp import web

from agent_worker.errors import TransportError
from agent_worker.protocol.wire import InboundMessage
from agent_worker.transport.ably import AblySettings
from agent_worker.transport.history import HistoryReader, HistoryRefused

PATH = "/channels/conversations%3Aa/messages?limit=100&direction=backwards"
ITEMS = msgpack.packb([{"name": "m", "data": "d", "serial": "s1"}])
MSGPACK = {"Content-Type": "application/x-msgpack"}


class Host:
    """An HTTP host that records each request (path and Authorization) and answers by script."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.answer: Callable[[web.Request], Any] = lambda _r: web.Response(body=ITEMS, headers=MSGPACK)
        self.streamed: bytes | None = None
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path_qs, request.headers.get("Authorization", "")))
        if self.streamed is not None:  # chunked: no Content-Length to refuse it by
            resp = web.StreamResponse(headers=MSGPACK)
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for at in range(0, len(self.streamed), 4096):
                await resp.write(self.streamed[at : at + 4096])
            await resp.write_eof()
            return resp
        answer = self.answer(request)
        answered: web.StreamResponse = await answer if asyncio.iscoroutine(answer) else answer
        return answered


@pytest.fixture
async def hosts() -> AsyncIterator[tuple[Host, Host]]:
    rest_host, other = Host(), Host()
    await rest_host.start()
    await other.start()
    yield rest_host, other
    for host in (rest_host, other):
        assert host.runner is not None
        await host.runner.cleanup()


async def _token() -> str:
    return "the-token"


def _rest(port: int) -> AblyRest:
    settings = AblySettings(endpoint=f"127.0.0.1:{port}", token_source=_token, tls=False)
    opts = settings.client_options()
    opts.pop("realtime_request_timeout")
    return AblyRest(**opts)


BIG_PAGE = msgpack.packb([{"name": "m", "data": "x" * 1000, "serial": f"s{i}"} for i in range(100)])


async def _refused_over_the_bound_then_read(host: Host, requests_when_refused: int | None = None) -> None:
    """``BIG_PAGE`` is refused (104011) by a reader bounded one byte below it, and read whole by one
    bounded at its size: the bound is the only difference."""
    rest = _rest(host.port)
    reader = HistoryReader(rest, binary=True, max_connections=2, max_page_bytes=len(BIG_PAGE) - 1)
    try:
        with pytest.raises(HistoryRefused) as refused:
            await reader.page(PATH)
        assert refused.value.code == 104011 and "over the limit" in refused.value.message
        if requests_when_refused is not None:
            assert len(host.requests) == requests_when_refused
        # (Through the SDK fallback too: it serves reads for a while after the primary failed.)
        roomy = HistoryReader(rest, binary=True, max_connections=2, max_page_bytes=len(BIG_PAGE))
        try:
            assert len((await roomy.page(PATH)).items) == 100
        finally:
            await roomy.close()
    finally:
        await reader.close()
        await rest.close()


def _links_to(target: str) -> Callable[[web.Request], web.Response]:
    return lambda _r: web.Response(body=ITEMS, headers={**MSGPACK, "Link": f'<{target}>; rel="next"'})


@pytest.mark.parametrize(
    "target",
    [
        "https://x//127.0.0.1:{port}/channels/conversations%3Aa/messages?limit=5",  # a path "//host/..."
        "//127.0.0.1:{port}/channels/conversations%3Aa/messages?limit=5",
        "http://127.0.0.1:{port}/channels/conversations%3Aa/messages?limit=5",
        "../other/messages?limit=5",  # another channel, same host
        "/keys/app.key/requestToken?x=1",
    ],
)
async def test_next_link_elsewhere_is_not_followed(hosts: tuple[Host, Host], target: str) -> None:
    rest_host, other = hosts
    rest_host.answer = _links_to(target.format(port=other.port))
    rest = _rest(rest_host.port)
    reader = HistoryReader(rest, binary=True, max_connections=2)
    try:
        with pytest.raises(HistoryRefused) as refused:
            page = await reader.page(PATH)
            assert page.next is not None
            await reader.page(page.next)  # what history_pages does with it
        assert refused.value.code == 104011
        assert "not followed" in refused.value.message
    finally:
        await reader.close()
        await rest.close()
    assert other.requests == []
    assert [auth for _path, auth in rest_host.requests] == ["Bearer dGhlLXRva2Vu"]  # the token, once


async def test_next_link_to_the_same_messages_is_followed(hosts: tuple[Host, Host]) -> None:
    rest_host, _ = hosts
    rest_host.answer = _links_to("./messages?limit=5&cursor=c%2Fd")
    rest = _rest(rest_host.port)
    reader = HistoryReader(rest, binary=True, max_connections=2)
    try:
        page = await reader.page(PATH)
        assert page.next == "/channels/conversations%3Aa/messages?limit=5&cursor=c%2Fd"
        await reader.page(page.next)
    finally:
        await reader.close()
        await rest.close()
    assert rest_host.requests[1][0] == page.next


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.parametrize("where", ["other-host", "other-channel"])
async def test_a_redirect_is_not_followed(hosts: tuple[Host, Host], status: int, where: str) -> None:
    """The SDK's httpx client does not follow redirects; aiohttp would (and to another channel on
    the same host with the credentials): another host's or channel's messages would be read as
    this channel's history."""
    rest_host, other = hosts
    target = (
        f"http://127.0.0.1:{other.port}/channels/conversations%3Aa/messages?limit=100"
        if where == "other-host"
        else "/channels/conversations%3Ab/messages?limit=100"
    )
    answered: list[str] = []

    def answer(request: web.Request) -> web.Response:
        answered.append(request.path)
        if request.path.endswith("%3Ab/messages") or "conversations:b" in request.path:
            return web.Response(
                body=msgpack.packb([{"name": "m", "data": "b's", "serial": "b1"}]), headers=MSGPACK
            )
        return web.Response(status=status, headers={"Location": target})

    rest_host.answer = answer
    rest = _rest(rest_host.port)
    reader = HistoryReader(rest, binary=True, max_connections=2)
    try:
        with pytest.raises(HistoryRefused) as refused:
            await reader.page(PATH)
        assert refused.value.status_code == status
    finally:
        await reader.close()
        await rest.close()
    assert other.requests == []
    assert len(answered) == 1


@pytest.mark.parametrize("chunked", [False, True])
async def test_body_past_the_bound_is_refused(hosts: tuple[Host, Host], chunked: bool) -> None:
    rest_host, _ = hosts
    if chunked:
        rest_host.streamed = BIG_PAGE
    else:
        rest_host.answer = lambda _r: web.Response(body=BIG_PAGE, headers=MSGPACK)
    await _refused_over_the_bound_then_read(rest_host)


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"\xc1\xc1\xc1", "application/x-msgpack"),  # 0xc1: never used in msgpack
        (msgpack.packb([{"serial": "s"}]) + b"\x93", "application/x-msgpack"),  # trailing bytes
        (b"\x91" * (2 << 20) + b"\xc0", "application/x-msgpack"),  # too deep to step over (2 MiB)
        (b"\x92\xc0" + b"\x91" * 100_000, "application/x-msgpack"),  # too deep, and truncated
        (b"\x91\x81\xa4data" + b"\x91" * 100_000 + b"\xc0\xc0", "application/x-msgpack"),  # + trailing
        (b'[{"serial": "s"', "application/json"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json"),
    ],
)
async def test_garbled_page_is_refused_with_its_code(
    hosts: tuple[Host, Host], body: bytes, ctype: str
) -> None:
    rest_host, _ = hosts
    rest_host.answer = lambda _r: web.Response(body=body, headers={"Content-Type": ctype})
    rest = _rest(rest_host.port)
    reader = HistoryReader(rest, binary=ctype.endswith("msgpack"), max_connections=2)
    try:
        with pytest.raises(TransportError) as refused:
            page = await reader.page(PATH)
            page.messages(lambda raw: pytest.fail(f"read {raw!r}"))  # a msgpack body decodes here
        assert refused.value.code == 104011 and "undecodable" in refused.value.message
    finally:
        await reader.close()
        await rest.close()


def _via_sdk(host: Host, then: Callable[[web.Request], Any]) -> None:
    """The lean GET gets a 503 (so the page goes through ably-python's ``request()``, as for a
    fallback host), the SDK's request then ``then``."""
    lean_done: list[bool] = []

    def answer(request: web.Request) -> Any:
        if not lean_done:
            lean_done.append(True)
            return web.Response(status=503)
        return then(request)

    host.answer = answer


def _quick_rest(port: int) -> AblyRest:
    settings = AblySettings(endpoint=f"127.0.0.1:{port}", token_source=_token, tls=False)
    opts = settings.client_options()
    opts.pop("realtime_request_timeout")
    opts.update(http_open_timeout=1, http_request_timeout=1, http_max_retry_duration=0.5)
    return AblyRest(**opts)


async def test_the_sdk_fallback_is_bounded_in_size(hosts: tuple[Host, Host]) -> None:
    """ably-python's ``request()`` (primary host 5xx, fallback hosts) read any body whole and kept it:
    now one over the page bound is refused with 104011, as the lean GET refuses it."""
    rest_host, _ = hosts
    _via_sdk(rest_host, lambda _r: web.Response(body=BIG_PAGE, headers=MSGPACK))
    await _refused_over_the_bound_then_read(rest_host, requests_when_refused=2)  # lean, then SDK


async def test_the_sdk_fallback_is_bounded_in_time(hosts: tuple[Host, Host]) -> None:
    """A host trickling its answer a byte at a time never trips httpx's per-read timeout: the SDK's
    ``request()`` waited for ever. Now it is given the SDK's own retry budget (plus one request)."""
    rest_host, _ = hosts

    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers=MSGPACK)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            while True:
                await resp.write(b"\x91")
                await asyncio.sleep(0.1)
        except ConnectionError:  # the reader gave up
            return resp

    _via_sdk(rest_host, trickle)
    rest = _quick_rest(rest_host.port)
    reader = HistoryReader(rest, binary=True, max_connections=2)
    try:
        with pytest.raises(TransportError) as slow:
            await asyncio.wait_for(reader.page(PATH), 120)  # only so the old code fails, not hangs
        assert slow.value.code == 50003 and "took over 2.5s" in slow.value.message
    finally:
        await reader.close()
        await rest.close()


async def test_an_undecodable_sdk_answer_is_refused_with_104011(hosts: tuple[Host, Host]) -> None:
    """One item nested past msgpack's limit, through the SDK: 104011, not msgpack's exception."""
    rest_host, _ = hosts
    deep = b"\x91\x81\xa4data" + b"\x91" * 100_000 + b"\xc0"
    _via_sdk(rest_host, lambda _r: web.Response(body=deep, headers=MSGPACK))
    rest = _rest(rest_host.port)
    reader = HistoryReader(rest, binary=True, max_connections=2)
    try:
        with pytest.raises(HistoryRefused) as refused:
            await reader.page(PATH)
        assert refused.value.code == 104011 and "undecodable" in refused.value.message
    finally:
        await reader.close()
        await rest.close()


async def test_an_item_too_deep_to_decode_is_left_out_and_the_rest_read(hosts: tuple[Host, Host]) -> None:
    """msgpack cannot decode (nor skip) an item nested past 1,024 levels: it made its whole page
    unreadable (104011), and with it the session's history past it. Now the item is stepped over
    (logged once, with 104011) and the page's other items are read."""
    rest_host, _ = hosts
    ok = [msgpack.packb({"name": "m", "data": f"d{i}", "serial": f"s{i}"}) for i in range(3)]
    deep = b"\x81\xa4data" + b"\x91" * 100_000 + b"\xc0"
    body = b"\x95" + ok[0] + deep + ok[1] + deep + ok[2]
    rest_host.answer = lambda _r: web.Response(body=body, headers=MSGPACK)
    rest = _rest(rest_host.port)
    reader = HistoryReader(rest, binary=True, max_connections=2)
    try:
        page = await reader.page(PATH)
        with structlog.testing.capture_logs() as logs:
            read = page.messages(
                lambda raw: InboundMessage(raw["name"], raw["data"], None, serial=raw["serial"])
            )
        assert [(m.data, m.serial) for m in read] == [("d0", "s0"), ("d1", "s1"), ("d2", "s2")]
        assert [(e["event"], e["code"], e["left_out"]) for e in logs] == [
            ("history_items_too_deep", 104011, 2)
        ]
    finally:
        await reader.close()
        await rest.close()
