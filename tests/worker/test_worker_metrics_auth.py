"""``/metrics`` and ``/healthz``'s details (run and session counts) are open on loopback and, beyond
it, only to ``Authorization: Bearer <metrics token>``: 401/40101 without it, 403/40300 when no token
is configured; ``/healthz``'s status code is answered to anyone (load balancers' health checks send no
credentials). The token is compared in constant time and never logged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from typer.testing import CliRunner

from agent_worker.cli import app
from agent_worker.config import Config, HttpConfig, Secret
from agent_worker.errors import ConfigError
from agent_worker.worker.admission import Invocation
from agent_worker.worker.http import build_app, serve
from agent_worker.worker.main import Overrides, apply_overrides
from agent_worker.worker.metrics import WorkerMetrics

TOKEN = "metrics-s3cret-token"
BEYOND = "0.0.0.0"  # the policy's input; the test's socket is bound to loopback


def _beyond(**settings: Any) -> HttpConfig:
    """Bound beyond loopback (invocations open: not what is tested here)."""
    return HttpConfig(host=BEYOND, port=0, auth="none", **settings)


@dataclass
class _Transport:
    connected: bool = True


@dataclass
class _Worker:
    """Just what ``/healthz`` and ``/metrics`` read."""

    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    transport: _Transport = field(default_factory=_Transport)
    state: str = "running"
    active_runs: tuple[str, ...] = ("r1", "r2")
    sessions: tuple[str, ...] = ("s1",)

    async def invoke(
        self, session_name: object, input_event_id: object, *, caller_client_id: str | None = None
    ) -> Invocation:  # pragma: no cover - not invoked here
        raise NotImplementedError


async def _get(base: str, path: str, token: str | None = None, scheme: str = "Bearer") -> tuple[int, Any]:
    headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as http, http.get(base + path, headers=headers) as resp:
        if resp.content_type == "application/json":
            return resp.status, (await resp.json(), resp.headers.get("WWW-Authenticate"))
        return resp.status, await resp.text()


@pytest.fixture
async def started() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []

    async def start(config: HttpConfig, worker: _Worker | None = None) -> str:
        # The config's host is what the policy reads; the socket itself stays on loopback.
        runner = await serve(worker or _Worker(), config, host="127.0.0.1", port=0)
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_open_on_loopback_by_default(started: Any) -> None:
    base = await started(HttpConfig(port=0))
    status, text = await _get(base, "/metrics")
    assert status == 200 and "agent_worker_invocations_total" in text
    status, (body, _) = await _get(base, "/healthz")
    assert status == 200
    assert body == {"status": "ok", "connected": True, "activeRuns": 2, "sessions": 1}


async def test_closed_beyond_loopback_without_a_token(started: Any) -> None:
    """Beyond loopback with no token configured: /metrics is refused with a reason naming the fix,
    /healthz answers its status (and code) without the counts, and the start says so once."""
    with structlog.testing.capture_logs() as logs:
        base = await started(_beyond())
    assert [e["event"] for e in logs] == ["metrics_closed_beyond_loopback"]
    status, (body, _) = await _get(base, "/metrics")
    assert status == 403 and body["error"]["code"] == 40300
    assert "metrics_token_env" in body["error"]["message"]
    status, (body, _) = await _get(base, "/healthz", "anything")
    assert status == 200 and body == {"status": "ok"}
    status, (body, _) = await _get(base, "/healthz")
    assert body == {"status": "ok"}
    # Unhealthy: still the code and the state, still no counts.
    base = await started(_beyond(), _Worker(transport=_Transport(connected=False)))
    status, (body, _) = await _get(base, "/healthz")
    assert status == 503 and body == {"status": "running"}


async def test_a_metrics_token_is_required_and_never_logged(
    started: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_METRICS_TOKEN", TOKEN)
    with structlog.testing.capture_logs() as logs:
        base = await started(_beyond(metrics_token_env="TEST_METRICS_TOKEN"))
        wrong = [(None, "Bearer"), ("nope", "Bearer"), (TOKEN + "x", "Bearer"), (TOKEN, "Basic")]
        for token, scheme in wrong:
            status, (body, challenge) = await _get(base, "/metrics", token, scheme)
            assert status == 401 and body["error"] == {
                "code": 40101,
                "statusCode": 401,
                "message": "missing or invalid metrics bearer token",
            }
            assert challenge == "Bearer"
            status, (body, _) = await _get(base, "/healthz", token, scheme)
            assert status == 200 and body == {"status": "ok"}
        status, text = await _get(base, "/metrics", TOKEN)
        assert status == 200 and "agent_worker_invocations_total" in text
        status, (body, _) = await _get(base, "/healthz", TOKEN)
        assert body["activeRuns"] == 2 and body["sessions"] == 1
    assert TOKEN not in repr(logs)


async def test_a_configured_token_applies_on_loopback_too(started: Any) -> None:
    base = await started(HttpConfig(port=0, metrics_token=Secret(TOKEN)))
    status, _ = await _get(base, "/metrics")
    assert status == 401
    status, _ = await _get(base, "/metrics", TOKEN)
    assert status == 200
    # metrics_auth = "none" opens them beyond loopback, deliberately.
    base = await started(_beyond(metrics_auth="none"))
    status, (body, _) = await _get(base, "/healthz")
    assert status == 200 and body["activeRuns"] == 2


def test_contradictory_metrics_settings_refuse_to_start() -> None:
    with pytest.raises(ConfigError, match="metrics_auth = token needs a metrics token"):
        build_app(_Worker(), HttpConfig(metrics_auth="token", metrics_token_env="UNSET_METRICS_TOKEN_VAR"))
    with pytest.raises(ConfigError, match="contradicts"):
        build_app(_Worker(), HttpConfig(metrics_auth="none", metrics_token=Secret(TOKEN)))
    assert TOKEN not in repr(HttpConfig(metrics_token=Secret(TOKEN)))


def test_the_cli_sets_the_metrics_token_and_auth() -> None:
    cfg = apply_overrides(Config(), Overrides(http_metrics_token=TOKEN, http_metrics_auth="token"))
    token = cfg.http.resolved_metrics_token()
    assert token is not None and token.get() == TOKEN
    assert cfg.http.metrics_auth == "token" and not cfg.http.metrics_open()
    assert Config().http.metrics_open()  # the default: loopback, no token
    result = CliRunner().invoke(app, ["run", "--http-metrics-auth", "sometimes"])
    assert result.exit_code == 1
    assert "--http-metrics-auth must be auto, none or token" in result.output
    result = CliRunner().invoke(
        app, ["run", "--http-metrics-auth", "token"], env={"AGENT_WORKER_HTTP_METRICS_TOKEN": ""}
    )
    assert result.exit_code == 1
    assert "metrics_auth = token needs a metrics token" in result.output
