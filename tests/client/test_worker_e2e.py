"""Chat devices against the real worker: cancel and its authorisation, error runs."""

from __future__ import annotations

from agent_worker.client.session import ChatSession
from agent_worker.providers.echo import EchoProvider
from tests.client.client_support import DeviceFactory, WorkerFactory, transcript, wait_until

SESSION = "conversations:e2e"
STORY = " ".join(f"word{i}" for i in range(200))


def reply(session: ChatSession) -> str:
    """The assistant's text so far (the line after the prompt)."""
    lines = transcript(session).splitlines()
    return lines[1] if len(lines) > 1 else ""


async def test_owner_cancel_stops_the_worker_run(device: DeviceFactory, make_worker: WorkerFactory) -> None:
    """Alice cancels her own run mid-stream: both devices end with the partial text and a cancel mark."""
    url = await make_worker(EchoProvider(tokens_per_second=50))
    alice = await device(SESSION, "alice", agent_url=url)
    bob = await device(SESSION, "bob", agent_url=url)
    await alice.invoke(await alice.send_text(STORY))
    await wait_until(bob, lambda: "word3 " in reply(bob), "bob to see the reply streaming")

    # Bob is not the owner: the worker's default policy refuses his cancel and the run goes on.
    assert (await bob.cancel_active() or "").startswith("alice's run")
    await wait_until(bob, lambda: "word40 " in reply(bob), "the run to go on after bob's cancel")
    assert [r.status for r in bob.active_runs()] == ["active"]

    assert await alice.cancel_active() == "your run"
    await wait_until(alice, lambda: transcript(alice).endswith("⊘ cancelled"), "alice: cancelled mark", 30)
    await wait_until(bob, lambda: transcript(bob) == transcript(alice), "bob to converge")
    assert reply(alice).startswith("assistant> word0 word1")
    assert "word199" not in reply(alice)


async def test_unreachable_agent_is_reported_and_not_pending(device: DeviceFactory) -> None:
    """A prompt whose invocation POST fails stays on the channel, is reported, and is not 'running'."""
    alice = await device(SESSION + "-down", "alice", agent_url="http://127.0.0.1:9/api/chat")
    sent = await alice.send_text("anyone there?")
    try:
        await alice.invoke(sent)
    except Exception as exc:  # the error the app turns into a notice
        assert "could not wake the agent" in str(exc)
    else:
        msg = "the POST to a closed port should fail"
        raise AssertionError(msg)
    assert alice.pending_own() == []
    assert transcript(alice) == "#1 alice> anyone there?"
