"""The OpenAI Chat Completions adapter, through the real ``openai`` SDK against a replay server."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from structlog.testing import capture_logs

from agent_worker.errors import ConfigError, ProviderConnectionError, ProviderHTTPError
from agent_worker.plugins import build_provider
from agent_worker.protocol.model import (
    AssistantMessage,
    FilePart,
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
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolDefinition,
    UsageUpdate,
)
from agent_worker.providers.openai_chat import OpenAIChatProvider
from tests.providers.provider_replay import FAST_RETRY, ReplayServer, collect, tracked_provider


def hello() -> ModelRequest:
    return ModelRequest(messages=[UserMessage((TextPart("Hi"),))], system="Be brief.")


def provider(replay: ReplayServer, name: str = "openai", **options: object) -> OpenAIChatProvider:
    options = {"base_url": f"{replay.base_url}/v1", "retry": FAST_RETRY, **options}
    return tracked_provider(replay, OpenAIChatProvider, name, options)


class TestStreaming:
    async def test_text_usage_and_finish(self, replay: ReplayServer) -> None:
        """Content chunks become text deltas, the trailing usage chunk a usage event, then stop."""
        replay.sse("openai_chat_text.sse")
        events, response = await collect(provider(replay), hello())
        texts = [e.text for e in events if isinstance(e, TextDelta)]
        assert texts == ["Hello", "!", " How", " can", " I", " help", " you", " today", "?"]
        assert events[-2:] == [UsageUpdate(19, 10), Finished("stop")]
        assert response.text == "Hello! How can I help you today?"  # type: ignore[attr-defined]
        assert response.finish_reason == "stop"  # type: ignore[attr-defined]

    async def test_request_shape(self, replay: ReplayServer) -> None:
        """The SDK posts our translated conversation, tools, usage option and bearer key."""
        replay.sse("openai_chat_text.sse")
        tool = ToolDefinition("get_weather", "Weather for a city.", {"type": "object", "properties": {}})
        request = ModelRequest(
            system="Be brief.",
            tools=[tool],
            max_tokens=50,
            messages=[
                UserMessage((TextPart("Weather in Paris?"), FilePart("https://x/img.png", "image/png"))),
                AssistantMessage(
                    (TextPart("Checking."), ToolCallPart("call_1", "get_weather", {"city": "Paris"}))
                ),
                ToolMessage((ToolResultPart("call_1", "get_weather", {"temp": 21}),)),
            ],
        )
        await collect(provider(replay, model="gpt-test"), request)
        seen = replay.requests[0]
        assert seen.path == "/v1/chat/completions"
        assert seen.headers["authorization"] == "Bearer mock-api-key"
        body = seen.body
        assert body["model"] == "gpt-test"
        assert body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}
        assert body["max_completion_tokens"] == 50
        assert body["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather for a city.",
                    "parameters": {"type": "object", "properties": {}},
                },
            }
        ]
        assert body["messages"] == [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather in Paris?"},
                    {"type": "image_url", "image_url": {"url": "https://x/img.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp":21}'},
        ]

    async def test_parallel_tool_calls_with_argument_fragments(self, replay: ReplayServer) -> None:
        """Two indexed tool calls stream start/fragments and end with their joined arguments."""
        replay.sse("openai_chat_tools.sse")
        events, response = await collect(provider(replay), hello())
        starts = [e for e in events if isinstance(e, ToolCallStart)]
        assert starts == [
            ToolCallStart("call_Wx3kPq", "get_weather"),
            ToolCallStart("call_Yz9mRt", "current_time"),
        ]
        frags = [
            e.arguments_delta for e in events if isinstance(e, ToolCallDelta) and e.call_id == "call_Wx3kPq"
        ]
        assert frags == ['{"ci', 'ty": "P', 'aris"}']
        ends = [e for e in events if isinstance(e, ToolCallEnd)]
        assert [json.loads(e.arguments) for e in ends] == [{"city": "Paris"}, {"timezone": "Europe/Paris"}]
        assert events[-1] == Finished("tool-calls")
        assert [c.name for c in response.tool_calls] == ["get_weather", "current_time"]  # type: ignore[attr-defined]
        assert response.input_tokens == 82  # type: ignore[attr-defined]

    async def test_compatible_server_reasoning_content(self, replay: ReplayServer) -> None:
        """llama.cpp/vLLM ``reasoning_content`` deltas become reasoning; no key is sent by default."""
        replay.sse("openai_compatible_reasoning.sse")
        p = replay.track(
            build_provider("openai-compatible", {"base_url": f"{replay.base_url}/v1", "model": "smollm2"})
        )
        events, response = await collect(p, hello())  # type: ignore[arg-type]
        assert [e for e in events if isinstance(e, ReasoningDelta)] == [
            ReasoningDelta("The user"),
            ReasoningDelta(" greets me."),
        ]
        assert response.text == "Hi there"  # type: ignore[attr-defined]
        body = replay.requests[0].body
        assert body["model"] == "smollm2"
        assert replay.requests[0].headers["authorization"] == "Bearer not-needed"

    async def test_compatible_requires_base_url(self) -> None:
        """The compatible adapter refuses to guess where the server is."""
        with pytest.raises(ConfigError, match="base_url"):
            build_provider("openai-compatible", {})


class TestErrorsAndRetries:
    async def test_429_retry_after_is_honoured_then_succeeds(self, replay: ReplayServer) -> None:
        """A 429 before the first token is retried after the Retry-After the vendor asked for."""
        replay.error(
            429,
            {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
            {"retry-after-ms": "120"},
        )
        replay.sse("openai_chat_text.sse")
        with capture_logs() as logs:
            _events, response = await collect(provider(replay), hello())
        assert response.text.startswith("Hello!")  # type: ignore[attr-defined]
        assert len(replay.requests) == 2
        retries = [log for log in logs if log["event"] == "provider_retry"]
        assert len(retries) == 1
        assert retries[0]["wait"] == pytest.approx(0.12)
        assert retries[0]["http_status"] == 429

    async def test_500_is_retried_until_attempts_run_out(self, replay: ReplayServer) -> None:
        """Persistent 5xx ends in ProviderHTTPError carrying status and body, after every attempt."""
        for _ in range(3):
            replay.error(500, {"error": {"message": "The server had an error", "type": "server_error"}})
        with pytest.raises(ProviderHTTPError) as info:
            await collect(provider(replay), hello())
        assert info.value.http_status == 500
        assert info.value.retryable
        assert len(replay.requests) == 3

    async def test_400_is_not_retried(self, replay: ReplayServer) -> None:
        """A client error is final: one request, mapped with its body."""
        replay.error(400, {"error": {"message": "Invalid 'messages'", "type": "invalid_request_error"}})
        with pytest.raises(ProviderHTTPError) as info:
            await collect(provider(replay), hello())
        assert info.value.http_status == 400
        assert info.value.body == {"message": "Invalid 'messages'", "type": "invalid_request_error"}
        assert len(replay.requests) == 1

    async def test_break_before_first_token_is_retried(self, replay: ReplayServer) -> None:
        """A connection that dies after the role chunk but before any text counts as failed-to-open."""
        replay.sse("openai_chat_text.sse", break_after=1)
        replay.sse("openai_chat_text.sse")
        _, response = await collect(provider(replay), hello())
        assert response.text == "Hello! How can I help you today?"  # type: ignore[attr-defined]
        assert len(replay.requests) == 2

    async def test_mid_stream_break_after_first_token_is_an_error_not_a_retry(
        self, replay: ReplayServer
    ) -> None:
        """Once text was streamed, a broken connection ends the stream with ProviderConnectionError."""
        replay.sse("openai_chat_text.sse", break_after=4)
        replay.sse("openai_chat_text.sse")  # must not be used
        seen: list[StreamEvent] = []
        p = provider(replay)
        with pytest.raises(ProviderConnectionError):
            async with p.stream(hello()) as stream:
                async for event in stream:
                    seen.append(event)
        assert [e.text for e in seen if isinstance(e, TextDelta)] == ["Hello", "!", " How"]
        assert len(replay.requests) == 1
        assert stream.get().text == "Hello! How"

    async def test_connection_refused_maps_to_connection_error(self) -> None:
        """Nobody listening: ProviderConnectionError after the configured attempts."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        p = build_provider(
            "openai",
            {
                "base_url": f"http://127.0.0.1:{port}/v1",
                "retry": {"attempts": 2, "initial_wait": 0.01, "jitter": 0.0},
            },
        )
        with pytest.raises(ProviderConnectionError):
            async with p.stream(hello()):
                pass

    async def test_guard_refuses_non_loopback_urls(self) -> None:
        """With ALLOW_PROVIDER_REQUESTS off, a real vendor URL is refused before any I/O."""
        p = build_provider("openai", {})
        with pytest.raises(ConfigError, match="ALLOW_PROVIDER_REQUESTS"):
            async with p.stream(hello()):
                pass


