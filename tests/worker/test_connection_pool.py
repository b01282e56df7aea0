"""The worker's connection pool: it grows with load, places sessions by load, and shrinks when idle."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from ably.rest.auth import Auth

from agent_worker.config import Secret
from agent_worker.errors import TransportError
from agent_worker.providers.echo import EchoProvider
from agent_worker.server import EmbeddedServer, ServerConfig
from agent_worker.transport.ably import AblySettings, AblyTransport
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


async def test_a_session_whose_run_is_over_gives_its_reservation_back() -> None:
    """A reservation stands for traffic a starting session has not sent yet: once its run is over
    (``settle``), the connection takes a new session in its place at once, where it would have
    opened another connection while the reservation stood (``reserve_s``, here an hour)."""
    pool, made = _fake_pool(PoolPolicy(min_connections=1, max_connections=4, reserve_s=3600.0))
    await pool.start()
    try:
        for i in range(3):
            assert (await pool.acquire(f"s{i}")).client is made[0]
        pool.settle("s1")
        pool.settle("unknown")  # a session the pool never placed: nothing to give back
        assert (await pool.acquire("s3")).client is made[0]
        assert len(made) == 1
        pool.settle("s1")  # again: no second place freed
        assert (await pool.acquire("s4")).client is made[1]  # s0, s2, s3 still reserved: full
        assert len(made) == 2
    finally:
        await pool.close()


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
            assert not server.hub.refused  # no 42911/42910: no connection went over Ably's limits
        finally:
            for c in clients:
                await c.close()
            await harness.close()


class _Gate:
    """A fake ``connect`` whose opens finish only when the test says so (no timing involved)."""

    def __init__(self) -> None:
        self.pending: list[asyncio.Future[_Client]] = []
        self.made: list[_Client] = []

    async def connect(self) -> _Client:
        future: asyncio.Future[_Client] = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        return await future

    def open_next(self, *, fail: bool = False) -> None:
        future = self.pending.pop(0)
        if fail:
            future.set_exception(OSError("refused"))
        else:
            self.made.append(_Client(len(self.made)))
            future.set_result(self.made[-1])

    @staticmethod
    async def close(client: _Client) -> None:
        client.closed = True


async def _gated_pool(policy: PoolPolicy) -> tuple[_Gate, ConnectionPool[_Client]]:
    """A started pool (its first connection open) whose further opens the test completes."""
    gate = _Gate()
    pool: ConnectionPool[_Client] = ConnectionPool(policy, gate.connect, gate.close)
    starting = asyncio.ensure_future(pool.start())
    await _settle()
    gate.open_next()
    await starting
    return gate, pool


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_burst_opens_the_connections_it_needs_in_parallel_and_is_served_in_order() -> None:
    """Ten sessions arrive at once: three fit the open connection, the other seven queue and the
    pool starts ceil(7 / 3) = 3 opens at once (not one per session, not one after another); each
    connection that comes up takes the oldest waiting sessions it has room for."""
    gate, pool = await _gated_pool(PoolPolicy(max_connections=8))
    try:
        tasks = [asyncio.ensure_future(pool.acquire(f"s{i}")) for i in range(10)]
        await _settle()
        assert [t.done() for t in tasks] == [True] * 3 + [False] * 7
        assert len(gate.pending) == 3  # opened together for the queue
        assert len(pool.connections) == 4
        gate.open_next()
        await _settle()
        assert [t.done() for t in tasks] == [True] * 6 + [False] * 4  # the oldest three
        assert {tasks[i].result().client for i in (3, 4, 5)} == {gate.made[1]}
        gate.open_next()
        gate.open_next()
        await _settle()
        assert all(t.done() for t in tasks)
        assert tasks[9].result().client is gate.made[3]
        per_connection = sorted(sum(1 for t in tasks if t.result().client is m) for m in gate.made)
        assert per_connection == [1, 3, 3, 3]
        assert pool.peak == 4 and not gate.pending
    finally:
        await pool.close()


async def test_a_burst_never_opens_more_than_max_connections() -> None:
    gate, pool = await _gated_pool(PoolPolicy(max_connections=3))
    try:
        tasks = [asyncio.ensure_future(pool.acquire(f"s{i}")) for i in range(30)]
        await _settle()
        assert len(pool.connections) == 3 and len(gate.pending) == 2
        gate.open_next()
        gate.open_next()
        await _settle()
        # Every connection full and nothing left to open: the rest share the least-loaded ones
        # (their rate limiters keep each under Ably's limit).
        assert all(t.done() for t in tasks)
        counts = sorted(sum(1 for t in tasks if t.result().client is m) for m in gate.made)
        assert counts == [10, 10, 10] and pool.peak == 3
    finally:
        await pool.close()


async def test_queued_sessions_fall_back_to_open_connections_when_an_open_fails() -> None:
    gate, pool = await _gated_pool(PoolPolicy(max_connections=4))
    try:
        tasks = [asyncio.ensure_future(pool.acquire(f"s{i}")) for i in range(5)]
        await _settle()
        assert len(gate.pending) == 1
        gate.open_next(fail=True)
        await _settle()
        # No retry storm: the failed open is not replaced at once; the queue uses what is open.
        assert all(t.done() for t in tasks) and not gate.pending
        assert {t.result().client for t in tasks} == {gate.made[0]}
        assert len(pool.connections) == 1
    finally:
        await pool.close()


async def test_closing_the_pool_fails_queued_sessions() -> None:
    _gate, pool = await _gated_pool(PoolPolicy(max_connections=2))
    tasks = [asyncio.ensure_future(pool.acquire(f"s{i}")) for i in range(4)]
    await _settle()
    assert tasks[3].done() is False
    await pool.close()
    with pytest.raises(TransportError, match="closed") as refused:
        await tasks[3]
    assert refused.value.code == 80017


async def test_a_session_cancelled_while_queued_leaves_the_queue() -> None:
    """An invocation cancelled while its session waits for a connection takes no room on the
    connection that comes up: the next session in line gets it."""
    gate, pool = await _gated_pool(PoolPolicy(max_connections=2))
    try:
        tasks = [asyncio.ensure_future(pool.acquire(f"s{i}")) for i in range(7)]
        await _settle()
        tasks[3].cancel()
        await _settle()
        gate.open_next()
        await _settle()
        assert tasks[3].cancelled()
        second = {f"s{i}" for i in (4, 5, 6) if tasks[i].result().client is gate.made[1]}
        assert second == {"s4", "s5", "s6"}
        assert "s3" not in pool.connections[1].channels
    finally:
        await pool.close()


def _local_settings(server: EmbeddedServer, **kw: Any) -> AblySettings:
    """The worker's Ably settings for the embedded server on loopback (the tests vary the pool)."""
    return AblySettings(
        endpoint=f"127.0.0.1:{server.port}",
        key=Secret(server.default_key),
        tls=False,
        client_id="agent-worker",
        **kw,
    )


