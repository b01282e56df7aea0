"""Differential conformance for ``openai-responses`` sessions: one official-client scenario
(``ResponsesCodec``), one model script, two agents — this worker and the official JS agent
(tests/js/conformance/openai-reference-agent.mjs: createAgentSession with ResponsesCodec, one
``run.pipe`` of Responses events per pass). What the client folds (items, tool-call states, run
statuses) and what the model was asked (the Responses input, normalised) must be identical.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from agent_worker.providers.base import ModelRequest
from agent_worker.server import EmbeddedServer
from tests.conformance.conformance_support import JS_ROOT, Conductor
from tests.conformance.reference import ReferenceAgent, Rules, rules_script, tools

pytestmark = pytest.mark.node

OPENAI_REFERENCE_AGENT = JS_ROOT / "conformance" / "openai-reference-agent.mjs"


def normalise_items(request: ModelRequest) -> list[dict[str, Any]]:
    """The prompt's Responses items in the reference normal form (``normalise`` in the JS agent)."""
    out: list[dict[str, Any]] = []
    for item in request.responses_input or []:
        entry: dict[str, Any] = {"role": "", "text": "", "calls": [], "results": [], "files": []}
        if item.get("type") == "message":
            entry["role"] = "user" if item.get("role") == "user" else "assistant"
            entry["text"] = "".join(str(p.get("text", p.get("refusal", ""))) for p in item.get("content", []))
        elif item.get("type") == "function_call":
            entry["role"] = "assistant"
            entry["calls"].append([item["call_id"], item["name"], json.loads(item.get("arguments") or "{}")])
        elif item.get("type") == "function_call_output":
            entry["role"] = "tool"
            entry["results"].append([item["call_id"], item["output"], False])
        else:
            continue
        out.append(entry)
    return out


WEATHER_CALL = {"tool": {"id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}}
NOTIFY_CALL = {"tool": {"id": "call_n", "name": "send_notification", "input": {"message": "hi"}}}

CASES: dict[str, tuple[str, dict[str, Any], Rules]] = {
    "plain": ("openaiSend", {}, [{"then": [{"text": ["Hi", " there", "!"]}]}]),
    "multi_turn": (
        "openaiSend",
        {"texts": ["one", "two"]},
        [
            {"if": {"lastUser": "one"}, "then": [{"text": ["Reply ", "to one"]}]},
            {"if": {"lastUser": "two"}, "then": [{"text": ["Reply ", "to two"]}]},
        ],
    ),
    "reasoning": (
        "openaiSend",
        {"texts": ["Think first"]},
        [{"then": [{"reasoning": ["Let me ", "think."]}, {"text": ["Done ", "thinking."]}]}],
    ),
    "server_tool": (
        "openaiSend",
        {"texts": ["Weather in Paris?"]},
        [
            {"if": {"toolResults": 0}, "then": [{"text": "Checking."}, WEATHER_CALL]},
            {"if": {"toolResults": 1}, "then": [{"text": ["It is 21°C ", "in Paris."]}]},
        ],
    ),
    "regenerate_edit": (
        "openaiRegenerateEdit",
        {},
        [
            {"if": {"call": n}, "then": [{"text": text}]}
            for n, text in enumerate(["Joke 1", "Joke 2", "Answer 1", "Answer 2"], start=1)
        ],
    ),
    "approval_approved": (
        "openaiApproval",
        {"approved": True},
        [
            {"if": {"toolResults": 0}, "then": [{"text": "Let me notify them."}, NOTIFY_CALL]},
            {"if": {"toolResults": 1}, "then": [{"text": "Done."}]},
        ],
    ),
    "approval_denied": (
        "openaiApproval",
        {"approved": False},
        [
            {"if": {"toolResults": 0}, "then": [{"text": "Let me notify them."}, NOTIFY_CALL]},
            {"then": [{"text": "Not sent."}]},
        ],
    ),
    **{
        f"cancel_{via}": (
            "openaiCancelOwner",
            {"via": via, "providerEvents": False},
            [
                {"if": {"lastUser": "And now?"}, "then": [{"text": "Fresh answer"}]},
                {"then": [{"text": ["Once", " upon", " a time"]}, {"hang": True}]},
            ],
        )
        for via in ("session", "run")
    },
    "late_joiner": (
        "openaiLateJoiner",
        {"clients": ("alice", "bob")},
        [
            {
                "then": [
                    {"text": ["one ", "two ", "three "]},
                    {"gate": "half"},
                    {"text": ["four ", "five ", "six"]},
                ]
            }
        ],
    ),
    "client_tool": (
        "openaiClientTool",
        {},
        [
            {
                "if": {"toolResults": 0},
                "then": [{"tool": {"id": "call_loc", "name": "get_client_location", "input": {}}}],
            },
            {"if": {"toolResults": 1}, "then": [{"text": "You are in Lisbon."}]},
        ],
    ),
}


def norm_device(device: dict[str, Any]) -> dict[str, Any]:
    """Everything but the codec-message-ids (uuids minted on each side)."""
    return {
        "view": [
            {"role": m["role"], "items": m["items"], "toolCallStates": m["toolCallStates"]}
            for m in device["view"]
        ],
        "runs": [(r["status"], r["clientId"], (r["error"] or {}).get("code")) for r in device["runs"]],
        "errors": device["sessionErrors"],
    }


@dataclass(frozen=True)
class Outcome:
    ours: dict[str, Any]
    theirs: dict[str, Any]
    our_prompts: list[list[dict[str, Any]]]
    their_prompts: list[list[dict[str, Any]]]
    reference_errors: list[dict[str, Any]]


async def run_case(case: str, make_stack: Any, ably_server: EmbeddedServer, conductor: Conductor) -> Outcome:
    scenario, extra, rules = CASES[case]
    script, our_prompts = rules_script(rules, normalise_items, conductor)
    stack = await make_stack(script, tools=tools())
    reference = await ReferenceAgent(ably_server, rules, script=OPENAI_REFERENCE_AGENT).start()
    try:
        ours = await stack.scenario(scenario, **extra)
        # the same gates again, now opened for the reference agent's scripted model
        conductor.reset_gates()
        conductor.gate_urls.append(reference.gates_url)
        theirs = await stack.scenario(scenario, api=reference.url, **extra)
        their_prompts = await reference.prompts()
    finally:
        await reference.close()
    return Outcome(ours["a"], theirs["a"], our_prompts, their_prompts, reference.errors)


@pytest.mark.parametrize("case", list(CASES))
async def test_folded_state_and_prompts_match_official_agent(
    make_stack: Any, ably_server: EmbeddedServer, conductor: Conductor, case: str
) -> None:
    result = await run_case(case, make_stack, ably_server, conductor)
    assert result.reference_errors == [], f"the reference agent failed: {result.reference_errors}"
    assert norm_device(result.ours) == norm_device(result.theirs)
    assert result.our_prompts == result.their_prompts
    assert result.ours["view"], "the scenario folded nothing"
