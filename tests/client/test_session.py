"""The chat device's session logic against the embedded server, with a scripted agent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from agent_worker.client.app import ChatOptions, connect_session
from agent_worker.client.render import conversation_view, plain_text, render
from agent_worker.client.session import ChatSession
from agent_worker.protocol.headers import H_CODEC_MESSAGE_ID
from agent_worker.server import EmbeddedServer, ServerConfig
from tests.client.agent_double import AgentRun, ScriptedAgent
from tests.client.client_support import DeviceFactory, live_screen, transcript, wait_until

CHANNEL = "conversations:client-test"


@asynccontextmanager
async def alice_and_bob(
    server: EmbeddedServer, device: DeviceFactory
) -> AsyncIterator[tuple[ScriptedAgent, ChatSession, ChatSession]]:
    """The scripted agent on :data:`CHANNEL`, then Alice's device, then Bob's."""
    async with ScriptedAgent(server, CHANNEL) as agent:
        yield agent, await device(CHANNEL, "alice"), await device(CHANNEL, "bob")


async def stream_first_token(agent: ScriptedAgent, sender: ChatSession, watcher: ChatSession) -> AgentRun:
    """``sender`` asks for a stream; the agent's run starts with "alpha", and ``watcher`` has seen it."""
    sent = await sender.send_text("stream please")
    run = await agent.open_run(await agent.wait_input(sent.event_id))
    await run.begin_text()
    await run.delta("alpha")
    await wait_until(watcher, lambda: transcript(watcher).endswith("alpha"), "first token")
    return run


class TestHistory:
    async def test_late_joiner_renders_the_whole_conversation(
        self, ably_server: EmbeddedServer, device: DeviceFactory
    ) -> None:
        """A device that joins after two exchanges renders them exactly like the device that was there."""
        async with ScriptedAgent(ably_server, CHANNEL) as agent:
            alice = await device(CHANNEL, "alice")
            for prompt, reply in (("hello", ("Hi", " there")), ("and now?", ("Still", " here", "."))):
                sent = await alice.send_text(prompt)
                run = await agent.open_run(await agent.wait_input(sent.event_id))
                await run.reply(*reply)
            expected = "#1 alice> hello\nassistant> Hi there\n#2 alice> and now?\nassistant> Still here."
            await wait_until(alice, lambda: transcript(alice) == expected, "alice to see both replies")

            bob = await device(CHANNEL, "bob")
            assert transcript(bob) == expected
            assert [m.codec_message_id for m in bob.visible_messages()] == [
                m.codec_message_id for m in alice.visible_messages()
            ]


class TestLive:
    async def test_observer_sees_tokens_as_they_arrive(
        self, ably_server: EmbeddedServer, device: DeviceFactory
    ) -> None:
        """Bob watches Alice's run token by token; his printer output is the transcript, nothing repeated."""
        async with alice_and_bob(ably_server, device) as (agent, alice, bob):
            out = live_screen(bob)
            sent = await alice.send_text("count to three")
            run = await agent.open_run(await agent.wait_input(sent.event_id))
            await run.begin_text()
            seen: list[str] = []
            for token in ("one", " two", " three"):
                await run.delta(token)
                seen.append(token)
                partial = "#1 alice> count to three\nassistant> " + "".join(seen)

                def caught_up(p: str = partial) -> bool:
                    return transcript(bob) == p

                await wait_until(bob, caught_up, f"bob to see {seen!r}")
            await run.finish_text()
            await run.end("complete")
            await wait_until(bob, lambda: not bob.active_runs(), "the run to end")
            assert transcript(bob) == "#1 alice> count to three\nassistant> one two three"
            assert out.getvalue() == transcript(bob)

    async def test_failed_and_cancelled_runs_are_marked(
        self, ably_server: EmbeddedServer, device: DeviceFactory
    ) -> None:
        """A run ending in error shows its message; a cancelled run keeps its partial text and a mark."""
        async with ScriptedAgent(ably_server, CHANNEL) as agent:
            alice = await device(CHANNEL, "alice")
            events: list[str] = []
            alice.on_event(lambda e: events.append(e.text))
            sent = await alice.send_text("fail please")
            run = await agent.open_run(await agent.wait_input(sent.event_id))
            await run.end("error", (104008, "model exploded"))
            sent2 = await alice.send_text("then stop")
            run2 = await agent.open_run(await agent.wait_input(sent2.event_id))
            await run2.begin_text()
            await run2.delta("Once upon")
            await run2.cancel_streams()
            await run2.end("cancelled")
            expected = (
                "#1 alice> fail please\n  ✖ error: model exploded\n"
                "#2 alice> then stop\nassistant> Once upon\n  ⊘ cancelled"
            )
            await wait_until(alice, lambda: transcript(alice) == expected, "both marks")
            assert any("model exploded" in e for e in events)


