"""What the embedded server holds over a long churn of short conversations: ``python -m bench.server.churn``.

In memory, on a simulated clock (so hours take seconds): one conversation starts every 2 simulated
seconds on its own channel (``conversations:<i>``, a mutable — so persisted — channel as the worker's
are): a user message, a run-start, a streamed answer (a create and 40 appends) and a run-end, 44
publishes through ``Hub.publish``; the sweep runs every 10 simulated seconds, as the heartbeat does.
Prints the channels held, their history bytes (as ``max_history_bytes`` counts them) and the
process's RSS after each simulated hour. Not a test.
"""

from __future__ import annotations

import argparse
import gc

from agent_worker.server.auth import ApiKey, Capability, KeyRing, Principal
from agent_worker.server.config import DEFAULT_DEV_KEY, ServerConfig
from agent_worker.server.hub import Hub
from agent_worker.server.store import MemoryStore
from bench.hardening import rss_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hours", type=float, default=6.0)
    args = parser.parse_args()
    hub = Hub(ServerConfig(), KeyRing([ApiKey.parse(DEFAULT_DEV_KEY)]), MemoryStore())
    now = [1_700_000_000_000]
    hub.now_ms = lambda: now[0]  # type: ignore[method-assign]
    agent = Principal("local.dev", "agent", False, Capability.full(), None)
    user = Principal("local.dev", "user", False, Capability.full(), None)
    gc.collect()
    base = rss_mb()
    print(f"start: rss {base:.0f} MB")
    end = now[0] + int(args.hours * 3_600_000)
    next_hour, next_sweep, i = now[0] + 3_600_000, now[0] + 10_000, 0
    while now[0] < end:
        ch = f"conversations:{i}"
        headers = {"x-ait-run": f"r-{i}"}
        text = "Tell me something about the weather today, please. " * 2
        hub.publish(ch, [{"name": "user-message", "data": text, "extras": {"headers": headers}}], user)
        hub.publish(ch, [{"name": "run-start", "data": "{}", "extras": {"headers": headers}}], agent)
        stream = {"headers": {**headers, "x-ait-stream": "true"}}
        serial = hub.publish(ch, [{"name": "text", "data": "", "extras": stream}], agent).serials[0]
        for k in range(40):
            delta = f"token {k:03d} of the answer. "
            hub.publish(ch, [{"action": 5, "serial": serial, "data": delta, "extras": stream}], agent)
        hub.publish(ch, [{"name": "run-end", "data": "{}", "extras": {"headers": headers}}], agent)
        i += 1
        now[0] += 2000
        if now[0] >= next_sweep:
            hub.sweep()
            next_sweep += 10_000
        if now[0] >= next_hour:
            next_hour += 3_600_000
            gc.collect()
            held = sum(rt.log.bytes for rt in hub.channels.values())
            hours = args.hours - (end - now[0]) / 3_600_000
            print(
                f"{hours:4.1f} h: {i} conversations, {len(hub.channels)} channels held, history "
                f"{held / 2**20:.1f} MiB, rss {rss_mb():.0f} MB (+{rss_mb() - base:.0f})"
            )


if __name__ == "__main__":
    main()
