"""AIT 0.8.0 message names, header keys and header builders (src/constants.ts, src/core/transport/headers.ts).

Pure functions over ``dict[str, str]``. Every builder returns a fresh dict whose key order follows the
JS builder, so a Python publish is byte-comparable with what the JS SDK would publish.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from agent_worker.protocol.frozen import fast_init, fast_make
from agent_worker.protocol.wire import InboundMessage, OutboundMessage

__all__ = [
    "AI_CANCEL",
    "AI_INPUT",
    "AI_OUTPUT",
    "AI_RUN_END",
    "AI_RUN_RESUME",
    "AI_RUN_START",
    "AI_RUN_SUSPEND",
    "AI_STEP_END",
    "AI_STEP_START",
    "ERROR_CODE_STREAM",
    "H_CODEC_MESSAGE_ID",
    "H_DISCRETE",
    "H_ERROR_CODE",
    "H_ERROR_MESSAGE",
    "H_EVENT_ID",
    "H_FORK_OF",
    "H_INPUT_CLIENT_ID",
    "H_INPUT_CODEC_MESSAGE_ID",
    "H_INVOCATION_ID",
    "H_MSG_REGENERATE",
    "H_PARENT",
    "H_ROLE",
    "H_RUN_CLIENT_ID",
    "H_RUN_ID",
    "H_RUN_REASON",
    "H_STATUS",
    "H_STEER_CODEC_MESSAGE_IDS",
    "H_STEP_CLIENT_ID",
    "H_STEP_ID",
    "H_STEP_REASON",
    "H_STEP_START_SERIAL",
    "H_STREAM",
    "H_STREAM_ID",
    "H_SUPERSEDES",
    "KIND",
    "MISSING",
    "PART_TYPE",
    "RUN_LIFECYCLE_NAMES",
    "STEP_LIFECYCLE_NAMES",
    "RunEndError",
    "RunEndReason",
    "RunLifecycle",
    "StepEndReason",
    "StepLifecycle",
    "build_cancel_headers",
    "build_extras",
    "build_input_headers",
    "build_lifecycle_headers",
    "build_output_headers",
    "build_step_headers",
    "build_transport_headers",
    "cancel_message",
    "has_ai_envelope",
    "js_json",
    "lifecycle_message",
    "parse_json",
    "parse_run_lifecycle",
    "parse_step_lifecycle",
    "read_bool",
    "read_json",
    "read_str",
    "run_end_error",
    "write_bool",
    "write_json",
    "write_str",
]

# --- message names (src/constants.ts) ---------------------------------------------------------------
AI_INPUT = "ai-input"
AI_OUTPUT = "ai-output"
AI_CANCEL = "ai-cancel"
AI_RUN_START = "ai-run-start"
AI_RUN_RESUME = "ai-run-resume"
AI_RUN_SUSPEND = "ai-run-suspend"
AI_RUN_END = "ai-run-end"
AI_STEP_START = "ai-step-start"
AI_STEP_END = "ai-step-end"
RUN_LIFECYCLE_NAMES = frozenset({AI_RUN_START, AI_RUN_RESUME, AI_RUN_SUSPEND, AI_RUN_END})
STEP_LIFECYCLE_NAMES = frozenset({AI_STEP_START, AI_STEP_END})

# --- transport-tier header keys (extras.ai.transport) ----------------------------------------------
H_STREAM = "stream"
H_STATUS = "status"
H_STREAM_ID = "stream-id"
H_DISCRETE = "discrete"
H_RUN_ID = "run-id"
H_INVOCATION_ID = "invocation-id"
H_EVENT_ID = "event-id"
H_CODEC_MESSAGE_ID = "codec-message-id"
H_RUN_CLIENT_ID = "run-client-id"
H_INPUT_CLIENT_ID = "input-client-id"
H_ROLE = "role"
H_PARENT = "parent"
H_FORK_OF = "fork-of"
H_MSG_REGENERATE = "msg-regenerate"
H_SUPERSEDES = "supersedes"
H_RUN_REASON = "run-reason"
H_STEP_ID = "step-id"
H_STEP_START_SERIAL = "step-start-serial"
H_STEP_REASON = "step-reason"
H_STEP_CLIENT_ID = "step-client-id"
H_INPUT_CODEC_MESSAGE_ID = "input-codec-message-id"
H_STEER_CODEC_MESSAGE_IDS = "steer-codec-message-ids"
H_ERROR_CODE = "error-code"
H_ERROR_MESSAGE = "error-message"

# --- codec-tier reserved keys (src/core/codec/header-fields.ts) ------------------------------------
KIND = "kind"
PART_TYPE = "partType"

ERROR_CODE_STREAM = 104008

RunEndReason = Literal["complete", "cancelled", "error"]
StepEndReason = Literal["complete", "failed", "cancelled"]


# --- field helpers (src/core/codec/fields.ts semantics) --------------------------------------------


def read_str(headers: Mapping[str, str], key: str, fallback: str | None = None) -> str | None:
    """``strField``: the raw value, else ``fallback``."""
    value = headers.get(key)
    return value if value is not None else fallback


def read_bool(headers: Mapping[str, str], key: str, fallback: bool | None = None) -> bool | None:
    """``boolField``: absent → ``fallback``; ``"true"`` → True; any other string → False."""
    value = headers.get(key)
    if value is None:
        return fallback
    return value == "true"


class _Missing:
    """Sentinel for JS ``undefined`` where ``None`` (JSON null) is a legitimate value."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def _reject_constant(name: str) -> Any:
    msg = f"{name} is not JSON"
    raise ValueError(msg)


