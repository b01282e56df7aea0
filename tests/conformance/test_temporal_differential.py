"""Differential conformance under Temporal (issue 10 item 3): the official JS Temporal agent
(tests/js/temporal/: ``createAblyTransportPlugin``, ``withRun``, a ``stepIdFor`` inference activity)
and this worker's temporal engine take turns in one session, and the official client (one
ClientSession + ChatTransport + useChat device, tests/js/temporal/turns.mjs) folds it into one
conversation. Both follow the integration's wire rules (run id == invocation id, step ids
``${invocationId}-${activityId}``), and a step retried after a failed attempt supersedes that
attempt's output on the client.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent_worker.server import EmbeddedServer
from tests.conformance.conformance_support import CLIENT_CAPABILITY, JS_ROOT
from tests.conformance.reference import OfficialTemporalAgent, Rules
from tests.conformance.temporal_wire import check_temporal_rules
from tests.fleet.fleet_support import FAILOVER_S, SCRIPTED, FleetWorker, start_fleet_worker
from tests.node_support import ControlHandler, node_config, run_node_async
from tests.temporal_support import TemporalDevServer, task_queue
from tests.worker_procs import Server

pytestmark = [pytest.mark.node, pytest.mark.timeout(420)]

TURNS = JS_ROOT / "temporal" / "turns.mjs"


def reply(to: str, text: list[str], *, failing_first: list[str] | None = None) -> Rules:
    """Rules answering the prompt whose last user text is ``to``; with ``failing_first`` the first
    activity attempt streams those tokens and then the model stream breaks (Temporal retries)."""
    rules: Rules = []
    if failing_first is not None:
        broken = [{"text": failing_first}, {"error": "lost"}]
        rules.append({"if": {"lastUser": to, "attempt": 1}, "then": broken})
    rules.append({"if": {"lastUser": to}, "then": [{"text": text}]})
    return rules


@pytest.fixture
async def official_agent(
    ably_server: EmbeddedServer, temporal_server: TemporalDevServer, request: pytest.FixtureRequest
) -> AsyncIterator[OfficialTemporalAgent]:
    rules: Rules = request.param
    agent = OfficialTemporalAgent(
        ably_server,
        rules,
        address=temporal_server.address,
        namespace=temporal_server.namespace,
        task_queue=task_queue("official-js"),
    )
    await agent.start()
    try:
        yield agent
    finally:
        await agent.close()


async def converse(
    server: EmbeddedServer, turns: list[tuple[str, ...]], on_control: ControlHandler | None = None
) -> dict[str, Any]:
    """Runs turns.mjs: each ``(text, api[, mid-stream op])`` turn is sent by one official client
    device; ``on_control`` performs the ops."""
    session = f"conversations:temporal-{uuid.uuid4().hex[:8]}"
    token = server.mint_token(client_id="alice", capability=CLIENT_CAPABILITY, ttl_s=600)
    env = node_config(
        host="127.0.0.1",
        port=server.port,
        protocol="msgpack",
        session=session,
        tokens={"alice": token},
        turns=[{"text": t[0], "api": t[1], **({"midStream": t[2]} if len(t) > 2 else {})} for t in turns],
    )
    return await run_node_async(TURNS, env=env, timeout=360, on_control=on_control)


def folded(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["role"], m["text"]) for m in result["a"]["view"]]


OFFICIAL_ONLY = reply("one", ["Reply ", "to one"], failing_first=["Half ", "a reply"]) + reply(
    "two", ["Reply ", "to two"]
)


@pytest.mark.parametrize("official_agent", [OFFICIAL_ONLY], indirect=True)
async def test_official_temporal_agent_retried_step_supersedes_the_failed_attempt(
    ably_server: EmbeddedServer, official_agent: OfficialTemporalAgent
) -> None:
    """The reference itself: its first attempt streams half a reply and fails, Temporal retries the
    activity under the same step id, and the client shows only the retry's reply."""
    result = await converse(ably_server, [("one", official_agent.url), ("two", official_agent.url)])
    assert official_agent.errors == []
    assert folded(result) == [
        ("user", "one"),
        ("assistant", "Reply to one"),
        ("user", "two"),
        ("assistant", "Reply to two"),
    ]
    assert result["a"]["chatStatus"] == "ready"
    assert [r["status"] for r in result["a"]["runs"]] == ["complete", "complete"]

    invocations = [a["body"]["invocationId"] for a in result["answers"]]
    runs = check_temporal_rules(result["wire"], invocations)
    first, second = (runs[i] for i in invocations)
    assert len(first.retried_steps) == 1 and second.retried_steps == []
    attempts = [(s["stepId"], s["attempt"]) for s in official_agent.steps if s["runId"] == invocations[0]]
    assert attempts == [(first.retried_steps[0], 1), (first.retried_steps[0], 2)]
    # The failed attempt's text reached the wire, and the fold dropped it.
    assert any("Half " in (m["data"] or "") for m in result["wire"])


