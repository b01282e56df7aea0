"""End to end with a real model: SmolLM2 streams an answer through the worker into a session on the
embedded server, read back by a chat client — once in-process (``local``) and once through
llama.cpp's OpenAI-compatible server (``openai-compatible``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent_worker.plugins import build_provider
from agent_worker.protocol.headers import AI_OUTPUT
from agent_worker.providers import ModelProvider
from tests.runtime.runtime_fixtures import make_client, make_worker, session_name
from tests.runtime.runtime_support import ChatClient, Harness

__all__ = ["make_client", "make_worker", "session_name"]

pytestmark = pytest.mark.slow


async def ask_through_worker(
    provider: ModelProvider,
    make_worker: Callable[..., Awaitable[Harness]],
    make_client: Callable[..., Awaitable[ChatClient]],
    session: str,
) -> tuple[str, list[Any]]:
    harness = await make_worker(provider, system_prompt="You are a helpful assistant. Answer briefly.")
    client = await make_client()
    sent = await client.send_text("What is the capital of France?")
    status, body = await harness.invoke(session, sent.event_id)
    assert status == 200, body
    end = await client.run_end_for(sent.codec_message_id, wait_s=60)
    assert end.transport_headers["run-reason"] == "complete"
    run_id = body["runId"]
    outputs = [m for m in client.run_wires(run_id) if m.name == AI_OUTPUT]
    await harness.worker.run_until_idle()
    assert harness.worker.runs_completed == 1
    return client.run_text(run_id), outputs


async def test_local_model_streams_into_a_session(
    gguf: Path, make_worker: Any, make_client: Any, session_name: str
) -> None:
    """The in-process model's tokens reach the client as a streamed, completed text part."""
    provider = build_provider("local", {"max_tokens": 48, "temperature": 0.0})
    try:
        text, outputs = await ask_through_worker(provider, make_worker, make_client, session_name)
    finally:
        await provider.aclose()  # type: ignore[attr-defined]
    assert text.strip()
    assert any(m.transport_headers.get("stream") == "true" for m in outputs)


async def test_llama_cpp_server_streams_into_a_session(
    llama_server: str, make_worker: Any, make_client: Any, session_name: str
) -> None:
    """The same through llama.cpp's server and the OpenAI-compatible adapter."""
    provider = build_provider(
        "openai-compatible", {"base_url": llama_server, "model": "smollm2", "max_tokens": 48}
    )
    try:
        text, outputs = await ask_through_worker(provider, make_worker, make_client, session_name)
    finally:
        await provider.aclose()  # type: ignore[attr-defined]
    assert text.strip()
    assert any(m.transport_headers.get("stream") == "true" for m in outputs)