def parse_json(text: str) -> Any:
    """``JSON.parse``: like :func:`json.loads` but rejecting ``NaN``/``Infinity`` as JS does.

    Raises ValueError on malformed input.
    """
    return json.loads(text, parse_constant=_reject_constant)


def read_json(headers: Mapping[str, str], key: str) -> Any:
    """``jsonField``: JSON-parsed value; absent or malformed → :data:`MISSING` (JS ``undefined``).

    A header holding ``"null"`` parses to None, which JS ``stripUndefined`` keeps.
    """
    value = headers.get(key)
    if not isinstance(value, str):
        return MISSING
    try:
        return parse_json(value)
    except ValueError:
        return MISSING


def write_str(headers: dict[str, str], key: str, value: object) -> None:
    """``strField`` write: only real strings are stamped."""
    if isinstance(value, str):
        headers[key] = value


def write_bool(headers: dict[str, str], key: str, value: object) -> None:
    """``boolField`` write: only real booleans, as ``"true"``/``"false"``."""
    if isinstance(value, bool):
        headers[key] = "true" if value else "false"


def write_json(headers: dict[str, str], key: str, value: object) -> None:
    """``jsonField`` write: ``JSON.stringify``; None is omitted."""
    if value is not None:
        headers[key] = js_json(value)


def js_json(value: object) -> str:
    """``JSON.stringify`` byte-for-byte for plain JSON values (no spaces, non-ASCII kept)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def has_ai_envelope(msg: InboundMessage) -> bool:
    """Whether the message carries the SDK's ``extras.ai`` object (src/utils.ts ``hasAiEnvelope``)."""
    extras = msg.extras
    if not isinstance(extras, Mapping):
        return False
    return isinstance(extras.get("ai"), Mapping)


# --- builders ---------------------------------------------------------------------------------------


def _present(*pairs: tuple[str, str | None]) -> dict[str, str]:
    """The pairs whose value is not None, in the given order (a builder's optional headers)."""
    return {key: value for key, value in pairs if value is not None}


