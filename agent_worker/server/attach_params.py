"""What an ATTACH asks for: channel modes and channel params, checked the way Ably checks them. Pure.

* ``params.modes`` (a comma list such as ``"presence,subscribe"``) wins over the mode flags; no
  modes at all means Ably's default set.
* Params Ably knows are echoed on ``ATTACHED``; ``delta`` is accepted and echoed but never used
  (Ably may always send a full message instead of a delta, so clients cannot tell); params Ably does
  not know are dropped from the echo, as Ably does (ably-js ``attachWithInvalidChannelParams``);
  ``occupancy`` events are not implemented and are refused rather than silently never sent.
* Derived channels with a subscription filter (``[filter=…]name``) and other qualified channel names
  (``[?rewind=1]name``, ``[meta]…``) are refused likewise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent_worker.errors import AuthError, ProtocolError
from agent_worker.server import constants as C

__all__ = ["AttachRequest", "mode_error", "parse_attach", "unsupported"]

MODE_BY_NAME = {
    "presence": C.MODE_PRESENCE,
    "publish": C.MODE_PUBLISH,
    "subscribe": C.MODE_SUBSCRIBE,
    "presence_subscribe": C.MODE_PRESENCE_SUBSCRIBE,
    "annotation_publish": C.MODE_ANNOTATION_PUBLISH,
    "annotation_subscribe": C.MODE_ANNOTATION_SUBSCRIBE,
    "object_publish": C.MODE_OBJECT_PUBLISH,
    "object_subscribe": C.MODE_OBJECT_SUBSCRIBE,
}
_ECHOED = ("rewind", "delta", "modes")  # what Ably reflects in ATTACHED.params (the agent param is not)
_ACCEPTED = {*_ECHOED, "agent"}


def unsupported(feature: str) -> ProtocolError:
    """Ably's answer to a request for something this server deliberately leaves out."""
    return ProtocolError(f"{feature} is not supported by the embedded server", code=40000, status_code=400)


def mode_error(operation: str, mode: str) -> AuthError:
    """40165: the attachment did not request the mode the operation needs."""
    msg = f"Unable to {operation} as client did not request {mode} mode when attaching"
    return AuthError(msg, code=40165, status_code=401)


@dataclass(frozen=True, slots=True)
class AttachRequest:
    modes: int  # requested (before intersecting with the capability)
    params: dict[str, str]  # accepted params
    echoed: dict[str, str]  # what ATTACHED reflects
    attach_resume: bool  # ATTACH_RESUME: the client was attached before, so no rewind (RTL4j2)


def _modes_from_param(raw: str) -> int:
    modes = 0
    for part in raw.split(","):
        name = part.strip().lower()
        if not name:
            continue
        mode = MODE_BY_NAME.get(name)
        if mode is None:
            msg = f"invalid channel mode {part.strip()!r} in params.modes"
            raise ProtocolError(msg, code=40000, status_code=400)
        modes |= mode
    return modes


def parse_attach(channel: str, frame: Mapping[str, Any]) -> AttachRequest:
    """Modes and params of an ATTACH; ``ProtocolError`` for what must be refused."""
    if channel.startswith("["):
        # [filter=…] (subscription filters), [?param=…] and [meta] channels would otherwise be
        # separate, silent channels here.
        qualifier = channel[: channel.find("]") + 1]
        what = "Subscription filters (derived channels)" if "filter=" in qualifier else "Channel qualifiers"
        msg = f"{what} such as {qualifier!r}"
        raise unsupported(msg)
    raw = frame.get("params")
    params = {str(k): str(v) for k, v in raw.items() if v is not None} if isinstance(raw, dict) else {}
    if "occupancy" in params:
        msg = "The occupancy channel param (occupancy events)"
        raise unsupported(msg)
    delta = params.get("delta")
    if delta is not None and delta != "vcdiff":
        msg = f"unsupported delta format {delta!r} (only vcdiff)"
        raise ProtocolError(msg, code=40000, status_code=400)
    flags = frame.get("flags")
    flags = flags if isinstance(flags, int) and not isinstance(flags, bool) else 0
    requested = _modes_from_param(params["modes"]) if "modes" in params else flags & C.MODE_MASK
    accepted = {k: v for k, v in params.items() if k in _ACCEPTED}
    echoed = {k: v for k, v in accepted.items() if k in _ECHOED}
    return AttachRequest(requested or C.DEFAULT_MODES, accepted, echoed, bool(flags & C.FLAG_ATTACH_RESUME))
