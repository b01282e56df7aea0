"""Conformance: the official JS client (`@ably/ai-transport` 0.8.0 ClientSession) folds a
conversation typed in `chat` and answered by the real worker into what `chat` renders."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from agent_worker.client.render import render_ui_messages
from agent_worker.client.session import ChatSession
from agent_worker.providers.echo import EchoProvider
from agent_worker.server import EmbeddedServer
from tests.client.client_support import DeviceFactory, WorkerFactory, transcript, wait_until
from tests.node_support import JS_ROOT, node_config, run_node_async

pytestmark = pytest.mark.node

FOLD = JS_ROOT / "client" / "fold.mjs"
VIEWER_CAPABILITY = {"conversations:*": ["subscribe", "history", "presence"]}
USER_LABEL = re.compile(r"^#\d+ \S+> ", re.MULTILINE)


async def idle(session: ChatSession) -> None:
    await wait_until(
        session,
        lambda: bool(session.sent) and not session.pending_own() and not session.active_runs(),
        "every run to end",
        timeout=30,
    )


async def converse(alice: ChatSession, bob: ChatSession) -> None:
    """Two devices: prompts from both, a regenerate and an edit — every exchange answered by the worker."""
    for who, text in ((alice, "hello there"), (bob, "second question")):
        await who.invoke(await who.send_text(text))
        await idle(who)

        def replied(t: str = text) -> bool:
            return f"echo: {t}" in transcript(alice)

        await wait_until(alice, replied, f"reply to {text!r}")
    await bob.invoke(await bob.regenerate())
    await idle(bob)
    first_user = next(m for m in alice.visible_messages() if m.message["role"] == "user")
    await alice.invoke(await alice.edit(first_user.codec_message_id, "hello again"))
    await idle(alice)
    await wait_until(alice, lambda: transcript(alice).endswith("echo: hello again"), "the edited branch")
    await wait_until(bob, lambda: transcript(bob) == transcript(alice), "bob to converge")


def js_transcript(result: dict[str, Any]) -> str:
    return render_ui_messages([m["message"] for m in result["messages"]])


async def chat_transcript(server: EmbeddedServer, session: str) -> str:
    """What `agent-worker chat SESSION --transcript` prints, user labels normalised to `user> `."""
    exe = Path(sys.executable).with_name("agent-worker")
    proc = await asyncio.create_subprocess_exec(
        str(exe),
        "chat",
        session,
        "--client-id",
        "printer",
        "--ably-endpoint",
        server.endpoint,
        "--agent-url",
        "none",
        "--transcript",
        "--no-color",
        env={**os.environ, "ABLY_KEY": server.default_key},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return USER_LABEL.sub("user> ", out.decode().rstrip("\n"))


async def test_js_late_joiner_folds_what_chat_renders(
    ably_server: EmbeddedServer, device: DeviceFactory, worker_url: str
) -> None:
    """History written by two chat devices and the worker folds identically in the official client."""
    session = "conversations:conformance-history"
    alice = await device(session, "alice", agent_url=worker_url)
    bob = await device(session, "bob", agent_url=worker_url)
    await converse(alice, bob)

    token = ably_server.mint_token(client_id="js-viewer", capability=VIEWER_CAPABILITY, ttl_s=600)
    env = node_config(host="127.0.0.1", port=ably_server.port, session=session, token=token, mode="history")
    result = await run_node_async(FOLD, env=env, timeout=90)
    assert result["errors"] == []
    assert [m["codecMessageId"] for m in result["messages"]] == [
        m.codec_message_id for m in alice.visible_messages()
    ]
    assert [m["message"] for m in result["messages"]] == [m.message for m in alice.visible_messages()]
    expected = transcript(alice, decorate=False)
    assert js_transcript(result) == expected
    assert await chat_transcript(ably_server, session) == expected
    assert expected == ("user> hello again\nassistant> echo: hello again"), (
        "the edit replaced the first exchange and everything after it on the visible branch"
    )


async def test_js_live_observer_folds_chat_traffic(
    ably_server: EmbeddedServer, device: DeviceFactory, worker_url: str
) -> None:
    """An official client attached before the conversation folds chat's live traffic the same way."""
    session = "conversations:conformance-live"
    alice = await device(session, "alice", agent_url=worker_url)
    bob = await device(session, "bob", agent_url=worker_url)
    token = ably_server.mint_token(client_id="js-viewer", capability=VIEWER_CAPABILITY, ttl_s=600)

    async def control(request: dict[str, Any]) -> dict[str, Any]:
        if request["op"] == "attached":
            return {"ok": True}
        for who, text in ((alice, "first from alice"), (bob, "then bob")):
            await who.invoke(await who.send_text(text))
            await idle(who)
        await wait_until(bob, lambda: transcript(bob) == transcript(alice), "bob to converge")
        return {"ok": True, "messages": len(alice.visible_messages())}

    env = node_config(host="127.0.0.1", port=ably_server.port, session=session, token=token, mode="live")
    result = await run_node_async(FOLD, env=env, timeout=90, on_control=control)
    assert result["errors"] == []
    assert (
        js_transcript(result)
        == transcript(alice, decorate=False)
        == (
            "user> first from alice\nassistant> echo: first from alice\n"
            "user> then bob\nassistant> echo: then bob"
        )
    )
    assert [m["codecMessageId"] for m in result["messages"]] == [
        m.codec_message_id for m in bob.visible_messages()
    ]
    assert {r["status"] for r in result["runs"]} == {"complete"}


async def test_js_folds_a_run_cancelled_from_chat(
    ably_server: EmbeddedServer, device: DeviceFactory, make_worker: WorkerFactory
) -> None:
    """A run cancelled from chat mid-stream folds in the official client with the same partial text,
    and its run status is `cancelled` there as well."""
    url = await make_worker(EchoProvider(tokens_per_second=50))
    session = "conversations:conformance-cancel"
    alice = await device(session, "alice", agent_url=url)
    story = " ".join(f"w{i}" for i in range(200))
    await alice.invoke(await alice.send_text(story))
    await wait_until(alice, lambda: "assistant> w0 w1 w2" in transcript(alice), "the reply to stream")
    assert await alice.cancel_active() == "your run"
    await wait_until(alice, lambda: transcript(alice).endswith("⊘ cancelled"), "the cancel mark", 30)

    token = ably_server.mint_token(client_id="js-viewer", capability=VIEWER_CAPABILITY, ttl_s=600)
    env = node_config(host="127.0.0.1", port=ably_server.port, session=session, token=token, mode="history")
    result = await run_node_async(FOLD, env=env, timeout=90)
    assert [m["message"] for m in result["messages"]] == [m.message for m in alice.visible_messages()]
    assert js_transcript(result) + "\n  ⊘ cancelled" == transcript(alice, decorate=False)
    assert [r["status"] for r in result["runs"]] == ["cancelled"]
