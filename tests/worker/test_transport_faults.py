"""Transport faults never cost a run: the worker's sockets are cut 20 times across 100 concurrent
streams, and every run completes with its exact text."""

from __future__ import annotations

import asyncio
import contextlib

from websockets.exceptions import ConnectionClosedError
from websockets.frames import Close

from agent_worker.errors import TransportError
from agent_worker.providers.echo import EchoProvider
from agent_worker.server import EmbeddedServer
from agent_worker.transport.ably import map_ably_errors
from tests.runtime.runtime_support import ChatClient, Harness, start_harness


def test_connection_closed_is_a_transport_error() -> None:
    """ably-python lets ``websockets.ConnectionClosedError`` (and a bare ``Exception`` when it has no
    socket) escape a publish; both are retryable transport errors here, not crashes (50000)."""
    closed = ConnectionClosedError(Close(1006, ""), None)
    for exc in (closed, ConnectionResetError()):
        try:
            with map_ably_errors("publish"):
                raise exc
        except TransportError as err:
            assert err.code == 80003 and err.status_code >= 500
        else:  # pragma: no cover
            raise AssertionError


async def test_hundred_streams_survive_twenty_drops(ably_server: EmbeddedServer) -> None:
    harness: Harness = await start_harness(
        ably_server, EchoProvider(tokens_per_second=15), connections=2, max_concurrent_runs=100
    )
    clients: list[ChatClient] = []
    try:
        for i in range(10):
            clients.append(await ChatClient(ably_server, f"conversations:faults-{i}", f"user-{i}").connect())
        sends = []
        for i, client in enumerate(clients):
            for j in range(10):
                text = " ".join(f"s{i}r{j}w{k}" for k in range(60))
                sent = await client.send_text(text, parent=None)
                sends.append((client, sent, text))
        for client, sent, _ in sends:
            status, body = await harness.invoke(client.session, sent.event_id)
            assert status == 200, body
        drops = 0
        while drops < 20:
            await asyncio.sleep(0.5)
            drops += ably_server.drop_connections("agent-worker")
        outcomes = []
        texts = []
        for client, sent, text in sends:
            end = await client.run_end_for(sent.codec_message_id, wait_s=120)
            run_id = end.transport_headers["run-id"]
            outcomes.append((end.transport_headers["run-reason"], end.transport_headers.get("error-code")))

            # ably-python may deliver the closing append just after the run-end (its re-sends after
            # a reconnect are not strictly ordered); the text must still converge to the exact reply.
            def exact(c: ChatClient = client, r: str = run_id, t: str = text) -> bool:
                return c.run_text(r) == t

            with contextlib.suppress(TimeoutError):
                await client.wait_for(exact, 20)
            texts.append((client.run_text(run_id), text))
        assert outcomes == [("complete", None)] * 100
        assert [got for got, _ in texts] == [want for _, want in texts]
        await harness.worker.wait_for_runs(100, limit_s=60)
        assert (harness.worker.runs_completed, harness.worker.runs_failed) == (100, 0)
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
        await harness.close()
