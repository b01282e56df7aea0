"""The web client in a real browser: chromium (Playwright) tabs as different clientIds on one session,
against an in-process worker and embedded server. Each scenario saves screenshots (tmp/artifacts/web).

The provider is scripted and gated (see web_support): a reply is provably mid-stream while the test
acts, and finishes only when the test opens its gate.
"""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import Browser, expect

from tests.web.web_support import (
    FULL,
    PARTIAL,
    WebStack,
    last_reply,
    messages,
    new_session,
    open_tab,
    ready,
    run_status,
    send,
    snapshot,
)

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]


async def test_a_prompt_streams_into_every_tab(browser: Browser, stack: WebStack) -> None:
    session = new_session("stream")
    alice = await open_tab(browser, stack, "alice", session)
    bob = await open_tab(browser, stack, "bob", session)

    await send(alice, "gated stream")
    for tab in (alice, bob):
        # Tokens arrive live: the first half is on screen while the provider is still waiting.
        await expect(last_reply(tab)).to_have_text(PARTIAL)
        await expect(run_status(tab)).to_have_attribute("data-status", "active")
        agent = tab.get_by_test_id("presence").locator("[data-client-id=agent-worker]")
        await expect(agent).to_have_attribute("data-status", "streaming")
    await snapshot(alice, "stream-midway", "alice")
    stack.gates.open("stream")
    for tab in (alice, bob):
        await expect(last_reply(tab)).to_have_text(FULL)
        await expect(run_status(tab)).to_have_attribute("data-status", "complete")
        assert await messages(tab) == [("user", "alice", "gated stream"), ("assistant", "agent-worker", FULL)]
        await expect(run_status(tab)).to_have_attribute("data-owner", "alice")
    # Own vs observer: the prompt is alice's own on her tab and an observed one on bob's.
    await expect(alice.locator("[data-testid=message][data-role=user]")).to_have_class("message user own")
    await expect(bob.locator("[data-testid=message][data-role=user]")).to_have_class("message user observer")
    # Presence: both devices and the agent (idle again once the run is over).
    for tab in (alice, bob):
        presence = tab.get_by_test_id("presence")
        await expect(presence.locator("[data-client-id=alice]")).to_have_count(1)
        await expect(presence.locator("[data-client-id=bob]")).to_have_count(1)
        await expect(presence.locator("[data-client-id=agent-worker]")).to_have_attribute(
            "data-status", "idle"
        )
    await snapshot(alice, "stream", "alice")
    await snapshot(bob, "stream", "bob")


async def test_a_tab_opened_mid_stream_shows_the_same_text(browser: Browser, stack: WebStack) -> None:
    session = new_session("late")
    alice = await open_tab(browser, stack, "alice", session)
    bob = await open_tab(browser, stack, "bob", session)
    await send(bob, "first, a finished turn")
    await expect(run_status(alice)).to_have_attribute("data-status", "complete")
    await send(alice, "gated late")
    await expect(last_reply(bob)).to_have_text(PARTIAL)

    carol = await open_tab(browser, stack, "carol", session)
    # The late joiner renders the whole history first: bob's finished turn, alice's prompt and the
    # reply so far.
    await expect(last_reply(carol)).to_have_text(PARTIAL)
    assert [m[:2] for m in await messages(carol)] == [
        ("user", "bob"),
        ("assistant", "agent-worker"),
        ("user", "alice"),
        ("assistant", "agent-worker"),
    ]
    assert (await messages(carol))[:2] == (await messages(alice))[:2]
    await expect(run_status(carol)).to_have_attribute("data-status", "active")
    stack.gates.open("late")
    for tab in (alice, bob, carol):
        await expect(last_reply(tab)).to_have_text(FULL)
        await expect(run_status(tab)).to_have_attribute("data-status", "complete")
    assert await messages(carol) == await messages(alice) == await messages(bob)
    await snapshot(carol, "late-joiner", "carol")


async def test_the_owners_stop_keeps_the_partial_text(browser: Browser, stack: WebStack) -> None:
    session = new_session("stop")
    alice = await open_tab(browser, stack, "alice", session)
    bob = await open_tab(browser, stack, "bob", session)
    await send(alice, "gated stop")
    await expect(last_reply(bob)).to_have_text(PARTIAL)

    await alice.get_by_test_id("stop").click()
    for tab in (alice, bob):
        await expect(run_status(tab)).to_have_attribute("data-status", "cancelled")
        await expect(last_reply(tab)).to_have_text(PARTIAL)
    # The provider stream was closed by the cancel; opening its gate now changes nothing.
    assert "stop" in stack.gates.closed
    stack.gates.open("stop")
    await stack.worker.run_until_idle()
    for tab in (alice, bob):
        assert await messages(tab) == [
            ("user", "alice", "gated stop"),
            ("assistant", "agent-worker", PARTIAL),
        ]
    await expect(alice.get_by_test_id("stop")).to_be_disabled()
    await snapshot(alice, "owner-stop", "alice")


