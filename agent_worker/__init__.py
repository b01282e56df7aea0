"""agent-worker: the agent side of Ably AI Transport 0.8.0 sessions, in Python.

Build an agent and serve it::

    from agent_worker import Agent, RunContext, Worker

    agent = Agent("echo", system_prompt="You are terse.")

    @agent.tool
    def shout(ctx: RunContext[None], text: str) -> str:
        "Upper-case the text."
        return text.upper()

    Worker(agent).run()          # or: agent-worker run myapp:agent

Bring your own loop with any ``async def handler(run: AgentRun) -> None`` in place of the agent.
Names load lazily, so ``import agent_worker`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_worker.agent import Agent
    from agent_worker.config import Config, Secret, load_config
    from agent_worker.errors import AgentWorkerError, ConfigError, ToolError
    from agent_worker.prompts import PromptTemplate, load_prompt
    from agent_worker.protocol.model import (
        AssistantMessage,
        ModelMessage,
        SystemMessage,
        TextPart,
        ToolCallPart,
        ToolMessage,
        ToolResultPart,
        UserMessage,
    )
    from agent_worker.providers.base import (
        Finished,
        ModelProvider,
        ModelRequest,
        ModelResponse,
        ReasoningDelta,
        ResponseStream,
        StreamEvent,
        TextDelta,
        ToolCallDelta,
        ToolCallEnd,
        ToolCallStart,
        UsageUpdate,
    )
    from agent_worker.providers.echo import EchoProvider, ScriptedProvider
    from agent_worker.runtime.handler import AgentRun, MessageStream, RunHandler, ToolResultEvent
    from agent_worker.runtime.run import CancelRequest
    from agent_worker.tools.base import RunContext, Tool, ToolResult
    from agent_worker.worker.service import Worker

__all__ = [
    "Agent",
    "AgentRun",
    "AgentWorkerError",
    "AssistantMessage",
    "CancelRequest",
    "Config",
    "ConfigError",
    "EchoProvider",
    "Finished",
    "MessageStream",
    "ModelMessage",
    "ModelProvider",
    "ModelRequest",
    "ModelResponse",
    "PromptTemplate",
    "ReasoningDelta",
    "ResponseStream",
    "RunContext",
    "RunHandler",
    "ScriptedProvider",
    "Secret",
    "StreamEvent",
    "SystemMessage",
    "TextDelta",
    "TextPart",
    "Tool",
    "ToolCallDelta",
    "ToolCallEnd",
    "ToolCallPart",
    "ToolCallStart",
    "ToolError",
    "ToolMessage",
    "ToolResult",
    "ToolResultEvent",
    "ToolResultPart",
    "UsageUpdate",
    "UserMessage",
    "Worker",
    "load_config",
    "load_prompt",
]

_WHERE = {
    "Agent": "agent",
    "AgentRun": "runtime.handler",
    "AgentWorkerError": "errors",
    "AssistantMessage": "protocol.model",
    "CancelRequest": "runtime.run",
    "Config": "config",
    "ConfigError": "errors",
    "EchoProvider": "providers.echo",
    "Finished": "providers.base",
    "MessageStream": "runtime.handler",
    "ModelMessage": "protocol.model",
    "ModelProvider": "providers.base",
    "ModelRequest": "providers.base",
    "ModelResponse": "providers.base",
    "PromptTemplate": "prompts",
    "ReasoningDelta": "providers.base",
    "ResponseStream": "providers.base",
    "RunContext": "tools.base",
    "RunHandler": "runtime.handler",
    "ScriptedProvider": "providers.echo",
    "Secret": "config",
    "StreamEvent": "providers.base",
    "SystemMessage": "protocol.model",
    "TextDelta": "providers.base",
    "TextPart": "protocol.model",
    "Tool": "tools.base",
    "ToolCallDelta": "providers.base",
    "ToolCallEnd": "providers.base",
    "ToolCallPart": "protocol.model",
    "ToolCallStart": "providers.base",
    "ToolError": "errors",
    "ToolMessage": "protocol.model",
    "ToolResult": "tools.base",
    "ToolResultEvent": "runtime.handler",
    "ToolResultPart": "protocol.model",
    "UsageUpdate": "providers.base",
    "UserMessage": "protocol.model",
    "Worker": "worker.service",
    "load_config": "config",
    "load_prompt": "prompts",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
