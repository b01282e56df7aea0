"""The scripted model's two stamps (bench/agent/script.py): each token carries the time its
generator resumed and the time its pacing timer was due, and the bench reports latencies from
both (docs/benchmarks.md, "From the token's due time")."""

from __future__ import annotations

import json
from typing import Any

from agent_worker.protocol.model import TextPart, UserMessage
from agent_worker.providers.base import ModelRequest
from bench.agent import merge_halves, rows, summarise
from bench.agent.script import bench_script, now_us
from bench.agent.sendlog import _TOKEN
from bench.agent.serverlog import _TOKEN as _SERVER_TOKEN
from bench.agent.serverlog import _TOKEN_STR
from tests.bench.phases import phase


def _request(tokens: int, rate: int) -> ModelRequest:
    spec = json.dumps({"bench": "stream", "id": "t", "tokens": tokens, "rate": rate})
    return ModelRequest(messages=[UserMessage(parts=(TextPart(text=spec),))])


async def _tokens(tokens: int, rate: int) -> list[tuple[int, int, int]]:
    out = []
    async for chunk in bench_script(_request(tokens, rate)):
        assert isinstance(chunk, str) and chunk.endswith(";")
        seq, us, due = chunk[:-1].split(":")
        out.append((int(seq), int(us), int(due)))
    return out


async def test_a_paced_token_carries_the_time_its_timer_was_due() -> None:
    before = now_us()
    got = await _tokens(3, 1000)  # 1 ms apart
    assert [seq for seq, _, _ in got] == [1, 2, 3]
    # due = the time just before the sleep + the interval: after the previous token left the model
    # (or the call began) by the whole interval, so never the resume time of an earlier token
    previous = before
    for _, us, due in got:
        assert due >= previous + 1000
        previous = us


async def test_an_unpaced_token_has_no_due_time_but_its_resume_time() -> None:
    got = await _tokens(3, 0)
    assert [seq for seq, _, _ in got] == [1, 2, 3]
    assert all(due == us for _, us, due in got)


def test_the_diagnostics_find_seq_and_resume_time_in_either_token_format() -> None:
    text = "7:123456789:123450000;8:123556789:123550000;9:123656789;"
    expected = [("7", "123456789"), ("8", "123556789"), ("9", "123656789")]
    assert _TOKEN.findall(text) == expected
    assert _TOKEN_STR.findall(text) == expected
    assert _SERVER_TOKEN.findall(text.encode()) == [(a.encode(), b.encode()) for a, b in expected]


def _phase(resume_ms: list[float], due_ms: list[float] | None, n: int = 1) -> dict[str, Any]:
    result = phase(resume_ms, n=n)
    if due_ms is not None:
        result["steadyDueLatenciesUs"] = [round(ms * 1000) for ms in due_ms]
    return result


def _result(scale: float, due: bool = True) -> dict[str, Any]:
    def d(ms: list[float]) -> list[float] | None:
        return [m * scale for m in ms] if due else None

    raw = {
        "latency1": _phase([1.0, 1.0], d([2.0, 2.0])),
        "memory": {"n": 2, "baseKb": 1000, "activeKb": 1200, "afterKb": 1100},
        "throughput": {**_phase([1.0] * 4, None), "wallUs": 1_000_000},
        "cancel": {"samples": [{"reason": "cancelled", "closedUs": 1000, "runEndUs": 3000}]},
    }
    halves = [
        {"latencyN": _phase([1.0] * 4, d([3.0] * 4), n=2), "refused": {}},
        {"latencyN": _phase([1.0] * 4, d([5.0] * 4), n=2), "refused": {}},
    ]
    return merge_halves(raw, halves)


def test_the_due_time_rows_pool_both_passes_and_leave_the_resume_time_rows_alone() -> None:
    merged = _result(1.0)
    assert sorted(merged["latencyN"]["steadyDueLatenciesUs"]) == [3000] * 4 + [5000] * 4
    results = {"js": summarise(_result(1.0)), "py": summarise(_result(2.0))}
    table = {label: (values, raw) for label, _, values, raw in rows(results)}
    assert table["latency p50, N streams, steady (ms)"][1] == {"js": 1.0, "py": 1.0}
    due_p99 = table["latency p99, N streams, steady, from the token's due time (ms)"][1]
    assert due_p99 == {"js": 5.0, "py": 10.0}
    assert table["latency p50, 1 stream, from the token's due time (ms)"][1] == {"js": 2.0, "py": 4.0}
    assert [p["dueP50"] for p in results["py"]["latencyN"]["passes"]] == [6.0, 10.0]
    # a dump from before the due stamp: the rows say n/a, the others are as they were
    old = {"js": summarise(_result(1.0, due=False))}
    old_table = {label: values for label, _, values, _ in rows(old)}
    assert old_table["latency p50, N streams, steady, from the token's due time (ms)"] == {"js": "n/a"}
    assert old_table["latency p50, N streams, steady (ms)"] == {"js": "1.00"}
