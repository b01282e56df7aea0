"""The per-caller share (``max_pending_per_caller``) covers a durable invocation's wait for its input
in the workflow's ``openRun``, as it covers a local run's: before, the share was given back as the
POST returned, so one caller's made-up event ids could hold any number of ``openRun`` steps (and
activity slots) waiting for inputs that never come."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import structlog

from agent_worker.engine.pending import OverShare, PendingInputs
from agent_worker.providers.echo import EchoProvider
from agent_worker.worker.admission import Admission, CallerBusy
from tests.engine.conftest import MakeWorker
from tests.runtime.runtime_support import ChatClient
from tests.server.server_support import eventually
from tests.worker.test_worker_hardening import _send_with_event_id


def _admission(share: int) -> Admission:
    return Admission(["*"], max_runs=8, retry_after_s=1, max_pending=64, max_pending_per_caller=share)


async def test_a_reservation_is_claimed_by_its_open_run_and_given_back_after_the_wait() -> None:
    admission = _admission(2)
    pending = PendingInputs(admission, expire_s=3600)
    assert pending.reserve("inv-1", "mallory")
    pending.started("inv-1")
    assert admission.held_by("mallory") == 1 and pending.locating == 1
    with pending.locating_input("inv-1", "mallory"):  # claims the reservation: no second hold
        assert admission.held_by("mallory") == 1
        assert pending.reserve("inv-2", "mallory")
        with pytest.raises(CallerBusy):  # the share is full while both wait
            admission.check_capacity(0, pending.locating, caller="mallory")
    assert admission.held_by("mallory") == 1 and pending.locating == 1
    pending.cancel("inv-2")  # its start failed (or was a duplicate): given back
    assert admission.held_by("mallory") == 0 and pending.locating == 0


async def test_an_open_run_of_another_workers_start_takes_its_own_hold_within_the_share() -> None:
    admission = _admission(1)
    pending = PendingInputs(admission, expire_s=3600)
    with pending.locating_input("inv-a", "mallory"):
        assert admission.held_by("mallory") == 1
        with pytest.raises(OverShare) as refused, pending.locating_input("inv-b", "mallory"):
            pass  # over the share here: refused (the workflow fails, nothing is published)
        assert refused.value.code == 42910
        with pending.locating_input("inv-c", "alice"):  # another caller is unaffected
            assert admission.held_by("alice") == 1
    assert admission.held_by("mallory") == 0 and admission.held_by("alice") == 0
    assert pending.locating == 0


async def test_an_unclaimed_reservation_lapses() -> None:
    admission = _admission(4)
    pending = PendingInputs(admission, expire_s=0.01)
    pending.reserve("inv-elsewhere", "mallory")
    pending.started("inv-elsewhere")  # its openRun ran on another worker: nothing claims it
    await eventually(lambda: admission.held_by("mallory") == 0, what="the reservation to lapse")
    assert pending.locating == 0
    with pending.locating_input("inv-elsewhere", "mallory"):  # a late openRun here: its own hold
        assert admission.held_by("mallory") == 1
    assert admission.held_by("mallory") == 0


async def test_made_up_inputs_hold_the_callers_share_while_their_workflows_wait(
    make_temporal_worker: MakeWorker, make_client: Any, session_name: str
) -> None:
    """Against the Temporal dev server: two invocations of inputs not published yet fill the
    caller's share of 2 while their openRun waits, so the third is refused 429 at once; another
    caller is served meanwhile; once one input arrives, the caller is admitted again."""
    harness = await make_temporal_worker(EchoProvider(), max_pending_per_caller=2, trigger_wait_s=15.0)
    worker = harness.worker
    mallory: ChatClient = await make_client("mallory")
    alice: ChatClient = await make_client("alice")
    later = str(uuid.uuid4())  # an input mallory publishes only after invoking it
    first = await worker.invoke(session_name, later, caller_client_id="mallory")
    await worker.invoke(session_name, str(uuid.uuid4()), caller_client_id="mallory")
    assert worker.admission.held_by("mallory") == 2  # held through the workflows' openRun
    with pytest.raises(CallerBusy) as refused:
        await worker.invoke(session_name, str(uuid.uuid4()), caller_client_id="mallory")
    assert refused.value.code == 42910

    sent = await alice.send_text("hello")
    accepted = await worker.invoke(session_name, sent.event_id, caller_client_id="alice")
    end = await alice.run_end_for(sent.codec_message_id, wait_s=60)
    assert end.transport_headers["run-reason"] == "complete"
    assert alice.run_text(accepted.run_id)

    cmid = await _send_with_event_id(mallory, "found at last", later)
    await eventually(lambda: worker.admission.held_by("mallory") <= 1, within=60, what="the input found")
    end = await mallory.run_end_for(cmid, wait_s=60)
    assert end.transport_headers["run-reason"] == "complete"
    assert mallory.run_text(first.run_id)
    again = await worker.invoke(session_name, str(uuid.uuid4()), caller_client_id="mallory")
    assert again.run_id


async def test_shutdown_cancels_input_waits_past_the_drain_bound(
    make_temporal_worker: MakeWorker, session_name: str
) -> None:
    """An openRun waiting for an input that never comes held the worker's shutdown for the whole
    wait (trigger_wait_s, + 120 s while the channel is down; Temporal's graceful timeout does not
    bound a local activity). Past the drain bound it is now cancelled, as a local run still
    looking for its input is; the caller's hold is given back."""
    harness = await make_temporal_worker(EchoProvider(), trigger_wait_s=3600.0)
    worker = harness.worker
    assert worker.engine is not None
    pending = worker.engine.pending
    await worker.invoke(session_name, str(uuid.uuid4()), caller_client_id="mallory")
    await eventually(lambda: pending.waiting == 1, within=60, what="openRun waiting for its input")
    with structlog.testing.capture_logs() as logs:
        await worker.close(drain_timeout_s=0.1)  # returns (the wait was an hour)
    assert [e["count"] for e in logs if e["event"] == "input_waits_cancelled"] == [1]
    assert pending.waiting == 0 and pending.locating == 0
    assert worker.admission.held_by("mallory") == 0
