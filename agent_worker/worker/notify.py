"""Presence-aware push notifications: tell a run's owner it finished, on whatever device they hold.

When a run ends (``complete``, ``error``) or suspends waiting for its owner (an approval, a client
tool), the worker publishes a push notification to the owner's clientId through Ably's push admin
API (``POST /push/publish``, recipient ``{clientId}``) unless policy says otherwise:

* ``absent`` (default): only when none of the owner's devices is present on the session channel
  (a device in presence is watching the run; notifying it would be redundant);
* ``always`` / ``never``; and runs shorter than ``notify_min_run_s`` never notify.

A run without a verified owner (anonymous trigger) notifies nobody. ``on_notify(notice)`` may shape
the :class:`Notice` (return it, changed or not) or veto it (return ``None``). Notifying runs in the
background after the run's terminal publish: a failure is logged and counted
(``agent_worker_notifications{result="failed"}``) and never touches the run.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from agent_worker.errors import AgentWorkerError
from agent_worker.logs import get_logger
from agent_worker.runtime.run import Run

__all__ = ["Notice", "Notifier", "NotifyHook"]

log = get_logger("agent_worker.worker.notify")

Policy = Literal["absent", "always", "never"]
BODY_CHARS = 160


@dataclass(frozen=True, slots=True)
class Notice:
    """One notification for ``client_id``; ``data`` travels with it so a tap opens the session."""

    client_id: str
    title: str
    body: str
    outcome: str
    data: dict[str, str] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {"notification": {"title": self.title, "body": self.body}, "data": dict(self.data)}


NotifyHook = Callable[[Notice, Run], "Notice | Awaitable[Notice | None] | None"]


class PushPort(Protocol):
    """What the notifier needs from the transport."""

    async def push_publish(self, recipient: dict[str, Any], payload: dict[str, Any]) -> Any: ...


def _short(text: str, limit: int = BODY_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def compose(run: Run, owner: str) -> Notice:
    """The default notice: what the run ended with, in a title and a short body."""
    digest = run.digest
    session = run.session.name
    if run.outcome == "suspended":
        waiting = digest.approvals or list(digest.tools.values())
        title = "Your approval is needed" if digest.approvals else "Your input is needed"
        what = ", ".join(dict.fromkeys(waiting)) or "a step"
        body = f"The agent is waiting for you to {'approve' if digest.approvals else 'answer'} {what}."
    elif run.outcome == "error":
        title = "The agent's reply failed"
        body = run.error.message if run.error is not None else "The run ended with an error."
    else:
        title = "The agent has replied"
        body = digest.text or "The reply is ready."
    data = {"sessionId": session, "runId": run.run_id, "outcome": str(run.outcome)}
    return Notice(owner, f"{title} · {session}", _short(body), str(run.outcome), data)


def _undelivered(report: Any) -> list[str]:
    items = report if isinstance(report, list) else [report]
    return [
        str(f.get("deviceId"))
        for item in items
        if isinstance(item, dict) and isinstance(item.get("failed"), list)
        for f in item["failed"]
        if isinstance(f, dict)
    ]


class Notifier:
    def __init__(
        self,
        port: Callable[[], PushPort | None],
        policy: Policy,
        min_run_s: float,
        hook: NotifyHook | None,
        count: Callable[[str], None],
        *,
        self_client_id: str | None = None,
    ) -> None:
        self.port = port
        self.policy = policy
        self.min_run_s = min_run_s
        self.hook = hook
        self.count = count
        self.self_client_id = self_client_id
        self.tasks: set[asyncio.Task[None]] = set()
        self.sent: list[Notice] = []
        self._refusals: set[int] = set()

    def run_ended(self, run: Run, duration_s: float) -> None:
        """Decide cheaply now; check presence and publish in the background."""
        owner = run.owner_client_id
        if (
            self.policy == "never"
            or run.outcome not in ("complete", "error", "suspended")
            or not owner
            or owner == self.self_client_id
            or duration_s < self.min_run_s
        ):
            self.count("skipped")
            return
        task = asyncio.get_running_loop().create_task(self._notify(run, owner))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _notify(self, run: Run, owner: str) -> None:
        port = self.port()
        try:
            if self.policy == "absent":
                lookup = getattr(run.session.channel, "present_connections", None)
                if lookup is None:
                    msg = "the session's channel cannot list presence"
                    raise AgentWorkerError(msg)
                if await lookup(owner):
                    self.count("present")
                    return
            notice: Notice | None = compose(run, owner)
            if self.hook is not None:
                shaped = self.hook(compose(run, owner), run)
                notice = await shaped if inspect.isawaitable(shaped) else shaped
            if notice is None:
                self.count("vetoed")
                return
            if port is None:
                msg = "no Ably transport to publish the notification with"
                raise AgentWorkerError(msg)
            report = await port.push_publish({"clientId": notice.client_id}, notice.payload())
        except Exception as exc:  # never the run's problem
            self.count("failed")
            code = exc.code if isinstance(exc, AgentWorkerError) else None
            # A key without push-admin fails every run the same way: say it loudly once, then quietly.
            emit = log.warning if code not in self._refusals else log.debug
            if code is not None and 40100 <= code < 40400:
                self._refusals.add(code)
            emit("notify_failed", run_id=run.run_id, client_id=owner, code=code, error=str(exc)[:300])
            return
        self.count("sent")
        undelivered = _undelivered(report)
        if undelivered:  # the embedded server reports per-device failures; Ably does not
            self.count("undelivered")
            log.warning("notify_undelivered", run_id=run.run_id, client_id=owner, devices=undelivered)
        self.sent.append(notice)
        del self.sent[:-100]
        log.info("notified", run_id=run.run_id, client_id=notice.client_id, outcome=notice.outcome)

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait for notifications in flight (on close, so none is cut off)."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=timeout_s)
