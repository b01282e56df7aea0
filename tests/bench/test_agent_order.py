"""The agent benchmark's run order (bench/agent): repeated variants and the counterbalanced
like-for-like N-stream passes (docs/benchmarks.md, the bench's order effect, twelfth round)."""

from __future__ import annotations

import dataclasses
from typing import Any

from bench.agent import (
    Plan,
    _order_text,
    base_variant,
    choose_block,
    counterbalanced,
    merge_halves,
    run_keys,
    summarise,
    variant_label,
)
from tests.bench.phases import phase


def _half(latencies_ms: list[float], **kw: Any) -> dict[str, Any]:
    return {"latencyN": phase(latencies_ms, **kw), "refused": {}, "loadavg": [[0.5] * 3, [0.6] * 3]}


def test_a_repeated_variant_gets_a_key_of_its_own() -> None:
    keys = run_keys(["js", "py", "js", "js"])
    assert keys == ["js", "py", "js#2", "js#3"]
    assert [base_variant(k) for k in keys] == ["js", "py", "js", "js"]
    assert variant_label("js#2") == "official JS agent (run 2)"
    assert variant_label("py") == "Python worker (like-for-like)"


def test_the_like_for_like_pair_runs_a_b_b_a_in_the_order_listed() -> None:
    plan = Plan()
    assert counterbalanced(plan, ["js", "py", "py-defaults"]) == ["js", "py", "py", "js"]
    assert counterbalanced(plan, ["py", "js"]) == ["py", "js", "js", "py"]
    # only one of the pair, the N-stream phase not run, or the old single pass asked for: none
    assert counterbalanced(plan, ["py", "py-defaults"]) == []
    assert counterbalanced(dataclasses.replace(plan, only=("latency1",)), ["js", "py"]) == []
    assert counterbalanced(dataclasses.replace(plan, only=("latencyN",)), ["js", "py"]) == [
        "js",
        "py",
        "py",
        "js",
    ]
    assert counterbalanced(dataclasses.replace(plan, counterbalance=False), ["js", "py"]) == []


def test_the_pooled_phase_holds_both_passes_and_keeps_each() -> None:
    first = _half([1.0, 1.0, 1.0, 1.0], cpu=0.4, steal=0)
    second = _half([3.0, 3.0, 3.0, 3.0], cpu=0.6, steal=20)
    second["refused"] = {"42911": 2}
    full = {"latency1": phase([1.0, 2.0], n=1), "refused": {"42911": 1}, "peakConnections": 1}
    merged = merge_halves(full, [first, second])
    pooled = merged["latencyN"]
    assert pooled["n"] == 4 and pooled["received"] == 8
    assert sorted(pooled["steadyLatenciesUs"]) == [1000] * 4 + [3000] * 4
    assert pooled["cpuSeconds"] == 1.0
    assert pooled["machineTicks"] == {"busy": 200, "idle": 180, "steal": 20}
    assert pooled["halves"] == [first, second]
    assert merged["refused"] == {"42911": 3}
    assert merged["latency1"] is full["latency1"]  # the full pass's other phases stay as they were
    # without a full pass (--phases=latencyN) the first pass gives the rest
    alone = merge_halves(None, [first, second])
    assert alone["loadavg"] == first["loadavg"] and alone["latencyN"]["n"] == 4


def test_the_table_names_each_pass_in_run_order() -> None:
    def result(low: float, high: float, steal: int = 10) -> dict[str, Any]:
        raw = {
            "latency1": phase([1.0, 1.0], n=1),
            "memory": {"n": 2, "baseKb": 1000, "activeKb": 1200, "afterKb": 1100},
            "throughput": {**phase([1.0] * 4), "wallUs": 1_000_000},
            "cancel": {"samples": [{"reason": "cancelled", "closedUs": 1000, "runEndUs": 3000}]},
        }
        return merge_halves(raw, [_half([low] * 4), _half([high] * 4, steal=steal)])

    results = {"js": summarise(result(1.0, 2.0)), "py": summarise(result(1.5, 2.5))}
    text = " ".join(_order_text(results, Plan()))
    order = ["official JS agent 1.00", "like-for-like) 1.50", "like-for-like) 2.50", "official JS agent 2.00"]
    positions = [text.index(o) for o in order]
    assert positions == sorted(positions)
    assert "steal 5.0%" in text  # 10 of 200 ticks
    # a pass over 1% steal makes the run "disturbed", naming the pass; none: no such line
    assert "Disturbed" in text and "official JS agent pass 2" in text and "pass 1," not in text
    assert results["js"]["latencyN"]["p50"] in (1.0, 2.0)  # pooled over both passes
    assert results["js"]["latencyN"]["expected"] == 8
    calm = {"js": summarise(result(1.0, 1.0, steal=0)), "py": summarise(result(1.5, 1.5, steal=0))}
    assert "Disturbed" not in " ".join(_order_text(calm, Plan()))


def test_a_block_run_again_for_steal_is_reported_but_not_pooled() -> None:
    noisy = {"js": [_half([3.0] * 4, steal=30), _half([3.0] * 4)], "py": [_half([1.0] * 4), _half([1.0] * 4)]}
    calm = {"js": [_half([1.0] * 4), _half([1.0] * 4)], "py": [_half([2.0] * 4), _half([2.0] * 4)]}
    worse = {"js": [_half([1.0] * 4, steal=50), _half([1.0] * 4)], "py": [_half([1.0] * 4)] * 2}
    # the first quiet block whatever its numbers (here the one where the worker looks worse) ...
    assert choose_block([noisy, calm]) is calm
    assert choose_block([calm, noisy]) is calm
    # ... else the least disturbed
    assert choose_block([worse, noisy]) is noisy
    results = {}
    for v in ("js", "py"):
        raw = {
            "latency1": phase([1.0, 1.0], n=1),
            "memory": {"n": 2, "baseKb": 1000, "activeKb": 1200, "afterKb": 1100},
            "throughput": {**phase([1.0] * 4), "wallUs": 1_000_000},
            "cancel": {"samples": [{"reason": "cancelled", "closedUs": 1000, "runEndUs": 3000}]},
        }
        results[v] = summarise(merge_halves(raw, calm[v], noisy[v]))
    assert results["js"]["latencyN"]["p50"] == 1.0  # the dropped block's 3 ms are not pooled
    text = " ".join(_order_text(results, Plan()))
    assert "1 other block(s), not in the rows: official JS agent 3.00 ms, steal 15.0%" in text
    assert "Disturbed" not in text
