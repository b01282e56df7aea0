"""Building the connection pool's ``AblyRealtime`` clients cheaply: spares built ahead, one token shared.

Opening a pooled connection used to cost ~30 ms of CPU, most of it before a byte was sent:

* constructing ``AblyRealtime`` builds an ``httpx.AsyncClient`` for its REST side, which loads a TLS
  trust store (``load_verify_locations``, ~20 ms of CPU, ~0.8 MB each). It was built on the loop's
  default executor, where 31 of them at once also held up every ``getaddrinfo`` the burst needed
  (websocket connects, REST history requests) behind them;
* with a key over plain HTTP (a local server) each client first requests its own token over REST
  (a new HTTP connection, a request, a token signed by the server).

So :class:`ClientFactory` builds clients on a thread of its own, one at a time (the first
connection of a burst is up after one build, not after all of them), keeps spare clients built
ahead (by default as many as the pool may still open: ~0.8 MB each buys a burst instant growth),
built only while the worker is quiet and once it has run ``after_s`` (a short-lived worker — a test,
a one-off command — never pays for them); and with a key over plain HTTP every client authenticates
with one token, requested once by the transport's REST client and renewed shortly before it
expires (an Ably token is not tied to one connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ably import AblyRealtime, AblyRest
from ably.types.tokendetails import TokenDetails

from agent_worker.logs import get_logger

__all__ = ["ClientFactory"]

log = get_logger("agent_worker.transport")

_RENEW_S = 60.0  # renew a shared token this long before it expires


class ClientFactory:
    """``await take()``: an unconnected ``AblyRealtime`` on this loop, a spare when one is ready."""

    def __init__(
        self,
        options: Callable[[], dict[str, Any]],
        *,
        spares: Callable[[], int] = lambda: 0,
        quiet: Callable[[], bool] = lambda: True,
        spacing_s: float = 0.01,
        after_s: float = 0.0,
    ) -> None:
        self._options = options
        self.spares = spares
        self._quiet = quiet
        self._spacing_s = spacing_s
        self._after_s = after_s
        self._not_before: float | None = None
        self._ready: list[AblyRealtime] = []
        self._task: asyncio.Task[None] | None = None
        self._token: TokenDetails | None = None
        self._token_rest: AblyRest | None = None
        self._token_lock = asyncio.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self.built = 0
        self.taken_spare = 0

    def share_token(self, rest: AblyRest) -> None:
        """Authenticate every client with one token requested by ``rest`` (key-based)."""
        self._token_rest = rest

    async def _shared_token(self, _params: Any) -> TokenDetails:
        token = self._token
        if token is None or token.expires / 1000 - time.time() < _RENEW_S:
            async with self._token_lock:
                token = self._token
                if token is None or token.expires / 1000 - time.time() < _RENEW_S:
                    assert self._token_rest is not None
                    # authorize(), not request_token(): the REST client keeps this token too, so
                    # its first burst of history reads does not request one each (they all found
                    # none and asked at once: ~70 token requests in a burst of 100 starts).
                    token = self._token = await self._token_rest.auth.authorize()
        return token

    def _client_options(self) -> dict[str, Any]:
        opts = self._options()
        if self._token_rest is not None and "key" in opts:
            for name in ("key", "use_token_auth", "default_token_params"):
                opts.pop(name, None)
            opts["auth_callback"] = self._shared_token
        return opts

    async def _build(self) -> AblyRealtime:
        loop = asyncio.get_running_loop()
        opts = self._client_options()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="ably-client")
        client = await loop.run_in_executor(
            self._executor, lambda: AblyRealtime(loop=loop, auto_connect=False, **opts)
        )
        self.built += 1
        return client

    async def take(self) -> AblyRealtime:
        if self._ready:
            self.taken_spare += 1
            client = self._ready.pop()
        else:
            client = await self._build()
        self.wake()
        return client

    def wake(self) -> None:
        """(Re)start building spares up to ``spares()`` in the background."""
        if self.spares() <= len(self._ready) or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.get_running_loop().create_task(self._keep())

    async def _keep(self) -> None:
        loop = asyncio.get_running_loop()
        if self._not_before is None:
            self._not_before = loop.time() + self._after_s
        await asyncio.sleep(max(0.0, self._not_before - loop.time()))
        while len(self._ready) < self.spares():
            await asyncio.sleep(self._spacing_s)
            if not self._quiet():
                continue
            try:
                self._ready.append(await self._build())
            except Exception as exc:  # a spare is an optimisation: take() builds on demand anyway
                log.warning("spare_client_failed", error=repr(exc))
                return

    @property
    def ready(self) -> int:
        """Spare clients built and waiting."""
        return len(self._ready)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        spares, self._ready = self._ready, []
        await asyncio.gather(*(asyncio.wait_for(c.close(), 5) for c in spares), return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
