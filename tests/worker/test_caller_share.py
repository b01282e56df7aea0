"""The per-caller share of pending invocations (``[worker] max_pending_per_caller``): one verified
caller whose invocations name inputs not found yet cannot fill the worker's pending cap and lock the
other callers out; its share is given back on every path an invocation leaves "pending" by — its
input found, the run refused or ended, the worker shut down, the invocation failed before its run
existed — so no path locks a caller out for good."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from structlog.testing import capture_logs

from agent_worker.config import Config, HttpConfig
from agent_worker.errors import TransportError
from agent_worker.providers.echo import EchoProvider, ScriptedProvider
from agent_worker.server import EmbeddedServer
from agent_worker.worker.admission import caller_share
from tests.runtime.runtime_support import ChatClient, Harness, gated_script, start_harness


def _bearer(server: EmbeddedServer, client_id: str) -> dict[str, str]:
    token = server.mint_token(client_id, {"conversations:*": ["publish", "subscribe", "history"]})
    return {"Authorization": f"Bearer {token}"}


async def _authed_harness(server: EmbeddedServer, provider: Any, **config: Any) -> Harness:
    return await start_harness(
        server, provider, http=HttpConfig(port=0, auth="ably-token"), token_key=server.default_key, **config
    )


def test_the_default_share_is_a_quarter_of_the_cap_and_at_least_four() -> None:
    assert caller_share(256) == 64
    assert caller_share(3) == 4  # a cap of a few stays the only bound
    assert caller_share(256, 10) == 10
    worker = Config.model_validate({"worker": {"max_pending_per_caller": 7}}).worker
    assert worker.max_pending_per_caller == 7


async def test_a_caller_over_its_share_is_refused_while_others_are_admitted(
    ably_server: EmbeddedServer, make_client: Any, session_name: str
) -> None:
    """Mallory POSTs event ids nobody has published (yet): two are admitted, the rest get 429/42910
    (logged once for the burst) while the worker's cap is far from full, so Alice is still served.
    Once Mallory's inputs arrive her runs are located, her share is free and she is admitted again;
    a shutdown ends one still waiting and gives its share back too."""
    harness = await _authed_harness(
        ably_server, EchoProvider(), trigger_wait_s=30.0, max_pending_invocations=8, max_pending_per_caller=2
    )
    try:
        alice: ChatClient = await make_client("alice")
        mallory: ChatClient = await make_client("mallory", session=f"{session_name}-m")
        ids = [str(uuid.uuid4()) for _ in range(4)]
        with capture_logs() as logs:
            as_mallory = _bearer(ably_server, "mallory")
            answers = [await harness.invoke(mallory.session, i, headers=as_mallory) for i in ids]
            assert [status for status, _ in answers] == [200, 200, 429, 429]
            assert harness.extra["last_headers"]["Retry-After"] == "1"
            for _, body in answers[2:]:
                assert body["error"]["code"] == 42910
                assert "at most 2 per caller" in body["error"]["message"]
            sent = await alice.send_text("real question")
            as_alice = _bearer(ably_server, "alice")
            status, body = await harness.invoke(session_name, sent.event_id, headers=as_alice)
            assert status == 200, body
            end = await alice.run_end_for(sent.codec_message_id)
            assert end.transport_headers["run-reason"] == "complete"
        assert [e["caller"] for e in logs if e["event"] == "invocation_caller_over_share"] == ["mallory"]
        assert [e for e in logs if e["event"] == "invocation_busy"] == []  # not one line per POST
        assert harness.worker.admission.held_by("mallory") == 2

        # Her inputs arrive: the waiting runs are located (share given back) and complete.
        first = await mallory.send_text("one", event_id=ids[0])
        second = await mallory.send_text("two", event_id=ids[1], parent=first.codec_message_id)
        for sent_m in (first, second):
            end = await mallory.run_end_for(sent_m.codec_message_id)
            assert end.transport_headers["run-reason"] == "complete"
        await harness.worker.wait_for_runs(3)
        assert harness.worker.admission.held_by("mallory") == 0
        status, _ = await harness.invoke(mallory.session, ids[2], headers=as_mallory)
        assert status == 200
        assert harness.worker.admission.held_by("mallory") == 1

        # Shutdown cancels the run still waiting for its input: its share is given back.
        await harness.worker.close(drain_timeout_s=0.0)
        assert harness.worker.admission.held_by("mallory") == 0
    finally:
        await harness.close()


async def test_the_share_is_given_back_on_every_path(
    ably_server: EmbeddedServer, make_client: Any, session_name: str
) -> None:
    """With a share of one, each path out of "pending" is shown by the caller's next invocation
    being admitted: input located (while the run still streams), run refused because the input is
    not the caller's (40160), input never found (104010), session open failed before the run
    existed (503). (A shutdown ending a waiting run: the test above.)"""
    gate = asyncio.Event()
    provider = ScriptedProvider(gated_script("alpha ", gate, "beta"))
    harness = await _authed_harness(ably_server, provider, trigger_wait_s=0.3, max_pending_per_caller=1)
    worker = harness.worker
    try:
        alice: ChatClient = await make_client("alice")
        bob: ChatClient = await make_client("bob", session=f"{session_name}-b")
        as_alice = _bearer(ably_server, "alice")

        with capture_logs() as logs:
            # Located: the share is free as soon as the input is found, though the run is held.
            one = await alice.send_text("one")
            status, body = await harness.invoke(session_name, one.event_id, headers=as_alice)
            assert status == 200, body
            await alice.wait_for(lambda: alice.run_text(body["runId"]) == "alpha ")
            assert worker.admission.held_by("alice") == 0
            # Refused: the input is Bob's, not the caller's (40160).
            two = await bob.send_text("two")
            status, _ = await harness.invoke(bob.session, two.event_id, headers=as_alice)
            assert status == 200
            gate.set()
            await alice.run_end_for(one.codec_message_id)
            await worker.wait_for_runs(2, limit_s=30)
            assert worker.admission.held_by("alice") == 0
            # Never found (104010).
            status, _ = await harness.invoke(session_name, str(uuid.uuid4()), headers=as_alice)
            assert status == 200
            await worker.wait_for_runs(3, limit_s=30)
        assert sorted(e["code"] for e in logs if e["event"] == "run_refused") == [40160, 104010]
        assert worker.admission.held_by("alice") == 0

        # Failed before its run existed: the session could not be opened.
        async def unreachable(name: str, *, starting: bool = False) -> Any:
            msg = "connection lost"
            raise TransportError(msg)

        worker.session = unreachable  # type: ignore[method-assign]
        status, _ = await harness.invoke(session_name, str(uuid.uuid4()), headers=as_alice)
        assert status == 503  # the HTTP face's answer to a TransportError
        del worker.session
        assert worker.admission.held_by("alice") == 0
        three = await alice.send_text("three", parent=alice.last_visible())
        status, body = await harness.invoke(session_name, three.event_id, headers=as_alice)
        assert status == 200, body
        end = await alice.run_end_for(three.codec_message_id)
        assert end.transport_headers["run-reason"] == "complete"
        await worker.wait_for_runs(4)
        assert worker.admission.held_by("alice") == 0
    finally:
        await harness.close()


async def test_callers_without_a_verified_identity_share_only_the_workers_cap(
    ably_server: EmbeddedServer, session_name: str
) -> None:
    """Auth off (loopback): there is no identity to tell callers apart, so the per-caller share does
    not lower the worker's cap for them."""
    harness = await start_harness(
        ably_server, EchoProvider(), max_pending_invocations=4, max_pending_per_caller=1, trigger_wait_s=30.0
    )
    try:
        statuses = [(await harness.invoke(session_name, str(uuid.uuid4())))[0] for _ in range(5)]
        assert statuses == [200, 200, 200, 200, 429]
    finally:
        await harness.worker.close(drain_timeout_s=0.0)
        await harness.close()


async def test_a_wildcard_client_id_token_is_one_caller(
    ably_server: EmbeddedServer, session_name: str
) -> None:
    """A token whose clientId is ``*`` may invoke for any participant's input (it can act as anyone),
    but it is one credential: one caller's share, whoever published the inputs. A backend invoking
    for many users with one such token shares that share (docs/security.md); a user's own token
    keeps its own."""
    harness = await _authed_harness(
        ably_server, EchoProvider(), trigger_wait_s=30.0, max_pending_invocations=8, max_pending_per_caller=2
    )
    try:
        as_backend = _bearer(ably_server, "*")
        answers = [
            await harness.invoke(session_name, str(uuid.uuid4()), headers=as_backend) for _ in range(3)
        ]
        assert [status for status, _ in answers] == [200, 200, 429]
        assert answers[2][1]["error"]["code"] == 42910
        assert harness.worker.admission.held_by("*") == 2
        as_alice = _bearer(ably_server, "alice")
        status, _ = await harness.invoke(session_name, str(uuid.uuid4()), headers=as_alice)
        assert status == 200 and harness.worker.admission.held_by("alice") == 1
    finally:
        await harness.worker.close(drain_timeout_s=0.0)
        await harness.close()