async def test_another_users_stop_is_refused(browser: Browser, stack: WebStack) -> None:
    session = new_session("refuse")
    alice = await open_tab(browser, stack, "alice", session)
    bob = await open_tab(browser, stack, "bob", session)
    await send(alice, "gated refuse")
    await expect(last_reply(bob)).to_have_text(PARTIAL)

    refused = stack.refused_cancels()
    await bob.get_by_test_id("stop").click()
    await expect(bob.get_by_test_id("notice")).to_contain_text("only alice or an admin")
    async with asyncio.timeout(30):  # the worker's policy decides; wait for its decision
        while stack.refused_cancels() <= refused:  # noqa: ASYNC110 - a counter has no change event
            await asyncio.sleep(0.05)
    await expect(run_status(bob)).to_have_attribute("data-status", "active")
    stack.gates.open("refuse")
    for tab in (alice, bob):
        await expect(run_status(tab)).to_have_attribute("data-status", "complete")
        await expect(last_reply(tab)).to_have_text(FULL)
    await expect(bob.get_by_test_id("stop-refused")).to_contain_text("refused to stop alice's run")
    await snapshot(bob, "stop-refused", "bob")


async def test_a_reload_mid_stream_recovers_the_whole_reply(browser: Browser, stack: WebStack) -> None:
    session = new_session("reload")
    alice = await open_tab(browser, stack, "alice", session)
    bob = await open_tab(browser, stack, "bob", session)
    await send(alice, "gated reload")
    await expect(last_reply(bob)).to_have_text(PARTIAL)

    await bob.reload()
    await ready(bob)
    await expect(last_reply(bob)).to_have_text(PARTIAL)
    await expect(run_status(bob)).to_have_attribute("data-status", "active")
    stack.gates.open("reload")
    await expect(last_reply(bob)).to_have_text(FULL)
    await expect(run_status(bob)).to_have_attribute("data-status", "complete")
    assert await messages(bob) == [("user", "alice", "gated reload"), ("assistant", "agent-worker", FULL)]
    await snapshot(bob, "reload", "bob")


async def test_offline_mid_stream_then_online_loses_and_doubles_nothing(
    browser: Browser, stack: WebStack
) -> None:
    session = new_session("offline")
    alice = await open_tab(browser, stack, "alice", session)
    bob = await open_tab(browser, stack, "bob", session)
    await send(alice, "gated offline")
    await expect(last_reply(bob)).to_have_text(PARTIAL)

    await bob.context.set_offline(True)
    await expect(bob.get_by_test_id("connection")).not_to_have_attribute("data-state", "connected")
    stack.gates.open("offline")  # the rest of the reply streams while bob is offline
    await expect(last_reply(alice)).to_have_text(FULL)
    await stack.worker.run_until_idle()
    await asyncio.sleep(3)  # the offline period: 3 s
    await expect(last_reply(bob)).to_have_text(PARTIAL)
    await bob.context.set_offline(False)

    await expect(bob.get_by_test_id("connection")).to_have_attribute("data-state", "connected")
    await expect(last_reply(bob)).to_have_text(FULL)
    await expect(run_status(bob)).to_have_attribute("data-status", "complete")
    assert await messages(bob) == [("user", "alice", "gated offline"), ("assistant", "agent-worker", FULL)]
    await snapshot(bob, "offline", "bob")


