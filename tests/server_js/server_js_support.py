"""Helpers shared by the ably-js scenario tests (imported by the test modules of this folder)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from agent_worker.server import EmbeddedServer, ServerConfig
from tests.node_support import JS_ROOT, node_config, run_node_async

SCRIPTS = JS_ROOT / "server"

ServerFactory = Callable[..., Awaitable[EmbeddedServer]]


def script_env(server: EmbeddedServer, protocol: str, **extra: Any) -> dict[str, str]:
    """AW_NODE_CONFIG for tests/js/server/lib.mjs: where the server is, how to talk to it."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": server.port,
        "key": str(server.default_key),
        "protocol": protocol,
        "ns": f"js-{uuid.uuid4().hex[:10]}",
    }
    return node_config(**{**values, **extra})


async def run_script(
    name: str,
    server: EmbeddedServer,
    protocol: str,
    *,
    timeout: float = 110.0,  # noqa: ASYNC109 - passed on to the Node child process
    on_control: Callable[[dict[str, Any]], Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Runs tests/js/server/<name> against ``server``; returns its result object."""
    return await run_node_async(
        SCRIPTS / name,
        env=script_env(server, protocol, **extra),
        timeout=timeout,
        on_control=on_control,
    )


def scenario(
    name: str,
    protocol: str,
    *,
    server: Mapping[str, Any] | None = None,
    prepare: Callable[[EmbeddedServer], Mapping[str, Any]] | None = None,
    control: Callable[[EmbeddedServer], Callable[[dict[str, Any]], Any]] | None = None,
    timeout: float = 110.0,
    **extra: Any,
) -> dict[str, Any]:
    """Starts a fresh server (``server`` = ServerConfig overrides), runs one script, stops it.

    Synchronous (its own event loop), so module-scoped fixtures can share one Node run between
    several tests. ``prepare(server)`` returns extra script configuration (e.g. minted tokens);
    ``control(server)`` builds the handler for the script's ``ctl()`` requests.
    """

    async def go() -> dict[str, Any]:
        srv = EmbeddedServer(ServerConfig(host="127.0.0.1", port=0, **dict(server or {})))
        await srv.start()
        try:
            handler = control(srv) if control else None
            config = {**extra, **(prepare(srv) if prepare else {})}
            return await run_script(name, srv, protocol, timeout=timeout, on_control=handler, **config)
        finally:
            await srv.stop()

    return asyncio.run(go())


def strictly_increasing(values: list[str]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))
