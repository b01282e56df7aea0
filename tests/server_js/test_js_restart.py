"""History written through ably-js survives a server restart with a data dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.server_js.server_js_support import ServerFactory, run_script

pytestmark = pytest.mark.node


async def test_history_survives_restart(make_server: ServerFactory, protocol: str, tmp_path: Path) -> None:
    first = await make_server(data_dir=tmp_path)
    key = str(first.default_key)
    wrote = await run_script("restart.mjs", first, protocol, ns="durable", phase="write")
    await first.stop()

    second = await make_server(data_dir=tmp_path, keys=[key])
    read = await run_script("restart.mjs", second, protocol, ns="durable", phase="read", key=key)

    history = read["history"]
    assert [m["serial"] for m in history] == wrote["serials"]
    assert [m["data"] for m in history] == ["first", {"n": 2}, "Hello there"]
    assert history[2]["action"] == "message.update"
    assert history[2]["version"]["serial"] == wrote["versions"][-1]
    assert [m["serial"] for m in read["untilAttach"]] == list(reversed(wrote["serials"]))
    assert read["fresh"] > max(wrote["serials"]) and read["fresh"] > max(wrote["versions"])