def build_transport_headers(
    *,
    role: str,
    codec_message_id: str,
    run_id: str | None = None,
    run_client_id: str | None = None,
    parent: str | None = None,
    fork_of: str | None = None,
    regenerates: str | None = None,
    supersedes: str | None = None,
    invocation_id: str | None = None,
    input_client_id: str | None = None,
    input_codec_message_id: str | None = None,
    event_id: str | None = None,
    step_id: str | None = None,
    step_start_serial: str | None = None,
    step_client_id: str | None = None,
) -> dict[str, str]:
    """``buildTransportHeaders``: the standard set for inputs and outputs.

    Like JS, ``parent``/``fork-of``/``msg-regenerate``/``supersedes``/``invocation-id``/``event-id``
    are omitted when empty; the others are stamped whenever not None (``""`` included).
    """
    return {
        H_ROLE: role,
        H_CODEC_MESSAGE_ID: codec_message_id,
        **_present(
            (H_RUN_ID, run_id),
            (H_RUN_CLIENT_ID, run_client_id),
            (H_PARENT, parent or None),
            (H_FORK_OF, fork_of or None),
            (H_MSG_REGENERATE, regenerates or None),
            (H_SUPERSEDES, supersedes or None),
            (H_INVOCATION_ID, invocation_id or None),
            (H_INPUT_CLIENT_ID, input_client_id),
            (H_INPUT_CODEC_MESSAGE_ID, input_codec_message_id),
            (H_EVENT_ID, event_id or None),
            (H_STEP_ID, step_id),
            (H_STEP_START_SERIAL, step_start_serial),
            (H_STEP_CLIENT_ID, step_client_id),
        ),
    }


def build_output_headers(
    *,
    codec_message_id: str,
    run_id: str,
    run_client_id: str,
    invocation_id: str,
    input_codec_message_id: str | None,
    parent: str | None = None,
    fork_of: str | None = None,
    regenerates: str | None = None,
    input_client_id: str | None = None,
    step_id: str | None = None,
    step_client_id: str | None = None,
) -> dict[str, str]:
    """Per-message default headers of every agent output (§3.7; run-step-writer ``createMessageEncoder``).

    ``run_client_id`` is the run owner as registered at start (``""`` when unknown), ``parent`` the run's
    leaf anchor. ``step-start-serial`` and ``steer-codec-message-ids`` are injected later through
    :meth:`UIMessageEncoder.set_default_header` once known.
    """
    return build_transport_headers(
        role="assistant",
        run_id=run_id,
        codec_message_id=codec_message_id,
        run_client_id=run_client_id,
        parent=parent,
        fork_of=fork_of,
        invocation_id=invocation_id,
        input_client_id=input_client_id,
        input_codec_message_id=input_codec_message_id,
        regenerates=regenerates,
        step_id=step_id,
        step_client_id=step_client_id,
    )


def build_input_headers(
    *,
    codec_message_id: str,
    event_id: str,
    role: str = "user",
    run_id: str | None = None,
    run_client_id: str | None = None,
    parent: str | None = None,
    fork_of: str | None = None,
    regenerates: str | None = None,
    supersedes: str | None = None,
) -> dict[str, str]:
    """Transport headers of a client ``ai-input`` (§3.1). ``run_client_id`` None or ``"*"`` is omitted."""
    if run_client_id == "*":
        run_client_id = None
    return build_transport_headers(
        role=role,
        run_id=run_id,
        codec_message_id=codec_message_id,
        run_client_id=run_client_id,
        parent=parent,
        fork_of=fork_of,
        regenerates=regenerates,
        supersedes=supersedes,
        event_id=event_id,
    )


def build_lifecycle_headers(
    *,
    run_id: str,
    run_client_id: str,
    parent: str | None = None,
    fork_of: str | None = None,
    regenerates: str | None = None,
    invocation_id: str | None = None,
    input_client_id: str | None = None,
    input_codec_message_id: str | None = None,
    reason: RunEndReason | None = None,
    error_code: int | None = None,
    error_message: str | None = None,
) -> dict[str, str]:
    """``buildLifecycleHeaders`` for ``ai-run-start|resume|suspend|end`` (§3.3).

    Pass ``parent``/``fork_of``/``regenerates`` only for a fresh run-start, ``reason`` (and the error
    pair) only for run-end.
    """
    return {
        H_RUN_ID: run_id,
        H_RUN_CLIENT_ID: run_client_id,
        **_present(
            (H_RUN_REASON, reason),
            (H_PARENT, parent),
            (H_FORK_OF, fork_of),
            (H_MSG_REGENERATE, regenerates),
            (H_INVOCATION_ID, invocation_id),
            (H_INPUT_CLIENT_ID, input_client_id),
            (H_INPUT_CODEC_MESSAGE_ID, input_codec_message_id),
            (H_ERROR_CODE, str(error_code) if error_code is not None else None),
            (H_ERROR_MESSAGE, error_message),
        ),
    }


