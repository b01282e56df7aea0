"""Model providers: one port (:mod:`.base`), deterministic doubles (:mod:`.echo`) and vendor adapters.

Vendor adapters (``openai_chat``, ``openai_responses``, ``anthropic``, ``local``) are imported lazily
through :func:`agent_worker.plugins.build_provider`, so importing this package never imports a vendor SDK.
"""

from agent_worker.providers._accumulator import Accumulator
from agent_worker.providers.base import (
    Finished,
    FinishReason,
    ModelProvider,
    ModelRequest,
    ModelResponse,
    ReasoningDelta,
    ResponseStream,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolDefinition,
    UsageUpdate,
)
from agent_worker.providers.echo import EchoProvider, ScriptedProvider
from agent_worker.providers.registry import choose_default_provider
from agent_worker.providers.retries import RetryConfig

__all__ = [
    "Accumulator",
    "EchoProvider",
    "FinishReason",
    "Finished",
    "ModelProvider",
    "ModelRequest",
    "ModelResponse",
    "ReasoningDelta",
    "ResponseStream",
    "RetryConfig",
    "ScriptedProvider",
    "StreamEvent",
    "TextDelta",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "ToolDefinition",
    "UsageUpdate",
    "choose_default_provider",
]
