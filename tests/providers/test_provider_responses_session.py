"""The Responses path end to end: an ``openai-responses`` session served with the OpenAI Responses
provider (the real ``openai`` SDK against the replay server) sends the history as the session's own
Responses items; hosted tools end the run with a clear error."""

from __future__ import annotations

import json
from typing import Any

from agent_worker.protocol.codecs import OPENAI_RESPONSES
from agent_worker.providers.openai_responses import OpenAIResponsesProvider
from agent_worker.tools.base import Tool
from agent_worker.tools.registry import ToolRegistry
from tests.providers.provider_replay import ReplayServer, Reply, tracked_provider
from tests.runtime.runtime_fixtures import make_client, make_worker, session_name
from tests.runtime.test_run_tools import get_weather

__all__ = ["make_client", "make_worker", "session_name"]


def provider(replay: ReplayServer) -> OpenAIResponsesProvider:
    options = {"base_url": f"{replay.base_url}/v1", "retry": {"attempts": 1}}
    return tracked_provider(replay, OpenAIResponsesProvider, "openai-responses", options)


def sse(*events: dict[str, Any]) -> list[str]:
    return [f"event: {e['type']}\ndata: {json.dumps(e)}" for e in events]


async def test_history_goes_to_the_api_as_the_sessions_items(
    replay: ReplayServer, make_worker: Any, make_client: Any, session_name: str
) -> None:
    replay.sse("openai_responses_tools_reasoning.sse")
    replay.sse("openai_responses_incomplete.sse")
    tools = ToolRegistry([Tool.from_function(get_weather)])
    harness = await make_worker(provider(replay), tools=tools)
    client = await make_client(codec=OPENAI_RESPONSES)
    sent = await client.send_text("Weather in Paris?")
    status, body = await harness.invoke(session_name, sent.event_id)
    assert status == 200, body
    end = await client.run_end_for(sent.codec_message_id)
    assert end.transport_headers["run-reason"] == "complete"
    items = client.run_items(body["runId"])
    assert [i["type"] for i in items[:4]] == ["reasoning", "message", "function_call", "function_call_output"]
    assert "Checking the weather" in items[0]["summary"][0]["text"]
    first, second = (r.body for r in replay.requests)
    user = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "Weather in Paris?"}],
    }
    assert first["input"] == [user]
    # no lossy round trip: the second call gets exactly the items every client folded
    assert second["input"] == [user, *items[:4]]
    assert json.loads(items[3]["output"]) == {"city": "Paris", "tempC": 21}


async def test_hosted_tool_output_is_a_clear_run_error(
    replay: ReplayServer, make_worker: Any, make_client: Any, session_name: str
) -> None:
    replay.replies.append(
        Reply(
            events=sse(
                {"type": "response.created", "sequence_number": 0, "response": {"id": "r", "output": []}},
                {
                    "type": "response.output_item.added",
                    "sequence_number": 1,
                    "output_index": 0,
                    "item": {"id": "ws_1", "type": "web_search_call", "status": "in_progress"},
                },
            )
        )
    )
    harness = await make_worker(provider(replay))
    client = await make_client(codec=OPENAI_RESPONSES)
    sent = await client.send_text("Search the web")
    status, _ = await harness.invoke(session_name, sent.event_id)
    assert status == 200
    end = await client.run_end_for(sent.codec_message_id)
    assert end.transport_headers["run-reason"] == "error"
    assert end.transport_headers["error-code"] == "40003"
    assert "web_search_call" in end.transport_headers["error-message"]
