"""Runs every registered benchmark, or the ones named on the command line.

Register a benchmark by adding ``name -> module`` to ``BENCHMARKS``; the module must expose
``main(argv: list[str] | None) -> int``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

BENCHMARKS: dict[str, str] = {
    "server": "bench.server",
    "agent": "bench.agent",
    "otel": "bench.otel",
    "codecs": "bench.codecs",
    "push": "bench.push",
    "hardening": "bench.hardening",
    "recovery": "bench.recovery",
    "temporal": "bench.temporal",
}


def main(argv: list[str]) -> int:
    names = [a for a in argv if not a.startswith("-")] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    status = 0
    for name in names:
        print(f"== bench {name}")
        run: Callable[[list[str] | None], int] = importlib.import_module(BENCHMARKS[name]).main
        status = max(status, run([] if len(names) > 1 else [a for a in argv if a.startswith("-")]))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
