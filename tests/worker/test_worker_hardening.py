"""Hardening of the worker's invocation endpoint: decode caps, authentication of callers, inputs
that cannot be found, capacity under bogus requests, retries and restart-proof deduplication."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import structlog
from yarl import URL

from agent_worker.config import HttpConfig
from agent_worker.protocol.headers import (
    AI_RUN_END,
    AI_RUN_START,
    build_extras,
    build_input_headers,
    build_lifecycle_headers,
)
from agent_worker.protocol.vercel.encoder import encode_user_message
from agent_worker.providers.echo import EchoProvider
from agent_worker.server import EmbeddedServer
from agent_worker.worker.admission import Invocation, WorkerBusy
from tests.runtime.runtime_support import ChatClient, Harness, _sdk, start_harness

JSON = {"Content-Type": "application/json"}


async def test_deep_and_huge_bodies_are_refused_with_ably_codes(make_worker: Any, session_name: str) -> None:
    """/api/chat: deep JSON is 400/40000, a body over max_body_bytes 413/40009 (before reading it)."""
    harness: Harness = await make_worker(EchoProvider(), http=HttpConfig(port=0, max_body_bytes=64 * 1024))
    deep = '{"sessionName":"' + session_name + '","inputEventId":' + "[" * 20_000 + "]" * 20_000 + "}"
    async with harness.http.post(harness.url, data=deep[:60_000].encode() + b"]}", headers=JSON) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] in (40000,)
    shallow_deep = '{"x":' + "[" * 1000 + "]" * 1000 + "}"
    async with harness.http.post(harness.url, data=shallow_deep.encode(), headers=JSON) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == 40000
    async with harness.http.post(harness.url, data=b"[" * (9 << 20), headers=JSON) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == 40009
    assert harness.worker.active_runs == []


async def _send_with_event_id(client: ChatClient, text: str, event_id: str) -> str:
    """Publish a user input with a chosen event-id (the invocation may be POSTed before it)."""
    cmid = str(uuid.uuid4())
    headers = build_input_headers(
        codec_message_id=cmid, event_id=event_id, run_client_id=client.client_id, parent=None
    )
    message = {"id": f"ui-{cmid[:8]}", "role": "user", "parts": [{"type": "text", "text": text}]}
    await client.channel.publish([_sdk(m) for m in encode_user_message(message, headers)])
    return cmid


async def test_bogus_invocations_publish_nothing_and_hold_no_slot(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """32 POSTs naming made-up inputEventIds used to lock real users out with 429 for 5 s and put
    ai-run-start + ai-run-end{error} into the victim's session. Now they publish nothing and hold
    no run slot: a real user's invocation is accepted and answered meanwhile."""
    harness: Harness = await make_worker(EchoProvider(), max_concurrent_runs=2, trigger_wait_s=3.0)
    victim: ChatClient = await make_client()
    bogus = [await harness.invoke(session_name, str(uuid.uuid4())) for _ in range(32)]
    assert {status for status, _ in bogus} == {200}
    sent = await victim.send_text("real question")
    status, body = await harness.invoke(session_name, sent.event_id)
    assert status == 200, body
    end = await victim.run_end_for(sent.codec_message_id)
    assert end.transport_headers["run-reason"] == "complete"
    await harness.worker.wait_for_runs(33, limit_s=30)
    names = [m.name for m in victim.messages if m.transport_headers.get("run-id") != body["runId"]]
    assert [n for n in names if n != "ai-input"] == []  # the bogus runs left no trace


async def test_pending_invocations_are_capped(make_worker: Any, session_name: str) -> None:
    harness: Harness = await make_worker(EchoProvider(), max_pending_invocations=3, trigger_wait_s=3.0)
    statuses = [(await harness.invoke(session_name, str(uuid.uuid4())))[0] for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]


