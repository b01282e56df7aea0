"""Script whole conversations (client inputs + agent runs) onto the in-memory channel, using only the
protocol layer's own builders — the wire a real client and agent produce."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent_worker.protocol.headers import (
    AI_RUN_END,
    AI_RUN_RESUME,
    AI_RUN_START,
    AI_RUN_SUSPEND,
    AI_STEP_END,
    AI_STEP_START,
    RunEndReason,
    build_cancel_headers,
    build_input_headers,
    build_lifecycle_headers,
    build_output_headers,
    build_step_headers,
    cancel_message,
    js_json,
    lifecycle_message,
)
from agent_worker.protocol.tree import ConversationTree
from agent_worker.protocol.vercel.encoder import (
    UIMessageEncoder,
    encode_regenerate,
    encode_tool_approval_response,
    encode_tool_result,
    encode_user_message,
)
from agent_worker.protocol.wire import InboundMessage
from tests.protocol.protocol_support import JS_ROOT, Channel, inbound_json, node_config, run_node

TREE_SCRIPT = JS_ROOT / "protocol" / "tree.mjs"


def text_reply(text: str, *, finish: str = "stop", stream_id: str = "t0") -> list[dict[str, Any]]:
    """The chunks of a one-step text answer, split in two deltas."""
    half = len(text) // 2
    return [
        {"type": "start"},
        {"type": "start-step"},
        {"type": "text-start", "id": stream_id},
        {"type": "text-delta", "id": stream_id, "delta": text[:half]},
        {"type": "text-delta", "id": stream_id, "delta": text[half:]},
        {"type": "text-end", "id": stream_id},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": finish},
    ]


@dataclass
class AgentRun:
    """One agent run on the channel: lifecycle, steps and outputs with the right headers."""

    convo: Convo
    run_id: str
    invocation_id: str
    owner: str
    input_cmid: str
    leaf: str | None
    input_client_id: str | None = "user-abc"
    fork_of: str | None = None
    regenerates: str | None = None
    step_n: int = 0
    _steer_ids: list[str] = field(default_factory=list)

    def _lifecycle(self, name: str, **fields: Any) -> None:
        """Publish a run-lifecycle message naming this run, its owner, invocation and input."""
        headers = build_lifecycle_headers(
            run_id=self.run_id,
            run_client_id=self.owner,
            invocation_id=self.invocation_id,
            input_client_id=self.input_client_id,
            input_codec_message_id=self.input_cmid,
            **fields,
        )
        self.convo.ch.publish(lifecycle_message(name, headers))

    def start(self, *, run_parent: str | None, continuation: bool = False) -> AgentRun:
        if continuation:
            self._lifecycle(AI_RUN_RESUME)
        else:
            self._lifecycle(
                AI_RUN_START, parent=run_parent, fork_of=self.fork_of, regenerates=self.regenerates
            )
        return self

    def stamp_steers(self, ids: Sequence[str]) -> None:
        self._steer_ids = list(ids)

    def begin_step(self, *, cmid: str, step_id: str | None = None) -> None:
        """Publish ai-step-start and prepare the pass's encoder (outputs go through :meth:`emit`)."""
        step_id = step_id or f"{self.invocation_id}-step-{self.step_n}"
        self.step_n += 1
        self._common: dict[str, Any] = {
            "run_id": self.run_id,
            "step_id": step_id,
            "invocation_id": self.invocation_id,
            "run_client_id": self.owner,
            "input_client_id": self.input_client_id,
            "step_client_id": self.input_client_id or "",
        }
        self._start_serial = self.convo.ch.publish(
            lifecycle_message(AI_STEP_START, build_step_headers(**self._common))
        )
        self._enc = UIMessageEncoder(
            build_output_headers(
                codec_message_id=cmid,
                run_id=self.run_id,
                run_client_id=self.owner,
                parent=self.leaf,
                fork_of=self.fork_of,
                regenerates=self.regenerates,
                invocation_id=self.invocation_id,
                input_client_id=self.input_client_id,
                input_codec_message_id=self.input_cmid,
                step_id=step_id,
                step_client_id=self.input_client_id or "",
            )
        )
        self._enc.set_default_header("step-start-serial", self._start_serial)
        if self._steer_ids:
            self._enc.set_default_header("steer-codec-message-ids", js_json(self._steer_ids))
            self._steer_ids = []
        self._streams: dict[str, str] = {}

    def emit(self, *chunks: Mapping[str, Any]) -> None:
        for chunk in chunks:
            self.convo.ch.run_ops(self._enc.encode(chunk), self._streams)

    def end_step(self, *, reason: str = "complete", cancel: bool = False) -> str:
        if cancel:
            self.convo.ch.run_ops(self._enc.cancel_open_streams(), self._streams)
        end = build_step_headers(**self._common, step_start_serial=self._start_serial, reason=reason)  # type: ignore[arg-type]
        self.convo.ch.publish(lifecycle_message(AI_STEP_END, end))
        return self._start_serial

    def step(
        self,
        chunks: Sequence[Mapping[str, Any]],
        *,
        cmid: str,
        step_id: str | None = None,
        reason: str = "complete",
        cancel: bool = False,
    ) -> str:
        """Publish one pass (step-start, outputs, step-end); returns the step-start serial."""
        self.begin_step(cmid=cmid, step_id=step_id)
        self.emit(*chunks)
        return self.end_step(reason=reason, cancel=cancel)

    def end(self, reason: RunEndReason = "complete", *, error: tuple[int, str] | None = None) -> None:
        self._lifecycle(
            AI_RUN_END,
            reason=reason,
            error_code=error[0] if error else None,
            error_message=error[1] if error else None,
        )

    def suspend(self) -> None:
        self._lifecycle(AI_RUN_SUSPEND)