async def _until(predicate: Any, what: str, limit_s: float = 30.0) -> None:
    async with asyncio.timeout(limit_s):
        while not predicate():  # noqa: ASYNC110 - polls the factory's background building
            await asyncio.sleep(0.02)


async def test_pool_grows_with_spare_clients_sharing_one_token() -> None:
    """With a key over plain HTTP every pooled connection authenticates with the one token the
    transport requested (not one token request per connection), and growth takes the clients
    built ahead instead of building them then."""
    async with EmbeddedServer(ServerConfig(port=0)) as server:
        settings = _local_settings(
            server,
            max_connections=3,
            spare_clients=2,
            spare_clients_after_s=0.0,
            warm_connections=0,  # growth only: the spares are what is tested here
        )
        transport = AblyTransport(settings)
        await transport.connect()
        try:
            factory = transport._clients
            await _until(lambda: factory.ready == 2, "two spare clients")
            built = factory.built
            channels = [await transport.open_channel(f"conversations:spare-{i}") for i in range(9)]
            pool = transport.pool
            assert len(pool.ready_connections) == 3
            assert factory.taken_spare == 2 and factory.built == built  # none built on demand
            tokens = {c.client.client.auth.token_details.token for c in pool.ready_connections if c.client}
            assert len(tokens) == 1
            # and it is a working token: every connection attaches its channels
            for ch in channels:
                await ch.subscribe(lambda _m: None)
            assert {ch.state for ch in channels} == {"attached"}
            # Once the pool shrinks again there is room for spares: they are built back.
            assert factory.spares() == 0
            pool.policy = dataclasses.replace(pool.policy, idle_close_s=0.0)
            for ch in channels:
                await transport.release(ch.name)
            assert await pool.close_idle() == 2
            await _until(lambda: factory.ready == 2, "the spares built back")
        finally:
            await transport.close()


