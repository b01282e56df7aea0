"""``[engine]``, the ``agent-worker run`` engine flags, and what a misconfigured engine says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent_worker.agent import Agent
from agent_worker.config import Config, EngineConfig, config_from_mapping
from agent_worker.engine.temporal.engine import _security, invocation_id_for
from agent_worker.errors import ConfigError
from agent_worker.providers.echo import EchoProvider
from agent_worker.server import EmbeddedServer
from agent_worker.worker import Worker
from agent_worker.worker.main import Overrides, apply_overrides, with_state_dir
from tests.runtime.runtime_support import worker_settings
from tests.temporal_support import free_port


def test_local_is_the_default_engine() -> None:
    assert Config().engine.kind == "local"
    with pytest.raises(ConfigError, match=r"\[engine\] kind"):
        config_from_mapping({"engine": {"kind": "celery"}})
    with pytest.raises(ConfigError, match="unknown key 'adress'"):
        config_from_mapping({"engine": {"adress": "x:1"}})


def test_flags_select_and_address_the_temporal_engine() -> None:
    cfg = apply_overrides(
        Config(),
        Overrides(
            engine="temporal",
            temporal_address="temporal.internal:7233",
            temporal_namespace="agents",
            temporal_task_queue="support",
        ),
    )
    assert cfg.engine == EngineConfig(
        kind="temporal", address="temporal.internal:7233", namespace="agents", task_queue="support"
    )
    with pytest.raises(ConfigError, match="--engine must be local or temporal"):
        apply_overrides(Config(), Overrides(engine="lambda"))
    with pytest.raises(ConfigError, match="HOST:PORT"):
        apply_overrides(Config(), Overrides(temporal_address="temporal.internal:port"))


def test_temporal_mode_keeps_no_crash_journal() -> None:
    """A fleet's workers share no directory (and two on one host must not clash): Temporal keeps the
    runs; local mode against Ably keeps its per-user journal."""
    remote = {"ably": {"endpoint": "ably.example:443", "key": "a.b:c"}}
    assert with_state_dir(config_from_mapping(remote)).worker.state_dir
    durable = config_from_mapping({**remote, "engine": {"kind": "temporal"}})
    assert with_state_dir(durable).worker.state_dir is None


def test_invocation_ids_are_derived_per_fleet_session_and_input() -> None:
    one = invocation_id_for("q", "conversations:a", "e1")
    assert one == invocation_id_for("q", "conversations:a", "e1")
    assert (
        len(
            {
                one,
                invocation_id_for("q", "conversations:a", "e2"),
                invocation_id_for("q2", "conversations:a", "e1"),
                invocation_id_for("q", "conversations:b", "e1"),
            }
        )
        == 4
    )


def test_security_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _security(EngineConfig()) == {}
    assert _security(EngineConfig(tls=True)) == {"tls": True}
    monkeypatch.setenv("AW_TEST_TEMPORAL_KEY", "k-123")
    assert _security(EngineConfig(api_key_env="AW_TEST_TEMPORAL_KEY")) == {"api_key": "k-123", "tls": True}
    with pytest.raises(ConfigError, match="AW_TEST_UNSET_KEY, which is not set"):
        _security(EngineConfig(api_key_env="AW_TEST_UNSET_KEY"))
    cert = tmp_path / "c.pem"
    cert.write_bytes(b"CERT")
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        _security(EngineConfig(tls_cert=str(cert)))
    with pytest.raises(ConfigError, match="cannot read"):
        _security(EngineConfig(tls_cert=str(cert), tls_key=str(tmp_path / "missing.key")))
    key = tmp_path / "c.key"
    key.write_bytes(b"KEY")
    tls = _security(EngineConfig(tls_cert=str(cert), tls_key=str(key)))["tls"]
    assert tls.client_cert == b"CERT" and tls.client_private_key == b"KEY"
    assert "k-123" not in repr(EngineConfig(api_key_env="AW_TEST_TEMPORAL_KEY"))


async def test_an_unreachable_temporal_says_so(ably_server: EmbeddedServer) -> None:
    """A worker whose Temporal frontend does not answer refuses to start, naming the address."""
    address = f"127.0.0.1:{free_port()}"
    worker = Worker(
        Agent(EchoProvider()),
        transport=worker_settings(ably_server),
        config=Config(engine=EngineConfig(kind="temporal", address=address)),
    )
    with pytest.raises(ConfigError, match=f"cannot reach Temporal at {address}"):
        await worker.start()
    assert worker.engine is None


def test_the_base_install_runs_without_temporalio() -> None:
    """Without the extra, everything imports; only choosing the temporal engine says what is missing."""
    code = """
import asyncio, sys
sys.modules["temporalio"] = None  # as if the extra were not installed
import agent_worker, agent_worker.cli, agent_worker.worker, agent_worker.engine
from agent_worker.agent import Agent
from agent_worker.config import Config, EngineConfig
from agent_worker.errors import ConfigError
from agent_worker.providers.echo import EchoProvider
from agent_worker.transport.ably import AblySettings
worker = agent_worker.worker.Worker(
    Agent(EchoProvider()),
    transport=AblySettings(endpoint="127.0.0.1:1", key="a.b:c", tls=False),
    config=Config(engine=EngineConfig(kind="temporal")),
)
try:
    asyncio.run(worker._start_engine())
except ConfigError as exc:
    print(exc.message)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "needs the temporal extra" in out.stdout, out.stderr