def build_step_headers(
    *,
    run_id: str,
    step_id: str,
    step_start_serial: str | None = None,
    invocation_id: str | None = None,
    run_client_id: str | None = None,
    input_client_id: str | None = None,
    step_client_id: str | None = None,
    reason: StepEndReason | None = None,
) -> dict[str, str]:
    """``buildStepHeaders`` for ``ai-step-start`` (no serial, no reason) and ``ai-step-end`` (§3.4)."""
    return {
        H_RUN_ID: run_id,
        H_STEP_ID: step_id,
        **_present(
            (H_STEP_START_SERIAL, step_start_serial),
            (H_INVOCATION_ID, invocation_id),
            (H_RUN_CLIENT_ID, run_client_id),
            (H_INPUT_CLIENT_ID, input_client_id),
            (H_STEP_CLIENT_ID, step_client_id),
            (H_STEP_REASON, reason),
        ),
    }


def build_cancel_headers(
    *, event_id: str, run_id: str | None = None, input_codec_message_id: str | None = None
) -> dict[str, str]:
    """Transport headers of an ``ai-cancel`` (§3.2; cancel-envelope.ts). At least one target is required."""
    if run_id is None and input_codec_message_id is None:
        msg = "a cancel needs a run-id or an input-codec-message-id"
        raise ValueError(msg)
    return {
        H_EVENT_ID: event_id,
        **_present((H_RUN_ID, run_id), (H_INPUT_CODEC_MESSAGE_ID, input_codec_message_id)),
    }


def build_extras(
    transport: Mapping[str, str], codec: Mapping[str, str] | None = None, *, ephemeral: bool = False
) -> dict[str, Any]:
    """``{"ai": {"transport": ..., "codec"?: ...}, "ephemeral"?: true}``; an empty codec tier is omitted."""
    ai: dict[str, Any] = {"transport": dict(transport)}
    if codec:
        ai["codec"] = dict(codec)
    extras: dict[str, Any] = {"ai": ai}
    if ephemeral:
        extras["ephemeral"] = True
    return extras


def lifecycle_message(name: str, headers: Mapping[str, str]) -> OutboundMessage:
    """A run/step lifecycle publish: no data, transport tier only."""
    return OutboundMessage(name=name, data=None, extras=build_extras(headers))


def cancel_message(headers: Mapping[str, str]) -> OutboundMessage:
    """An ``ai-cancel`` publish built from :func:`build_cancel_headers`."""
    return OutboundMessage(name=AI_CANCEL, data=None, extras=build_extras(headers))


# --- parsing ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunEndError:
    """The ErrorInfo a client rebuilds from an ``ai-run-end{error}`` (headers.ts ``buildRunEndError``)."""

    code: int
    message: str
    status_code: int


def run_end_error(headers: Mapping[str, str]) -> RunEndError:
    """Rebuild the terminal error: code = ``error-code`` or 104008; status = code//100 for AIT codes."""
    raw = headers.get(H_ERROR_CODE)
    code = ERROR_CODE_STREAM
    if raw is not None:
        try:
            parsed = float(raw.strip()) if raw.strip() else 0.0
        except ValueError:
            parsed = math.nan
        if math.isfinite(parsed):
            code = int(parsed)
    message = headers.get(H_ERROR_MESSAGE, "agent reported an error")
    status = code // 100 if 10000 <= code < 60000 else 500
    return RunEndError(code=code, message=message, status_code=status)


