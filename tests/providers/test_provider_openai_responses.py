"""The OpenAI Responses adapter, through the real ``openai`` SDK against a replay server."""

from __future__ import annotations

import json

import pytest
from structlog.testing import capture_logs

from agent_worker.errors import ProviderConnectionError, ProviderError, ProviderHTTPError
from agent_worker.protocol.model import (
    AssistantMessage,
    TextPart,
    ToolCallPart,
    ToolMessage,
    ToolResultPart,
    UserMessage,
)
from agent_worker.providers import (
    Finished,
    ModelRequest,
    ReasoningDelta,
    TextDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolDefinition,
    UsageUpdate,
)
from agent_worker.providers.openai_responses import OpenAIResponsesProvider
from tests.providers.provider_replay import ReplayServer, collect, stream_texts, tracked_provider


def hello() -> ModelRequest:
    return ModelRequest(messages=[UserMessage((TextPart("Hi"),))], system="Be brief.")


def provider(replay: ReplayServer, **options: object) -> OpenAIResponsesProvider:
    opts = {
        "base_url": f"{replay.base_url}/v1",
        "retry": {"attempts": 2, "initial_wait": 0.01, "jitter": 0.0},
    }
    return tracked_provider(replay, OpenAIResponsesProvider, "openai-responses", {**opts, **options})


class TestStreaming:
    async def test_reasoning_summary_text_and_function_call(self, replay: ReplayServer) -> None:
        """Summary deltas → reasoning (parts separated), text deltas → text, function_call → tool call."""
        replay.sse("openai_responses_tools_reasoning.sse")
        events, response = await collect(provider(replay), hello())
        assert response.reasoning == (
            "**Checking the weather**\n\nThe user wants Paris weather; I'll call the tool.\n\nSecond thought."
        )
        assert [e.text for e in events if isinstance(e, TextDelta)] == ["Let me", " check."]
        assert [e for e in events if isinstance(e, ToolCallStart)] == [
            ToolCallStart("call_Q1pXr7", "get_weather")
        ]
        (end,) = [e for e in events if isinstance(e, ToolCallEnd)]
        assert json.loads(end.arguments) == {"city": "Paris"}
        assert UsageUpdate(61, 142) in events
        assert events[-1] == Finished("tool-calls")
        assert any(isinstance(e, ReasoningDelta) for e in events)

    async def test_incomplete_max_output_tokens_is_length(self, replay: ReplayServer) -> None:
        """response.incomplete for max_output_tokens finishes with "length"."""
        replay.sse("openai_responses_incomplete.sse")
        events, response = await collect(provider(replay), hello())
        assert response.text == "Once upon a"
        assert events[-1] == Finished("length")

    async def test_request_shape(self, replay: ReplayServer) -> None:
        """Instructions, input items (incl. function_call and its output), tools, reasoning, store=False."""
        replay.sse("openai_responses_incomplete.sse")
        request = ModelRequest(
            system="Be brief.",
            tools=[ToolDefinition("get_weather", "Weather.", {"type": "object", "properties": {}})],
            max_tokens=64,
            messages=[
                UserMessage((TextPart("Weather?"),)),
                AssistantMessage(
                    (TextPart("Checking."), ToolCallPart("call_1", "get_weather", {"city": "Paris"}))
                ),
                ToolMessage((ToolResultPart("call_1", "get_weather", {"temp": 21}),)),
            ],
        )
        await collect(provider(replay, model="o-test", reasoning_effort="low"), request)
        seen = replay.requests[0]
        assert seen.path == "/v1/responses"
        body = seen.body
        assert body["instructions"] == "Be brief."
        assert body["store"] is False
        assert body["max_output_tokens"] == 64
        assert body["reasoning"] == {"effort": "low", "summary": "auto"}
        assert body["tools"] == [
            {
                "type": "function",
                "name": "get_weather",
                "description": "Weather.",
                "parameters": {"type": "object", "properties": {}},
                "strict": False,
            }
        ]
        assert body["input"] == [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
            {"role": "assistant", "content": "Checking."},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city":"Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": '{"temp":21}'},
        ]


class TestErrors:
    async def test_error_event_before_first_token_is_retried(self, replay: ReplayServer) -> None:
        """An in-stream server_error before any output is retried like a 500."""
        replay.sse("openai_responses_error.sse")
        replay.sse("openai_responses_incomplete.sse")
        _, response = await collect(provider(replay), hello())
        assert response.text == "Once upon a"
        assert len(replay.requests) == 2

    async def test_error_event_maps_to_http_error(self, replay: ReplayServer) -> None:
        """Without retries, the error event surfaces as ProviderHTTPError(500)."""
        replay.sse("openai_responses_error.sse")
        with pytest.raises(ProviderHTTPError) as info:
            await collect(provider(replay, retry={"attempts": 1}), hello())
        assert info.value.http_status == 500
        assert isinstance(info.value, ProviderError)

    async def test_503_then_success(self, replay: ReplayServer) -> None:
        """A 503 response before the stream opens is retried."""
        replay.error(503, {"error": {"message": "overloaded", "type": "server_error"}})
        replay.sse("openai_responses_incomplete.sse")
        _, response = await collect(provider(replay), hello())
        assert response.finish_reason == "length"

    async def test_mid_stream_break_after_text_is_a_connection_error(self, replay: ReplayServer) -> None:
        """Text already streamed, then the connection drops: an error from the iteration, no retry."""
        replay.sse("openai_responses_incomplete.sse", break_after=3)
        got: list[str] = []
        with pytest.raises(ProviderConnectionError):
            await stream_texts(provider(replay), hello(), got)
        assert got == ["Once"]
        assert len(replay.requests) == 1

    async def test_429_is_retried_and_the_key_stays_out_of_logs(self, replay: ReplayServer) -> None:
        """A 429 with retry-after is retried; neither the retry log nor the error shows the key."""
        replay.error(429, {"error": {"message": "Rate limit", "type": "requests"}}, {"retry-after": "0"})
        replay.error(429, {"error": {"message": "Rate limit", "type": "requests"}}, {"retry-after": "0"})
        with capture_logs() as logs, pytest.raises(ProviderHTTPError) as info:
            await collect(provider(replay), hello())
        assert info.value.http_status == 429 and info.value.retry_after == 0.0
        assert [entry["event"] for entry in logs].count("provider_retry") == 1
        assert "mock-api-key" not in repr(logs) + repr(info.value) + str(info.value.body)
