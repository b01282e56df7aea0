"""A scripted agent for client tests: real wire traffic, agent side driven step by step by the test.

It publishes exactly what the official agent publishes (§10a) using the protocol layer's encoder —
run-start, start/start-step, a streamed text part (create + appends + closing append), finish-step,
finish, run-end — but only when the test says so, so a test can look at a device mid-stream, drop its
connection between two appends, or cancel before the run starts.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from typing import Any

from agent_worker.protocol.headers import (
    AI_CANCEL,
    AI_INPUT,
    AI_RUN_END,
    AI_RUN_START,
    H_CODEC_MESSAGE_ID,
    H_EVENT_ID,
    H_FORK_OF,
    H_MSG_REGENERATE,
    H_PARENT,
    H_RUN_CLIENT_ID,
    RunEndReason,
    build_lifecycle_headers,
    build_output_headers,
    lifecycle_message,
)
from agent_worker.protocol.vercel.encoder import UIMessageEncoder
from agent_worker.protocol.wire import AppendOp, InboundMessage, PublishOp, UpdateOp, WireOp
from agent_worker.server import EmbeddedServer
from agent_worker.transport.ably import AblySettings, AblyTransport, Channel


def settings_for(server: EmbeddedServer, client_id: str | None) -> AblySettings:
    async def token() -> str:
        return server.mint_token(client_id=client_id)

    return AblySettings(endpoint=server.endpoint, token_source=token, client_id=client_id)


class ScriptedAgent:
    """Watches one channel; records inputs and cancels; runs are opened explicitly."""

    def __init__(self, server: EmbeddedServer, channel_name: str) -> None:
        self.transport = AblyTransport(settings_for(server, None))
        self.channel_name = channel_name
        self.inputs: dict[str, InboundMessage] = {}
        self.input_wires: list[InboundMessage] = []
        self.cancels: list[InboundMessage] = []
        self._arrived = asyncio.Condition()
        self._channel: Channel | None = None

    async def __aenter__(self) -> ScriptedAgent:
        await self.transport.connect()
        self._channel = self.transport.channel(self.channel_name)
        await self._channel.subscribe(self._on_message)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.transport.close()

    @property
    def channel(self) -> Channel:
        assert self._channel is not None
        return self._channel

    def _on_message(self, msg: InboundMessage) -> None:
        if msg.name == AI_INPUT:
            self.input_wires.append(msg)
            event_id = msg.transport_headers.get(H_EVENT_ID)
            if event_id is not None:
                self.inputs.setdefault(event_id, msg)
        elif msg.name == AI_CANCEL:
            self.cancels.append(msg)
        asyncio.get_running_loop().create_task(self._wake())

    async def _wake(self) -> None:
        async with self._arrived:
            self._arrived.notify_all()

    async def wait_input(self, event_id: str, timeout: float = 10.0) -> InboundMessage:  # noqa: ASYNC109
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: event_id in self.inputs)
        return self.inputs[event_id]

    async def wait_inputs(self, count: int, timeout: float = 15.0) -> list[InboundMessage]:  # noqa: ASYNC109
        """Until ``count`` ai-input wires have arrived; returns all of them in arrival order."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.input_wires) >= count)
        return list(self.input_wires)

    async def wait_cancels(self, count: int, timeout: float = 10.0) -> list[InboundMessage]:  # noqa: ASYNC109
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.cancels) >= count)
        return list(self.cancels)

    async def open_run(self, trigger: InboundMessage) -> AgentRun:
        run = AgentRun(self, trigger)
        await run.start()
        return run


class AgentRun:
    """One run answering ``trigger`` with one assistant message."""

    def __init__(self, agent: ScriptedAgent, trigger: InboundMessage) -> None:
        self.agent = agent
        h = trigger.transport_headers
        self.trigger_cmid = h[H_CODEC_MESSAGE_ID]
        self.run_id = str(uuid.uuid4())
        self.invocation_id = str(uuid.uuid4())
        self.owner = h.get(H_RUN_CLIENT_ID, "")
        self.input_client_id = trigger.client_id
        self.regenerates = h.get(H_MSG_REGENERATE)
        self.fork_of = h.get(H_FORK_OF)
        # Leaf anchor (§4.3.5): a user message backs a node; a regenerate carrier does not.
        self.anchor = h.get(H_PARENT) if self.regenerates is not None else self.trigger_cmid
        self.codec_message_id = str(uuid.uuid4())
        self.encoder = UIMessageEncoder(
            build_output_headers(
                codec_message_id=self.codec_message_id,
                run_id=self.run_id,
                run_client_id=self.owner,
                invocation_id=self.invocation_id,
                input_codec_message_id=self.trigger_cmid,
                parent=self.anchor,
                fork_of=self.fork_of,
                regenerates=self.regenerates,
                input_client_id=self.input_client_id,
            )
        )
        self._serials: dict[str, str] = {}
        self._text_id = "txt-0"

    def _lifecycle(self, **extra: Any) -> dict[str, str]:
        return build_lifecycle_headers(
            run_id=self.run_id,
            run_client_id=self.owner,
            invocation_id=self.invocation_id,
            input_client_id=self.input_client_id,
            input_codec_message_id=self.trigger_cmid,
            **extra,
        )

    async def start(self) -> None:
        headers = self._lifecycle(parent=self.anchor, fork_of=self.fork_of, regenerates=self.regenerates)
        await self.agent.channel.publish(lifecycle_message(AI_RUN_START, headers))

    async def _run_ops(self, ops: list[WireOp]) -> None:
        for op in ops:
            if isinstance(op, PublishOp):
                serial = await self.agent.channel.publish(op.message)
                if op.stream_key is not None:
                    assert serial is not None
                    self._serials[op.stream_key] = serial
            elif isinstance(op, AppendOp):
                await self.agent.channel.append(self._serials[op.stream_key], op.message)
            elif isinstance(op, UpdateOp):
                await self.agent.channel.update(self._serials[op.stream_key], op.message)

    async def chunk(self, chunk: Mapping[str, Any]) -> None:
        await self._run_ops(self.encoder.encode(chunk))

    async def begin_text(self) -> None:
        await self.chunk({"type": "start"})
        await self.chunk({"type": "start-step"})
        await self.chunk({"type": "text-start", "id": self._text_id})

    async def delta(self, text: str) -> None:
        await self.chunk({"type": "text-delta", "id": self._text_id, "delta": text})

    async def finish_text(self) -> None:
        await self.chunk({"type": "text-end", "id": self._text_id})
        await self.chunk({"type": "finish-step"})
        await self.chunk({"type": "finish", "finishReason": "stop"})

    async def cancel_streams(self) -> None:
        await self._run_ops(list(self.encoder.cancel_open_streams()))

    async def end(self, reason: RunEndReason = "complete", error: tuple[int, str] | None = None) -> None:
        extra: dict[str, Any] = {"reason": reason}
        if error is not None:
            extra["error_code"], extra["error_message"] = error
        await self.agent.channel.publish(lifecycle_message(AI_RUN_END, self._lifecycle(**extra)))

    async def reply(self, *deltas: str) -> None:
        """A whole complete run body: text streamed in ``deltas``, then run-end(complete)."""
        await self.begin_text()
        for d in deltas:
            await self.delta(d)
        await self.finish_text()
        await self.end("complete")
