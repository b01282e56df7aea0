"""A channel's own messages, handed to its listener from what it sent and their ACKs (echo off).

With ``echo=false`` (``[ably] echo_messages = false``, the worker's default) Ably does not deliver a
connection's messages back to it: no decode, task and timer per own append in ably-python, and no
billed message per token delivered to the worker. The session still folds everything the channel
carries, so :class:`LocalEcho` builds the message its echo would have been, when its ACK arrives
(ACKs come in send order): a publish as a create with the serial from the ACK, an append as its own
text (consecutive appends fold to what one rolled-up echo carries), an update as its full text.
Nothing refused (NACK), timed out or not sent is folded.

Exactness, and where it gives up (``doubt``: the session rebuilds from history when next idle):

* **Attach epochs.** A channel's fold restarts (from history) when it loses continuity (an
  ``ATTACHED`` that is not resumed, ``detached``/``suspended``/``failed``). A message sent in one
  epoch and acknowledged in another may lie on either side of the new attach point (in history,
  or after it where an echo would have delivered it): it is not folded, and the session doubts.
  Acknowledged in its own epoch it is exact: before the reset, history (up to the attach point)
  holds it; after it, only this fold does. A server handles a connection's frames in order, so a
  message sent before the re-ATTACH is acknowledged before the ``ATTACHED``.
* **Gaps.** Once an append to a message fails, its later appends are not folded (the text would
  have a hole the stream writer's full-text repair could not fill, since an update that is not a
  prefix extension only replaces); the repair update folds the whole text and closes the gap. A
  gap still open when the session's runs are over (the repair failed too) is doubt.
* **Duplicates.** A message delivered anyway from this connection (a server that ignores
  ``echo=false``) is dropped at the subscription; publishes and updates carry serials/versions the
  tree de-duplicates against a history read.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from agent_worker.logs import get_logger
from agent_worker.protocol.headers import H_STREAM
from agent_worker.protocol.wire import Action, InboundMessage, OutboundMessage

__all__ = ["LocalEcho"]

log = get_logger("agent_worker.transport")

_LOST = frozenset(("failed", "suspended", "detached"))
CONTENT_LIMIT = 1024
"""Streams per channel whose name and extras are remembered for their appends and updates."""


class LocalEcho:
    """One channel's local echo: see the module docstring."""

    __slots__ = (
        "_client_id",
        "_connection_id",
        "_content",
        "_doubt",
        "_listener",
        "channel",
        "epoch",
        "gaps",
    )

    def __init__(
        self, channel: str, client_id: Callable[[], str | None], connection_id: Callable[[], str | None]
    ) -> None:
        self.channel = channel
        self._client_id = client_id
        self._connection_id = connection_id
        self._listener: Callable[[InboundMessage], None] | None = None
        self._doubt: Callable[[str], None] | None = None
        self.epoch = 0
        """Bumped whenever the channel's fold restarts (see the module docstring)."""
        self.gaps: set[str] = set()
        """Message serials with a failed append not yet covered by a folded update."""
        self._content: OrderedDict[str, tuple[str | None, Mapping[str, Any] | None]] = OrderedDict()
        """Name and extras of the messages this channel created, by serial: an append or update
        without them is delivered with the message's (Ably copies them from the message)."""

    @property
    def active(self) -> bool:
        return self._listener is not None

    def listen(self, listener: Callable[[InboundMessage], None], doubt: Callable[[str], None]) -> None:
        self._listener = listener
        self._doubt = doubt

    def on_state(self, current: str, resumed: bool) -> None:
        """A channel state change, before the session's own handler sees it (registered first)."""
        if current in _LOST or (current == "attached" and not resumed):
            self.epoch += 1

    def own(self, connection_id: str | None) -> bool:
        """A delivered message this connection published (already folded here)."""
        return connection_id is not None and connection_id == self._connection_id()

    def created(self, epoch: int, msgs: list[tuple[OutboundMessage, str | None, str | None]]) -> None:
        """A publish acknowledged: ``(message, serial, id)`` each (a message without a serial is
        not folded: doubt)."""
        for msg, serial, id_ in msgs:
            if serial is None:
                self._doubted("publish acknowledged without a serial")
            else:
                folded = self._fold(epoch, msg, "message.create", serial, serial, id_=id_)
                if folded is not None and folded.transport_headers.get(H_STREAM) == "true":
                    self._content[serial] = (folded.name, folded.extras)  # its appends need them
                    if len(self._content) > CONTENT_LIMIT:
                        self._content.popitem(last=False)

    def appended(self, epoch: int, serial: str, msg: OutboundMessage, version: str | None) -> None:
        if serial in self.gaps:
            return  # the repair update will carry it
        if epoch != self.epoch:
            self.gaps.add(serial)
        self._fold(epoch, msg, "message.append", serial, version)

    def append_failed(self, serial: str) -> None:
        if self._listener is not None:
            self.gaps.add(serial)

    def updated(self, epoch: int, serial: str, msg: OutboundMessage, version: str | None) -> None:
        self.gaps.discard(serial)
        self._fold(epoch, msg, "message.update", serial, version)

    def _fold(
        self,
        epoch: int,
        msg: OutboundMessage,
        action: Action,
        serial: str,
        version: str | None,
        *,
        id_: str | None = None,
    ) -> InboundMessage | None:
        listener = self._listener
        if listener is None:
            return None
        if epoch != self.epoch:
            self._doubted(f"{action} acknowledged across a continuity loss")
            return None
        name = msg.name
        extras: Mapping[str, Any] | None = msg.extras or None
        if action != "message.create" and (name is None or extras is None):
            known = self._content.get(serial)
            if known is None:
                self._doubted(f"{action} to a message this channel did not create")
                return None
            name = known[0] if name is None else name
            extras = known[1] if extras is None else extras
        if action == "message.update":
            self._content[serial] = (name, extras)
        inbound = InboundMessage(
            name=name,
            data=msg.data,
            extras=extras,
            action=action,
            serial=serial,
            version_serial=version,
            client_id=self._client_id(),
            connection_id=self._connection_id(),
            id=id_,
        )
        try:
            listener(inbound)
        except Exception:
            log.exception("local_listener_failed", channel=self.channel)
        return inbound

    def _doubted(self, why: str) -> None:
        if self._doubt is not None:
            self._doubt(why)


def sdk_state(change: Any) -> tuple[str, bool]:
    """``(state, resumed)`` of an ably-python channel state change."""
    return str(getattr(change.current, "value", change.current)), bool(getattr(change, "resumed", False))
