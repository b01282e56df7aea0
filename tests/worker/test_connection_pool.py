"""The worker's connection pool: it grows with load, places sessions by load, and shrinks when idle."""

from __future__ import annotations

import asyncio
from typing import Any

from agent_worker.providers.echo import EchoProvider
from agent_worker.server import EmbeddedServer, ServerConfig
from agent_worker.transport.pool import ConnectionPool, PoolPolicy
from tests.runtime.runtime_support import ChatClient, start_harness


class _Client:
    def __init__(self, n: int) -> None:
        self.n = n
        self.closed = False


def _fake_pool(policy: PoolPolicy) -> tuple[ConnectionPool[_Client], list[_Client]]:
    made: list[_Client] = []

    async def connect() -> _Client:
        made.append(_Client(len(made)))
        return made[-1]

    async def close(client: _Client) -> None:
        client.closed = True

    return ConnectionPool(policy, connect, close), made


async def test_placement_reserves_load_and_grows_then_shrinks_when_idle() -> None:
    """Three fresh sessions fill a connection (12 msg/s reserved each, target 36); the fourth opens a
    second one; once every session is released the extra connection closes, the minimum stays."""
    pool, made = _fake_pool(PoolPolicy(min_connections=1, max_connections=4, idle_close_s=0.0))
    await pool.start()
    try:
        first = [await pool.acquire(f"s{i}") for i in range(3)]
        assert {c.client for c in first} == {made[0]}
        fourth = await pool.acquire("s3")
        assert fourth.client is made[1]
        assert pool.peak == 2
        assert (await pool.acquire("s0")) is first[0]  # a placed session keeps its connection
        for i in range(4):
            pool.release(f"s{i}")
        assert await pool.close_idle() == 1
        assert len(pool.connections) == 1
        assert made[1].closed and not made[0].closed
    finally:
        await pool.close()
    assert made[0].closed


async def test_pool_stops_growing_at_max_and_uses_the_least_loaded() -> None:
    pool, made = _fake_pool(PoolPolicy(min_connections=1, max_connections=2))
    await pool.start()
    try:
        placed = [await pool.acquire(f"s{i}") for i in range(10)]
        assert len(made) == 2
        per_connection = sorted(sum(1 for c in placed if c.client is m) for m in made)
        assert per_connection == [5, 5]
    finally:
        await pool.close()


async def test_a_connection_that_fails_to_open_falls_back_to_an_open_one() -> None:
    calls = 0

    async def connect() -> _Client:
        nonlocal calls
        calls += 1
        if calls > 1:
            msg = "refused"
            raise OSError(msg)
        return _Client(0)

    async def close(client: _Client) -> None:
        client.closed = True

    pool: ConnectionPool[_Client] = ConnectionPool(PoolPolicy(target_rate=10.0), connect, close)
    await pool.start()
    try:
        conn = await pool.acquire("s0")  # 12 msg/s reserved > 10: grows, the new one fails
        assert conn.client is not None and conn.client.n == 0
        assert len(pool.connections) == 1
    finally:
        await pool.close()


async def test_worker_opens_connections_for_simultaneous_sessions_under_enforced_limits() -> None:
    """Twelve conversations started at once against a server enforcing Ably's limits: the worker,
    starting from one connection, spreads them over several (distinct connectionIds on the wire),
    every reply arrives whole and nothing is refused for rate."""
    config = ServerConfig(port=0, enforce_rate_limits=True, presence_leave_delay_ms=300)
    async with EmbeddedServer(config) as server:
        harness = await start_harness(server, EchoProvider(tokens_per_second=200), rate=45.0, connections=1)
        clients: list[ChatClient] = []
        try:
            names = [f"conversations:pool-{i}" for i in range(12)]
            for name in names:
                client = ChatClient(server, name, "user-abc")
                await client.connect()
                clients.append(client)
            texts = [" ".join(f"w{i}-{k}" for k in range(40)) for i in range(12)]
            sends = [await c.send_text(t, parent=None) for c, t in zip(clients, texts, strict=True)]
            results: list[Any] = await asyncio.gather(
                *(harness.invoke(n, s.event_id) for n, s in zip(names, sends, strict=True))
            )
            assert [r[0] for r in results] == [200] * 12
            connection_ids = set()
            for c, s, text in zip(clients, sends, texts, strict=True):
                end = await c.run_end_for(s.codec_message_id, wait_s=60)
                assert end.transport_headers["run-reason"] == "complete"
                assert c.run_text(end.transport_headers["run-id"]) == text
                connection_ids.add(end.connection_id)
            assert harness.worker.transport is not None
            pool = harness.worker.transport.pool
            assert pool.peak >= 4  # 12 fresh sessions x 12 msg/s reserved, 36 msg/s per connection
            assert len(connection_ids) >= 4
            assert all(c.limiter.sent > 0 for c in pool.ready_connections[:4])
        finally:
            for c in clients:
                await c.close()
            await harness.close()
