"""``GcDeferral``: collections wait while run starts are latency-critical — counted, bounded by time and
by allocations, and the collector always comes back on (or stays off if someone else turned it off)."""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from agent_worker import gcpause
from agent_worker.gcpause import GcDeferral, gc_paused
from agent_worker.providers.echo import EchoProvider
from tests.runtime.runtime_support import ChatClient, Harness


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def deferral(clock: Clock, *, max_s: float = 0.5, max_objects: int = 10**9) -> GcDeferral:
    d = GcDeferral(max_s=max_s, max_objects=max_objects, clock=clock)
    d.active = True
    return d


def test_holders_are_counted_and_the_last_release_turns_it_back_on() -> None:
    d = deferral(Clock())
    first, second = d.hold(), d.hold()
    assert not gc.isenabled() and d.holding and d.holders == 2
    first.release()
    first.release()  # idempotent: does not give back the second holder's share
    assert not gc.isenabled() and d.holders == 1
    second.release()
    assert gc.isenabled() and not d.holding and d.holders == 0


def test_inactive_until_the_process_owner_opts_in() -> None:
    d = GcDeferral()
    hold = d.hold()
    assert gc.isenabled() and d.holders == 0
    hold.release()
    assert gc.isenabled() and d.holders == 0


def test_a_stream_of_starts_cannot_keep_it_off_past_the_time_bound() -> None:
    clock = Clock()
    d = deferral(clock, max_s=0.5)
    holds = [d.hold()]
    for _ in range(20):  # overlapping starts, 0.1 s apart: there is always a holder
        clock.now += 0.1
        holds.append(d.hold())
        holds.pop(0).release()
        if clock.now >= 100.5:
            assert gc.isenabled() and not d.holding
    assert gc.isenabled() and d.holders == 1
    holds.pop().release()
    assert gc.isenabled()
    again = d.hold()  # the holders were gone: a new episode may hold again
    assert not gc.isenabled()
    again.release()
    assert gc.isenabled()


def test_a_burst_of_starts_ends_the_hold() -> None:
    """More overlapping starts than ``max_holders``: the collector comes back on, and stays on until
    every one of them is gone (then a new episode may hold again)."""
    d = GcDeferral(max_holders=3, clock=Clock())
    d.active = True
    holds = [d.hold() for _ in range(3)]
    assert not gc.isenabled()
    holds.append(d.hold())
    assert gc.isenabled() and not d.holding and d.holders == 4
    for hold in holds[:3]:
        hold.release()
    holds.append(d.hold())  # back to two holders: still the same (ended) episode
    assert gc.isenabled()
    holds[3].release()
    holds[4].release()
    assert gc.isenabled() and d.holders == 0
    again = d.hold()
    assert not gc.isenabled()
    again.release()


def test_the_allocation_bound_ends_a_hold() -> None:
    d = deferral(Clock(), max_objects=gc.get_count()[0] + 1_000)
    first = d.hold()
    assert not gc.isenabled()
    kept = [[i] for i in range(5_000)]  # tracked containers: gen 0's count grows
    second = d.hold()  # a later hold checks the bound
    assert gc.isenabled() and not d.holding
    second.release()
    first.release()
    assert gc.isenabled() and len(kept) == 5_000


def test_a_hold_is_not_started_over_a_bound_already_passed() -> None:
    d = deferral(Clock(), max_objects=0)
    hold = d.hold()
    assert gc.isenabled() and not d.holding
    hold.release()
    assert gc.isenabled()


async def test_the_loop_timer_ends_a_hold_with_no_further_hold_or_release() -> None:
    clock = Clock()
    d = deferral(clock, max_s=0.5)
    hold = d.hold()
    assert not gc.isenabled()
    clock.now += 0.6
    await asyncio.sleep(0.2)  # the check timer (every 50 ms) fires first
    assert gc.isenabled() and not d.holding
    hold.release()
    assert gc.isenabled()


async def test_release_soon_waits_for_the_next_loop_turn() -> None:
    d = deferral(Clock())
    hold = d.hold()
    hold.release_soon()
    assert not gc.isenabled()
    await asyncio.sleep(0)
    assert gc.isenabled() and d.holders == 0


def test_an_application_that_turned_the_collector_off_keeps_it_off() -> None:
    d = deferral(Clock())
    gc.disable()
    hold = d.hold()
    assert not d.holding
    hold.release()
    assert not gc.isenabled()


def test_nests_with_gc_paused_either_way() -> None:
    d = deferral(Clock())
    hold = d.hold()
    with gc_paused():  # inside a hold: leaves the collector to the hold
        assert not gc.isenabled()
    assert not gc.isenabled()
    hold.release()
    assert gc.isenabled()
    with gc_paused():  # a hold taken inside a paused block is not the deferral's to undo
        inner = d.hold()
        assert not d.holding
        inner.release()
        assert not gc.isenabled()
    assert gc.isenabled()


@pytest.fixture
def starts_active() -> Iterator[GcDeferral]:
    was = gcpause.starts.active
    gcpause.starts.active = True
    yield gcpause.starts
    gcpause.starts.active = was


async def test_a_worker_holds_until_the_run_start_and_gives_back_on_every_path(
    make_worker: Any, make_client: Any, session_name: str, starts_active: GcDeferral
) -> None:
    """A completed run, a refused one (no such input) and one cancelled by close() while it looks
    for its input all give their hold back: nothing is held and the collector is on afterwards."""
    harness: Harness = await make_worker(EchoProvider(), trigger_wait_s=0.3)
    client: ChatClient = await make_client()
    sent = await client.send_text("hello")
    await harness.invoke(session_name, sent.event_id)
    assert (await client.run_end_for(sent.codec_message_id)).transport_headers["run-reason"] == "complete"
    status, _ = await harness.invoke(session_name, str(uuid.uuid4()))  # refused after the wait
    assert status == 200
    await harness.worker.wait_for_runs(2)
    assert starts_active.holders == 0 and gc.isenabled()
    waiting: Harness = await make_worker(EchoProvider(), trigger_wait_s=30.0)
    status, _ = await waiting.invoke(session_name, str(uuid.uuid4()))  # still looking at close()
    assert status == 200
    assert starts_active.holders == 1
    await waiting.worker.close(drain_timeout_s=0.0)
    assert waiting.worker.runs_cancelled == 1
    assert starts_active.holders == 0 and gc.isenabled()
