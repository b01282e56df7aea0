"""The top-level public surface: ``from agent_worker import Agent, RunContext, Worker, ...``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import agent_worker
from agent_worker import Agent, ConfigError, EchoProvider, ModelRequest, RunContext, ScriptedProvider, Worker
from agent_worker.testing import AgentTester


def test_all_is_sorted_and_every_name_resolves() -> None:
    """__all__ is sorted, and each name loads (lazily) from where it lives."""
    exported = list(agent_worker.__all__)
    assert exported == sorted(exported)
    for name in exported:
        assert getattr(agent_worker, name) is not None, name
    with pytest.raises(AttributeError):
        agent_worker.NotAThing  # type: ignore[attr-defined]  # noqa: B018


def test_importing_the_package_stays_cheap() -> None:
    """`import agent_worker` loads neither the SDKs nor the worker until a name is used."""
    code = (
        "import sys, agent_worker;"
        "heavy = ('ably', 'aiohttp', 'openai', 'agent_worker.worker.service');"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_package_is_typed() -> None:
    """py.typed ships, so users' type checkers see RunContext[Deps] and friends."""
    assert agent_worker.__file__ is not None
    assert Path(agent_worker.__file__).with_name("py.typed").exists()


@dataclass
class Counter:
    calls: int = 0


class TestAgentTools:
    def test_tool_and_tool_plain_check_the_context_parameter(self) -> None:
        """@agent.tool needs ctx first, @agent.tool_plain must not take it; flags are kept."""
        agent: Agent[Counter] = Agent(EchoProvider(), deps=Counter)

        @agent.tool(requires_approval=True)
        def bump(ctx: RunContext[Counter], by: int) -> int:
            """Bump."""
            return ctx.deps.calls + by

        @agent.tool_plain
        def ping() -> str:
            """Ping."""
            return "pong"

        assert [t.name for t in agent.tools] == ["bump", "ping"]
        assert agent.tools["bump"].requires_approval and not agent.tools["ping"].requires_approval
        with pytest.raises(ConfigError, match=r"use @agent\.tool_plain"):
            agent.tool(ping)
        with pytest.raises(ConfigError, match=r"use @agent\.tool$"):

            @agent.tool_plain
            def needs(ctx: RunContext[Counter]) -> int:
                return ctx.deps.calls

    async def test_system_prompt_function_sees_deps_and_client(self) -> None:
        """A system-prompt function gets the run context, deps from the (async) factory included."""

        async def make() -> Counter:
            return Counter(calls=7)

        def prompt(ctx: RunContext[Counter]) -> str:
            return f"{ctx.client_id} has {ctx.deps.calls}"

        async def model(request: ModelRequest) -> AsyncIterator[str]:
            yield "ok"

        provider = ScriptedProvider(model)
        agent = Agent(provider, system_prompt=prompt, deps=make)
        async with AgentTester(agent, client_id="zoe") as tester:
            reply = await tester.ask("hi")
        assert reply.status == "complete"
        assert provider.requests[-1].system == "zoe has 7"

    def test_bad_arguments_are_config_errors(self) -> None:
        """A provider name that is not registered, or both prompt kinds, fail at construction."""
        with pytest.raises(ConfigError):
            Agent("no-such-provider")
        with pytest.raises(ConfigError, match="either system_prompt"):
            Agent(EchoProvider(), system_prompt="x", prompt="default")


async def test_worker_serve_in_your_own_loop() -> None:
    """Worker(agent).serve() starts the embedded server and HTTP face; close() ends serve()."""
    from agent_worker import Config  # noqa: PLC0415

    cfg = Config.model_validate(
        {"ably": {"embedded_port": 0}, "http": {"port": 0}, "worker": {"gc_tuning": False}}
    )
    worker = Worker(Agent(EchoProvider()), config=cfg)
    ready: list[str] = []
    listening = asyncio.Event()

    def on_ready(w: Worker) -> None:
        ready.append(w.http_url or "")
        listening.set()

    task = asyncio.create_task(worker.serve(on_ready=on_ready, handle_signals=False))
    async with asyncio.timeout(30):
        await listening.wait()
    assert ready[0].startswith("http://127.0.0.1:") and worker.connection is not None
    assert worker.connection.embedded is not None
    await worker.close()
    async with asyncio.timeout(30):
        await task
    assert worker.state == "closed" and worker.connection.embedded is None
