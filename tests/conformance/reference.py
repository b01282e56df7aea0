"""Differential conformance: the same declarative model script for the Python worker and for the
official JS agent (tests/js/conformance/reference-agent.mjs: the README route handler with the AI
SDK's MockLanguageModelV3), so one client scenario can run against both and the results compare.

A script is a list of rules ``{"if": {...}, "then": [events]}``; the first rule whose conditions
hold for a model call answers it. Conditions: ``lastUser`` (text of the last user message),
``toolResults`` (number of tool results in the prompt), ``call`` (1-based model call number),
``worker`` / ``attempt`` (which agent process / Temporal activity attempt answers: the Temporal tests
give those to one side only).
Events: ``{"text": token | [tokens]}``, ``{"reasoning": ...}``, ``{"tool": {"id", "name",
"input"}}``, ``{"error": message}`` (the stream fails after the events before it), ``{"hang": true}``
(the model stalls until the run is cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

from agent_worker.errors import ProviderConnectionError
from agent_worker.protocol.model import (
    AssistantMessage,
    FilePart,
    TextPart,
    ToolCallPart,
    ToolMessage,
    UserMessage,
)
from agent_worker.providers.base import (
    ModelRequest,
    ReasoningDelta,
    StreamEvent,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
)
from agent_worker.server import EmbeddedServer
from agent_worker.tools.base import Tool
from agent_worker.tools.builtin import get_client_location, send_notification
from agent_worker.tools.registry import ToolRegistry
from tests.conformance.conformance_support import JS_ROOT, Conductor, Script
from tests.node_support import node_binary, node_config

REFERENCE_AGENT = JS_ROOT / "conformance" / "reference-agent.mjs"

Rules = list[dict[str, Any]]


def get_weather(city: str) -> dict[str, Any]:
    """Current weather for a city.

    Args:
        city: The city name.
    """
    return {"city": city, "tempC": 21}


def tools() -> ToolRegistry:
    """The tools of the reference agents (mock-model.mjs), as this worker's registry."""
    return ToolRegistry(
        [
            Tool.from_function(get_weather),
            Tool.from_function(send_notification, requires_approval=True),
            Tool.from_function(get_client_location, client_side=True),
        ]
    )


def normalise(request: ModelRequest) -> list[dict[str, Any]]:
    """A prompt in the reference agent's normal form (see ``normalise`` in reference-agent.mjs)."""
    out: list[dict[str, Any]] = []
    for message in request.messages:
        entry: dict[str, Any] = {"role": "", "text": "", "calls": [], "results": [], "files": []}
        if isinstance(message, UserMessage):
            entry["role"] = "user"
        elif isinstance(message, AssistantMessage):
            entry["role"] = "assistant"
        elif isinstance(message, ToolMessage):
            entry["role"] = "tool"
        else:
            continue
        for part in getattr(message, "parts", ()):
            if isinstance(part, TextPart):
                entry["text"] += part.text
            elif isinstance(part, FilePart):
                entry["files"].append(part.media_type)
            elif isinstance(part, ToolCallPart):
                entry["calls"].append([part.call_id, part.name, part.arguments])
            elif hasattr(part, "call_id") and hasattr(part, "is_error"):
                entry["results"].append([part.call_id, None if part.is_error else part.output, part.is_error])
        out.append(entry)
    return out


def _matches(rule: dict[str, Any], norm: list[dict[str, Any]], call: int, context: dict[str, Any]) -> bool:
    when = rule.get("if", {})
    if any(key in when and when[key] != context.get(key) for key in ("worker", "attempt")):
        return False
    last_user = next((m["text"] for m in reversed(norm) if m["role"] == "user"), "")
    tool_results = sum(len(m["results"]) for m in norm)
    if "lastUser" in when and when["lastUser"] != last_user:
        return False
    if "toolResults" in when and when["toolResults"] != tool_results:
        return False
    return not ("call" in when and when["call"] != call)


def rules_script(
    rules: Rules,
    normalise_prompt: Callable[[ModelRequest], list[dict[str, Any]]] | None = None,
    conductor: Conductor | None = None,
    context: dict[str, Any] | None = None,
) -> tuple[Script, list[list[dict[str, Any]]]]:
    """A ScriptedProvider script following ``rules``; also returns the list of normalised prompts
    (``normalise_prompt`` defaults to :func:`normalise`). ``{"gate": name}`` waits for the
    scenario to open that gate (needs ``conductor``, which forwards it to the reference agent)."""
    prompts: list[list[dict[str, Any]]] = []
    to_norm = normalise_prompt or normalise

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        norm = to_norm(request)
        prompts.append(norm)
        rule = next((r for r in rules if _matches(r, norm, len(prompts), context or {})), None)
        if rule is None:
            msg = f"no scripted rule matches call {len(prompts)}"
            raise AssertionError(msg)
        for event in rule["then"]:
            if "text" in event:
                for token in [event["text"]] if isinstance(event["text"], str) else event["text"]:
                    yield token
            elif "reasoning" in event:
                reasoning = event["reasoning"]
                for token in [reasoning] if isinstance(reasoning, str) else reasoning:
                    yield ReasoningDelta(token)
            elif "tool" in event:
                # As the mock model streams it: start, the whole input as one delta, the call.
                tool = event["tool"]
                arguments = json.dumps(tool.get("input", {}), separators=(",", ":"))  # JSON.stringify
                yield ToolCallStart(tool["id"], tool["name"])
                yield ToolCallDelta(tool["id"], arguments)
                yield ToolCallEnd(tool["id"], tool["name"], arguments)
            elif "error" in event:
                raise ProviderConnectionError(str(event["error"]))
            elif event.get("hang"):
                await asyncio.Event().wait()  # stalls until the run is cancelled
            elif "gate" in event and conductor is not None:
                await conductor.gate(str(event["gate"]))

    return script, prompts