async def test_history_reads_use_the_shared_token_without_requesting_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a key over plain HTTP the REST client keeps the token the connections share, so a burst
    of simultaneous history reads (each finding no token of its own before) requests none: it was
    one token request per read in flight."""
    requested: list[object] = []
    original = Auth.request_token

    async def counted(self: Auth, *args: Any, **kwargs: Any) -> Any:
        requested.append(self)
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(Auth, "request_token", counted)
    async with EmbeddedServer(ServerConfig(port=0)) as server:
        settings = _local_settings(
            server,
            spare_clients=0,
            warm_connections=0,
        )
        transport = AblyTransport(settings)
        await transport.connect()
        try:
            rest = transport._rest
            assert rest is not None
            # the shared token, requested once by the REST client for the first connection (whose
            # own auth asks it through its callback)
            assert requested.count(rest.auth) == 1
            conn = transport.pool.ready_connections[0].client
            assert conn is not None
            shared = conn.client.auth.token_details.token
            assert rest.auth.token_details is not None and rest.auth.token_details.token == shared
            channels = [transport.channel(f"conversations:tok-{i}") for i in range(20)]

            async def read(channel: Any) -> int:
                return sum([len(page) async for page in channel.history_pages()])

            before = len(requested)
            assert await asyncio.gather(*(read(ch) for ch in channels)) == [0] * 20
            assert len(requested) == before
        finally:
            await transport.close()


def _warm_policy(**kw: Any) -> PoolPolicy:
    return PoolPolicy(warm_after_s=0.0, warm_check_s=0.01, **kw)


async def test_warm_connections_are_opened_ahead_one_at_a_time_and_take_a_burst_at_once() -> None:
    """``warm`` connections carrying no session are opened before any session needs them, one at a
    time; simultaneous sessions are then placed on them at once (no open in between), spread one per
    connection; the pool tops the headroom up again, within ``max_connections``."""
    gate, pool = await _gated_pool(_warm_policy(max_connections=5, warm=3))
    try:
        for _ in range(2):  # the first connection carries nothing: two more make three
            await _until(lambda: len(gate.pending) == 1, "a warm open")
            assert len(pool.connections) == len(gate.made) + 1  # one open at a time
            gate.open_next()
        await _until(lambda: len(pool.ready_connections) == 3, "three warm connections")
        await asyncio.sleep(0.05)
        assert not gate.pending and len(pool.connections) == 3  # the headroom is there: no more
        tasks = [asyncio.ensure_future(pool.acquire(f"s{i}")) for i in range(3)]
        await _settle()
        assert all(t.done() for t in tasks)
        assert {t.result().client for t in tasks} == set(gate.made)  # one per warm connection
        await _until(lambda: len(gate.pending) == 1, "the headroom topped up")
        gate.open_next()
        await _until(lambda: len(gate.pending) == 1, "the last one up to max_connections")
        gate.open_next()
        await _until(lambda: len(pool.ready_connections) == 5, "max_connections open")
        await asyncio.sleep(0.05)
        assert not gate.pending and len(pool.connections) == 5
    finally:
        await pool.close()


async def test_warm_connections_wait_until_the_transport_is_quiet() -> None:
    quiet = [False]
    gate = _Gate()
    pool: ConnectionPool[_Client] = ConnectionPool(
        _warm_policy(max_connections=4, warm=2), gate.connect, gate.close, quiet=lambda: quiet[0]
    )
    starting = asyncio.ensure_future(pool.start())
    await _settle()
    gate.open_next()
    await starting
    try:
        await asyncio.sleep(0.1)
        assert not gate.pending and len(pool.connections) == 1  # busy: nothing opened ahead
        quiet[0] = True
        await _until(lambda: len(gate.pending) == 1, "a warm open once quiet")
        gate.open_next()
        await _until(lambda: len(pool.ready_connections) == 2, "two connections")
    finally:
        await pool.close()


async def test_idle_connections_close_down_to_the_warm_headroom() -> None:
    """After a burst, connections left without sessions close (``idle_close_s``) except ``warm`` of
    them: the next burst finds them open."""
    pool, made = _fake_pool(PoolPolicy(max_connections=4, idle_close_s=0.0, warm=2, warm_after_s=3600))
    await pool.start()
    try:
        for i in range(12):
            await pool.acquire(f"s{i}")
        assert len(made) == 4
        for i in range(12):
            pool.release(f"s{i}")
        assert await pool.close_idle() == 2
        assert len(pool.connections) == 2 and [m.closed for m in made] == [False, False, True, True]
        assert await pool.close_idle() == 0
    finally:
        await pool.close()


async def test_transport_keeps_warm_connections_open_for_new_sessions() -> None:
    """Over the embedded server: the transport opens its warm connections ahead (each a real,
    connected client), and new session channels attach on them without the pool opening any."""
    async with EmbeddedServer(ServerConfig(port=0)) as server:
        settings = _local_settings(
            server,
            max_connections=4,
            warm_connections=3,
            spare_clients_after_s=0.0,
        )
        transport = AblyTransport(settings)
        await transport.connect()
        try:
            pool = transport.pool
            await _until(lambda: len(pool.ready_connections) == 3, "three warm connections")
            warm = list(pool.ready_connections)
            channels = [await transport.open_channel(f"conversations:warm-{i}") for i in range(3)]
            for ch in channels:
                await ch.subscribe(lambda _m: None)
            assert {ch.state for ch in channels} == {"attached"}
            assert [pool._placement[ch.name] for ch in channels] == warm  # one per warm connection
            assert all(c in pool.connections for c in warm)
            # They are now in use: the pool opens one more ahead (max_connections = 4).
            await _until(lambda: len(pool.ready_connections) == 4, "the headroom topped up")
        finally:
            await transport.close()


async def test_a_failed_warm_open_is_retried_ever_more_rarely() -> None:
    """A service refusing more connections (its limit per account) gets one warm open, then one
    after ``retry_open_s``, then twice that: no retry storm, no log flood."""
    gate, pool = await _gated_pool(_warm_policy(max_connections=4, warm=3, retry_open_s=0.5))
    try:
        stamps = []
        for _ in range(3):
            await _until(lambda: len(gate.pending) == 1, "a warm open")
            stamps.append(asyncio.get_running_loop().time())
            gate.open_next(fail=True)
            await _settle()
            assert len(pool.connections) == 1 and not gate.made[1:]  # failed ones are not kept
        # The pauses double (>= 0.5 s then >= 1 s: lower bounds only, never an upper one).
        assert stamps[1] - stamps[0] >= 0.5 and stamps[2] - stamps[1] >= 1.0
    finally:
        await pool.close()


async def test_the_worker_keeps_warm_connections_and_a_bare_transport_does_not() -> None:
    """``agent-worker run`` (its config) keeps 24 warm connections, ``[ably] warm_connections`` sets
    it; a transport built from bare settings (the terminal chat client's) keeps none."""
    from agent_worker.config import AblyConfig, Config  # noqa: PLC0415
    from agent_worker.worker.connect import connect  # noqa: PLC0415

    shipped = await connect(Config(ably=AblyConfig(endpoint="127.0.0.1:9", key=Secret("a.b:c"))))
    assert AblyTransport(shipped.settings).pool.policy.warm == 24
    tuned = await connect(
        Config(ably=AblyConfig(endpoint="127.0.0.1:9", key=Secret("a.b:c"), warm_connections=2))
    )
    assert AblyTransport(tuned.settings).pool.policy.warm == 2
    bare = AblySettings(endpoint="127.0.0.1:9", key=Secret("a.b:c"), tls=False)
    assert AblyTransport(bare).pool.policy.warm == 0
