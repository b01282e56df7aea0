"""What the embedded server holds over a long life is bounded: history expires as Ably's does (two
minutes without a persistence rule, the retention with one), idle channels go, and the channels and
history bytes held together are capped — idle channels released least recently used first, a new
channel refused with 40114 only when every held one is in use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from agent_worker.server import EmbeddedServer, ServerConfig
from agent_worker.server.auth import ApiKey, Capability, KeyRing, Principal
from agent_worker.server.channel_rules import ChannelRule
from agent_worker.server.config import DEFAULT_DEV_KEY, server_settings
from agent_worker.server.hub import Hub
from agent_worker.server.log import DEFAULT_MEMORY_RETENTION, Retention
from agent_worker.server.store import MemoryStore, SQLiteStore
from tests.server.server_support import ACK, ATTACH, DETACH, DETACHED, ERROR, MESSAGE, RawClient

_WHO = Principal("local.dev", "u", False, Capability.full(), None)


class _Clock:
    def __init__(self) -> None:
        self.ms = 1_700_000_000_000

    def __call__(self) -> int:
        return self.ms


def _hub(config: ServerConfig, store: MemoryStore | SQLiteStore | None = None) -> tuple[Hub, _Clock]:
    hub = Hub(config, KeyRing([ApiKey.parse(DEFAULT_DEV_KEY)]), store or MemoryStore())
    clock = _Clock()
    hub.now_ms = clock  # type: ignore[method-assign]
    return hub, clock


def _publish(hub: Hub, channel: str, data: str = "x") -> None:
    hub.publish(channel, [{"name": "n", "data": data}], _WHO)


def _held_bytes_agree(hub: Hub) -> bool:
    return hub.held_bytes == sum(rt.log.bytes for rt in hub.channels.values())


def test_channels_without_a_persistence_rule_keep_two_minutes_in_memory() -> None:
    """Ably keeps such a channel's messages two minutes; the in-memory log kept them 24 h (shown
    for two minutes, held for a day), so the channel was never released. Now its log keeps the
    longer of that and the connection state TTL, and the sweep then releases the channel."""
    rules = (ChannelRule("conv", mutable_messages=True),)
    hub, clock = _hub(ServerConfig(channel_rules=rules))
    _publish(hub, "chat:a")
    _publish(hub, "conv:a")
    assert hub.channels["chat:a"].retention == Retention(10_000, 120.0, 16 << 20)
    assert hub.channels["conv:a"].retention == DEFAULT_MEMORY_RETENTION
    clock.ms += 119_000
    assert hub.sweep() == 0 and len(hub.channels["chat:a"].log.order) == 1
    clock.ms += 2_000
    assert hub.sweep() == 1
    assert set(hub.channels) == {"conv:a"}, "the persisted channel keeps its 24 h"
    assert _held_bytes_agree(hub)
    clock.ms += 24 * 3600 * 1000
    assert hub.sweep() == 1 and hub.channels == {}
    assert hub.held_bytes == 0


def test_a_longer_connection_state_ttl_keeps_what_a_resume_may_need() -> None:
    hub, _ = _hub(ServerConfig(channel_rules=(), connection_state_ttl_ms=300_000))
    _publish(hub, "chat:a")
    retention = hub.channels["chat:a"].retention
    assert retention is not None and retention.max_age_s == 300.0
    # An explicit retention shorter than that stands; with --data-dir nothing changes.
    hub, _ = _hub(ServerConfig(channel_rules=(), retention=Retention(max_age_s=10)))
    _publish(hub, "chat:a")
    assert hub.channels["chat:a"].retention == Retention(max_age_s=10)


def test_publishes_prune_by_age_in_batches_and_the_sweep_exactly() -> None:
    """A channel busy for longer than its window does not rebuild its event list at every publish:
    the publish path waits for a tenth of the window past it; the sweep prunes to the window."""
    hub, clock = _hub(ServerConfig(channel_rules=()))
    for _ in range(10):
        _publish(hub, "chat:a")
        clock.ms += 1_000
    log = hub.channels["chat:a"].log
    clock.ms += 120_000 - 10_000 + 500  # the first message is 500 ms past the window
    _publish(hub, "chat:a")
    assert len(log.order) == 11, "under a slack's worth past: nothing pruned on publish"
    clock.ms += 12_000  # now 12.5 s past: the first 10 are all older than the window
    _publish(hub, "chat:a")
    assert len(log.order) == 2
    clock.ms += 120_000 - 1
    hub.sweep()
    assert len(log.order) == 1, "the sweep prunes exactly at the window"
    assert _held_bytes_agree(hub)


def test_the_default_retention_caps_messages_per_channel() -> None:
    assert DEFAULT_MEMORY_RETENTION.max_messages == 10_000
    hub, _ = _hub(ServerConfig(retention=Retention(max_messages=100)))
    for i in range(300):
        _publish(hub, "conv:a", f"m{i}")
    log = hub.channels["conv:a"].log
    assert 100 <= len(log.order) <= 110
    assert log.records[log.order[-1]].content["data"] == "m299"
    assert _held_bytes_agree(hub)


def test_at_max_channels_idle_channels_go_least_recently_used_first() -> None:
    hub, _ = _hub(ServerConfig(max_channels=10))
    for i in range(9):
        _publish(hub, f"conv:{i}")
    _publish(hub, "conv:0")  # used again: now the most recent
    hub.channel("read:only")  # an empty log: released first, nothing lost
    assert len(hub.channels) == 10
    with structlog.testing.capture_logs() as logs:
        _publish(hub, "conv:new")  # room made down to 90 % (9): the empty channel goes
        assert "read:only" not in hub.channels and len(hub.channels) == 10
        assert logs == [], "nothing was lost"
        _publish(hub, "conv:new2")  # then the least recently used: conv:1, not conv:0
    assert sorted(hub.channels) == sorted(
        ["conv:0", *(f"conv:{i}" for i in range(2, 9)), "conv:new", "conv:new2"]
    )
    assert [(e["event"], e["released"], e["messages_dropped"]) for e in logs] == [("channels_evicted", 1, 1)]
    assert _held_bytes_agree(hub)


def test_history_bytes_held_together_are_capped() -> None:
    """Many idle conversations held their history until their retention ran out; past the byte
    budget the least recently used go, and never the channel being published to."""
    hub, _ = _hub(ServerConfig(max_history_bytes=100_000))
    for i in range(60):
        _publish(hub, f"conv:{i}", "y" * 4_000)  # ~4.25 KB each as counted
    assert hub.held_bytes <= 100_000
    assert "conv:59" in hub.channels and "conv:0" not in hub.channels
    assert _held_bytes_agree(hub)
    # One channel alone over the budget keeps what its own retention allows.
    for _ in range(40):
        _publish(hub, "big", "z" * 4_000)
    assert len(hub.channels["big"].log.order) == 40
    assert _held_bytes_agree(hub)


async def test_a_new_channel_is_refused_with_40114_only_when_all_are_in_use() -> None:
    async with EmbeddedServer(ServerConfig(max_channels=3)) as server:
        c = await RawClient.connect(server, clientId="u")
        try:
            for i in range(3):
                await c.attach(f"c{i}")
            with structlog.testing.capture_logs() as logs:
                for _ in range(2):
                    await c.send({"action": ATTACH, "channel": "c3"})
                    error = (await c.expect(ERROR))["error"]
                    assert error["code"] == 40114 and "max_channels" in error["message"]
            assert [e["event"] for e in logs].count("channels_refused") == 1, "logged once"
            status, body = await _rest_publish(server, "c4")
            assert (status, body["error"]["code"]) == (403, 40114)
            # The attached ones carry on.
            await c.publish("c0", [{"name": "n", "data": "still here"}])
            assert (await c.expect(MESSAGE))["messages"][0]["data"] == "still here"
            await c.expect(ACK)
            await c.send({"action": DETACH, "channel": "c1"})
            await c.expect(DETACHED)
            await c.attach("c3")  # c1 is idle now: released to make room
            assert "c1" not in server.hub.channels
        finally:
            await c.close()


async def test_a_flood_of_new_channels_at_the_cap_scans_the_held_ones_once() -> None:
    """At the cap with every channel in use, each refused name used to sort every held channel
    again (10,000 by default): a client cycling new names made the server do that per request.
    Now one scan finds nothing idle and later names are refused at once, until an attachment goes."""
    async with EmbeddedServer(ServerConfig(max_channels=3)) as server:
        hub = server.hub
        scans = 0
        make_room = hub._make_room

        def counting(keep: Any = None) -> None:
            nonlocal scans
            scans += 1
            make_room(keep)

        hub._make_room = counting  # type: ignore[method-assign]
        c = await RawClient.connect(server, clientId="u")
        try:
            for i in range(3):
                await c.attach(f"c{i}")
            for i in range(20):
                await c.send({"action": ATTACH, "channel": f"new{i}"})
                assert (await c.expect(ERROR))["error"]["code"] == 40114
            assert scans == 1
            await c.send({"action": DETACH, "channel": "c1"})
            await c.expect(DETACHED)
            await c.attach("new0")  # the detach made c1 idle: scanned again and released
            assert scans == 2 and "c1" not in hub.channels and "new0" in hub.channels
        finally:
            await c.close()


async def _rest_publish(server: EmbeddedServer, channel: str) -> tuple[int, Any]:
    import aiohttp  # noqa: PLC0415

    auth = aiohttp.BasicAuth(*DEFAULT_DEV_KEY.split(":", 1))
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://{server.endpoint}/channels/{channel}/messages",
            json={"name": "n", "data": "x"},
            auth=auth,
        ) as resp,
    ):
        return resp.status, await resp.json()


def test_with_a_data_dir_releasing_at_the_cap_loses_nothing(tmp_path: Path) -> None:
    """With --data-dir a released channel is reloaded from SQLite, its bytes counted again."""
    store = SQLiteStore(tmp_path)
    try:
        hub, _ = _hub(ServerConfig(data_dir=tmp_path, max_channels=4), store)
        for i in range(4):
            _publish(hub, f"conv:{i}", f"kept {i}")
        held = hub.channels["conv:0"].log.bytes
        _publish(hub, "conv:4")
        assert "conv:0" not in hub.channels
        again = hub.channel("conv:0").log
        assert [r.content["data"] for r in again.records.values()] == ["kept 0"]
        assert again.bytes == held, "a reloaded log counts its bytes (retention by bytes applies)"
        assert _held_bytes_agree(hub)
    finally:
        store.close()


def test_caps_are_settable_from_the_server_table() -> None:
    settings = server_settings({"max_channels": 50, "max_history_bytes": 1 << 20})
    assert settings == {"max_channels": 50, "max_history_bytes": 1 << 20}
