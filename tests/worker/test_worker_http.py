"""The invocation endpoint and bad input: refusals with reasons, 104010, malformed triggers, 429,
deduplication, /healthz and /metrics."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from ably import AblyRealtime
from aiohttp import web
from structlog.testing import capture_logs

from agent_worker.config import HttpConfig, Secret
from agent_worker.protocol.headers import AI_INPUT, AI_RUN_END, AI_RUN_START, build_extras
from agent_worker.providers.base import ModelRequest, StreamEvent
from agent_worker.providers.echo import EchoProvider, ScriptedProvider
from tests.runtime.runtime_support import ChatClient, Harness, start_harness

JSON = {"Content-Type": "application/json"}


def ends_for_run(client: ChatClient, run_id: str) -> list[Any]:
    return [m for m in client.named(AI_RUN_END) if m.transport_headers.get("run-id") == run_id]


async def test_refusals_carry_status_and_reason(make_worker: Any, session_name: str) -> None:
    """Bad bodies are 400, unknown sessions 404, oversized bodies 413 — each with an Ably-style error."""
    harness: Harness = await make_worker(
        EchoProvider(), sessions=("conversations:*",), http=HttpConfig(port=0, max_body_bytes=200)
    )
    async with harness.http.post(harness.url, data=b"{not json", headers=JSON) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == 40000
    async with harness.http.post(harness.url, json=["a"]) as resp:
        assert resp.status == 400
    async with harness.http.post(harness.url, json={"sessionName": session_name}) as resp:
        assert resp.status == 400
        assert "inputEventId" in (await resp.json())["error"]["message"]
    status, body = await harness.invoke("", "e1")
    assert status == 400
    status, body = await harness.invoke("private:secret", "e1")
    assert status == 404 and "unknown session" in body["error"]["message"]
    async with harness.http.post(harness.url, data=b"x" * 500, headers=JSON) as resp:
        assert resp.status == 413
    assert harness.worker.active_runs == []


async def test_bearer_token_is_checked(make_worker: Any, make_client: Any, session_name: str) -> None:
    """With a bearer token configured, invocations without it are 401 and start nothing."""
    harness: Harness = await make_worker(
        EchoProvider(), http=HttpConfig(port=0, bearer_token=Secret("s3cret"))
    )
    client: ChatClient = await make_client()
    sent = await client.send_text("hi")
    status, body = await harness.invoke(session_name, sent.event_id)
    assert status == 401 and body["error"]["code"] == 40101
    status, _ = await harness.invoke(session_name, sent.event_id, headers={"Authorization": "Bearer nope"})
    assert status == 401
    status, _ = await harness.invoke(session_name, sent.event_id, headers={"Authorization": "Bearer s3cret"})
    assert status == 200
    end = await client.run_end_for(sent.codec_message_id)
    assert end.transport_headers["run-reason"] == "complete"


async def test_missing_trigger_ends_with_104010(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """An inputEventId that never appears: the invocation is accepted, then the run is refused with
    104010 after the bounded wait, logged once, and nothing is published into the session (a
    stranger's made-up id must leave no trace there); the worker keeps serving."""
    harness: Harness = await make_worker(EchoProvider(), trigger_wait_s=0.3)
    client: ChatClient = await make_client()
    with capture_logs() as logs:
        status, body = await harness.invoke(session_name, str(uuid.uuid4()))
        assert status == 200
        await harness.worker.wait_for_runs(1)
    refused = [e for e in logs if e["event"] == "run_refused"]
    assert len(refused) == 1 and refused[0]["code"] == 104010
    assert client.run_wires(body["runId"]) == []
    # Still serving.
    sent = await client.send_text("still there?")
    await harness.invoke(session_name, sent.event_id)
    end = await client.run_end_for(sent.codec_message_id)
    assert end.transport_headers["run-reason"] == "complete"


async def test_malformed_triggers_end_with_clear_errors(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """Triggers with missing headers, an unknown kind, a non-input name, a tool result that is not a
    JSON object, an oversized payload or data the SDK cannot decode (garbled JSON) each end their
    run with an error naming the problem."""
    harness: Harness = await make_worker(EchoProvider(), max_input_bytes=1000)
    client: ChatClient = await make_client()
    cases: list[tuple[str, Any, dict[str, Any] | None, str, str]] = []

    def add(
        name: str,
        data: Any,
        transport: dict[str, str] | None,
        codec: dict[str, str] | None,
        why: str,
        *,
        encoding: str = "",
    ) -> None:
        extras = None if transport is None else build_extras(transport, codec)
        cases.append((name, data, extras, why, encoding))

    e = [str(uuid.uuid4()) for _ in range(6)]
    add(
        AI_INPUT,
        "hi",
        {"event-id": e[0], "role": "user"},
        {"kind": "user-message", "partType": "text"},
        "codec-message-id",
    )
    add(AI_INPUT, "hi", {"event-id": e[1], "codec-message-id": "c1"}, {"kind": "telepathy"}, "unknown kind")
    add(
        "chat",
        "hi",
        {"event-id": e[2], "codec-message-id": "c2"},
        {"kind": "user-message"},
        "not an ai-input",
    )
    add(
        AI_INPUT,
        "not json",
        {"event-id": e[3], "codec-message-id": "c3"},
        {"kind": "tool-result", "toolCallId": "t"},
        "JSON object",
    )
    add(
        AI_INPUT,
        "x" * 2000,
        {"event-id": e[4], "codec-message-id": "c4"},
        {"kind": "user-message", "partType": "text"},
        "limit",
    )
    add(
        AI_INPUT,
        '{"output": garbled',
        {"event-id": e[5], "codec-message-id": "c5"},
        {"kind": "tool-result", "toolCallId": "t"},
        "could not be decoded",
        encoding="json",
    )
    for name, data, extras, _, encoding in cases:
        await client.send_raw(name, data, extras, encoding)
    with capture_logs() as logs:
        run_ids = []
        for event_id in e:
            status, body = await harness.invoke(session_name, event_id)
            assert status == 200
            run_ids.append(body["runId"])
        for run_id, (_, _, _, why, _) in zip(run_ids, cases, strict=True):

            def ended(rid: str = run_id) -> list[Any]:
                return ends_for_run(client, rid)

            ends = await client.wait_for(ended)
            h = ends[0].transport_headers
            assert h["run-reason"] == "error", why
            assert why in h["error-message"], (why, h["error-message"])
            assert h["error-code"] in {"40003", "40009"}
        await harness.worker.run_until_idle()
    assert len([x for x in logs if x["event"] == "run_refused"]) == 6
    assert harness.worker.runs_failed == 6


async def test_full_worker_answers_429_with_retry_after(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """At the concurrency limit a new invocation gets 429 + Retry-After and starts nothing; once a
    slot frees up the same input is accepted."""
    release = asyncio.Event()

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        yield "working "
        await release.wait()
        yield "done"

    harness: Harness = await make_worker(ScriptedProvider(script), max_concurrent_runs=1, retry_after_s=3)
    client: ChatClient = await make_client()
    first = await client.send_text("one")
    second = await client.send_text("two", parent=first.codec_message_id)
    assert (await harness.invoke(session_name, first.event_id))[0] == 200
    await client.wait_for(lambda: client.for_input(AI_RUN_START, first.codec_message_id))
    status, body = await harness.invoke(session_name, second.event_id)
    assert status == 429
    assert harness.extra["last_headers"]["Retry-After"] == "3"
    assert body["error"]["statusCode"] == 429
    release.set()
    await client.run_end_for(first.codec_message_id)
    await harness.worker.run_until_idle()
    status, _ = await harness.invoke(session_name, second.event_id)
    assert status == 200
    await client.run_end_for(second.codec_message_id)


async def test_duplicate_invocations_start_one_run(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """The same inputEventId posted twice (even concurrently) starts one run; both answers name it."""
    harness: Harness = await make_worker(EchoProvider())
    client: ChatClient = await make_client()
    sent = await client.send_text("once only")
    (s1, b1), (s2, b2) = await asyncio.gather(
        harness.invoke(session_name, sent.event_id), harness.invoke(session_name, sent.event_id)
    )
    assert s1 == s2 == 200
    assert b1 == b2
    await client.run_end_for(sent.codec_message_id)
    status, b3 = await harness.invoke(session_name, sent.event_id)
    assert status == 200 and b3 == b1
    await harness.worker.run_until_idle()
    assert len(client.for_input(AI_RUN_START, sent.codec_message_id)) == 1
    assert harness.worker.runs_completed == 1


async def test_healthz_and_metrics(make_worker: Any, make_client: Any, session_name: str) -> None:
    """/healthz reports the connection; /metrics exposes runs by outcome, tokens and latencies."""
    harness: Harness = await make_worker(EchoProvider())
    base = harness.url.rsplit("/api/chat", 1)[0]
    async with harness.http.get(f"{base}/healthz") as resp:
        assert resp.status == 200
        body = await resp.json()
        assert body["status"] == "ok" and body["connected"] is True
    client: ChatClient = await make_client()
    sent = await client.send_text("count these four")
    await harness.invoke(session_name, sent.event_id)
    await client.run_end_for(sent.codec_message_id)
    await harness.worker.run_until_idle()
    async with harness.http.get(f"{base}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    assert 'agent_worker_runs_total{outcome="complete"} 1.0' in text
    assert 'agent_worker_tokens_total{direction="output"} 3.0' in text
    assert "agent_worker_time_to_first_token_seconds_count 1.0" in text
    assert "agent_worker_run_duration_seconds_count 1.0" in text
    assert 'agent_worker_invocations_total{result="accepted"} 1.0' in text


async def test_cors_preflight(make_worker: Any) -> None:
    """Browser clients on an allowed origin get CORS headers; others get none."""
    harness: Harness = await make_worker(
        EchoProvider(), http=HttpConfig(port=0, cors_origins=("http://app.test",))
    )
    async with harness.http.options(harness.url, headers={"Origin": "http://app.test"}) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "http://app.test"
    async with harness.http.options(harness.url, headers={"Origin": "http://evil.test"}) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_unreachable_session_body_is_json(make_worker: Any) -> None:
    """Every refusal is JSON the ChatTransport (or a human) can read."""
    harness: Harness = await make_worker(EchoProvider())
    async with aiohttp.ClientSession() as http, http.post(harness.url, data=b"", headers=JSON) as resp:
        assert resp.status == 400
        assert resp.content_type == "application/json"


async def test_dev_token_endpoint(ably_server: Any) -> None:
    """With [http] dev_token_endpoint the worker hands out JWTs for a clientId that the Ably
    service accepts; without it the route does not exist."""
    off = await start_harness(ably_server, EchoProvider())
    on = await start_harness(
        ably_server,
        EchoProvider(),
        http=HttpConfig(port=0, dev_token_endpoint=True),
        token_key=ably_server.default_key,
    )
    try:
        base_off = off.url.rsplit("/api/chat", 1)[0]
        async with off.http.get(f"{base_off}/api/auth/token?clientId=bob") as resp:
            assert resp.status == 404
        base = on.url.rsplit("/api/chat", 1)[0]
        async with on.http.get(f"{base}/api/auth/token?clientId=bob&ttl=10m") as resp:
            assert resp.status == 200 and resp.content_type == "application/jwt"
            jwt = await resp.text()
        client = AblyRealtime(token=jwt, endpoint=f"{ably_server.host}:{ably_server.port}/", tls=False)
        try:
            channel = client.channels.get("conversations:token")
            await channel.attach()
            result = await channel.publish("hello", "x")
            assert result.serials
        finally:
            await client.close()
    finally:
        await off.close()
        await on.close()


async def test_run_reaches_its_model_before_the_invocation_answer(
    make_worker: Any, make_client: Any, session_name: str, monkeypatch: Any
) -> None:
    """A run whose trigger the session already holds takes its first step (located, run-start sent,
    model called) before the POST's answer is written: in a burst of starts nothing on the run's path
    waits for that answer, which would otherwise come between every start and its model call."""
    prompts: list[int] = []

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        prompts.append(len(request.messages))
        yield "ok"

    harness: Harness = await make_worker(ScriptedProvider(script))
    client: ChatClient = await make_client()
    first = await client.send_text("one")
    assert (await harness.invoke(session_name, first.event_id))[0] == 200
    await client.run_end_for(first.codec_message_id)
    await harness.worker.run_until_idle()
    second = await client.send_text("two", parent=first.codec_message_id)
    session = harness.worker.sessions[session_name]
    for _ in range(500):  # the live message folded: the run locates it without a history read
        if session.tree.find_event(second.event_id) is not None:
            break
        await asyncio.sleep(0.01)
    assert session.tree.find_event(second.event_id) is not None
    answered_after: list[int] = []
    json_response = web.json_response  # the module worker/http.py answers with

    def recording(*args: Any, **kwargs: Any) -> Any:
        answered_after.append(len(prompts))
        return json_response(*args, **kwargs)

    monkeypatch.setattr(web, "json_response", recording)
    status, body = await harness.invoke(session_name, second.event_id)
    assert status == 200 and body["runId"]
    assert answered_after == [2]  # the second run's model was called before its answer
    await client.run_end_for(second.codec_message_id)
