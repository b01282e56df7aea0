"""ably-js ``echoMessages: false`` against the embedded server: a connection's own messages are not
delivered back to it (tests/server/test_echo_param.py: ably-python); presence is."""

from __future__ import annotations

import pytest

from tests.server_js.server_js_support import scenario


@pytest.mark.node
def test_ably_js_echo_messages_false(protocol: str) -> None:
    result = scenario("echo.mjs", protocol)
    assert [m["name"] for m in result["seenQ"]] == ["theirs"]  # none of its own publish, append, update
    assert [(m["name"], m["action"]) for m in result["seenO"]] == [
        ("mine", "message.create"),
        ("mine", "message.append"),
        ("mine", "message.update"),
        ("theirs", "message.create"),
    ]
    assert {"action": "enter", "clientId": "quiet"} in result["presenceQ"]
