"""The README's quick-start path, run for real: `agent-worker run` plus two `agent-worker chat`
processes in pseudo-terminals; a prompt typed in one, the reply seen on both."""

from __future__ import annotations

import os
import re
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

EXE = str(Path(sys.executable).with_name("agent-worker"))
BANNER_ABLY = re.compile(r"embedded Ably server: (\S+)\s+key: (\S+)")
BANNER_HTTP = re.compile(r"invocations: POST (\S+)")


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """`agent-worker run` with the echo provider on ephemeral ports; yields (endpoint, key, url)."""
    config = tmp_path / "worker.toml"
    config.write_text("[ably]\nembedded_port = 0\n\n[http]\ndev_token_endpoint = true\n")
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("ABLY_KEY", None)
    proc = pexpect.spawn(
        EXE,
        ["run", "--config", str(config), "--http", "127.0.0.1:0", "--provider", "echo"],
        env=env,
        encoding="utf-8",
        timeout=30,
    )
    try:
        proc.expect(BANNER_ABLY)
        endpoint, key = proc.match.group(1), proc.match.group(2)
        proc.expect(BANNER_HTTP)
        url = proc.match.group(1)
        yield endpoint, key, url
    finally:
        proc.sendintr()  # SIGINT: the worker drains and exits
        try:
            proc.expect(pexpect.EOF, timeout=30)
        except pexpect.TIMEOUT:
            tail = (proc.before or "")[-2000:]
            proc.close(force=True)
            pytest.fail(f"agent-worker run did not exit on SIGINT within 30 s; output tail:\n{tail}")
        proc.close(force=True)


def open_chat(*args: str, key: str | None = None) -> pexpect.spawn:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("ABLY_KEY", None)
    if key is not None:
        env["ABLY_KEY"] = key
    child = pexpect.spawn(
        EXE,
        ["chat", *args],
        env=env,
        encoding="utf-8",
        timeout=20,
        dimensions=(40, 200),
    )
    child.expect("type a message")
    return child


def test_quickstart_two_devices_one_session(worker: tuple[str, str, str]) -> None:
    """Alice's prompt is answered by the worker; Bob's terminal shows the prompt and the reply too.
    Alice uses the printed key; Bob a JWT from the worker's dev token endpoint (as a browser would)."""
    endpoint, key, url = worker
    session = "conversations:quickstart"
    token_url = url.replace("/api/chat", "/api/auth/token") + "?clientId=bob"
    with urllib.request.urlopen(token_url, timeout=10) as resp:
        assert resp.headers.get_content_type() == "application/jwt"
        bob_token = resp.read().decode()
    common = ("--ably-endpoint", endpoint, "--agent-url", url)
    alice = open_chat(session, "--client-id", "alice", *common, key=key)
    bob = open_chat(session, "--token", bob_token, *common)
    try:
        alice.sendline("hello from the quick start")
        for device in (alice, bob):
            device.expect("alice> hello from the quick start")
            device.expect("assistant> hello from the quick start")

        bob.sendline("/who")
        bob.expect(r"present: ([^\r\n]*)")
        present = bob.match.group(1)
        assert "alice" in present and "bob" in present

        # A late third device reads the same conversation from history and exits (non-interactive).
        viewer = pexpect.spawn(
            EXE,
            [
                "chat",
                session,
                "--ably-endpoint",
                endpoint,
                "--agent-url",
                "none",
                "--transcript",
                "--wait",
                "10",
            ],
            env={**os.environ, "NO_COLOR": "1", "ABLY_KEY": key},
            encoding="utf-8",
            timeout=30,
        )
        viewer.expect(pexpect.EOF)
        viewer.close()
        assert viewer.exitstatus == 0
        lines = [line.strip() for line in (viewer.before or "").splitlines() if line.strip()]
        assert lines == ["#1 alice> hello from the quick start", "assistant> hello from the quick start"]
    finally:
        for device in (alice, bob):
            if device.isalive():
                device.sendline("/quit")
                device.expect(pexpect.EOF, timeout=15)
            device.close()
    assert alice.exitstatus == 0 and bob.exitstatus == 0
