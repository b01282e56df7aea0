"""``AblySettings.yield_between_appends``: before a second append's frame in the same loop turn the
worker gives up its CPU once when the realtime endpoint is on this host (the embedded server in
another process, which the previous write woke onto the worker's CPU), and never against a remote
endpoint unless told; one append per turn never yields."""

from __future__ import annotations

import asyncio
import dataclasses
import os

import pytest

from agent_worker.protocol.wire import OutboundMessage
from agent_worker.server import EmbeddedServer
from agent_worker.transport.ably import AblySettings, AblyTransport
from tests.runtime.runtime_support import worker_settings


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("127.0.0.1:8080", True),
        ("localhost:8080", True),
        ("localhost", True),
        ("[::1]:8080", True),
        ("::1", True),
        (None, False),  # Ably itself
        ("realtime.ably.io", False),
        ("10.0.0.5:8080", False),
        ("127.0.0.2.example.com:80", False),
    ],
)
def test_by_default_only_a_loopback_endpoint_yields(endpoint: str | None, expected: bool) -> None:
    assert AblySettings(endpoint=endpoint).resolved_yield_between_appends is expected


def test_the_setting_overrides_the_endpoint() -> None:
    off = AblySettings(endpoint="127.0.0.1:80", yield_between_appends=False)
    assert off.resolved_yield_between_appends is False
    assert AblySettings(endpoint=None, yield_between_appends=True).resolved_yield_between_appends is True


async def _appends_and_yields(
    server: EmbeddedServer,
    monkeypatch: pytest.MonkeyPatch,
    settings: AblySettings,
    *,
    one_per_turn: bool = False,
) -> list[int]:
    """The appends the connection had sent (msgSerials taken) at each ``os.sched_yield`` during
    three appends started in one loop turn (or each in a turn of its own)."""
    transport = AblyTransport(settings)
    await transport.connect()
    try:
        channel = transport.channel("conversations:yield-between-appends")
        serial = await channel.publish(OutboundMessage(name="t", data="a"))
        assert serial is not None
        manager = channel.client.connection.connection_manager
        seen: list[int] = []
        await channel.acquire()
        before = manager.msg_serial
        monkeypatch.setattr(os, "sched_yield", lambda: seen.append(manager.msg_serial - before))
        tasks = []
        for c in "bcd":
            tasks.append(channel.start_append(serial, OutboundMessage(name="t", data=c)))
            if one_per_turn:
                await asyncio.sleep(0)  # the next loop turn
        assert manager.msg_serial == before + 3  # each frame written before start_append returned
        await asyncio.gather(*tasks)
        monkeypatch.undo()
        assert await channel.message_text(serial) == "abcd"
        return seen
    finally:
        await transport.close()


async def test_a_second_append_in_a_turn_yields_first(
    ably_server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = worker_settings(ably_server, rate=1000.0, append_rollup_window_ms=0)
    assert settings.resolved_yield_between_appends  # the embedded server listens on loopback
    # No yield before the first (the stream's first text, and the turn's first append); before the
    # second and the third, after the frame before it left.
    assert await _appends_and_yields(ably_server, monkeypatch, settings) == [1, 2]


async def test_one_append_per_turn_never_yields(
    ably_server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = worker_settings(ably_server, rate=1000.0, append_rollup_window_ms=0)
    assert await _appends_and_yields(ably_server, monkeypatch, settings, one_per_turn=True) == []


async def test_a_streams_first_append_never_yields(
    ably_server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two streams' first texts in one turn go out without a yield; the second stream's next
    token in that turn yields (a burst of starts keeps the worker's CPU)."""
    transport = AblyTransport(worker_settings(ably_server, rate=1000.0, append_rollup_window_ms=0))
    await transport.connect()
    try:
        channel = transport.channel("conversations:yield-first-append")
        first = await channel.publish(OutboundMessage(name="t", data="a"))
        second = await channel.publish(OutboundMessage(name="t", data="b"))
        assert first is not None and second is not None
        manager = channel.client.connection.connection_manager
        before = manager.msg_serial
        seen: list[int] = []
        monkeypatch.setattr(os, "sched_yield", lambda: seen.append(manager.msg_serial - before))
        tasks = [
            channel.start_append(first, OutboundMessage(name="t", data="x")),
            channel.start_append(second, OutboundMessage(name="t", data="y")),
            channel.start_append(second, OutboundMessage(name="t", data="z")),
        ]
        await asyncio.gather(*tasks)
        monkeypatch.undo()
        assert seen == [2]
        assert await channel.message_text(first) == "ax"
        assert await channel.message_text(second) == "byz"
    finally:
        await transport.close()


async def test_no_yield_when_turned_off(ably_server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = worker_settings(ably_server, rate=1000.0, append_rollup_window_ms=0)
    settings = dataclasses.replace(settings, yield_between_appends=False)
    assert await _appends_and_yields(ably_server, monkeypatch, settings) == []
