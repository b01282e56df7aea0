"""The crash journal in-process: what a live run records, what an ended one leaves, the lock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent_worker.errors import ConfigError
from agent_worker.protocol.headers import H_STATUS
from agent_worker.protocol.wire import OutboundMessage
from agent_worker.providers.echo import EchoProvider
from agent_worker.runtime.journal import RunJournal, closing_append, default_state_dir
from tests.runtime.runtime_support import ChatClient, Harness


def test_one_process_per_state_dir(tmp_path: Path) -> None:
    """A second journal on the same dir is refused with a message naming the holder and the fix;
    once the first closes, the dir can be taken again."""
    first = RunJournal(tmp_path)
    try:
        with pytest.raises(ConfigError, match=r"another agent-worker process \(pid \d+\).*temporal"):
            RunJournal(tmp_path)
    finally:
        first.close()
    RunJournal(tmp_path).close()


def test_closing_append_cancels_the_stream_with_its_own_headers() -> None:
    opening = OutboundMessage(
        name="ai-output",
        data="partial",
        extras={"ai": {"transport": {H_STATUS: "streaming", "run-id": "r1"}, "codec": {"type": "text"}}},
    )
    closing = closing_append(opening)
    assert closing.data == ""
    assert closing.extras == {
        "ai": {"transport": {H_STATUS: "cancelled", "run-id": "r1"}, "codec": {"type": "text"}}
    }
    assert opening.extras["ai"]["transport"][H_STATUS] == "streaming"  # type: ignore[index]


def test_default_state_dir_is_per_service(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    a, b = default_state_dir("127.0.0.1:8080"), default_state_dir("127.0.0.1:8081")
    assert a != b and a.parent == b.parent == tmp_path / "agent-worker"
    assert default_state_dir("127.0.0.1:8080") == a


async def test_a_streaming_run_is_journaled_until_it_ends(
    make_worker: Any, make_client: Any, session_name: str, tmp_path: Path
) -> None:
    """While the reply streams, the journal holds the run with its open stream and step; once the
    run ends complete, nothing is left for a successor to close."""
    harness: Harness = await make_worker(EchoProvider(tokens_per_second=20), state_dir=str(tmp_path))
    client: ChatClient = await make_client()
    assert harness.worker.journal is not None
    journal = harness.worker.journal.journal
    sent = await client.send_text("one two three four five six seven eight nine ten eleven twelve")
    status, body = await harness.invoke(session_name, sent.event_id)
    assert status == 200
    await client.wait_for(lambda: len(client.run_text(body["runId"])) > 5)
    open_runs = journal.open_runs()
    assert [(r.run_id, r.session, r.owner) for r in open_runs] == [(body["runId"], session_name, "user-abc")]
    assert len(open_runs[0].streams) == 1 and len(open_runs[0].steps) == 1
    end = await client.run_end_for(sent.codec_message_id)
    assert end.transport_headers["run-reason"] == "complete"
    await harness.worker.run_until_idle()
    assert journal.open_runs() == []
