"""Server-side append rollup, as Ably documents it for AI Transport ("Token streaming limits").

Ably publishes the first append to a message at once and concatenates the appends to that message
that it receives within the publishing connection's ``appendRollupWindow`` (transport parameter,
default 40 ms, 0-500 ms; 0 = off) into one published append. So one response never costs more than
one message per window against the connection's inbound limit (40 ms ≈ 25 messages/s), however fast
the model streams. Model used here, per (channel, message serial, publishing connection):

* an append that comes at least one window after the last one this key published goes out at once;
* an earlier one is *held*: the first held append of a window opens a rollup (charged as one message
  against the connection and channel limits), later ones join it for free; the rollup goes out one
  window after the last publish, as one append with the concatenated data and the newest name,
  extras and version metadata — exactly what subscribers and history would see if it had been sent
  as one append;
* any other publish on the channel (a create, update or delete, or a REST publish) first flushes the
  channel's open rollups, and an append first flushes its own message's, so a connection's
  operations still reach subscribers in the order it sent them.

A held append is validated (capability, size, target, data type) and ACKed when it arrives: ACKs stay
in ``msgSerial`` order, and its ``versionSerial`` is null, which is how the SDKs describe an operation
"superseded by a subsequent update before it could be published".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from agent_worker.errors import AgentWorkerError, ProtocolError
from agent_worker.server.log import APPEND

if TYPE_CHECKING:
    from agent_worker.server.auth import Principal


class _Hub(Protocol):
    """What the rollup needs from ``server.hub.Hub`` (a protocol: the hub owns the rollup)."""

    @property
    def channels(self) -> Mapping[str, Any]: ...

    def channel(self, name: str) -> Any: ...

    def prepare_messages(
        self, rt: Any, items: list[dict[str, Any]], principal: Principal, *, frame_size: int | None = None
    ) -> list[dict[str, Any]]: ...

    def check_channel_rate(self, rt: Any, n: int) -> None: ...

    def commit(
        self,
        rt: Any,
        prepared: list[dict[str, Any]],
        *,
        client_id: str | None,
        publisher_id: str | None = None,
    ) -> Any: ...


__all__ = ["DEFAULT_WINDOW_MS", "MAX_WINDOW_MS", "AppendRollup", "parse_window"]

log = structlog.get_logger(__name__)

DEFAULT_WINDOW_MS = 40
MAX_WINDOW_MS = 500
TRANSPORT_PARAM = "appendRollupWindow"

_Key = tuple[str, str, str]  # channel, message serial, publishing connection id


def parse_window(raw: str | None, default: int) -> int:
    """The ``appendRollupWindow`` transport parameter in ms (``None`` = the server default)."""
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_WINDOW_MS:
        msg = f"invalid {TRANSPORT_PARAM} {raw!r}: expected milliseconds from 0 to {MAX_WINDOW_MS}"
        raise ProtocolError(msg, code=40003, status_code=400)
    return round(value)


@dataclass(slots=True)
class _Pending:
    """One open rollup: the appends held so far, merged."""

    data: Any
    encoding: str | None
    name: Any
    extras: Any
    version: Any
    client_id: str | None
    timer: asyncio.TimerHandle | None = None

    def merge(self, m: dict[str, Any]) -> None:
        data = m.get("data")
        if data is not None:
            self.data = data if self.data is None else self.data + data
            self.encoding = m.get("encoding")
        for attr in ("name", "extras", "version"):
            if m.get(attr) is not None:
                setattr(self, attr, m[attr])

    def message(self, serial: str) -> dict[str, Any]:
        out: dict[str, Any] = {"action": APPEND, "serial": serial}
        for k in ("data", "encoding", "name", "extras", "version"):
            value = getattr(self, k)
            if value is not None:
                out[k] = value
        return out


class AppendRollup:
    """The hub's open rollups and, per key, when it last published."""

    def __init__(self, hub: _Hub) -> None:
        self.hub = hub
        self._pending: dict[_Key, _Pending] = {}
        self._by_channel: dict[str, set[_Key]] = {}
        self._last: dict[_Key, float] = {}
        self._sweep_at = 1024

    @property
    def open_rollups(self) -> int:
        return len(self._pending)

    def offer(
        self,
        channel: str,
        items: Sequence[dict[str, Any]],
        principal: Principal,
        *,
        publisher_id: str,
        window_ms: int,
        charge: Callable[[int], None],
        frame_size: int | None = None,
    ) -> list[dict[str, Any]] | None:
        """Hold a single append if it falls inside its key's window and return the ACK ``res``;
        ``None`` = publish it (or whatever else ``items`` is) at once through the normal path."""
        if window_ms <= 0 or len(items) != 1 or items[0].get("action") != APPEND:
            return None
        target = items[0].get("serial")
        if not isinstance(target, str) or not target:
            return None
        key = (channel, target, publisher_id)
        loop = asyncio.get_running_loop()
        now = loop.time()
        pending = self._pending.get(key)
        if pending is None:
            last = self._last.get(key)
            # (1e-6: loop clocks tick in whole ms on uvloop, and 0.492 - 0.452 < 0.04 in floats)
            if last is None or now - last >= window_ms / 1000 - 1e-6:
                self._last[key] = now
                self._sweep(now)
                return None
        hub = self.hub
        rt = hub.channel(channel)
        m = hub.prepare_messages(rt, list(items), principal, frame_size=frame_size)[0]
        rt.log.validate([m])
        if pending is None:
            charge(1)
            hub.check_channel_rate(rt, 1)
            pending = _Pending(None, None, None, None, None, principal.client_id)
            pending.merge(m)
            pending.timer = loop.call_at(self._last[key] + window_ms / 1000, self.flush, key)
            self._pending[key] = pending
            self._by_channel.setdefault(channel, set()).add(key)
        else:
            if (m.get("data") is not None and pending.data is not None) and type(m["data"]) is not type(
                pending.data
            ):
                msg = "append data must have the same type as the message data (string or binary)"
                raise ProtocolError(msg, code=40013)
            pending.merge(m)
        return [{"serials": [None]}]

    def before_publish(self, channel: str, items: Sequence[dict[str, Any]]) -> None:
        """Flush what must reach subscribers before ``items``: the channel's open rollups, or only
        the targeted messages' ones when ``items`` are all appends."""
        keys = self._by_channel.get(channel)
        if not keys:
            return
        if all(m.get("action") == APPEND for m in items):
            targets = {m.get("serial") for m in items}
            due = [k for k in keys if k[1] in targets]
        else:
            due = list(keys)
        for key in sorted(due, key=lambda k: k[1]):
            self.flush(key)

    def flush(self, key: _Key) -> None:
        """Publish an open rollup now, as one append."""
        pending = self._pending.pop(key, None)
        if pending is None:
            return
        channel, target, publisher_id = key
        keys = self._by_channel.get(channel)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_channel[channel]
        if pending.timer is not None:
            pending.timer.cancel()
        self._last[key] = asyncio.get_running_loop().time()
        rt = self.hub.channels.get(channel)
        if rt is None:
            return
        try:
            self.hub.commit(
                rt, [pending.message(target)], client_id=pending.client_id, publisher_id=publisher_id
            )
        except AgentWorkerError as exc:  # e.g. the target message was pruned by retention meanwhile
            log.warning(
                "append_rollup_dropped", channel=channel, serial=target, code=exc.code, reason=exc.message
            )

    def flush_all(self) -> None:
        for key in list(self._pending):
            self.flush(key)

    def _sweep(self, now: float) -> None:
        """Forget publish times older than the largest window (they can no longer hold anything)."""
        if len(self._last) < self._sweep_at:
            return
        horizon = now - MAX_WINDOW_MS / 1000
        self._last = {k: t for k, t in self._last.items() if t >= horizon or k in self._pending}
        self._sweep_at = max(1024, 2 * len(self._last))