class TestWrites:
    async def test_send_publishes_the_chat_transport_headers(
        self, ably_server: EmbeddedServer, device: DeviceFactory
    ) -> None:
        """A prompt is one ai-input with the exact §3.1 transport and codec headers; parent chains."""
        async with ScriptedAgent(ably_server, CHANNEL) as agent:
            alice = await device(CHANNEL, "alice")
            first = await alice.send_text("hi")
            wire = await agent.wait_input(first.event_id)
            assert wire.client_id == "alice"
            assert wire.data == "hi"
            assert dict(wire.transport_headers) == {
                "role": "user",
                "codec-message-id": first.codec_message_id,
                "run-client-id": "alice",
                "event-id": first.event_id,
                "stream": "false",
                "discrete": "true",
            }
            codec = dict(wire.codec_headers)
            assert codec.pop("messageId")
            assert codec == {"kind": "user-message", "partType": "text"}
            # A second prompt before any answer chains onto the first (optimistic auto-parent).
            second = await alice.send_text("again")
            wire2 = await agent.wait_input(second.event_id)
            assert wire2.transport_headers["parent"] == first.codec_message_id

    async def test_cancel_before_and_after_run_start(
        self, ably_server: EmbeddedServer, device: DeviceFactory
    ) -> None:
        """Own run: cancel by input-codec-message-id only; another device's run: by run-id only."""
        async with alice_and_bob(ably_server, device) as (agent, alice, bob):
            sent = await alice.send_text("long story")
            trigger = await agent.wait_input(sent.event_id)
            assert await alice.cancel_active() == "your pending request"
            (early,) = await agent.wait_cancels(1)
            assert early.client_id == "alice"
            assert early.data is None
            headers = dict(early.transport_headers)
            assert headers.pop("event-id")
            assert headers == {"input-codec-message-id": sent.codec_message_id}

            run = await agent.open_run(trigger)
            await run.begin_text()
            await run.delta("Once")
            await wait_until(bob, lambda: bool(bob.active_runs()), "bob to see the active run")
            assert (await bob.cancel_active() or "").startswith("alice's run")
            cancels = await agent.wait_cancels(2)
            late = dict(cancels[1].transport_headers)
            assert late.pop("event-id") != headers.get("event-id")
            assert late == {"run-id": run.run_id}
            assert cancels[1].client_id == "bob"
            await run.cancel_streams()
            await run.end("cancelled")
            await wait_until(bob, lambda: transcript(bob).endswith("⊘ cancelled"), "cancel mark")
            assert transcript(bob) == "#1 alice> long story\nassistant> Once\n  ⊘ cancelled"
            assert await bob.cancel_active() is None

    async def test_regenerate_headers_and_branch(
        self, ably_server: EmbeddedServer, device: DeviceFactory
    ) -> None:
        """/regenerate publishes the wire-only regenerate input; both devices switch to the new answer."""
        async with alice_and_bob(ably_server, device) as (agent, alice, bob):
            sent = await alice.send_text("pick a number")
            run = await agent.open_run(await agent.wait_input(sent.event_id))
            await run.reply("7")
            await wait_until(bob, lambda: transcript(bob).endswith("assistant> 7"), "first answer")

            regen = await bob.regenerate()
            wire = await agent.wait_input(regen.event_id)
            assert wire.data == ""
            assert dict(wire.codec_headers) == {"kind": "regenerate"}
            assert dict(wire.transport_headers) == {
                "role": "user",
                "codec-message-id": regen.codec_message_id,
                "run-client-id": "bob",
                "parent": sent.codec_message_id,
                "msg-regenerate": run.codec_message_id,
                "event-id": regen.event_id,
                "stream": "false",
            }
            run2 = await agent.open_run(wire)
            await run2.reply("42")
            expected = "#1 alice> pick a number\nassistant> 42"
            await wait_until(alice, lambda: transcript(alice) == expected, "alice: regenerated answer")
            await wait_until(bob, lambda: transcript(bob) == expected, "bob: regenerated answer")

    async def test_edit_headers_and_branch(self, ably_server: EmbeddedServer, device: DeviceFactory) -> None:
        """/edit forks the user message (fork-of, parent = predecessor); everyone follows the edit."""
        async with alice_and_bob(ably_server, device) as (agent, alice, bob):
            first = await alice.send_text("hello")
            run1 = await agent.open_run(await agent.wait_input(first.event_id))
            await run1.reply("Hi")
            second = await alice.send_text("what is 2+2")
            run = await agent.open_run(await agent.wait_input(second.event_id))
            await run.reply("5")
            await wait_until(bob, lambda: transcript(bob).endswith("assistant> 5"), "wrong answer")

            edit = await bob.edit(second.codec_message_id, "what is 2+2, exactly?")
            wire = await agent.wait_input(edit.event_id)
            headers = dict(wire.transport_headers)
            assert headers == {
                "role": "user",
                "codec-message-id": edit.codec_message_id,
                "run-client-id": "bob",
                "parent": run1.codec_message_id,
                "fork-of": second.codec_message_id,
                "event-id": edit.event_id,
                "stream": "false",
                "discrete": "true",
            }
            await (await agent.open_run(wire)).reply("4")
            expected = "#1 alice> hello\nassistant> Hi\n#2 bob> what is 2+2, exactly?\nassistant> 4"
            await wait_until(alice, lambda: transcript(alice) == expected, "alice follows the edit")
            await wait_until(bob, lambda: transcript(bob) == expected, "bob follows the edit")
            assert wire.transport_headers[H_CODEC_MESSAGE_ID] != second.codec_message_id