@fast_init
@dataclass(frozen=True, slots=True)
class RunLifecycle:
    """A parsed run-lifecycle message (headers.ts ``parseRunLifecycle``)."""

    type: Literal["start", "resume", "suspend", "end"]
    run_id: str
    client_id: str
    invocation_id: str
    serial: str | None
    timestamp: int | None = None
    parent: str | None = None
    fork_of: str | None = None
    regenerates: str | None = None
    input_codec_message_id: str | None = None
    reason: RunEndReason | None = None
    error: RunEndError | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class StepLifecycle:
    """A parsed step-lifecycle message (headers.ts ``parseStepLifecycle``)."""

    type: Literal["step-start", "step-end"]
    run_id: str
    step_id: str
    serial: str | None
    invocation_id: str = ""
    run_client_id: str = ""
    input_client_id: str = ""
    step_client_id: str = ""
    step_start_serial: str | None = None
    reason: StepEndReason | None = None
    timestamp: int | None = None


# Positional constructors, every field (``frozen.fast_make``): no class call and __init__ per
# lifecycle message folded.
_run_lifecycle = fast_make(RunLifecycle)
_step_lifecycle = fast_make(StepLifecycle)


def parse_run_lifecycle(msg: InboundMessage) -> RunLifecycle | None:
    """Parse ``ai-run-*``; None for other names or a missing ``run-id``."""
    h = msg.transport_headers
    run_id = h.get(H_RUN_ID)
    if not run_id:
        return None
    client_id = h.get(H_RUN_CLIENT_ID, "")
    invocation_id = h.get(H_INVOCATION_ID, "")
    serial, timestamp = msg.serial, msg.timestamp
    # Positional (the field order of RunLifecycle): no keyword parsing per message.
    match msg.name:
        case "ai-run-start":
            return _run_lifecycle(
                "start", run_id, client_id, invocation_id, serial, timestamp, h.get(H_PARENT),
                h.get(H_FORK_OF), h.get(H_MSG_REGENERATE), h.get(H_INPUT_CODEC_MESSAGE_ID), None, None,
            )  # fmt: skip
        case "ai-run-suspend" | "ai-run-resume":
            kind: Any = "suspend" if msg.name == "ai-run-suspend" else "resume"
            return _run_lifecycle(
                kind, run_id, client_id, invocation_id, serial, timestamp, None, None, None, None, None, None
            )
        case "ai-run-end":
            # JS casts the header without validation; an unknown reason behaves like a terminal
            # non-complete status, so keep it verbatim.
            reason: Any = h.get(H_RUN_REASON, "complete")
            return _run_lifecycle(
                "end", run_id, client_id, invocation_id, serial, timestamp, None, None, None, None,
                reason, run_end_error(h) if reason == "error" else None,
            )  # fmt: skip
        case _:
            return None


def parse_step_lifecycle(msg: InboundMessage) -> StepLifecycle | None:
    """Parse ``ai-step-*``; None when ``run-id``/``step-id`` is missing or a step-end lacks its serial."""
    h = msg.transport_headers
    run_id = h.get(H_RUN_ID)
    step_id = h.get(H_STEP_ID)
    if not run_id or not step_id:
        return None
    # Positional (the field order of StepLifecycle): no kwargs dict per message.
    serial, timestamp = msg.serial, msg.timestamp
    invocation_id = h.get(H_INVOCATION_ID, "")
    run_client_id = h.get(H_RUN_CLIENT_ID, "")
    input_client_id = h.get(H_INPUT_CLIENT_ID, "")
    step_client_id = h.get(H_STEP_CLIENT_ID, "")
    match msg.name:
        case "ai-step-start":
            return _step_lifecycle(
                "step-start", run_id, step_id, serial, invocation_id, run_client_id, input_client_id,
                step_client_id, None, None, timestamp,
            )  # fmt: skip
        case "ai-step-end":
            start_serial = h.get(H_STEP_START_SERIAL)
            if not start_serial:
                return None
            reason: Any = h.get(H_STEP_REASON, "complete")
            return _step_lifecycle(
                "step-end", run_id, step_id, serial, invocation_id, run_client_id, input_client_id,
                step_client_id, start_serial, reason, timestamp,
            )  # fmt: skip
        case _:
            return None