class TestCancellation:
    async def test_cancel_closes_the_http_stream(self, replay: ReplayServer) -> None:
        """Cancelling the consuming task closes the vendor connection at once; nothing more is read."""
        replay.sse("openai_chat_long.sse", delay=0.02)
        received: list[StreamEvent] = []
        three = asyncio.Event()
        p = provider(replay)

        async def consume() -> None:
            async with p.stream(hello()) as stream:
                async for event in stream:
                    received.append(event)
                    if len(received) == 3:
                        three.set()

        task = asyncio.create_task(consume())
        await three.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        count_at_cancel = len(received)
        await asyncio.wait_for(replay.client_gone.wait(), 10)
        written = replay.events_written
        await asyncio.sleep(0.1)
        assert len(received) == count_at_cancel  # no more chunks reached us after cancel
        assert replay.events_written == written  # and the server stopped writing
        assert written < 150  # far from the 203 events of the fixture


class TestSecrets:
    def test_key_never_in_repr(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The API key read from the environment shows up in neither repr nor str."""
        monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret-123")
        p = build_provider("openai", {})
        assert "sk-very-secret" not in repr(p)
        assert "sk-very-secret" not in str(vars(p).get("retry"))

    def test_missing_key_says_how_to_fix(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """No key: a ConfigError naming the variable to set."""
        monkeypatch.delenv("OPENAI_API_KEY")
        with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
            build_provider("openai", {})

    def test_unknown_option_fails_loudly(self) -> None:
        """A misspelt option is a ConfigError listing the allowed ones."""
        with pytest.raises(ConfigError, match="modle"):
            build_provider("openai", {"modle": "gpt"})
