"""The Anthropic Messages adapter, through the real ``anthropic`` SDK against a replay server."""

from __future__ import annotations

import asyncio
import json

import pytest

from agent_worker.errors import ProviderConnectionError, ProviderHTTPError
from agent_worker.protocol.model import (
    AssistantMessage,
    SystemMessage,
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
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolDefinition,
    UsageUpdate,
)
from agent_worker.providers.anthropic import AnthropicProvider
from tests.providers.provider_replay import FAST_RETRY, ReplayServer, collect, stream_texts, tracked_provider


def hello() -> ModelRequest:
    return ModelRequest(messages=[UserMessage((TextPart("Hi"),))])


def provider(replay: ReplayServer, **options: object) -> AnthropicProvider:
    options = {"base_url": replay.base_url, "retry": FAST_RETRY, **options}
    return tracked_provider(replay, AnthropicProvider, "anthropic", options)


class TestStreaming:
    async def test_text_and_usage(self, replay: ReplayServer) -> None:
        """Text deltas stream in order; usage counts cache reads as input; end_turn → stop."""
        replay.sse("anthropic_text.sse")
        events, response = await collect(provider(replay), hello())
        assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hello", "! How", " can I help?"]
        assert events[0] == UsageUpdate(input_tokens=15, output_tokens=2)
        assert events[-1] == Finished("stop")
        assert (response.text, response.input_tokens, response.output_tokens) == (
            "Hello! How can I help?",
            15,
            9,
        )

    async def test_thinking_text_and_tool_use(self, replay: ReplayServer) -> None:
        """Thinking → reasoning, then text, then a tool_use whose JSON fragments join at block stop."""
        replay.sse("anthropic_tools_thinking.sse")
        events, response = await collect(provider(replay), hello())
        kinds = [e.kind for e in events]
        assert kinds.index("reasoning-delta") < kinds.index("text-delta") < kinds.index("tool-call-start")
        assert [e for e in events if isinstance(e, ReasoningDelta)] == [
            ReasoningDelta("The user asks about Paris weather."),
            ReasoningDelta(" I should call get_weather."),
        ]
        assert [e for e in events if isinstance(e, ToolCallStart)] == [
            ToolCallStart("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather")
        ]
        assert [e.arguments_delta for e in events if isinstance(e, ToolCallDelta)] == [
            '{"city": ',
            '"Par',
            'is", "unit": "c"}',
        ]
        (end,) = [e for e in events if isinstance(e, ToolCallEnd)]
        assert json.loads(end.arguments) == {"city": "Paris", "unit": "c"}
        assert events[-1] == Finished("tool-calls")
        assert response.text == "Let me check the weather for you."
        assert response.output_tokens == 89

    async def test_request_shape(self, replay: ReplayServer) -> None:
        """System text is hoisted, tool results ride in a user turn merged with the next user text,
        and the key from the environment is sent."""
        replay.sse("anthropic_text.sse")
        request = ModelRequest(
            system="Be brief.",
            tools=[ToolDefinition("get_weather", "Weather.", {"type": "object", "properties": {}})],
            messages=[
                SystemMessage("Prefer Celsius."),
                UserMessage((TextPart("Weather in Paris?"),)),
                AssistantMessage((ToolCallPart("toolu_1", "get_weather", '{"city":"Paris"}'),)),
                ToolMessage((ToolResultPart("toolu_1", "get_weather", "boom", is_error=True),)),
                UserMessage((TextPart("And?"),)),
            ],
        )
        await collect(provider(replay, model="claude-test", max_tokens=100), request)
        seen = replay.requests[0]
        assert seen.path == "/v1/messages"
        # SDK versions differ in where the key goes (x-api-key or a bearer token); it is sent either way.
        assert "mock-api-key" in (seen.headers.get("x-api-key", "") + seen.headers.get("authorization", ""))
        body = seen.body
        assert body["system"] == "Be brief.\n\nPrefer Celsius."
        assert body["max_tokens"] == 100
        assert body["tools"] == [
            {
                "name": "get_weather",
                "description": "Weather.",
                "input_schema": {"type": "object", "properties": {}},
            }
        ]
        assert body["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "boom", "is_error": True},
                    {"type": "text", "text": "And?"},
                ],
            },
        ]


class TestErrors:
    async def test_overloaded_error_event_before_first_token_is_retried(self, replay: ReplayServer) -> None:
        """An in-stream overloaded_error right after message_start maps to 529 and is retried."""
        replay.sse("anthropic_overloaded.sse")
        replay.sse("anthropic_text.sse")
        _, response = await collect(provider(replay), hello())
        assert response.text == "Hello! How can I help?"
        assert len(replay.requests) == 2

    async def test_overloaded_error_event_maps_to_529(self, replay: ReplayServer) -> None:
        """Without retries the error surfaces as ProviderHTTPError(529) with the vendor body."""
        replay.sse("anthropic_overloaded.sse")
        with pytest.raises(ProviderHTTPError) as info:
            await collect(provider(replay, retry={"attempts": 1}), hello())
        assert info.value.http_status == 529
        assert info.value.body == {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"},
        }

    async def test_429_with_retry_after_seconds(self, replay: ReplayServer) -> None:
        """``retry-after`` in seconds is parsed onto the error when attempts run out."""
        body = {
            "type": "error",
            "error": {
                "type": "rate_limit_error",
                "message": "Number of request tokens has exceeded your per-minute rate limit",
            },
        }
        replay.error(429, body, {"retry-after": "7"})
        with pytest.raises(ProviderHTTPError) as info:
            await collect(provider(replay, retry={"attempts": 1}), hello())
        assert (info.value.http_status, info.value.retry_after) == (429, 7.0)

    async def test_mid_stream_break_is_a_connection_error(self, replay: ReplayServer) -> None:
        """A connection lost after text was streamed surfaces from the iteration, not as a retry."""
        replay.sse("anthropic_text.sse", break_after=5)
        got: list[str] = []
        with pytest.raises(ProviderConnectionError):
            await stream_texts(provider(replay), hello(), got)
        assert got == ["Hello", "! How"]
        assert len(replay.requests) == 1

    async def test_cancel_closes_the_connection(self, replay: ReplayServer) -> None:
        """Cancelling mid-stream hangs up on the server."""
        replay.sse("anthropic_tools_thinking.sse", delay=0.05)
        started = asyncio.Event()

        async def consume() -> None:
            async with provider(replay).stream(hello()) as stream:
                async for _ in stream:
                    started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(replay.client_gone.wait(), 10)
        assert replay.events_written < 20
