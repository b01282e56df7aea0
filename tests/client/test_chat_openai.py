"""`agent-worker chat` on ``openai-responses`` sessions: devices with ``--codec openai-responses``
(or none: the session's messages choose) against the real worker, Responses items rendered."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

from agent_worker.client.render import MessageItem, plain_text, render
from agent_worker.protocol.codecs import OPENAI_RESPONSES
from agent_worker.providers.base import ModelRequest, StreamEvent
from agent_worker.providers.echo import ScriptedProvider
from agent_worker.server import EmbeddedServer
from tests.client.client_support import DeviceFactory, WorkerFactory, transcript, wait_until

SESSION = "conversations:openai-chat"


async def answer(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
    items = request.responses_input or []
    yield f"items={len(items)} "
    yield "ok"


async def test_openai_devices_converge_and_autodetect(
    device: DeviceFactory, make_worker: WorkerFactory
) -> None:
    provider = ScriptedProvider(answer)
    url = await make_worker(provider)
    alice = await device(SESSION, "alice", agent_url=url, codec=OPENAI_RESPONSES)
    await alice.invoke(await alice.send_text("first"))
    await wait_until(alice, lambda: "items=1 ok" in transcript(alice), "alice's reply", 30)
    # bob passes no --codec: the session's messages make his device an openai-responses one
    bob = await device(SESSION, "bob", agent_url=url)
    await wait_until(bob, lambda: "items=1 ok" in transcript(bob), "bob's history", 30)
    assert bob.tree.codecs.adapter_tag == OPENAI_RESPONSES
    await bob.invoke(await bob.send_text("second"))
    await wait_until(alice, lambda: "items=3 ok" in transcript(alice), "the follow-up on alice", 30)
    await wait_until(bob, lambda: transcript(bob) == transcript(alice), "bob to converge")
    assert transcript(alice, decorate=False).splitlines() == [
        "user> first",
        "assistant> items=1 ok",
        "user> second",
        "assistant> items=3 ok",
    ]
    # the worker got the history as Responses items: the first turn, verbatim, then the new prompt
    second = provider.requests[1].responses_input or []
    assert [i["type"] for i in second] == ["message", "message", "message"]


def test_responses_items_render() -> None:
    message = {
        "role": "assistant",
        "items": [
            {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "thinking"}]},
            {
                "id": "fc_2",
                "type": "function_call",
                "call_id": "c1",
                "name": "get_weather",
                "arguments": "{}",
            },
            {"type": "function_call_output", "call_id": "c1", "output": '{"tempC":21}'},
            {"id": "fc_3", "type": "function_call", "call_id": "c2", "name": "notify", "arguments": "{}"},
            {
                "id": "msg_4",
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Done."}, {"type": "refusal", "refusal": "no"}],
            },
        ],
        "toolCallStates": {"c2": {"approval": "pending", "name": "notify", "arguments": "{}"}},
    }
    text = plain_text(render([MessageItem("m", message)], decorate=False))
    assert text.splitlines() == [
        "assistant>   ∴ thinking",
        '  ⚙ get_weather {} → "{\\"tempC\\":21}"',
        "  ⚙ notify {} (approval requested)",
        "Done.[refused] no",
    ]


async def test_cli_codec_option(
    ably_server: EmbeddedServer, device: DeviceFactory, make_worker: WorkerFactory
) -> None:
    url = await make_worker(ScriptedProvider(answer))
    alice = await device(SESSION + "-cli", "alice", agent_url=url, codec=OPENAI_RESPONSES)
    await alice.invoke(await alice.send_text("hello"))
    await wait_until(alice, lambda: "items=1 ok" in transcript(alice), "the reply", 30)
    base = [sys.executable, "-m", "agent_worker.cli", "chat", SESSION + "-cli", "--agent-url", "none"]
    base += ["--ably-endpoint", ably_server.endpoint, "--key", ably_server.default_key, "--no-color"]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *extra], capture_output=True, text=True, timeout=60, check=False)

    done = await asyncio.to_thread(run, "--codec", OPENAI_RESPONSES, "--transcript")
    assert done.returncode == 0, done.stderr
    assert "#1 alice> hello" in done.stdout and "assistant> items=1 ok" in done.stdout
    bad = await asyncio.to_thread(run, "--codec", "bogus", "--transcript")
    assert bad.returncode == 2 and "--codec must be one of" in bad.stderr
