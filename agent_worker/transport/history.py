"""REST history pages read without ably-python's generic ``request()`` on the way.

``AblyRest.request()`` costs ~2 ms of CPU per page before a byte of the body is decoded (its
request/response wrappers, httpx's request building and connection pool, anyio), about 4x an
aiohttp GET on a kept-alive connection. A worker starting 100 conversations at once reads 100
first pages in the same second, so :class:`HistoryReader` issues the same request itself — the same
host, port and scheme as the SDK's REST client, the same path, query and headers (``Accept``,
``X-Ably-Version``, ``Ably-Agent``) and the SDK's own ``Authorization`` (its auth object, so tokens
are requested and renewed as the SDK does; a token error answer renews once and retries) — and
falls back to ``request()`` for anything but a plain answer from the primary host (connection
errors, timeouts, 5xx), so Ably's fallback hosts keep working. Nothing here logs headers.

Which path a read takes follows the host the SDK itself would try first (RSC15f): while its REST
client keeps to a fallback host it settled on (for ``fallback_retry_timeout``), every read goes
through ``request()``; a lean GET that fails to connect or times out while the SDK then answers from
the primary host (a busy event loop, a dropped connection; with an ``endpoint`` there are no fallback
hosts at all) costs only that read, the next is lean again. Only when the SDK answers from no host
either do reads keep to ``request()`` for a short back-off (:data:`LEAN_BACKOFF_S`), so a host that is
really unreachable is not tried twice per read.

The same GET answers the push notifier's presence lookup (``Channel.present_connections``: the
server's current members of one clientId) through :meth:`HistoryReader.items`: one answer, no
``Link`` followed, an error answer without a code of its own given 50000 as ``request()`` would.

What an answer may make it do is bounded (docs/security.md): its ``Link`` is followed only to the
same channel's ``messages`` on the same host (the key is never sent anywhere else), a redirect not
at all, its body is read up to :data:`MAX_PAGE_BYTES`, and a body that does not decode is refused
with 104011, not raised as whatever the decoder raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urljoin, urlsplit

import aiohttp
import httpx
import msgpack
import structlog
from ably import AblyRest
from ably.http.httputils import HttpUtils
from yarl import URL

from agent_worker.errors import TransportError
from agent_worker.protocol.wire import InboundMessage
from agent_worker.transport.deepitems import TooDeep, items_around_deep
from agent_worker.transport.inbound import history_messages

__all__ = ["LEAN_BACKOFF_S", "MAX_PAGE_BYTES", "HistoryPage", "HistoryReader", "HistoryRefused", "with_limit"]

log = structlog.get_logger(__name__)

REST_VERSION = "5"
_MSGPACK = "application/x-msgpack"
#: The largest history answer body read: a page of 1,000 messages (Ably's largest page) of 64 KiB
#: (Ably's default message size limit), base64 in JSON, with room to spare. A larger body is refused
#: (104011) rather than held in memory whole.
MAX_PAGE_BYTES = 128 * 1024 * 1024
#: AIT's "unable to fetch history page".
HISTORY_FAILED = 104011
#: The code of an error answer that names none, outside history (``rest_request``'s).
_NO_CODE = 50000
#: How long reads keep to the SDK's ``request()`` after neither the lean GET nor the SDK reached
#: a host (at most the SDK's ``fallback_retry_timeout``).
LEAN_BACKOFF_S = 15.0


class HistoryPage:
    """One page: its items, and the path and query of the next page (``next``).

    A msgpack body from the lean GET stays undecoded until it is read, so whoever pages can ask for
    the next page (known from the ``Link`` header) before spending CPU on this one's body."""

    __slots__ = ("_body", "_content_type", "_items", "next")

    def __init__(
        self, items: list[Any] | None, next: str | None, *, body: bytes = b"", content_type: str = ""
    ) -> None:
        self._items = items
        self.next = next
        self._body = body
        self._content_type = content_type

    @property
    def items(self) -> list[Any]:
        """The items as decoded from the body (maps, as the SDK's ``request()`` gives them)."""
        if self._items is None:
            items = _decode(self._body, self._content_type) if self._body else []
            self._items = items if isinstance(items, list) else [items]
            self._body = b""
        return self._items

    def messages(self, read: Callable[[Mapping[str, Any]], InboundMessage]) -> list[InboundMessage]:
        """The page's map items as messages: ``read`` one by one, or a msgpack body decoded straight
        into messages when every item is plain (:func:`history_messages`)."""
        if self._items is None and self._body and self._content_type.startswith(_MSGPACK):
            fast = history_messages(self._body)
            if fast is not None:
                return fast
        return [read(raw) for raw in self.items if isinstance(raw, Mapping)]


