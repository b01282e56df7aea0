"""The start gate (``[worker] start_concurrency``): K starts between POST and handler, in order.

The gate itself (first come first served, no barging, cancel and close while queued, the lapse),
the connection pool's placement wait giving the place back, and the worker's use of it: a place is
given back when the run's handler is called, when a start waits for a run slot, when it ends in
any way; queued invocations count as pending, leave the line when cancelled and are refused at
shutdown. No timing is asserted: every wait is on an event, bounded only against a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent_worker.errors import TransportError
from agent_worker.providers.base import ModelRequest, StreamEvent
from agent_worker.providers.echo import ScriptedProvider
from agent_worker.transport.pool import ConnectionPool, PoolPolicy
from agent_worker.worker.admission import InvocationRefused
from agent_worker.worker.startgate import StartGate, current_lease, unbind, yield_place
from tests.runtime.runtime_support import ChatClient, Harness

LONG = 3600.0  # a lapse that never comes within a test: what releases a place is the code path


async def _until(predicate: Any, limit_s: float = 10.0) -> None:
    async with asyncio.timeout(limit_s):
        while not predicate():  # noqa: ASYNC110 - the states polled have no event of their own
            await asyncio.sleep(0.005)


# --- the gate --------------------------------------------------------------------------------------


async def test_places_go_first_come_first_served_and_a_later_arrival_waits_behind() -> None:
    gate = StartGate(2, lapse_s=LONG)
    first, second = await gate.acquire(), await gate.acquire()
    order: list[int] = []

    async def start(i: int) -> None:
        lease = await gate.acquire()
        order.append(i)
        await asyncio.sleep(0)
        lease.release()

    queued = [asyncio.create_task(start(i)) for i in range(4)]
    await _until(lambda: gate.waiting == 4)
    assert order == [] and gate.held == 2
    first.release()
    first.release()  # idempotent: one place given back, not two
    late = asyncio.create_task(start(99))  # arrives after the place was handed on: behind the line
    await asyncio.gather(*queued, late)
    assert order == [0, 1, 2, 3, 99]
    assert gate.held == 1  # `second` still holds its place
    second.release()
    assert gate.held == 0 and gate.queued_total == 5


async def test_a_cancelled_start_leaves_the_line_and_a_granted_one_passes_its_place_on() -> None:
    gate = StartGate(1, lapse_s=LONG)
    holder = await gate.acquire()
    cancelled = asyncio.create_task(gate.acquire())
    behind = asyncio.create_task(gate.acquire())
    await _until(lambda: gate.waiting == 2)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert gate.waiting == 1
    holder.release()
    lease = await behind
    assert gate.held == 1
    # Granted and cancelled in the same turn: the place goes to the next, not lost.
    racing = asyncio.create_task(gate.acquire())
    last = asyncio.create_task(gate.acquire())
    await _until(lambda: gate.waiting == 2)
    lease.release()  # grants `racing` (its wake-up is only scheduled)...
    racing.cancel()  # ...and it is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await racing
    (await last).release()
    assert gate.held == 0


async def test_a_place_lapses_when_its_start_neither_calls_its_handler_nor_ends() -> None:
    gate = StartGate(1, lapse_s=0.01)
    stuck = await gate.acquire()
    waiting = asyncio.create_task(gate.acquire())
    lease = await asyncio.wait_for(waiting, 10)  # granted by the lapse alone
    assert stuck.released and not lease.released
    lease.release()
    stuck.release()  # after its lapse: nothing more to give back
    assert gate.held == 0


async def test_closing_refuses_the_line_and_later_starts_but_not_the_places_held() -> None:
    gate = StartGate(1, lapse_s=LONG)
    held = await gate.acquire()
    queued = asyncio.create_task(gate.acquire())
    await _until(lambda: gate.waiting == 1)
    gate.close(lambda: InvocationRefused("shutting down", code=50300, status_code=503))
    with pytest.raises(InvocationRefused):
        await queued
    with pytest.raises(InvocationRefused):
        await gate.acquire()
    assert not held.released and gate.held == 1
    held.release()
    assert gate.held == 0


async def test_yield_place_releases_the_lease_the_current_context_inherited() -> None:
    gate = StartGate(1, lapse_s=LONG)
    yield_place()  # outside a start: nothing
    lease = await gate.acquire()
    token = lease.bind()
    try:
        # A task created now (the run task, for one) carries the start's place with it.
        child = asyncio.create_task(asyncio.sleep(0, result=current_lease()))
    finally:
        unbind(token)
    assert current_lease() is None
    assert await child is lease

    async def waits_for_something_else() -> None:
        yield_place()

    token = lease.bind()
    try:
        task = asyncio.create_task(waits_for_something_else())
    finally:
        unbind(token)
    await task
    assert lease.released and gate.held == 0


async def test_a_session_waiting_for_a_connection_to_open_gives_its_place_back() -> None:
    opened = asyncio.Event()

    async def connect() -> object:
        await opened.wait()
        return object()

    async def close(_client: object) -> None:
        return None

    pool: ConnectionPool[object] = ConnectionPool(
        PoolPolicy(min_connections=1, max_connections=2), connect, close
    )
    opened.set()
    await pool.start()
    opened.clear()
    pool.on_wait = yield_place
    gate = StartGate(4, lapse_s=LONG)
    leases = []
    for i in range(4):  # three fit the open connection, the fourth waits for a second one
        lease = await gate.acquire()
        token = lease.bind()
        try:
            task = asyncio.create_task(pool.acquire(f"s{i}"))
        finally:
            unbind(token)
        leases.append((lease, task))
        await asyncio.sleep(0)
    await _until(lambda: leases[3][0].released)
    assert [lease.released for lease, _ in leases] == [False, False, False, True]
    opened.set()
    await asyncio.gather(*(task for _, task in leases))
    await pool.close()


# --- the worker ------------------------------------------------------------------------------------


def _held_script(release: asyncio.Event, called: list[str]) -> Any:
    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        called.append(request.messages[-1].text)  # type: ignore[union-attr]
        yield "hello "
        await release.wait()
        yield "done"

    return script


async def _gated(make_worker: Any, k: int, script: Any, **config: Any) -> Harness:
    harness: Harness = await make_worker(ScriptedProvider(script), start_concurrency=k, **config)
    gate = harness.worker._gate
    assert gate is not None
    gate.lapse_s = LONG
    return harness


async def test_the_handler_call_gives_the_place_back_so_the_gate_never_holds_a_model_call(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    release, called = asyncio.Event(), list[str]()
    harness = await _gated(make_worker, 1, _held_script(release, called))
    client: ChatClient = await make_client()
    one = await client.send_text("one")
    two = await client.send_text("two", parent=None)
    assert (await harness.invoke(session_name, one.event_id))[0] == 200
    assert (await harness.invoke(session_name, two.event_id))[0] == 200
    await _until(lambda: len(called) == 2)  # both models called while the first still streams
    gate = harness.worker._gate
    assert gate is not None and gate.held == 0
    release.set()
    await client.run_end_for(one.codec_message_id)
    await client.run_end_for(two.codec_message_id)


async def test_a_start_that_ends_without_a_handler_gives_its_place_back(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    release, called = asyncio.Event(), list[str]()
    release.set()
    harness = await _gated(make_worker, 1, _held_script(release, called), trigger_wait_s=0.05)
    client: ChatClient = await make_client()
    # No such input: the run looks for it, gives up (104010) and ends without calling its handler.
    assert (await harness.invoke(session_name, "no-such-input"))[0] == 200
    await harness.worker.run_until_idle()
    gate = harness.worker._gate
    assert gate is not None and gate.held == 0 and harness.worker.runs_failed == 1
    real = await client.send_text("real")
    assert (await harness.invoke(session_name, real.event_id))[0] == 200
    await client.run_end_for(real.codec_message_id)
    assert called == ["real"]


async def test_a_start_waiting_for_a_run_slot_lets_the_next_one_through(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    release, called = asyncio.Event(), list[str]()
    harness = await _gated(make_worker, 1, _held_script(release, called), max_concurrent_runs=1)
    worker = harness.worker
    client: ChatClient = await make_client()
    sent = [await client.send_text(f"t{i}", parent=None) for i in range(3)]
    # Admitted together (no run holds a slot yet), then through the gate one at a time: t0 takes
    # the only slot and its model holds it; t1 then locates its input and waits for that slot,
    # which must not keep t2 out of the gate meanwhile.
    invocations = [asyncio.create_task(worker.invoke(session_name, s.event_id)) for s in sent]
    await asyncio.wait_for(asyncio.gather(*invocations), 10)  # each answered once its run exists
    await _until(lambda: len(worker._unlocated) == 0)  # t1 and t2 located, waiting for the slot
    gate = worker._gate
    assert gate is not None and gate.held == 0 and called == ["t0"]
    release.set()
    for s in sent:
        await client.run_end_for(s.codec_message_id)
    assert called == ["t0", "t1", "t2"]


async def _stuck_start(harness: Harness, session_name: str) -> asyncio.Task[Any]:
    """A start that holds the gate's only place: its input is never published, so it waits for it
    live (trigger_wait_s) without calling a handler."""
    holder = asyncio.create_task(harness.worker.invoke(session_name, "never-published"))
    gate = harness.worker._gate
    assert gate is not None
    await _until(lambda: gate.held == 1)
    return holder


async def test_queued_invocations_count_as_pending_leave_when_cancelled_and_get_503_at_shutdown(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    release, called = asyncio.Event(), list[str]()
    release.set()
    harness = await _gated(
        make_worker, 1, _held_script(release, called), trigger_wait_s=30.0, max_pending_invocations=3
    )
    worker = harness.worker
    gate = worker._gate
    assert gate is not None
    client: ChatClient = await make_client()
    holder = await _stuck_start(harness, session_name)
    await holder  # answered: its run exists (waiting for its input) and holds the place
    queued = [await client.send_text(f"q{i}", parent=None) for i in range(3)]
    first = asyncio.create_task(worker.invoke(session_name, queued[0].event_id))
    second = asyncio.create_task(worker.invoke(session_name, queued[1].event_id))
    await _until(lambda: gate.waiting == 2)
    # The stuck run and the two in line fill max_pending_invocations = 3: the next is refused.
    status, body = await harness.invoke(session_name, queued[2].event_id)
    assert status == 429, body
    # A cancelled one leaves the line and its event id: the same POST can come again.
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert gate.waiting == 1 and worker.admission.seen(session_name, queued[0].event_id) is None
    # Shutdown: the one still in line is refused (503) at once, while the start holding the place
    # still runs (the drain waits for it), and is not started.
    closing = asyncio.create_task(worker.close(drain_timeout_s=30.0))
    with pytest.raises(InvocationRefused) as refused:
        await second
    assert refused.value.status_code == 503
    assert worker.state == "draining" and gate.held == 1
    late = await client.send_text("the stuck start's input", parent=None, event_id="never-published")
    await closing  # the stuck run found its input and completed: the drain is over
    assert (await client.run_end_for(late.codec_message_id)).transport_headers["run-reason"] == "complete"
    assert called == ["the stuck start's input"]  # none of the queued inputs got a run
    assert not client.for_input("ai-run-start", queued[1].codec_message_id)


async def test_a_start_whose_session_cannot_be_opened_gives_its_place_back(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    release, called = asyncio.Event(), list[str]()
    release.set()
    harness = await _gated(make_worker, 1, _held_script(release, called))
    worker = harness.worker
    assert worker.pool is not None
    pool_get = worker.pool.get
    failures = [TransportError("attach refused", code=80000)]

    async def failing_get(name: str, *, starting: bool = False) -> Any:
        if failures:
            raise failures.pop()
        return await pool_get(name, starting=starting)

    worker.pool.get = failing_get  # type: ignore[method-assign]
    client: ChatClient = await make_client()
    sent = await client.send_text("after a failed attach")
    with contextlib.suppress(TransportError):
        await worker.invoke(session_name, sent.event_id)
    gate = worker._gate
    assert gate is not None and gate.held == 0
    assert (await harness.invoke(session_name, sent.event_id))[0] == 200  # a retry goes through
    await client.run_end_for(sent.codec_message_id)
