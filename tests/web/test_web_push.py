"""The web client's push notifications in chromium: "Notify me" runs ably-js's push activation
(service worker, VAPID key from the server, PushManager.subscribe), and the service worker shows
a pushed message as a notification naming the session.

Chromium's PushManager.subscribe needs its vendor push service (FCM), which these machines cannot
reach: activation fails there and the page says so; the registration itself is covered by
tests/server_js/test_js_push.py (ably-js's push admin API) and tests/worker/test_notify.py (delivery).
The push *event* is delivered to the service worker through the DevTools protocol instead.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from playwright.async_api import Browser, expect

from tests.web.web_support import WebStack, new_session, open_tab

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

NOTIFICATIONS = """async () => {
  const reg = await navigator.serviceWorker.getRegistration('/');
  if (!reg) return [];
  return (await reg.getNotifications()).map((n) => ({ title: n.title, body: n.body, data: n.data }));
}"""


async def test_notify_me_tries_activation_and_reports_an_unreachable_push_service(
    browser: Browser, stack: WebStack
) -> None:
    page = await open_tab(browser, stack, "alice", new_session("push"), permissions=["notifications"])
    await page.get_by_test_id("push-toggle").click()
    push = page.get_by_test_id("push")
    await expect(push).to_have_attribute("data-state", re.compile("^(on|failed)$"), timeout=60_000)
    if await push.get_attribute("data-state") == "on":  # a machine that reaches the vendor's push service
        devices = stack.server.push.store.for_client("alice")
        assert devices and devices[0]["push"]["recipient"]["transportType"] == "web"
    else:  # here: headless chromium refuses PushManager.subscribe; ably-js reports it, the page says so
        await expect(page.get_by_test_id("push-error")).to_contain_text("Failed to register service worker")
    # the service worker was registered at the root scope on the way
    scope = await page.evaluate("navigator.serviceWorker.getRegistration('/').then((r) => r && r.scope)")
    assert scope == f"{stack.base}/"


async def test_the_service_worker_shows_a_pushed_notification(browser: Browser, stack: WebStack) -> None:
    session = new_session("push-sw")
    page = await open_tab(browser, stack, "alice", session, permissions=["notifications"])
    await page.evaluate(
        "navigator.serviceWorker.register('/sw.js').then(() => navigator.serviceWorker.ready)"
    )
    cdp = await page.context.new_cdp_session(page)
    registrations: dict[str, str] = {}

    def on_update(event: dict[str, Any]) -> None:
        for reg in event.get("registrations", []):
            if reg.get("isDeleted"):
                registrations.pop(reg["scopeURL"], None)
            else:
                registrations[reg["scopeURL"]] = reg["registrationId"]

    cdp.on("ServiceWorker.workerRegistrationUpdated", on_update)
    await cdp.send("ServiceWorker.enable")
    async with asyncio.timeout(20):
        while f"{stack.base}/" not in registrations:  # noqa: ASYNC110 - CDP events arrive as they will
            await asyncio.sleep(0.05)
    payload = {
        "notification": {"title": f"The agent has replied · {session}", "body": "All done."},
        "data": {"sessionId": session, "runId": "r-1", "outcome": "complete"},
    }
    shown: list[dict[str, Any]] = []
    async with asyncio.timeout(30):
        # Delivered again every 3 s until shown: on a busy machine a push can reach the worker
        # before it handles push events and be dropped; the notification's tag (the run id)
        # makes a repeat replace, not add to, what is shown.
        while not shown:
            await cdp.send(
                "ServiceWorker.deliverPushMessage",
                {
                    "origin": stack.base,
                    "registrationId": registrations[f"{stack.base}/"],
                    "data": json.dumps(payload),
                },
            )
            for _ in range(30):
                shown = await page.evaluate(NOTIFICATIONS)
                if shown:
                    break
                await asyncio.sleep(0.1)
    assert shown == [
        {"title": payload["notification"]["title"], "body": "All done.", "data": payload["data"]}
    ]