def with_limit(path_qs: str, limit: int) -> str:
    """``path_qs`` with its ``limit`` raised to at least ``limit``."""
    path, _, query = path_qs.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    current = params.get("limit", "")
    if not current.isdigit() or int(current) < limit:
        params["limit"] = str(limit)
    return f"{path}?{urlencode(params)}"


_NEXT = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')


def _next_of(path_qs: str, link_header: str | None) -> str | None:
    """The ``rel="next"`` link (``./messages?...``, relative to the request) as a path and query,
    kept exactly as the server wrote it (percent-escapes included).

    Only a link to the request's own resource (the same channel's ``messages``) is followed: one
    naming a host (``https://h//evil/...`` resolves to a path ``//evil/...``, which joined to the
    REST host's URL *is* another host, with the key in its ``Authorization``), another channel or
    another path is refused (:class:`HistoryRefused`, 104011)."""
    found = _NEXT.search(link_header) if link_header else None
    if found is None:
        return None
    joined = urlsplit(urljoin(path_qs, found.group(1)))
    own = urlsplit(path_qs).path
    if joined.scheme or joined.netloc or unquote(joined.path) != unquote(own):
        msg = f"history answer links its next page away from {own}: not followed"
        raise HistoryRefused(msg, code=HISTORY_FAILED, status_code=502)
    return f"{joined.path}?{joined.query}" if joined.query else joined.path


class HistoryRefused(TransportError):
    """An error answer (4xx, or 5xx from every host): not worth retrying as is."""


class _UseSdk(Exception):
    """The lean request cannot answer for the primary host: ask the SDK (fallback hosts, retries)."""


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The trust store of the SDK's own REST client (httpx: certifi's bundle, or SSL_CERT_FILE /
    SSL_CERT_DIR), so the lean GET trusts exactly the hosts the SDK's requests trust — also where
    the system has no CA store aiohttp's default would use. Built once (~50 ms of CPU)."""
    return httpx.create_ssl_context()


