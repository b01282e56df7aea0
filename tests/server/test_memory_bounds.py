"""Bounded memory: slow consumers are disconnected (80020) instead of queueing without limit, the
in-memory store has a default retention, idle channels are released, per-connection caps."""

from __future__ import annotations

import resource
from pathlib import Path

from agent_worker.server import EmbeddedServer, Retention, ServerConfig
from agent_worker.server.log import DEFAULT_MEMORY_RETENTION
from tests.server.server_support import (
    ACK,
    ATTACH,
    DETACH,
    DETACHED,
    DISCONNECTED,
    ERROR,
    MESSAGE,
    RawClient,
    eventually,
)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover


async def test_slow_consumers_are_disconnected_with_80020() -> None:
    """Three subscribers that stop reading and one publisher of 60 KB messages used to grow the
    server from 56 MB to 3 GB (the guard counted frames, not bytes). Now each slow consumer is
    disconnected once 1 MiB is queued for it; the publisher and a bystander carry on."""
    cfg = ServerConfig(max_outbound_bytes=1 << 20, retention=Retention(max_messages=50))
    async with EmbeddedServer(cfg) as server:
        slow = [await RawClient.connect(server, clientId=f"slow{i}") for i in range(3)]
        pub = await RawClient.connect(server, clientId="pub", echo="false")
        try:
            for c in slow:
                await c.attach("firehose")
            before = rss_mb()
            payload = "x" * 60_000
            for _ in range(400):
                await pub.publish("firehose", [{"name": "n", "data": payload}])
                await pub.expect(ACK)
            grown = rss_mb() - before
            print(f"RSS growth with 3 slow consumers after 24 MB published: {grown:.1f} MB")
            gateway = server._gateway
            assert gateway is not None
            await eventually(lambda: not any(c.connection_id in gateway.connections for c in slow), 30)
            for c in slow:
                codes = []
                while (frame := await c.recv(within=30)) is not None:
                    if frame["action"] == DISCONNECTED:
                        codes.append(frame["error"]["code"])
                    else:
                        assert frame["action"] == MESSAGE
                assert codes == [80020]
        finally:
            for c in (*slow, pub):
                await c.close()


def test_memory_store_has_a_default_retention(tmp_path: Path) -> None:
    assert ServerConfig().effective_retention == DEFAULT_MEMORY_RETENTION
    assert ServerConfig(data_dir=tmp_path).effective_retention is None
    assert DEFAULT_MEMORY_RETENTION.max_bytes == 16 << 20 and DEFAULT_MEMORY_RETENTION.max_age_s == 86_400


async def test_history_is_bounded_in_bytes_by_default() -> None:
    """One publisher used to make the in-memory history hold 750 MB in 5 s; now a channel keeps
    about 16 MiB (the oldest messages go first)."""
    async with EmbeddedServer(ServerConfig()) as server:
        pub = await RawClient.connect(server, clientId="pub", echo="false")
        try:
            payload = "y" * 60_000
            for _ in range(400):
                await pub.publish("big", [{"name": "n", "data": payload}])
                await pub.expect(ACK)
            log = server.hub.channels["big"].log
            assert log.bytes <= 16 << 20
            assert 200 < len(log.order) < 400
        finally:
            await pub.close()


async def test_idle_channels_are_released(tmp_path: Path) -> None:
    """Channels nobody is attached to, with nothing retained, are released by the sweep (200 short
    sessions used to add 7.6 MB for good); with --data-dir even channels with history are, and come
    back from SQLite intact."""
    async with EmbeddedServer(ServerConfig()) as server:
        c = await RawClient.connect(server, clientId="u")
        try:
            for i in range(100):
                await c.attach(f"s:{i}")
                await c.send({"action": DETACH, "channel": f"s:{i}"})
                await c.expect(DETACHED)
            assert len(server.hub.channels) == 100
            assert server.hub.sweep() == 100
            assert server.hub.channels == {}
        finally:
            await c.close()
    async with EmbeddedServer(ServerConfig(data_dir=tmp_path)) as server:
        c = await RawClient.connect(server, clientId="u")
        try:
            await c.attach("kept")
            await c.publish("kept", [{"name": "n", "data": "remember me"}])
            await c.expect(MESSAGE)
            await c.expect(ACK)
            await c.send({"action": DETACH, "channel": "kept"})
            await c.expect(DETACHED)
            assert server.hub.sweep() == 1 and "kept" not in server.hub.channels
            page, _ = server.hub.channel("kept").log.history(backwards=True, limit=10)
            assert [r.render_latest()["data"] for r in page] == ["remember me"]
        finally:
            await c.close()


async def test_channels_per_connection_are_capped() -> None:
    async with EmbeddedServer(ServerConfig(max_channels_per_connection=3)) as server:
        c = await RawClient.connect(server)
        try:
            for i in range(3):
                await c.attach(f"c{i}")
            await c.send({"action": ATTACH, "channel": "c3"})
            assert (await c.expect(ERROR))["error"]["code"] == 90010
            await c.attach("c0")  # re-attaching an attached channel is fine
        finally:
            await c.close()


async def test_connections_per_key_are_capped() -> None:
    """One key's clients cannot make the server hold unbounded connections: 40111 beyond the cap."""
    async with EmbeddedServer(ServerConfig(max_connections_per_key=2)) as server:
        held = [await RawClient.connect(server), await RawClient.connect(server)]
        try:
            third = await RawClient.connect(server, expect_connected=False)
            assert (await third.expect(ERROR))["error"]["code"] == 40111
            await third.close()
        finally:
            for c in held:
                await c.close()