async def test_regenerate_and_edit_show_siblings(browser: Browser, stack: WebStack) -> None:
    session = new_session("branches")
    alice = await open_tab(browser, stack, "alice", session)
    bob = await open_tab(browser, stack, "bob", session)
    await send(alice, "tell me a joke")
    await expect(run_status(alice)).to_have_attribute("data-status", "complete")
    first = (await messages(alice))[1][2]
    assert first.startswith("Answer ") and first.strip().endswith("tell me a joke")

    await alice.get_by_test_id("regenerate").click()
    assistant_branch = alice.locator("[data-testid=message][data-role=assistant] [data-testid=branch]")
    await expect(assistant_branch).to_have_attribute("data-count", "2")
    await expect(assistant_branch).to_have_attribute("data-index", "1")
    await expect(run_status(alice)).to_have_attribute("data-status", "complete")
    second = (await messages(alice))[1][2]
    assert second != first and second.strip().endswith("tell me a joke")
    # Bob's tab sees the same siblings and can navigate them on his own.
    bob_branch = bob.locator("[data-testid=message][data-role=assistant] [data-testid=branch]")
    await expect(bob_branch).to_have_attribute("data-count", "2")
    await bob_branch.get_by_test_id("branch-prev").click()
    await expect(last_reply(bob)).to_have_text(first)
    await expect(last_reply(alice)).to_have_text(second)

    await alice.get_by_test_id("edit").click()
    await alice.get_by_test_id("edit-input").fill("tell me a better joke")
    await alice.get_by_test_id("edit-save").click()
    user_branch = alice.locator("[data-testid=message][data-role=user] [data-testid=branch]")
    await expect(user_branch).to_have_attribute("data-count", "2")
    await expect(run_status(alice)).to_have_attribute("data-status", "complete")
    edited = await messages(alice)
    assert edited[0] == ("user", "alice", "tell me a better joke")
    assert edited[1][2].strip().endswith("tell me a better joke")
    await snapshot(alice, "branches", "alice")
    await user_branch.get_by_test_id("branch-prev").click()
    await expect(
        alice.locator("[data-testid=message][data-role=user] [data-testid=message-text]")
    ).to_have_text("tell me a joke")
    await expect(last_reply(alice)).to_have_text(second)


async def test_an_approval_gated_tool_waits_for_the_button(browser: Browser, stack: WebStack) -> None:
    session = new_session("approval")
    alice = await open_tab(browser, stack, "alice", session)
    bob = await open_tab(browser, stack, "bob", session)
    requests = len(stack.provider.requests)
    await send(alice, "notify my phone")
    for tab in (alice, bob):
        await expect(tab.get_by_test_id("tool")).to_have_attribute("data-state", "approval-requested")
        await expect(run_status(tab)).to_have_attribute("data-status", "suspended")
        await expect(tab.get_by_test_id("approve")).to_be_visible()
    # Suspended: the worker has asked the model once and waits for a human.
    await stack.worker.run_until_idle()
    assert len(stack.provider.requests) == requests + 1
    await snapshot(alice, "approval", "alice")

    await alice.get_by_test_id("approve").click()
    for tab in (alice, bob):
        await expect(run_status(tab)).to_have_attribute("data-status", "complete")
        await expect(tab.get_by_test_id("tool")).to_have_attribute("data-state", "output-available")
        await expect(last_reply(tab)).to_contain_text("Done: notification sent: my phone")
        await expect(tab.get_by_test_id("approve")).to_have_count(0)
    assert len(stack.provider.requests) == requests + 2


async def test_the_client_tool_answers_from_the_browsers_geolocation(
    browser: Browser, stack: WebStack
) -> None:
    session = new_session("geo")
    lisbon = {"latitude": 38.7223, "longitude": -9.1393}
    alice = await open_tab(browser, stack, "alice", session, geolocation=lisbon, permissions=["geolocation"])
    bob = await open_tab(browser, stack, "bob", session)
    await send(alice, "where am i")
    for tab in (alice, bob):
        await expect(last_reply(tab)).to_have_text("You are at 38.72, -9.14.")
        await expect(run_status(tab)).to_have_attribute("data-status", "complete")
        await expect(tab.locator("[data-testid=tool][data-tool-name=get_client_location]")).to_have_attribute(
            "data-state", "output-available"
        )
    await snapshot(alice, "client-tool", "alice")


async def test_a_tab_without_a_client_id_asks_for_a_name(browser: Browser, stack: WebStack) -> None:
    session = new_session("name")
    context = await browser.new_context()
    stack.contexts.append(context)
    page = await context.new_page()
    await page.goto(f"{stack.base}/?session={session}")
    await page.get_by_test_id("client-id").fill("dave")
    await page.get_by_test_id("join").click()
    await ready(page)
    await expect(page.get_by_test_id("me")).to_have_attribute("data-client-id", "dave")
    assert "clientId=dave" in page.url
    await send(page, "hi, I am dave")
    await expect(run_status(page)).to_have_attribute("data-status", "complete")
    assert (await messages(page))[0] == ("user", "dave", "hi, I am dave")
