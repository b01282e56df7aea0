"""Presence-aware push notifications, end to end: worker → embedded server's push API → real Web Push
→ a local receiver that decrypts with alice's subscription keys."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from agent_worker.errors import TransportError
from agent_worker.providers.base import ModelRequest, StreamEvent, ToolCallEnd
from agent_worker.providers.echo import ScriptedProvider
from agent_worker.runtime.digest import RunDigest
from agent_worker.server import EmbeddedServer, ServerConfig
from agent_worker.tools.base import Tool
from agent_worker.tools.registry import ToolRegistry
from agent_worker.worker.notify import Notice, Notifier
from tests.push_support import WebPushReceiver
from tests.runtime.runtime_support import ChatClient, Harness

REPLY = "The migration finished: 1,204 rows moved, 0 errors."


@pytest.fixture
async def ably_server() -> AsyncIterator[EmbeddedServer]:
    """The suite's server, accepting http:// push endpoints on loopback (the local receivers)."""
    config = ServerConfig(
        port=0, presence_leave_delay_ms=300, connection_state_ttl_ms=5_000, push_allow_loopback_http=True
    )
    async with EmbeddedServer(config) as server:
        yield server


async def register(server: EmbeddedServer, receiver: WebPushReceiver, client_id: str) -> None:
    """Register ``receiver`` for ``client_id`` as the web client would (push-subscribe, own clientId)."""
    token = server.mint_token(client_id, {"*": ["push-subscribe"]})
    url = f"http://{server.endpoint}/push/deviceRegistrations"
    headers = {"Authorization": f"Bearer {base64.b64encode(token.encode()).decode()}"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(url, json=receiver.device(f"dev-{client_id}", None), headers=headers) as r,
    ):
        assert r.status == 201, await r.text()


async def present_count(server: EmbeddedServer, session: str, client_id: str) -> int:
    members = server.hub.channel(session).presence.snapshot(client_id=client_id, connection_id=None)
    return len(members)


def gated_script(release: asyncio.Event) -> Any:
    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        yield REPLY[:20]
        await release.wait()  # the "long" part: the test decides when the reply finishes
        yield REPLY[20:]

    return script


@pytest.fixture
async def receiver() -> AsyncIterator[WebPushReceiver]:
    async with WebPushReceiver() as r:
        yield r


async def _until(predicate: Any, what: str, limit: float = 20.0) -> None:
    async with asyncio.timeout(limit):
        while not await predicate():  # noqa: ASYNC110 - polls the server's presence set
            await asyncio.sleep(0.05)


async def test_owner_who_left_gets_exactly_one_notification(
    ably_server: EmbeddedServer,
    make_worker: Any,
    make_client: Any,
    session_name: str,
    receiver: WebPushReceiver,
) -> None:
    await register(ably_server, receiver, "alice")
    release = asyncio.Event()
    harness: Harness = await make_worker(ScriptedProvider(gated_script(release)))
    alice: ChatClient = await make_client("alice")
    await alice.channel.presence.enter({"device": "laptop"})
    sent = await alice.send_text("migrate the table")
    status, body = await harness.invoke(session_name, sent.event_id)
    assert status == 200
    await alice.wait_for(lambda: alice.run_text(body["runId"]) or None)
    await alice.close()  # she closes her only tab mid-run
    await _until(lambda: _absent(ably_server, session_name, "alice"), "alice's presence to go")
    release.set()
    await harness.worker.wait_for_runs(1)
    got = await receiver.next()
    assert got.payload["data"] == {"sessionId": session_name, "runId": body["runId"], "outcome": "complete"}
    assert session_name in got.payload["notification"]["title"]
    assert got.payload["notification"]["body"] == REPLY
    assert got.vapid_key == ably_server.push.store.public_key
    await harness.worker.notifier.drain()
    assert receiver.received == [] and not receiver.refused  # exactly one
    assert _metric(harness, "sent") == 1


async def _absent(server: EmbeddedServer, session: str, client_id: str) -> bool:
    return await present_count(server, session, client_id) == 0


def _metric(harness: Harness, result: str) -> float:
    value = harness.worker.metrics.registry.get_sample_value(
        "agent_worker_notifications_total", {"result": result}
    )
    return value or 0.0


async def test_owner_still_present_gets_none(
    ably_server: EmbeddedServer,
    make_worker: Any,
    make_client: Any,
    session_name: str,
    receiver: WebPushReceiver,
) -> None:
    await register(ably_server, receiver, "bob")
    release = asyncio.Event()
    release.set()
    harness: Harness = await make_worker(ScriptedProvider(gated_script(release)))
    bob: ChatClient = await make_client("bob")
    await bob.channel.presence.enter({"device": "phone"})
    sent = await bob.send_text("hello")
    await harness.invoke(session_name, sent.event_id)
    end = await bob.run_end_for(sent.codec_message_id)
    assert end.transport_headers["run-reason"] == "complete"
    await harness.worker.wait_for_runs(1)
    await harness.worker.notifier.drain()
    assert _metric(harness, "present") == 1 and _metric(harness, "sent") == 0
    assert receiver.received == []


def _send_email(to: str) -> str:
    """Send an email.

    Args:
        to: Recipient.
    """
    return f"sent to {to}"


