"""A channel's presence member set and presence history. Pure: no I/O, no asyncio."""

from __future__ import annotations

import secrets
from collections import deque
from typing import Any

__all__ = ["ABSENT", "ENTER", "LEAVE", "PRESENT", "UPDATE", "PresenceSet"]

ABSENT, PRESENT, ENTER, LEAVE, UPDATE = 0, 1, 2, 3, 4


def member_key(msg: dict[str, Any]) -> str:
    return f"{msg.get('connectionId')}:{msg.get('clientId')}"


class PresenceSet:
    def __init__(self, history_size: int = 1000) -> None:
        self.members: dict[str, dict[str, Any]] = {}
        self.history: deque[dict[str, Any]] = deque(maxlen=history_size)

    def apply(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        """Fold one stamped presence message in; return the event to broadcast (or ``None``).

        A repeated ENTER from a present member is broadcast as an UPDATE (clients re-enter their
        own members after every re-attach); a LEAVE for a non-member is a no-op.
        """
        key = member_key(msg)
        action = msg.get("action")
        if action == LEAVE:
            if self.members.pop(key, None) is None:
                return None
            event = dict(msg)
        elif action in (ENTER, UPDATE, PRESENT):
            existed = key in self.members
            event = dict(msg)
            if action == ENTER and existed:
                event["action"] = UPDATE
            elif action in (UPDATE, PRESENT) and not existed:
                event["action"] = ENTER
            self.members[key] = dict(msg, action=PRESENT)
        else:
            return None
        self.history.append(event)
        return event

    def leave_connection(self, connection_id: str, now_ms: int) -> list[dict[str, Any]]:
        """Synthesised LEAVEs for every member entered by ``connection_id``.

        Their ids do not start with the connection id, which is how ably-js recognises synthesised
        events (ordered by timestamp rather than by id).
        """
        out: list[dict[str, Any]] = []
        for key, member in list(self.members.items()):
            if member.get("connectionId") != connection_id:
                continue
            del self.members[key]
            leave = {
                "id": f"synthetic-{secrets.token_hex(6)}:0:0",
                "action": LEAVE,
                "clientId": member.get("clientId"),
                "connectionId": connection_id,
                "data": member.get("data"),
                "encoding": member.get("encoding"),
                "timestamp": now_ms,
            }
            self.history.append(leave)
            out.append(leave)
        return out

    def snapshot(
        self, *, client_id: str | None = None, connection_id: str | None = None
    ) -> list[dict[str, Any]]:
        return [
            m
            for m in self.members.values()
            if (client_id is None or m.get("clientId") == client_id)
            and (connection_id is None or m.get("connectionId") == connection_id)
        ]

    def members_of(self, connection_id: str) -> list[dict[str, Any]]:
        return [m for m in self.members.values() if m.get("connectionId") == connection_id]