# Python worker a streams half a reply and stalls; it is SIGKILLed mid-stream (worker b has
# started), and Temporal retries the turn on b after the heartbeat timeout.
STALLS_ON_A = {
    "if": {"lastUser": "two", "worker": "a"},
    "then": [{"text": ["Half ", "from a"]}, {"hang": True}],
}
MIXED = [
    *reply("one", ["Reply ", "to one"], failing_first=["Half ", "a reply"]),
    STALLS_ON_A,
    *reply("two", ["Reply ", "to two"]),
    *reply("three", ["Reply ", "to three"]),
]


@pytest.mark.parametrize("official_agent", [MIXED], indirect=True)
async def test_official_agent_and_this_worker_take_turns_in_one_conversation(
    tmp_path: Path,
    ably_server: EmbeddedServer,
    temporal_server: TemporalDevServer,
    official_agent: OfficialTemporalAgent,
) -> None:
    """JS turn (its first attempt fails mid-stream, retried) → Python turn (its worker is killed
    mid-stream, the turn is retried on another worker) → JS turn: one conversation on the client,
    each agent's prompt holds the other's replies, and both follow the same wire rules."""
    server = Server(ably_server.endpoint, ably_server.default_key)
    queue = task_queue("differential-py")
    env = {"AW_FLEET_RULES": json.dumps(MIXED)}
    workers: list[FleetWorker] = []

    async def worker(name: str) -> FleetWorker:
        started = await start_fleet_worker(
            tmp_path,
            server,
            temporal_server,
            queue,
            name,
            target=SCRIPTED,
            config="",
            env=env,
            heartbeat_timeout_s=FAILOVER_S,
        )
        workers.append(started)
        return started

    async def on_control(request: dict[str, Any]) -> dict[str, Any]:
        assert request["op"] == "swap"
        await worker("b")
        await workers[0].kill()
        return {"ok": True}

    try:
        a = await worker("a")
        result = await converse(
            ably_server,
            [("one", official_agent.url), ("two", a.http, "swap"), ("three", official_agent.url)],
            on_control,
        )
    finally:
        for started in workers:
            await started.kill()
    assert official_agent.errors == []
    assert folded(result) == [
        ("user", "one"),
        ("assistant", "Reply to one"),
        ("user", "two"),
        ("assistant", "Reply to two"),
        ("user", "three"),
        ("assistant", "Reply to three"),
    ]
    assert result["a"]["chatStatus"] == "ready"
    assert [r["status"] for r in result["a"]["runs"]] == ["complete"] * 3

    invocations = [answer["body"]["invocationId"] for answer in result["answers"]]
    runs = check_temporal_rules(result["wire"], invocations)
    assert [len(runs[i].retried_steps) for i in invocations] == [1, 1, 0]
    # Both agents: openRun is activity 1, the turn activity 2 (retried under the same id).
    assert [sorted(runs[i].step_starts) for i in invocations] == [[f"{i}-2"] for i in invocations]
    publishers = {
        m["clientId"]
        for m in result["wire"]
        if (m["transport"] or {}).get("run-id") == invocations[1] and m["name"] != "ai-input"
    }
    assert publishers == {"worker-a", "worker-b"}, "turn two: started on a, finished on b"
    for lost in ("a reply", "from a"):  # the failed attempts' tokens: on the wire, not in the fold
        assert any(lost in (m["data"] or "") for m in result["wire"])

    # The official agent's model saw this worker's reply (and not the superseded attempt's).
    last_prompt = (await official_agent.prompts())[-1]
    assert [(m["role"], m["text"]) for m in last_prompt] == [
        ("user", "one"),
        ("assistant", "Reply to one"),
        ("user", "two"),
        ("assistant", "Reply to two"),
        ("user", "three"),
    ]
