"""The deterministic providers, the accumulator and the retry policy they share with real adapters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from agent_worker.errors import ConfigError, ProviderConnectionError, ProviderHTTPError, UnknownProviderError
from agent_worker.plugins import available_providers, build_provider
from agent_worker.protocol.model import AssistantMessage, TextPart, UserMessage
from agent_worker.providers import (
    Accumulator,
    EchoProvider,
    Finished,
    ModelProvider,
    ModelRequest,
    ReasoningDelta,
    ScriptedProvider,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    UsageUpdate,
    choose_default_provider,
)
from agent_worker.providers.retries import parse_retry_after


def ask(text: str) -> ModelRequest:
    return ModelRequest(
        messages=[
            UserMessage((TextPart("first question"),)),
            AssistantMessage((TextPart("first answer"),)),
            UserMessage((TextPart(text),)),
        ]
    )


class TestEcho:
    async def test_streams_latest_user_text_word_by_word(self) -> None:
        """One delta per word with its trailing whitespace, then usage and stop."""
        async with EchoProvider(prefix="echo: ").stream(ask("hello  big world")) as stream:
            events = [e async for e in stream]
        assert events == [
            TextDelta("echo: "),
            TextDelta("hello  "),
            TextDelta("big "),
            TextDelta("world"),
            UsageUpdate(input_tokens=7, output_tokens=4),
            Finished("stop"),
        ]
        assert stream.get().text == "echo: hello  big world"

    async def test_rate_limited_stream_is_cancellable(self) -> None:
        """At 5 words/s a cancel after the first word stops the stream there."""
        got: list[StreamEvent] = []
        first = asyncio.Event()

        async def consume() -> None:
            async with EchoProvider(tokens_per_second=5).stream(ask("a b c d e f g h")) as stream:
                async for e in stream:
                    got.append(e)
                    first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert got == [TextDelta("a ")]

    def test_is_a_model_provider_and_configurable(self) -> None:
        """The registry builds it from options; bad options fail loudly."""
        p = build_provider("echo", {"tokens_per_second": 50, "prefix": ">"})
        assert isinstance(p, ModelProvider)
        assert isinstance(p, EchoProvider) and p.tokens_per_second == 50.0
        with pytest.raises(ConfigError, match="tokens_per_second"):
            build_provider("echo", {"tokens_per_second": 0})
        with pytest.raises(ConfigError, match="speed"):
            build_provider("echo", {"speed": 3})


class TestScripted:
    async def test_script_drives_every_event_kind_and_records_requests(self) -> None:
        """Strings become text; tool calls, reasoning and usage pass through; finish is added."""

        async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
            yield ReasoningDelta("thinking")
            yield "Calling "
            yield ToolCallStart("c1", "lookup")
            yield ToolCallDelta("c1", '{"q":')
            yield ToolCallDelta("c1", '"x"}')
            yield ToolCallEnd("c1", "lookup", '{"q":"x"}')
            yield UsageUpdate(3, 4)

        p = ScriptedProvider(script)
        async with p.stream(ask("go")) as stream:
            events = [e async for e in stream]
        assert events[-1] == Finished("tool-calls")
        r = stream.get()
        assert (r.text, r.reasoning, r.tool_calls) == (
            "Calling ",
            "thinking",
            [ToolCall("c1", "lookup", '{"q":"x"}')],
        )
        assert (r.input_tokens, r.output_tokens, r.finish_reason) == (3, 4, "tool-calls")
        assert p.requests == [ask("go")]

    async def test_error_before_first_token_comes_from_open_and_is_retried(self) -> None:
        """A retryable error raised before any content is retried by the shared policy."""
        calls = 0

        async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
            nonlocal calls
            calls += 1
            yield UsageUpdate(1, None)  # usage alone does not count as a token
            if calls < 3:
                msg = "busy"
                raise ProviderHTTPError(msg, http_status=503, retry_after=0.01)
            yield "ok"

        p = ScriptedProvider(script, retry={"attempts": 3, "initial_wait": 0.01})
        with capture_logs() as logs:
            async with p.stream(ask("x")) as stream:
                events = [e async for e in stream]
        assert calls == 3
        assert TextDelta("ok") in events
        assert [entry["wait"] for entry in logs if entry["event"] == "provider_retry"] == [0.01, 0.01]

    async def test_attempts_run_out_with_the_last_error(self) -> None:
        """Every attempt failing: each failure but the last is logged with its attempt number and
        wait (``Retry-After`` capped at ``max_wait``), then the last error is raised as it was."""
        calls = 0

        async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
            nonlocal calls
            calls += 1
            msg = f"busy {calls}"
            raise ProviderHTTPError(msg, http_status=429, retry_after=5.0)
            yield "unreachable"

        p = ScriptedProvider(script, retry={"attempts": 3, "max_wait": 0.01})
        with capture_logs() as logs, pytest.raises(ProviderHTTPError, match="busy 3"):
            async with p.stream(ask("x")):
                pass
        retries = [entry for entry in logs if entry["event"] == "provider_retry"]
        assert calls == 3
        assert [(r["attempt"], r["wait"], r["http_status"]) for r in retries] == [
            (1, 0.01, 429),
            (2, 0.01, 429),
        ]

    async def test_error_after_first_token_surfaces_from_iteration(self) -> None:
        """After content was yielded the error is not retried: it ends the iteration."""
        calls = 0

        async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
            nonlocal calls
            calls += 1
            yield "partial "
            msg = "broke"
            raise ProviderConnectionError(msg)

        p = ScriptedProvider(script, retry={"attempts": 5, "initial_wait": 0.01})
        got: list[StreamEvent] = []
        with pytest.raises(ProviderConnectionError):
            async with p.stream(ask("x")) as stream:
                async for e in stream:
                    got.append(e)
        assert (calls, got, stream.get().text) == (1, [TextDelta("partial ")], "partial ")

    async def test_non_retryable_errors_are_raised_at_once(self) -> None:
        """A 400 or a plain exception is never retried."""
        calls = 0

        async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
            nonlocal calls
            calls += 1
            msg = "bad"
            raise ProviderHTTPError(msg, http_status=400)
            yield "unreachable"

        p = ScriptedProvider(script, retry={"attempts": 5, "initial_wait": 0.01})
        with pytest.raises(ProviderHTTPError):
            async with p.stream(ask("x")):
                pass
        assert calls == 1

    async def test_a_stream_is_single_use(self) -> None:
        """Iterating twice is a RuntimeError, not a silent empty stream."""

        async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
            yield "x"

        async with ScriptedProvider(script).stream(ask("x")) as stream:
            [e async for e in stream]
            with pytest.raises(RuntimeError, match="only once"):
                stream.__aiter__()


class TestAccumulator:
    def test_usage_last_value_wins_and_unfinished_calls_are_reported(self) -> None:
        """Later usage replaces earlier; a started call without end shows up as unfinished."""
        acc = Accumulator()
        events: list[StreamEvent] = [
            UsageUpdate(5, None),
            UsageUpdate(None, 2),
            UsageUpdate(None, 9),
            ToolCallStart("c", "f"),
        ]
        for e in events:
            acc.feed(e)
        assert (acc.response.input_tokens, acc.response.output_tokens) == (5, 9)
        assert acc.unfinished_calls == {"c": "f"}

    def test_text_is_assembled_in_order_and_readable_mid_stream(self) -> None:
        """Deltas join in order; reading ``response`` mid-stream neither loses nor repeats text."""
        acc = Accumulator()
        acc.feed(TextDelta("a"))
        acc.feed(ReasoningDelta("r1"))
        acc.feed(TextDelta("b"))
        assert (acc.response.text, acc.response.reasoning) == ("ab", "r1")
        for piece in ("c", "d", "e"):
            acc.feed(TextDelta(piece))
        acc.feed(ReasoningDelta("r2"))
        assert (acc.response.text, acc.response.reasoning) == ("abcde", "r1r2")
        assert acc.response.text == "abcde"  # a second read is the same


class TestRegistry:
    def test_builtins_are_listed(self) -> None:
        """Every built-in provider is registered with a description."""
        assert {"echo", "openai", "openai-responses", "openai-compatible", "anthropic", "local"} <= set(
            available_providers()
        )

    def test_unknown_provider(self) -> None:
        """An unknown name lists what is registered."""
        with pytest.raises(UnknownProviderError, match="echo"):
            build_provider("nope", {})

    def test_import_path(self) -> None:
        """A provider can be named by import path, without any plugin."""
        p = build_provider("agent_worker.providers.echo:EchoProvider", {"prefix": "x"})
        assert isinstance(p, EchoProvider) and p.prefix == "x"

    def test_default_choice_follows_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """OpenAI key first, then Anthropic key, else local or echo."""
        assert choose_default_provider()[0] == "openai"
        monkeypatch.delenv("OPENAI_API_KEY")
        assert choose_default_provider() == ("anthropic", "ANTHROPIC_API_KEY is set")
        monkeypatch.delenv("ANTHROPIC_API_KEY")
        name, reason = choose_default_provider()
        assert name in {"local", "echo"}
        assert reason


class TestRetryAfter:
    @pytest.mark.parametrize(
        ("headers", "expected"),
        [
            ({"retry-after-ms": "250"}, 0.25),
            ({"retry-after": "3"}, 3.0),
            ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # in the past
            ({"retry-after": "soon"}, None),
            ({}, None),
        ],
    )
    def test_parse(self, headers: dict[str, str], expected: float | None) -> None:
        """Milliseconds, seconds and HTTP dates are understood; nonsense is ignored."""
        assert parse_retry_after(headers) == expected
