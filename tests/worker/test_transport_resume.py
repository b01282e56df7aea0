"""The transport adapter across a dropped connection: what ably-python resends and what is new must
reach the server in ``msgSerial`` order (see the notes in agent_worker/transport/ably.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent_worker.errors import NotSentError
from agent_worker.protocol.wire import OutboundMessage
from agent_worker.server import EmbeddedServer
from agent_worker.transport.ably import AblyTransport, _Connection
from tests.runtime.runtime_support import worker_settings


async def test_append_submitted_while_reconnecting_follows_the_resent_one(
    ably_server: EmbeddedServer,
) -> None:
    """An append in flight when the socket drops is resent on resume; one submitted while the
    client reconnects is sent only once the connection is back, so both are ACKed and the text is
    in order. (Started while reconnecting, ably-python would queue it ahead of the resent append
    in its ACK queue: the resent append's ACK would resolve nothing and its future would hang; and
    a send started just before the resend tasks run would overtake them on the wire.)"""
    # Checks each append as sent across the resume: server-side rollup (server/rollup.py) is off.
    transport = AblyTransport(worker_settings(ably_server, rate=1000.0, append_rollup_window_ms=0))
    await transport.connect()
    try:
        name = f"conversations:resume-{uuid.uuid4().hex[:8]}"
        channel = transport.channel(name)
        serial = await channel.publish(OutboundMessage(name="t", data="a"))
        assert serial is not None
        connection = channel.client.connection
        down = asyncio.Event()

        def on_change(change: Any) -> None:
            if str(getattr(change.current, "value", change.current)) in {"disconnected", "connecting"}:
                down.set()

        connection.on(on_change)
        # Written (its first step ran) but never ACKed: the server drops the socket unread.
        await channel.acquire()
        in_flight = channel.start_append(serial, OutboundMessage(name="t", data="b"))
        await asyncio.sleep(0)
        assert ably_server.drop_connections("agent-worker") == 1
        async with asyncio.timeout(20):
            await down.wait()

        async def submit() -> asyncio.Task[str | None]:
            await channel.acquire()
            return channel.start_append(serial, OutboundMessage(name="t", data="c"))

        async with asyncio.timeout(20):
            later = await submit()
            await asyncio.gather(in_flight, later)
        connection.off(on_change)
        assert ably_server.hub.channel(name).log.records[serial].content["data"] == "abc"
    finally:
        await transport.close()


async def test_connections_the_pool_opens_count_reconnects_and_send_after_one(
    ably_server: EmbeddedServer,
) -> None:
    """Each connection the pool opens as load grows carries the reconnect count and the send gate
    (``_Connection.ready``), not just the first one."""
    settings = worker_settings(ably_server, rate=1000.0, append_rollup_window_ms=0)
    # A target below one session's reservation: every new session channel grows the pool.
    transport = AblyTransport(replace(settings, target_messages_per_second=1.0))
    await transport.connect()
    try:
        names = [f"conversations:pool-{uuid.uuid4().hex[:8]}" for _ in range(2)]
        channels = [await transport.open_channel(name) for name in names]
        assert len({id(ch.client) for ch in channels}) == 2
        assert [ch.reconnects for ch in channels] == [0, 0]
        back = [asyncio.Event() for _ in channels]

        def watch(event: asyncio.Event) -> Any:
            def on_change(change: Any) -> None:
                if str(getattr(change.current, "value", change.current)) == "connected":
                    event.set()

            return on_change

        for ch, event in zip(channels, back, strict=True):
            ch.client.connection.on(watch(event))
        assert ably_server.drop_connections("agent-worker") == len(transport.pool.connections)
        async with asyncio.timeout(20):
            await asyncio.gather(*(event.wait() for event in back))
            # The public emitter is deferred; the count is taken on the manager's synchronous one.
            assert [ch.reconnects for ch in channels] == [1, 1]
            serials = [await ch.publish(OutboundMessage(name="t", data=ch.name)) for ch in channels]
        for name, serial in zip(names, serials, strict=True):
            assert serial is not None
            assert ably_server.hub.channel(name).log.records[serial].content["data"] == name
    finally:
        await transport.close()


async def test_sends_waiting_for_the_reconnect_go_on_in_order(ably_server: EmbeddedServer) -> None:
    """Appends started while the connection is down wait for it (``_Connection.ready``); one started
    on the very loop turn the gate opens must still go after them, not overtake the waiters that are
    still waking up (the closing append of a reordered stream would fix its wrong text for live
    clients: the later full-text update is ignored by a closed stream)."""
    transport = AblyTransport(worker_settings(ably_server, rate=1000.0, append_rollup_window_ms=0))
    await transport.connect()
    try:
        name = f"conversations:gate-{uuid.uuid4().hex[:8]}"
        channel = transport.channel(name)
        serial = await channel.publish(OutboundMessage(name="t", data="a"))
        assert serial is not None
        conn = channel._conn
        assert ably_server.drop_connections("agent-worker") == 1
        async with asyncio.timeout(20):
            # polled each loop turn: the test needs the exact turn each state is first seen on
            while str(conn.client.connection.state.value) == "connected":  # noqa: ASYNC110
                await asyncio.sleep(0)
        waiting = []
        for part in "bcd":
            await channel.acquire()
            waiting.append(channel.start_append(serial, OutboundMessage(name="t", data=part)))
            await asyncio.sleep(0)
        async with asyncio.timeout(20):
            while not conn._settled:  # noqa: ASYNC110 - the first loop turn the gate is open
                await asyncio.sleep(0)
        late = channel.start_append(serial, OutboundMessage(name="t", data="e"))
        async with asyncio.timeout(20):
            await asyncio.gather(*waiting, late)
        assert ably_server.hub.channel(name).log.records[serial].content["data"] == "abcde"
    finally:
        await transport.close()


async def test_a_send_that_outwaits_the_reconnect_is_not_handed_to_the_sdk_out_of_order(
    ably_server: EmbeddedServer,
) -> None:
    """The socket dies with an append unread by the server, and the resume takes longer than a send
    may wait for it (``_Connection.ready``'s bound). Handed to ably-python then, the publish would
    be queued ahead of the append's re-send in its ACK queue, and the ACK of both (one ACK, two
    serials) would give the publish the *append's* result: a stream's appends then went to a
    serial that names no message (104000 "no message with serial", as seen under load in
    test_hundred_streams_survive_twenty_drops). Instead the waiting send fails as not sent (a
    publish retries it), and everything lands once, each with its own serial."""
    transport = AblyTransport(worker_settings(ably_server, rate=1000.0, append_rollup_window_ms=0))
    await transport.connect(wait_s=1.0)  # also ready()'s bound
    try:
        name = f"conversations:slowresume-{uuid.uuid4().hex[:8]}"
        channel = transport.channel(name)
        channel.ack_timeout_s = 20.0
        serial = await channel.publish(OutboundMessage(name="t", data="a"))
        assert serial is not None
        assert ably_server.lose_inbound("agent-worker") == 1
        await channel.acquire()
        lost = channel.start_append(serial, OutboundMessage(name="t", data="b"))
        await asyncio.sleep(0)
        ably_server.hold_connections("agent-worker")
        assert ably_server.drop_connections("agent-worker") == 1
        state = channel.client.connection
        async with asyncio.timeout(20):
            while str(state.state.value) == "connected":  # noqa: ASYNC110 - the SDK sees the drop
                await asyncio.sleep(0.01)
        second = asyncio.create_task(channel.publish(OutboundMessage(name="t", data="second")))
        await asyncio.sleep(3.0)  # past ready()'s 1 s bound while the reconnect is held
        ably_server.hold_connections("agent-worker", held=False)
        async with asyncio.timeout(60):
            second_serial, _ = await asyncio.gather(second, lost)
        records = ably_server.hub.channel(name).log.records
        assert second_serial in records and records[second_serial].content["data"] == "second"
        assert records[serial].content["data"] == "ab"
    finally:
        ably_server.hold_connections("agent-worker", held=False)
        await transport.close()


async def test_sends_resent_on_a_new_connection_get_new_rising_msg_serials(
    ably_server: EmbeddedServer,
) -> None:
    """A publish awaiting its ACK when the connection is lost for good is re-sent on the new one
    (publishes carry fixed ids). ably-python would re-send it with its old msgSerial and number the
    next sends from 0, so the new connection saw 1, then 0 (Ably may drop a msgSerial that does not
    rise as a repeat); like ably-js, it goes out as 0 and the next send as 1."""
    transport = AblyTransport(worker_settings(ably_server, rate=1000.0, append_rollup_window_ms=0))
    await transport.connect()
    try:
        name = f"conversations:reserial-{uuid.uuid4().hex[:8]}"
        channel = transport.channel(name)
        assert await channel.publish(OutboundMessage(name="t", data="first")) is not None
        assert ably_server.withhold_acks("agent-worker") == 1
        second = asyncio.create_task(channel.publish(OutboundMessage(name="t", data="second")))
        records = ably_server.hub.channel(name).log.records
        async with asyncio.timeout(20):
            while len(records) < 2:  # noqa: ASYNC110 - applied, its ACK withheld
                await asyncio.sleep(0.01)
        with capture_logs() as logs:
            assert ably_server.drop_connections("agent-worker", resume=False) == 1
            async with asyncio.timeout(60):
                second_serial = await second
                third_serial = await channel.publish(OutboundMessage(name="t", data="third"))
        assert [e for e in logs if e["event"] == "msg_serial_not_rising"] == []
        assert second_serial is not None and records[second_serial].content["data"] == "second"
        assert third_serial is not None and records[third_serial].content["data"] == "third"
        assert [r.content["data"] for r in records.values()] == ["first", "second", "third"]
    finally:
        await transport.close()


class _FakeManager:
    """The slice of ably-python's connection manager ``_Connection`` reads: its synchronous state
    event, the connection id, the queue of un-ACKed messages."""

    def __init__(self) -> None:
        self.connection_id: str | None = "c1"
        self.listeners: list[Callable[[Any], None]] = []
        self.queued_messages: list[Any] = []
        self.msg_serial = 0

    def on(self, _event: str, listener: Callable[[Any], None]) -> None:
        self.listeners.append(listener)


class _FakeClient:
    def __init__(self, state: str) -> None:
        manager = _FakeManager()
        self.manager = manager
        self.connection = SimpleNamespace(connection_manager=manager, state=SimpleNamespace(value=state))

    def become(self, state: str) -> None:
        self.connection.state.value = state
        for listener in self.manager.listeners:
            listener(SimpleNamespace(current=SimpleNamespace(value=state)))


async def test_a_waiter_woken_as_the_connection_drops_again_waits_again() -> None:
    """The connection came back and the first waiter was woken, but it dropped again before that
    waiter's task ran: the waiter must not go on (its send would reach ably-python while it is
    disconnected, out of msgSerial order in its ACK queue: later ACKs then resolved sends still in
    flight, which were never re-sent after the next drop — words lost under 20 drops). It waits
    for the next reconnect; with none within ``wait_s`` it fails as not sent."""
    client = _FakeClient("disconnected")
    conn = _Connection(client, wait_s=30.0)  # type: ignore[arg-type]
    waiter = asyncio.create_task(conn.ready())
    await asyncio.sleep(0)
    client.become("connected")
    async with asyncio.timeout(20):
        while not conn._settled:  # noqa: ASYNC110 - the loop turn the waiter is woken
            await asyncio.sleep(0)
    client.become("disconnected")  # before the woken waiter's task has run
    for _ in range(20):
        await asyncio.sleep(0)
    assert not waiter.done()
    client.become("connected")
    async with asyncio.timeout(20):
        await waiter
    quick = _Connection(_FakeClient("disconnected"), wait_s=0.2)  # type: ignore[arg-type]
    with pytest.raises(NotSentError):
        await quick.ready()