class TestReconnect:
    async def test_drop_mid_stream_loses_and_repeats_nothing(
        self, ably_server: EmbeddedServer, device: DeviceFactory
    ) -> None:
        """Bob's socket dies mid-answer; tokens published meanwhile arrive once, in order."""
        async with alice_and_bob(ably_server, device) as (agent, alice, bob):
            out = live_screen(bob)
            run = await stream_first_token(agent, alice, bob)

            assert ably_server.drop_connections("bob") >= 1
            for token in (" beta", " gamma", " delta"):
                await run.delta(token)
            await run.finish_text()
            await run.end("complete")
            expected = "#1 alice> stream please\nassistant> alpha beta gamma delta"
            await wait_until(alice, lambda: transcript(alice) == expected, "alice: full answer")
            await wait_until(bob, lambda: transcript(bob) == expected, "bob: full answer", timeout=30)
            assert out.getvalue().count("alpha beta gamma delta") == 1
            assert plain_text(render(conversation_view(bob.tree, bob.authors))) == expected


class TestContinuityLoss:
    async def test_new_connection_after_failed_resume(self) -> None:
        """The resume fails (connection state expired at once), so the device gets a new connection and
        re-attaches from its channel serial: text published meanwhile arrives once, nothing repeats."""
        config = ServerConfig(port=0, connection_state_ttl_ms=1, presence_leave_delay_ms=50)
        async with EmbeddedServer(config) as server, ScriptedAgent(server, CHANNEL) as agent:

            def opts(who: str) -> ChatOptions:
                return ChatOptions(CHANNEL, who, server.endpoint, server.default_key, None, None)

            alice = await connect_session(opts("alice"))
            bob = await connect_session(opts("bob"))
            try:
                out = live_screen(bob)
                run = await stream_first_token(agent, alice, bob)
                connection = bob.transport.client.connection.connection_manager.connection_id

                assert server.drop_connections("bob") >= 1
                for token in (" beta", " gamma"):
                    await run.delta(token)
                await wait_until(bob, lambda: transcript(bob).endswith("gamma"), "catch-up", timeout=30)
                assert bob.transport.client.connection.connection_manager.connection_id != connection
                await run.delta(" delta")
                await run.finish_text()
                await run.end("complete")
                expected = "#1 alice> stream please\nassistant> alpha beta gamma delta"
                await wait_until(bob, lambda: transcript(bob) == expected, "bob: full answer", timeout=30)
                assert out.getvalue().count("alpha beta gamma delta") == 1
            finally:
                for s in (alice, bob):
                    await s.close()
                    await s.transport.close()

    async def test_lost_continuity_is_caught_up_from_history(
        self, ably_server: EmbeddedServer, device: DeviceFactory
    ) -> None:
        """Re-attached *without* continuity (no RESUMED, no replay), the device re-reads history from the
        new attach point: the tokens it missed appear once, and the live tail continues after them."""
        async with alice_and_bob(ably_server, device) as (agent, alice, bob):
            out = live_screen(bob)
            events: list[str] = []
            bob.on_event(lambda e: events.append(e.text))
            run = await stream_first_token(agent, alice, bob)
            hydrations = bob.hydrations

            assert ably_server.drop_connections("bob", resume=False) >= 1
            for token in (" beta", " gamma"):
                await run.delta(token)
            await wait_until(bob, lambda: bob.hydrations > hydrations, "bob to re-read history", timeout=30)
            await run.delta(" delta")
            await run.finish_text()
            await run.end("complete")
            expected = "#1 alice> stream please\nassistant> alpha beta gamma delta"
            await wait_until(bob, lambda: transcript(bob) == expected, "bob: full answer", timeout=30)
            assert transcript(alice) == expected
            assert any("catching up" in e for e in events)
            screen = out.getvalue()
            assert screen.count("alpha beta gamma delta") == 1
            assert screen.count("alpha") == 1  # the stream continued in place: nothing reprinted


class TestTransport:
    async def test_a_device_builds_one_sdk_client_and_keeps_no_spares(
        self, ably_server: EmbeddedServer, device: DeviceFactory
    ) -> None:
        """A chat device needs one connection: it builds one ably-python client, wants no spare
        clients built ahead (the worker's pool keeps up to 31 for its bursts) and opens no second
        connection — a connection lost without resume included (the SDK reconnects its client)."""
        async with alice_and_bob(ably_server, device) as (agent, alice, bob):
            run = await stream_first_token(agent, alice, bob)
            hydrations = bob.hydrations
            assert ably_server.drop_connections("bob", resume=False) >= 1
            await wait_until(bob, lambda: bob.hydrations > hydrations, "bob to re-read history", timeout=30)
            await run.delta(" beta")
            await run.finish_text()
            await run.end("complete")
            await wait_until(bob, lambda: transcript(bob).endswith("alpha beta"), "bob: the answer")
            for who in (alice, bob):
                t = who.transport
                assert (t.clients_built, t.spare_clients_wanted, len(t.pool.connections)) == (1, 0, 1)
                assert t.pool.policy.max_connections == 1