class ReferenceAgent:
    """The official JS agent as a child process on the embedded server."""

    ready_timeout_s = 30.0

    def __init__(
        self,
        server: EmbeddedServer,
        rules: Rules,
        protocol: str = "msgpack",
        script: Path = REFERENCE_AGENT,
        **extra: Any,
    ) -> None:
        self.script = script
        self.server = server
        self.rules = rules
        self.protocol = protocol
        self.extra = extra
        """More AW_NODE_CONFIG fields for the script (e.g. the Temporal agent's address)."""
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.pid = 0
        self.errors: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None
        self._stderr_reader: asyncio.Task[None] | None = None
        self._stderr: list[str] = []

    async def start(self) -> ReferenceAgent:
        env = {
            **os.environ,
            **node_config(
                host="127.0.0.1",
                port=self.server.port,
                key=self.server.default_key,
                protocol=self.protocol,
                rules=self.rules,
                **self.extra,
            ),
        }
        self.proc = await asyncio.create_subprocess_exec(
            node_binary(),
            str(self.script),
            cwd=JS_ROOT,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        async def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            async for raw in self.proc.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                if line.startswith("@@ready ") and not ready.done():
                    ready.set_result(json.loads(line[8:]))
                elif line.startswith("@@event "):
                    self.on_event(json.loads(line[8:]))
            if not ready.done():
                assert self._stderr_reader is not None
                await self._stderr_reader
                tail = "".join(self._stderr)[-3000:]
                ready.set_exception(RuntimeError(f"reference agent exited before ready:\n{tail}"))

        async def drain_stderr() -> None:
            # Read for the whole life of the child: Node writes to a pipe synchronously, so a full,
            # unread stderr pipe would stall the agent mid-run.
            assert self.proc is not None and self.proc.stderr is not None
            async for raw in self.proc.stderr:
                self._stderr.append(raw.decode(errors="replace"))
                del self._stderr[:-200]

        self._stderr_reader = asyncio.create_task(drain_stderr())
        self._reader = asyncio.create_task(read())
        async with asyncio.timeout(self.ready_timeout_s):
            info = await ready
        self.url = str(info["url"])
        self.pid = int(info["pid"])
        return self

    def on_event(self, event: dict[str, Any]) -> None:
        """An ``@@event`` line; the route-handler agents print only failures."""
        self.errors.append(event)

    @property
    def gates_url(self) -> str:
        """Where the conductor forwards opened gates (``POST {gates_url}/<name>``)."""
        return self.url.rsplit("/api/chat", 1)[0] + "/gates"

    async def prompts(self) -> list[list[dict[str, Any]]]:
        base = self.url.rsplit("/api/chat", 1)[0]
        async with aiohttp.ClientSession() as http, http.get(f"{base}/prompts") as resp:
            data: list[list[dict[str, Any]]] = await resp.json()
            return data

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        for task in (self._reader, self._stderr_reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


TEMPORAL_AGENT = JS_ROOT / "temporal" / "agent.mjs"


class OfficialTemporalAgent(ReferenceAgent):
    """The official JS Temporal agent (tests/js/temporal/agent.mjs: ``createAblyTransportPlugin``,
    ``withRun``, a ``stepIdFor`` inference activity) as a Temporal worker + HTTP trigger process.
    ``rules`` may also condition on ``attempt`` (the activity attempt, from 1)."""

    ready_timeout_s = 180.0  # Worker.create bundles the workflow code with webpack first

    def __init__(
        self, server: EmbeddedServer, rules: Rules, *, address: str, namespace: str, task_queue: str
    ) -> None:
        super().__init__(
            server,
            rules,
            script=TEMPORAL_AGENT,
            temporalAddress=address,
            namespace=namespace,
            taskQueue=task_queue,
        )
        self.steps: list[dict[str, Any]] = []
        """One ``{runId, invocationId, stepId, activityId, attempt, pid}`` per activity attempt."""
        self.workflows: list[dict[str, Any]] = []

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "step":
            self.steps.append(event)
        elif kind == "workflow":
            self.workflows.append(event)
            if "error" in event:
                self.errors.append(event)
        elif kind != "ended":
            self.errors.append(event)
