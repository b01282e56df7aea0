"""DNS rebinding: bound to loopback, the worker's HTTP API answers only requests whose ``Host`` is a
loopback name, an IP address or one of ``[http] allowed_hosts`` — a web page that reached the port
through a name it controls (``evil.example`` rebound to 127.0.0.1) gets 421 / 42100, before any
handler (invocation, dev token, metrics) runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web

from agent_worker.config import Config, HttpConfig
from agent_worker.hostcheck import HostAllowList, is_loopback_host
from agent_worker.worker.admission import Invocation
from agent_worker.worker.http import serve
from agent_worker.worker.main import Overrides, apply_overrides
from tests.worker.test_worker_metrics_auth import _Worker as _HealthWorker

KEY = "app.key:secret-long-enough-for-hs256-xxxxxxxxxxxx"


@dataclass
class _Worker(_HealthWorker):
    """The health endpoints' worker, which also takes invocations."""

    active_runs: tuple[str, ...] = ()
    sessions: tuple[str, ...] = ()
    invoked: list[object] = field(default_factory=list)

    async def invoke(
        self, session_name: object, input_event_id: object, *, caller_client_id: str | None = None
    ) -> Invocation:
        self.invoked.append(session_name)
        return Invocation(run_id="r", invocation_id="i", session_name=str(session_name))


@pytest.fixture
async def started() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []

    async def start(config: HttpConfig, worker: _Worker | None = None, host: str = "127.0.0.1") -> str:
        runner = await serve(worker or _Worker(), config, host=host, port=0, token_key=KEY)
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def _get(base: str, path: str, host: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(base + path, headers={"Host": host}) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body


async def test_loopback_names_and_ip_addresses_are_answered(started: Any) -> None:
    base = await started(HttpConfig(port=0))
    port = base.rsplit(":", 1)[1]
    for host in (
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        "localhost",
        f"LOCALHOST.:{port}",
        f"app.localhost:{port}",
        f"[::1]:{port}",
        "192.168.1.20:8787",  # an IP address cannot be rebound: a page there is that host's own
    ):
        status, _ = await _get(base, "/healthz", host)
        assert status == 200, host


async def test_another_host_is_refused_with_421_before_any_handler(started: Any) -> None:
    worker = _Worker()
    base = await started(HttpConfig(port=0, dev_token_endpoint=True), worker)
    evil = "evil.example:8787"
    with structlog.testing.capture_logs() as logs:
        status, body = await _get(base, "/api/auth/token?clientId=me", evil)
        assert status == 421
        assert body["error"]["code"] == 42100 and body["error"]["statusCode"] == 421
        assert "evil.example:8787" in body["error"]["message"]
        assert "[http] allowed_hosts" in body["error"]["message"]
        for path in ("/metrics", "/healthz", "/"):
            assert (await _get(base, path, evil))[0] == 421
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                base + "/api/chat", json={"sessionName": "s", "inputEventId": "e"}, headers={"Host": evil}
            ) as resp,
        ):
            assert resp.status == 421
    assert worker.invoked == [], "the invocation never reached the worker"
    refused = [e for e in logs if e["event"] == "http_host_refused"]
    assert refused and refused[0]["host"] == evil
    # Names that only look local are other hosts.
    for host in ("127.0.0.1.evil.example", "localhost.evil.example", "evil.example:8787:80", "", "[::1"):
        assert (await _get(base, "/healthz", host))[0] == 421, host


async def test_allowed_hosts_add_names_and_suffixes(started: Any) -> None:
    base = await started(HttpConfig(port=0, allowed_hosts=("worker.test", "*.corp.test")))
    assert (await _get(base, "/healthz", "worker.test:8787"))[0] == 200
    assert (await _get(base, "/healthz", "a.b.corp.test"))[0] == 200
    assert (await _get(base, "/healthz", "corp.test"))[0] == 421
    assert (await _get(base, "/healthz", "localhost"))[0] == 200, "loopback names stay answered"
    base = await started(HttpConfig(port=0, allowed_hosts=("*",)))
    assert (await _get(base, "/healthz", "anything.example"))[0] == 200


async def test_bound_beyond_loopback_any_host_is_answered_by_default(started: Any) -> None:
    base = await started(HttpConfig(port=0, auth="none", metrics_auth="none"), host="0.0.0.0")
    assert (await _get(base, "/healthz", "worker.example.com"))[0] == 200
    base = await started(
        HttpConfig(port=0, auth="none", metrics_auth="none", allowed_hosts=("worker.example.com",)),
        host="0.0.0.0",
    )
    assert (await _get(base, "/healthz", "worker.example.com"))[0] == 200
    assert (await _get(base, "/healthz", "other.example.com"))[0] == 421, "a list narrows it"


def test_the_flag_adds_to_the_config_file() -> None:
    cfg = Config(http=HttpConfig(allowed_hosts=("a.test",)))
    out = apply_overrides(cfg, Overrides(http_allowed_hosts=("b.test", "a.test")))
    assert out.http.allowed_hosts == ("a.test", "b.test")


def test_the_allow_list_itself() -> None:
    assert is_loopback_host("127.0.0.1") and is_loopback_host("::1") and is_loopback_host("127.0.0.2")
    assert is_loopback_host("localhost") and not is_loopback_host("0.0.0.0")
    hosts = HostAllowList((), "127.0.0.1")
    assert hosts.allows(None), "no Host (HTTP/1.0): not a browser"
    assert not hosts.any
    # The cache is bounded: a client making up Host values cannot grow it.
    for i in range(5000):
        assert not hosts.allows(f"h{i}.example")
    assert len(hosts._cache) <= HostAllowList._CACHE_MAX
    assert HostAllowList((), "worker.internal").any
    named = HostAllowList((), "my-box.lan")  # bound by a name, beyond loopback: any
    assert named.allows("other.example")
    assert HostAllowList(("x.test",), "my-box.lan").allows("my-box.lan:80"), "the bound host is answered"
    # A refused Host is shown escaped in the message (it is the client's text).
    assert "\\x1b" in hosts.refusal("evil\x1b[31m", "[http] allowed_hosts")
