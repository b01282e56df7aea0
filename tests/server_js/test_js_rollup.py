"""ably-js 2.28 against the server-side append rollup (``appendRollupWindow`` transport parameter)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.server_js.server_js_support import scenario

pytestmark = pytest.mark.node


@pytest.fixture(scope="module")
def stream(protocol: str) -> dict[str, Any]:
    return scenario("rollup.mjs", protocol)


@pytest.fixture(scope="module")
def limits(protocol: str) -> dict[str, Any]:
    return scenario("rollup.mjs", protocol, server={"enforce_rate_limits": True}, limits=True)


def test_pipelined_appends_reach_the_subscriber_as_first_plus_rollups(stream: dict[str, Any]) -> None:
    """20 appends fired at once with a 300 ms window: the first goes out alone (it has a
    versionSerial), the held ones are ACKed without one and arrive merged, in order, newest extras."""
    outcomes = stream["outcomes"]
    assert outcomes[0]["versionSerial"]
    assert all("error" not in o for o in outcomes)
    held = [o for o in outcomes if o["versionSerial"] is None]
    assert held, "expected appends inside the window to be rolled up"
    events = [m for m in stream["seen"] if m["serial"] == stream["serial"]]
    assert events[0]["action"] == "message.create"
    appends = events[1:]
    assert all(m["action"] == "message.append" for m in appends)
    assert appends[0]["data"] == " t0"
    # each delivery is an append published at once (ACKed with a serial) or a rollup of held ones
    assert len(outcomes) - len(held) < len(appends) <= len(outcomes) - len(held) + len(held)
    assert len(appends) < len(outcomes)
    assert "".join(m["data"] for m in events) == stream["text"]
    assert appends[-1]["extras"] == {"i": 19}
    serials = [m["version"]["serial"] for m in appends]
    assert serials == sorted(serials) and len(set(serials)) == len(serials)


def test_a_later_publish_is_delivered_after_the_rollup(stream: dict[str, Any]) -> None:
    order = [m["serial"] for m in stream["seen"]]
    last_append = max(i for i, s in enumerate(order) if s == stream["serial"])
    assert order.index(stream["closing"]) > last_append


def test_two_responses_are_rolled_up_separately(stream: dict[str, Any]) -> None:
    """Interleaved appends to two messages under the default 40 ms window: each text folds exactly;
    neither message receives more appends than were sent to it."""
    inter = stream["interleaved"]
    assert all(1 <= n <= inter["sent"] for n in inter["appends"])


def test_history_shows_each_rolled_up_message_once(stream: dict[str, Any]) -> None:
    by_serial = {m["serial"]: m for m in stream["history"]}
    assert len(by_serial) == len(stream["history"])
    rolled = by_serial[stream["serial"]]
    assert (rolled["action"], rolled["data"], rolled["extras"]) == (
        "message.update",
        stream["text"],
        {"i": 19},
    )
    inter = stream["interleaved"]
    assert by_serial[inter["s1"]]["data"] == inter["text"]
    assert by_serial[inter["s2"]]["data"] == inter["text"].upper()


def test_out_of_range_window_is_refused(stream: dict[str, Any]) -> None:
    assert stream["refused"]["code"] == 40003


def test_rollup_keeps_a_burst_under_the_enforced_connection_limit(limits: dict[str, Any]) -> None:
    """200 pipelined appends on one connection of a server enforcing Ably's limits: rolled up (the
    default window) every one is accepted; with ``appendRollupWindow: 0`` the same burst is refused."""
    rolled, unrolled = limits["rolled"], limits["unrolled"]
    assert all("error" not in o for o in rolled["outcomes"])
    assert [h["data"] for h in rolled["history"]] == [rolled["text"]]
    codes = {o.get("error") for o in unrolled["outcomes"] if "error" in o}
    assert 42911 in codes and codes <= {42910, 42911}  # the channel's own 50/s may trip as well