async def test_pending_cap_holds_for_simultaneous_invocations(make_worker: Any) -> None:
    """Six invocations in the same instant (each on a new session, so each first waits for its
    channel to attach) against a cap of 3: three are admitted, three refused — not all six because
    each was checked before any of the others had created its run."""
    harness: Harness = await make_worker(EchoProvider(), max_pending_invocations=3, trigger_wait_s=3.0)
    names = [f"conversations:burst-{uuid.uuid4()}" for _ in range(6)]
    results = await asyncio.gather(
        *(harness.worker.invoke(name, str(uuid.uuid4())) for name in names), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, WorkerBusy)]
    assert len(refused) == 3 and all(r.code == 42910 for r in refused)
    assert len([r for r in results if isinstance(r, Invocation)]) == 3


async def test_failed_invocation_can_be_retried(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """After 104010 (the input was not visible yet) a retry of the same inputEventId used to answer
    200 with the dead run's id and never answer the input; now it starts a new run."""
    harness: Harness = await make_worker(EchoProvider(), trigger_wait_s=0.2)
    client: ChatClient = await make_client()
    event_id = str(uuid.uuid4())
    status, first = await harness.invoke(session_name, event_id)
    assert status == 200
    await harness.worker.wait_for_runs(1)
    cmid = await _send_with_event_id(client, "late input", event_id)
    status, second = await harness.invoke(session_name, event_id)
    assert status == 200 and second["runId"] != first["runId"]
    end = await client.run_end_for(cmid)
    assert end.transport_headers["run-reason"] == "complete"
    assert client.run_text(second["runId"]) == "late input"


async def test_invocation_dedup_survives_restart(
    ably_server: EmbeddedServer, make_client: Any, session_name: str, tmp_path: Path
) -> None:
    """A POST retried after the worker restarted (same state_dir) gets the run it already started."""
    client: ChatClient = await make_client()
    sent = await client.send_text("once only")
    first = await start_harness(ably_server, EchoProvider(), state_dir=str(tmp_path))
    try:
        status, body = await first.invoke(session_name, sent.event_id)
        assert status == 200
        await client.run_end_for(sent.codec_message_id)
    finally:
        await first.close()
    second = await start_harness(ably_server, EchoProvider(), state_dir=str(tmp_path))
    try:
        status, again = await second.invoke(session_name, sent.event_id)
        assert (status, again["runId"]) == (200, body["runId"])
        await asyncio.sleep(0.5)
        assert len(client.for_input(AI_RUN_START, sent.codec_message_id)) == 1
        assert second.worker.runs_finished == 0
    finally:
        await second.close()


def test_auth_defaults_by_bind_address() -> None:
    assert not HttpConfig(host="127.0.0.1").requires_ably_token()
    assert HttpConfig(host="0.0.0.0").requires_ably_token()
    assert HttpConfig(host="127.0.0.1", auth="ably-token").requires_ably_token()
    assert not HttpConfig(host="0.0.0.0", auth="none").requires_ably_token()


async def test_invokers_must_hold_a_token_for_the_session_and_be_the_publisher(
    ably_server: EmbeddedServer, make_client: Any, session_name: str
) -> None:
    """With ably-token auth (the default beyond loopback): no token is 401/40101, a token whose
    capability misses the session is 401/40160, and a token for another clientId is accepted but
    its run publishes nothing; the input's own publisher gets the answer."""
    harness = await start_harness(
        ably_server,
        EchoProvider(),
        http=HttpConfig(port=0, auth="ably-token"),
        token_key=ably_server.default_key,
        trigger_wait_s=0.3,
    )
    try:
        owner: ChatClient = await make_client("alice")
        sent = await owner.send_text("mine")

        def bearer(client_id: str, resource: str = "conversations:*") -> dict[str, str]:
            token = ably_server.mint_token(client_id, {resource: ["publish", "subscribe"]})
            return {"Authorization": f"Bearer {token}"}

        status, body = await harness.invoke(session_name, sent.event_id)
        assert (status, body["error"]["code"]) == (401, 40101)
        status, body = await harness.invoke(session_name, sent.event_id, headers=bearer("alice", "other:*"))
        assert (status, body["error"]["code"]) == (401, 40160)
        status, body = await harness.invoke(
            session_name, sent.event_id, headers={"Authorization": "Bearer " + "x.y.z"}
        )
        assert status == 401
        status, stranger = await harness.invoke(session_name, sent.event_id, headers=bearer("mallory"))
        assert status == 200
        await harness.worker.wait_for_runs(1)
        assert owner.named(AI_RUN_START) == []
        status, body = await harness.invoke(session_name, sent.event_id, headers=bearer("alice"))
        assert status == 200 and body["runId"] != stranger["runId"]
        end = await owner.run_end_for(sent.codec_message_id)
        assert end.transport_headers["run-reason"] == "complete"
    finally:
        await harness.close()


async def test_forged_lifecycle_is_ignored_by_the_worker(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """Only the agent publishes run lifecycle: a participant's forged ai-run-start / ai-run-end is
    not folded into the worker's view of the conversation."""
    harness: Harness = await make_worker(EchoProvider())
    alice: ChatClient = await make_client("alice")
    mallory: ChatClient = await make_client("mallory")
    sent = await alice.send_text("hello")
    _, body = await harness.invoke(session_name, sent.event_id)
    await alice.run_end_for(sent.codec_message_id)
    headers = build_lifecycle_headers(run_id="forged-run", run_client_id="mallory", parent=None)
    end_headers = build_lifecycle_headers(
        run_id=body["runId"], run_client_id="alice", reason="error", error_code=50000, error_message="forged"
    )
    with structlog.testing.capture_logs() as logs:
        await mallory.send_raw(AI_RUN_START, None, build_extras(headers, None))
        await mallory.send_raw(AI_RUN_END, None, build_extras(end_headers, None))
        await alice.wait_for(lambda: len(alice.named(AI_RUN_END)) >= 2)
        await asyncio.sleep(0.2)  # the worker receives the forgery after alice does
    # One warning per forger and session, not one per forged message (a rebuild of a long session
    # full of forgeries would otherwise log thousands).
    assert [e["by"] for e in logs if e["event"] == "lifecycle_ignored"] == ["mallory"]
    tree = harness.worker.sessions[session_name].tree
    assert tree.run("forged-run") is None
    node = tree.run(body["runId"])
    assert node is not None and node.status == "complete"


async def test_bystander_cancel_does_not_replace_the_owners_early_cancel(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """An owner's cancel published before the run exists is buffered; a bystander's later cancel
    for the same input used to replace it (so the run went ahead). Now both are kept and judged."""
    harness: Harness = await make_worker(EchoProvider(tokens_per_second=5))
    alice: ChatClient = await make_client("alice")
    mallory: ChatClient = await make_client("mallory")
    warm = await alice.send_text("warm up")
    await harness.invoke(session_name, warm.event_id)
    await alice.run_end_for(warm.codec_message_id)
    sent = await alice.send_text("a long answer please " * 5)
    await alice.cancel(input_cmid=sent.codec_message_id)
    await mallory.cancel(input_cmid=sent.codec_message_id)
    await alice.wait_for(lambda: len(alice.named("ai-cancel")) >= 2)
    await asyncio.sleep(0.2)  # let the worker's subscription see both cancels
    await harness.invoke(session_name, sent.event_id)
    end = await alice.run_end_for(sent.codec_message_id, wait_s=30)
    assert end.transport_headers["run-reason"] == "cancelled"


async def test_a_stalled_body_is_answered_408_and_others_are_served(
    make_worker: Any, session_name: str
) -> None:
    """Slowloris: headers promising a body, a few bytes of it, then nothing. Used to hold the
    connection and its handler for ever; now 408/40800 after ``body_timeout_s``, and a caller
    meanwhile is served as usual."""
    harness: Harness = await make_worker(EchoProvider(), http=HttpConfig(port=0, body_timeout_s=0.5))
    url = URL(harness.url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        head = (
            f"POST {url.path} HTTP/1.1\r\nHost: {url.host}\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n"
        )
        writer.write(head.encode() + b'{"sessionName": "')
        await writer.drain()
        async with harness.http.post(harness.url, json={"sessionName": session_name}) as resp:
            assert resp.status == 400  # no inputEventId: refused at once, while the other stalls
        head_in = await reader.readuntil(b"\r\n\r\n")
        assert head_in.startswith(b"HTTP/1.1 408"), head_in
        length = next(
            int(line.split(b":", 1)[1])
            for line in head_in.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        assert json.loads(await reader.readexactly(length))["error"]["code"] == 40800
    finally:
        writer.close()
    assert harness.worker.active_runs == []


async def test_a_request_that_never_completes_its_headers_is_closed(make_worker: Any) -> None:
    """Half a request line, then nothing: the connection used to be held until aiohttp's 3,630 s
    keep-alive; now it is closed after ``idle_timeout_s``, and a caller meanwhile is served."""
    harness: Harness = await make_worker(EchoProvider(), http=HttpConfig(port=0, idle_timeout_s=0.5))
    url = URL(harness.url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(f"POST {url.path} HT".encode())
        await writer.drain()
        async with harness.http.get(URL(harness.url).with_path("/healthz")) as resp:
            assert resp.status == 200
        # Closed by the server without an answer (the bound is a failure, not a measurement).
        assert await asyncio.wait_for(reader.read(), 60) == b""
    finally:
        writer.close()


async def test_made_up_inputs_during_an_outage_stay_within_the_pending_cap(
    ably_server: EmbeddedServer, make_client: Any, session_name: str
) -> None:
    """While the channel is down a run waits for its trigger up to ``trigger_wait_s`` +
    OUTAGE_WAIT_S (120 s), so POSTs naming made-up event ids hold their place far longer than
    ``trigger_wait_s``: they stay within ``max_pending_invocations`` (the rest get 429/42910 at
    once), end with 104010 once the channel is back, publish nothing, and a real input is then
    served."""
    harness = await start_harness(ably_server, EchoProvider(), trigger_wait_s=0.5, max_pending_invocations=3)
    try:
        client: ChatClient = await make_client()
        first = await client.send_text("one")
        await harness.invoke(session_name, first.event_id)
        await client.run_end_for(first.codec_message_id)
        await harness.worker.run_until_idle()
        ably_server.hold_connections("agent-worker")
        with structlog.testing.capture_logs() as logs:
            assert ably_server.drop_connections("agent-worker", resume=False) == 1
            answers = [await harness.invoke(session_name, str(uuid.uuid4())) for _ in range(5)]
            assert [status for status, _ in answers] == [200, 200, 200, 429, 429]
            assert {body["error"]["code"] for status, body in answers if status == 429} == {42910}
            await asyncio.sleep(4 * 0.5)  # past trigger_wait_s: still held while the channel is down
            assert (await harness.invoke(session_name, str(uuid.uuid4())))[0] == 429
            ably_server.hold_connections("agent-worker", held=False)
            await harness.worker.wait_for_runs(4, limit_s=60)
        refused = [e for e in logs if e["event"] == "run_refused"]
        assert [e["code"] for e in refused] == [104010] * 3
        assert all(client.run_wires(body["runId"]) == [] for status, body in answers if status == 200)
        second = await client.send_text("two", parent=client.last_visible())
        status, _ = await harness.invoke(session_name, second.event_id)
        assert status == 200
        end = await client.run_end_for(second.codec_message_id)
        assert end.transport_headers["run-reason"] == "complete"
    finally:
        ably_server.hold_connections("agent-worker", held=False)
        await harness.close()
