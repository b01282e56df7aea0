"""Presence with ably-python: enter / update / leave, SYNC, LEAVE on abrupt disconnect, REST presence."""

from __future__ import annotations

import aiohttp
from ably.types.presence import PresenceAction

from agent_worker.server import EmbeddedServer
from agent_worker.server.testing import python_realtime, python_rest
from tests.server.server_support import (
    ACK,
    ATTACH,
    ATTACHED,
    HAS_PRESENCE,
    NACK,
    PRESENCE,
    SYNC,
    RawClient,
    collector,
    eventually,
)


async def test_enter_update_leave_seen_by_subscriber(ably_server: EmbeddedServer) -> None:
    """Another client's presence subscription sees enter, update and leave in order."""
    alice = python_realtime(ably_server, client_id="alice")
    bob = python_realtime(ably_server, client_id="bob")
    try:
        events, listener = collector()
        await bob.channels.get("room").presence.subscribe(listener)
        presence = alice.channels.get("room").presence
        await presence.enter({"status": "here"})
        await presence.update("busy")
        await presence.leave()
        await eventually(lambda: len(events) == 3)
        assert [(e.action, e.client_id) for e in events] == [
            (PresenceAction.ENTER, "alice"),
            (PresenceAction.UPDATE, "alice"),
            (PresenceAction.LEAVE, "alice"),
        ]
        assert events[0].data == {"status": "here"}
        assert events[1].data == "busy"
    finally:
        await alice.close()
        await bob.close()


async def test_late_attacher_gets_members_via_sync(ably_server: EmbeddedServer) -> None:
    """A client attaching after members entered gets HAS_PRESENCE and a SYNC; get() lists them."""
    alice = python_realtime(ably_server, client_id="alice")
    carol = python_realtime(ably_server, client_id="carol")
    try:
        await alice.channels.get("lobby").presence.enter("hi")
        await carol.channels.get("lobby").presence.enter("yo")
        viewer = python_realtime(ably_server, client_id="viewer")
        try:
            members = await viewer.channels.get("lobby").presence.get()
            assert sorted((m.client_id, m.data) for m in members) == [("alice", "hi"), ("carol", "yo")]
        finally:
            await viewer.close()
        raw = await RawClient.connect(ably_server)
        try:
            attached = await raw.attach("lobby")
            assert attached["flags"] & HAS_PRESENCE
            sync = await raw.expect(SYNC)
            assert sync["channelSerial"].endswith(":")  # one page, empty cursor ends the sync
            assert {p["clientId"] for p in sync["presence"]} == {"alice", "carol"}
            assert all(p["action"] == 1 for p in sync["presence"])
        finally:
            await raw.close()
    finally:
        await alice.close()
        await carol.close()


async def test_abrupt_disconnect_synthesises_leave(ably_server: EmbeddedServer) -> None:
    """Members of a connection that vanishes without CLOSE get a LEAVE once the grace period ends."""
    watcher = python_realtime(ably_server, client_id="watcher")
    ghost = await RawClient.connect(ably_server, clientId="ghost")
    try:
        events, listener = collector()
        await watcher.channels.get("pres").presence.subscribe(listener)
        await ghost.attach("pres")
        await ghost.send({"action": PRESENCE, "channel": "pres", "msgSerial": 0, "presence": [{"action": 2}]})
        await ghost.expect(PRESENCE)  # its own enter, as a PRESENCE_SUBSCRIBE attachment
        await ghost.expect(ACK)
        await eventually(lambda: len(events) == 1)
        ghost_connection = ghost.connection_id
        await ghost.close()  # socket gone, no protocol CLOSE: an abrupt disconnect
        await eventually(lambda: len(events) == 2, what="synthesised LEAVE")
        leave = events[1]
        assert (leave.action, leave.client_id, leave.connection_id) == (
            PresenceAction.LEAVE,
            "ghost",
            ghost_connection,
        )
        rest = python_rest(ably_server)
        try:
            assert (await rest.channels.get("pres").presence.get()).items == []
            history = await rest.channels.get("pres").presence.history(direction="forwards")
            assert [h.action for h in history.items] == [PresenceAction.ENTER, PresenceAction.LEAVE]
        finally:
            await rest.close()
    finally:
        await watcher.close()


async def test_detach_leaves_immediately(ably_server: EmbeddedServer) -> None:
    """Detaching a channel removes the connection's members at once."""
    alice = python_realtime(ably_server, client_id="alice")
    rest = python_rest(ably_server)
    try:
        ch = alice.channels.get("det")
        await ch.presence.enter()
        assert [m.client_id for m in (await rest.channels.get("det").presence.get()).items] == ["alice"]
        await ch.detach()
        await eventually(lambda: not ably_server.hub.channel("det").presence.members)
    finally:
        await alice.close()
        await rest.close()


async def test_rest_presence_get_pages_and_filters(ably_server: EmbeddedServer) -> None:
    """REST presence get pages through members (SDK) and filters by clientId (raw HTTP)."""
    alice = python_realtime(ably_server, client_id="alice")
    bob = python_realtime(ably_server, client_id="bob")
    rest = python_rest(ably_server)
    try:
        await alice.channels.get("f").presence.enter()
        await bob.channels.get("f").presence.enter()
        page = await rest.channels.get("f").presence.get(limit=1)
        ids = [m.client_id for m in page.items]
        while page.has_next():
            page = await page.next()
            ids += [m.client_id for m in page.items]
        assert sorted(ids) == ["alice", "bob"]
        assert all(m.action == PresenceAction.PRESENT for m in page.items)
        headers = {"Authorization": f"Bearer {ably_server.mint_token()}"}
        url = f"http://{ably_server.endpoint}/channels/f/presence"
        async with (
            aiohttp.ClientSession() as http,
            http.get(url, params={"clientId": "bob"}, headers=headers) as r,
        ):
            assert [m["clientId"] for m in await r.json()] == ["bob"]
    finally:
        await alice.close()
        await bob.close()
        await rest.close()


async def test_anonymous_enter_is_refused(ably_server: EmbeddedServer) -> None:
    """A connection without a clientId cannot enter presence (NACK 91000)."""
    raw = await RawClient.connect(ably_server)
    try:
        await raw.send({"action": ATTACH, "channel": "anon"})
        await raw.expect(ATTACHED)
        await raw.send({"action": PRESENCE, "channel": "anon", "msgSerial": 0, "presence": [{"action": 2}]})
        nack = await raw.expect(NACK)
        assert nack["error"]["code"] == 91000
    finally:
        await raw.close()


async def test_reentry_after_resume_is_an_update(ably_server: EmbeddedServer) -> None:
    """After a dropped connection resumes, the SDK re-enters; others see no LEAVE, only an UPDATE."""
    alice = python_realtime(ably_server, client_id="alice")
    bob = python_realtime(ably_server, client_id="bob")
    try:
        events, listener = collector()
        await bob.channels.get("re").presence.subscribe(listener)
        await alice.channels.get("re").presence.enter("x")
        await eventually(lambda: len(events) == 1)
        ably_server.drop_connections(client_id="alice")
        await eventually(lambda: len(events) >= 2, what="re-entry")
        assert PresenceAction.LEAVE not in [e.action for e in events]
        assert events[1].action == PresenceAction.UPDATE
    finally:
        await alice.close()
        await bob.close()