@dataclass
class Convo:
    """A scripted conversation channel."""

    ch: Channel = field(default_factory=Channel)
    client_id: str = "user-abc"

    def user(
        self,
        cmid: str,
        text: str,
        *,
        parent: str | None = None,
        fork_of: str | None = None,
        run_id: str | None = None,
        event_id: str | None = None,
        client_id: str | None = None,
    ) -> str:
        """Publish a user message (one batch); returns its event-id."""
        event_id = event_id or f"E-{cmid}"
        headers = build_input_headers(
            codec_message_id=cmid,
            event_id=event_id,
            run_id=run_id,
            run_client_id=client_id or self.client_id,
            parent=parent,
            fork_of=fork_of,
        )
        for m in encode_user_message(
            {"id": f"ui-{cmid}", "role": "user", "parts": [{"type": "text", "text": text}]}, headers
        ):
            self.ch.publish(m, client_id=client_id or self.client_id)
        return event_id

    def regenerate(self, cmid: str, *, parent: str, target: str) -> str:
        event_id = f"E-{cmid}"
        headers = build_input_headers(
            codec_message_id=cmid,
            event_id=event_id,
            run_client_id=self.client_id,
            parent=parent,
            regenerates=target,
        )
        self.ch.publish(encode_regenerate(headers), client_id=self.client_id)
        return event_id

    def approve(
        self, *, run_id: str, assistant_cmid: str, tool_call_id: str, approved: bool, parent: str | None
    ) -> str:
        event_id = f"E-approve-{tool_call_id}"
        headers = build_input_headers(
            codec_message_id=assistant_cmid,
            event_id=event_id,
            run_id=run_id,
            run_client_id=self.client_id,
            parent=parent,
        )
        self.ch.publish(
            encode_tool_approval_response(tool_call_id, approved, headers), client_id=self.client_id
        )
        return event_id

    def fork_result(
        self,
        *,
        fork_cmid: str,
        parent: str,
        supersedes: str,
        tool_call_id: str,
        output: Any,
        seed: Mapping[str, Any],
    ) -> str:
        event_id = f"E-fork-{fork_cmid}"
        headers = build_input_headers(
            codec_message_id=fork_cmid,
            event_id=event_id,
            role="assistant",
            run_client_id=self.client_id,
            parent=parent,
            supersedes=supersedes,
        )
        self.ch.publish(
            encode_tool_result(tool_call_id, output, headers, fork_seed=seed), client_id=self.client_id
        )
        return event_id

    def cancel(self, *, run_id: str | None = None, input_cmid: str | None = None) -> None:
        headers = build_cancel_headers(
            event_id=f"E-cancel-{run_id or input_cmid}", run_id=run_id, input_codec_message_id=input_cmid
        )
        self.ch.publish(cancel_message(headers), client_id=self.client_id)

    def run(
        self,
        run_id: str,
        *,
        input_cmid: str,
        leaf: str | None,
        invocation_id: str | None = None,
        owner: str | None = None,
        fork_of: str | None = None,
        regenerates: str | None = None,
    ) -> AgentRun:
        return AgentRun(
            self,
            run_id,
            invocation_id or f"I-{run_id}",
            owner if owner is not None else self.client_id,
            input_cmid,
            leaf,
            fork_of=fork_of,
            regenerates=regenerates,
        )

    # --- folding ------------------------------------------------------------------------------

    def tree(self, messages: Sequence[InboundMessage] | None = None) -> ConversationTree:
        tree = ConversationTree()
        tree.apply_all(self.ch.live if messages is None else messages)
        return tree

    def js_view(
        self, *, live: bool = True, history: bool = False, page_size: int = 100, **query: Any
    ) -> dict[str, Any]:
        """What a real JS ClientSession folds from this channel (tests/js/protocol/tree.mjs)."""
        cfg: dict[str, Any] = {"pageSize": page_size, **query}
        if live:
            cfg["live"] = [inbound_json(m) for m in self.ch.live]
        if history:
            cfg["history"] = [inbound_json(m) for m in self.ch.history()]
        return run_node(TREE_SCRIPT, env=node_config(**cfg), timeout=60)