class HistoryReader:
    """``await reader.page(path_qs)``: one REST history page (see the module docstring)."""

    def __init__(
        self, rest: AblyRest, *, binary: bool, max_connections: int, max_page_bytes: int = MAX_PAGE_BYTES
    ) -> None:
        self._rest = rest
        self._max_page_bytes = max_page_bytes
        self._binary = binary
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._sdk_until = 0.0
        self._headers: dict[str, str] = HttpUtils.default_get_headers(binary, version=REST_VERSION)
        self._origins: dict[str, str] = {}

    def _url(self, path_qs: str) -> str:
        http = self._rest.http
        # Joined as the SDK joins it (an endpoint given as "host:port/" relies on that).
        base = f"{http.preferred_scheme}://{http.preferred_host}:{http.preferred_port}"
        if path_qs.startswith("/") and "/." not in path_qs and "//" not in path_qs:
            # An absolute path with no dot segment: urljoin keeps the base's scheme and host and
            # takes the path as is, which the origin (joined once per base) plus the path is.
            origin = self._origins.get(base)
            if origin is None:
                origin = self._origins[base] = urljoin(base, "/")[:-1]
            return origin + path_qs
        return urljoin(base, path_qs)

    def _timeout(self) -> aiohttp.ClientTimeout:
        opts = self._rest.options
        connect = getattr(opts, "http_open_timeout", None) or 4
        total = getattr(opts, "http_request_timeout", None) or 10
        return aiohttp.ClientTimeout(total=float(total), connect=float(connect))

    async def page(self, path_qs: str) -> HistoryPage:
        """Raises :class:`TransportError` with Ably's code for an error answer (4xx)."""
        return await self._get(path_qs, paged=True)

    async def items(self, path_qs: str) -> list[Any]:
        """The items of one GET answer that is not paged through (a presence set): the same lean
        request and fallback as :meth:`page`, its ``Link`` ignored; an error answer with no code of
        its own is refused with 50000 (as ``rest_request`` maps the SDK's ``request()``)."""
        return (await self._get(path_qs, paged=False)).items

    async def _get(self, path_qs: str, *, paged: bool) -> HistoryPage:
        if (self._sdk_until and time.monotonic() < self._sdk_until) or self._sdk_on_fallback():
            return await self._sdk(path_qs, paged=paged)
        try:
            return await self._lean(path_qs, paged=paged)
        except _UseSdk as exc:
            if exc.__cause__ is None:  # a 5xx: the SDK retries it (on a fallback host, if any)
                return await self._sdk(path_qs, paged=paged)
        # No answer from the primary host (a connect error, a timeout). The SDK tries it again and
        # then its fallback hosts; on a fallback host it keeps to it, and so do reads (above).
        try:
            return await self._sdk(path_qs, paged=paged)
        except HistoryRefused:
            raise  # a host answered
        except Exception:
            # No host answered: spare the next reads a lean attempt first for a short while.
            self._sdk_until = time.monotonic() + min(LEAN_BACKOFF_S, self._fallback_s())
            raise

    def _sdk_on_fallback(self) -> bool:
        """Whether the SDK's REST client would start a request at a fallback host: one it settled on
        after the primary failed, kept for ``fallback_retry_timeout`` (RSC15f) — so the lean GET,
        which only knows the primary host, leaves the read to it."""
        http = self._rest.http
        hosts = http.get_hosts()  # the SDK's own order (it forgets an expired fallback host here)
        return bool(hosts) and hosts[0] != http.preferred_host

    def _fallback_s(self) -> float:
        ms = getattr(self._rest.options, "fallback_retry_timeout", None)
        return float(ms) / 1000 if isinstance(ms, int | float) else 600.0

    async def _auth_headers(self) -> dict[str, str]:
        # The SDK's own header builder: Basic (with X-Ably-ClientId) or Bearer with a token it
        # requests and renews when due, exactly as its request() would send.
        raw = await self._rest.auth._get_auth_headers()
        return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in raw.items()}

    async def _lean(self, path_qs: str, *, paged: bool, renewed: bool = False) -> HistoryPage:
        if self._session is None or self._session.closed:
            https = self._rest.http.preferred_scheme == "https"
            tls: ssl.SSLContext | bool = _tls_context() if https else True
            connector = aiohttp.TCPConnector(limit=self._max_connections, ssl=tls)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout())
        headers = {**self._headers, **(await self._auth_headers())}
        try:
            # Redirects are not followed (nor are they by the SDK's httpx client): a 3xx is an error
            # answer, so no other host or channel can stand in for this channel's history.
            url = URL(self._url(path_qs), encoded=True)
            async with self._session.get(url, headers=headers, allow_redirects=False) as resp:
                body = await _read_bounded(resp, self._max_page_bytes)
                status = resp.status
                ctype = resp.headers.get("Content-Type", "")
                link = resp.headers.get("Link")
                code_header = resp.headers.get("X-Ably-Errorcode")
                message = resp.headers.get("X-Ably-Errormessage")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _UseSdk from exc
        if status >= 500:
            raise _UseSdk
        if status < 300:
            following = _next_of(path_qs, link) if paged else None
            if body and ctype.startswith(_MSGPACK):  # decoded when read (see HistoryPage)
                return HistoryPage(None, following, body=body, content_type=ctype)
            items = _decode(body, ctype) if body else []
            return HistoryPage(items if isinstance(items, list) else [items], following)
        try:
            items = _decode(body, ctype) if body else None
        except (TransportError, ValueError):
            items = None  # an error answer's body is only a detail
        code = _error_code(code_header, items, HISTORY_FAILED if paged else _NO_CODE)
        if status == 401 and 40140 <= code < 40150 and not renewed:
            await self._rest.auth.authorize()  # a stale token: renew once, as the SDK would
            return await self._lean(path_qs, paged=paged, renewed=True)
        detail = message or _error_message(items) or ""
        raise HistoryRefused(f"HTTP {status} {detail}".strip(), code=code, status_code=status)

    def _sdk_budget_s(self) -> float:
        """The SDK's own retry budget over its hosts, plus the one request it may start at its end."""
        http = self._rest.http
        return float(http.http_max_retry_duration + http.http_open_timeout + http.http_request_timeout)

    async def _sdk(self, path_qs: str, *, paged: bool = True) -> HistoryPage:
        # Bounded as the lean GET is: httpx's timeouts are per read (a host trickling its answer
        # holds it for ever) and it reads a body whole, so the time is bounded here and the size
        # checked once read; a body that does not decode is refused (104011), not raised as is.
        budget = self._sdk_budget_s()
        try:
            async with asyncio.timeout(budget):
                page = await self._rest.request("GET", path_qs, REST_VERSION)
        except TimeoutError:
            msg = f"history answer (through the SDK's hosts) took over {budget:g}s"
            raise TransportError(msg, code=50003, status_code=504) from None
        except (ValueError, TypeError, RecursionError, msgpack.StackError, msgpack.ExtraData) as exc:
            if str(exc) == "Unsupported content type":  # the SDK's words for a 2xx of another type
                msg = "history answer of unsupported content type"
                raise TransportError(msg, code=50000, status_code=500) from None
            msg = f"history answer undecodable: {type(exc).__name__}"
            raise HistoryRefused(msg, code=HISTORY_FAILED, status_code=502) from None
        size = len(getattr(getattr(page, "response", None), "content", b"") or b"")
        if size > self._max_page_bytes:
            msg = f"history answer of {size} bytes, over the limit of {self._max_page_bytes}"
            raise HistoryRefused(msg, code=HISTORY_FAILED, status_code=502)
        if not page.success:
            code = _error_code(page.error_code, None, HISTORY_FAILED if paged else _NO_CODE)
            detail = page.error_message or ""
            raise HistoryRefused(
                f"HTTP {page.status_code} {detail}".strip(), code=code, status_code=page.status_code
            )
        headers = getattr(getattr(page, "response", None), "headers", None) if paged else None
        return HistoryPage(list(page.items), _next_of(path_qs, headers.get("Link") if headers else None))

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The answer's body, refused (104011) past ``limit`` bytes: before reading it when its
    ``Content-Length`` says so, else once ``limit + 1`` bytes have arrived."""
    if resp.content_length is not None and resp.content_length > limit:
        msg = f"history answer of {resp.content_length} bytes, over the limit of {limit}"
        raise HistoryRefused(msg, code=HISTORY_FAILED, status_code=502)
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        chunk = await resp.content.read(limit + 1 - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > limit:
        msg = f"history answer over the limit of {limit} bytes"
        raise HistoryRefused(msg, code=HISTORY_FAILED, status_code=502)
    return b"".join(chunks)


def _decode(body: bytes, content_type: str) -> Any:
    try:
        if content_type.startswith(_MSGPACK):
            return msgpack.unpackb(body)
        if content_type.startswith("application/json"):
            return json.loads(body)
    except (ValueError, TypeError, RecursionError, msgpack.StackError, msgpack.ExtraData) as exc:
        if isinstance(exc, msgpack.StackError | RecursionError) and content_type.startswith(_MSGPACK):
            with contextlib.suppress(TooDeep):  # else refused whole, below
                items, left_out = items_around_deep(body)
                log.warning("history_items_too_deep", code=HISTORY_FAILED, left_out=left_out, kept=len(items))
                return items
        # A garbled page is refused with AIT's code, not raised as the decoder's own exception
        # (which would end the run as a crash).
        msg = f"history answer undecodable as {content_type}: {type(exc).__name__}"
        raise HistoryRefused(msg, code=HISTORY_FAILED, status_code=502) from None
    msg = f"history answer of unsupported content type {content_type!r}"
    raise TransportError(msg, code=50000, status_code=500)


def _error_code(header: str | None, body: Any, default: int = HISTORY_FAILED) -> int:
    if header and header.isdigit():
        return int(header)
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, int) else default


def _error_message(body: Any) -> str | None:
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else None
