"""`agent-worker chat` refuses a --wait it cannot honour before it connects anywhere."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from agent_worker.cli import app


@pytest.mark.parametrize("value", ["nan", "-1", "inf"])
def test_chat_refuses_a_wait_that_is_not_a_finite_duration(value: str) -> None:
    # An endpoint nobody listens on: the refusal must come before any connection attempt.
    args = ["chat", "s1", "--transcript", "--wait", value]
    args += ["--ably-endpoint", "127.0.0.1:9", "--agent-url", "none"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "--wait must be a finite number of seconds, 0 or more" in result.output