async def test_approval_while_away_asks_for_a_decision(
    ably_server: EmbeddedServer,
    make_worker: Any,
    make_client: Any,
    session_name: str,
    receiver: WebPushReceiver,
) -> None:
    await register(ably_server, receiver, "alice")
    release = asyncio.Event()

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        yield "I will email the report."
        await release.wait()
        yield ToolCallEnd("call_e", "send_email", '{"to":"boss@example.com"}')

    tools = ToolRegistry([Tool.from_function(_send_email, name="send_email", requires_approval=True)])
    harness: Harness = await make_worker(ScriptedProvider(script), tools=tools)
    alice: ChatClient = await make_client("alice")
    await alice.channel.presence.enter({})
    sent = await alice.send_text("email the report")
    _, body = await harness.invoke(session_name, sent.event_id)
    await alice.wait_for(lambda: alice.run_text(body["runId"]) or None)
    await alice.close()
    await _until(lambda: _absent(ably_server, session_name, "alice"), "alice's presence to go")
    release.set()
    await harness.worker.wait_for_runs(1)
    assert harness.worker.runs_suspended == 1
    got = await receiver.next()
    assert got.payload["notification"]["title"].startswith("Your approval is needed")
    assert "approve send_email" in got.payload["notification"]["body"]
    assert got.payload["data"]["outcome"] == "suspended" and got.payload["data"]["runId"] == body["runId"]


async def test_policy_never_min_duration_and_veto_hook(
    ably_server: EmbeddedServer,
    make_worker: Any,
    make_client: Any,
    session_name: str,
    receiver: WebPushReceiver,
) -> None:
    await register(ably_server, receiver, "user-abc")
    release = asyncio.Event()
    release.set()
    seen: list[Notice] = []

    def veto(notice: Notice, run: Any) -> Notice | None:
        seen.append(notice)
        return None

    for kwargs, result in (
        ({"notify": "never"}, "skipped"),
        ({"notify_min_run_s": 3600.0}, "skipped"),
        ({"notify": "always", "worker_kwargs": {"on_notify": veto}}, "vetoed"),
    ):
        harness: Harness = await make_worker(ScriptedProvider(gated_script(release)), **kwargs)
        client: ChatClient = await make_client()
        sent = await client.send_text("hi", parent=None)
        await harness.invoke(session_name, sent.event_id)
        await client.run_end_for(sent.codec_message_id)
        await harness.worker.wait_for_runs(1)
        await harness.worker.notifier.drain()
        assert _metric(harness, result) == 1, kwargs
        await harness.close()
    assert len(seen) == 1 and seen[0].client_id == "user-abc"
    assert receiver.received == []


async def test_anonymous_owner_and_failed_push_never_fail_the_run(
    ably_server: EmbeddedServer, make_worker: Any, make_client: Any, session_name: str
) -> None:
    dead = WebPushReceiver()
    await dead.start()
    await dead.stop()
    await register(ably_server, dead, "carol")
    release = asyncio.Event()
    release.set()

    def shape(notice: Notice, run: Any) -> Notice:
        return Notice(notice.client_id, "Custom", "shaped", notice.outcome, notice.data)

    harness: Harness = await make_worker(
        ScriptedProvider(gated_script(release)), notify="always", worker_kwargs={"on_notify": shape}
    )
    anon: ChatClient = await make_client(None, session=f"{session_name}-anon")
    carol: ChatClient = await make_client("carol")
    first = await anon.send_text("anonymous", parent=None)
    await harness.invoke(f"{session_name}-anon", first.event_id)
    second = await carol.send_text("hi", parent=None)
    await harness.invoke(session_name, second.event_id)
    for client, s in ((anon, first), (carol, second)):
        end = await client.run_end_for(s.codec_message_id)
        assert end.transport_headers["run-reason"] == "complete"
    await harness.worker.wait_for_runs(2)
    await harness.worker.notifier.drain()
    assert _metric(harness, "skipped") == 1  # the anonymous run
    # carol's push was published (the server reports the unreachable endpoint per device); the
    # device stays registered, marked FAILING, and the run completed regardless
    assert _metric(harness, "sent") == 1 and _metric(harness, "undelivered") == 1
    device = ably_server.push.store.devices["dev-carol"]
    assert device["push"]["state"] == "FAILING" and device["push"]["error"]["code"] == 50000
    assert harness.worker.runs_completed == 2


async def test_a_failing_push_api_is_counted_and_logged() -> None:
    """A push publish the service refuses (here: 40160, no push-admin) is counted, not raised."""

    class Refusing:
        async def push_publish(self, recipient: dict[str, Any], payload: dict[str, Any]) -> Any:
            msg = "push publish failed: not permitted"
            raise TransportError(msg, code=40160)

    class FakeRun:
        outcome = "complete"
        owner_client_id = "alice"
        run_id = "r1"
        error = None

        class session:
            name = "conversations:x"
            channel = None

        digest = RunDigest()

    counted: list[str] = []
    notifier = Notifier(Refusing, "always", 0.0, None, counted.append)
    with capture_logs() as logs:
        for _ in range(3):
            notifier.run_ended(FakeRun(), 5.0)  # type: ignore[arg-type]
            await notifier.drain()
    assert counted == ["failed"] * 3
    failures = [(e["code"], e["log_level"]) for e in logs if e["event"] == "notify_failed"]
    assert failures == [(40160, "warning"), (40160, "debug"), (40160, "debug")]  # loud once
