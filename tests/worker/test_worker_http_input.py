"""What ``POST /api/chat`` accepts before anything is invoked: a body declared JSON (a web page may
POST text/plain or a form to any origin without a CORS preflight, and on loopback no credential is
needed by default), an event id of bounded size; refusals logged a few lines a second, not one per
POST; the web client's bundle compressed once; and a port that cannot be bound or a config file
that cannot be read are clear errors, not tracebacks."""

from __future__ import annotations

import asyncio
import gzip
import socket
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import structlog
from typer.testing import CliRunner

from agent_worker.cli import app
from agent_worker.config import HttpConfig, load_config
from agent_worker.errors import ConfigError
from agent_worker.web import WebSettings, static_file
from agent_worker.worker.admission import Admission, Invocation, InvocationRefused
from agent_worker.worker.http import LOG_BUDGET_KEY, WORKER_KEY, serve
from tests.worker.test_worker_write_bound import _Worker as _HealthWorker

JSON = {"Content-Type": "application/json"}
BODY = b'{"sessionName": "conversations:a", "inputEventId": "e1"}'


@dataclass
class _Worker(_HealthWorker):
    """Records what reaches ``invoke``."""

    invoked: list[tuple[object, object]] = field(default_factory=list)

    async def invoke(
        self, session_name: object, input_event_id: object, *, caller_client_id: str | None = None
    ) -> Invocation:
        self.invoked.append((session_name, input_event_id))
        return Invocation("run-1", "inv-1", str(session_name))


async def test_only_a_json_body_is_invoked() -> None:
    worker = _Worker()
    runner = await serve(worker, HttpConfig(port=0), host="127.0.0.1")
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/api/chat"
    try:
        async with aiohttp.ClientSession() as http:
            refused = [
                {"Content-Type": "text/plain;charset=UTF-8", "Origin": "https://evil.example"},  # no-cors
                {"Content-Type": "application/x-www-form-urlencoded"},  # a form, curl -d
                {"Content-Type": "multipart/form-data; boundary=x"},
                {},  # none declared (aiohttp reads it as application/octet-stream)
            ]
            for headers in refused:
                async with http.post(url, data=BODY, headers=headers) as resp:
                    assert resp.status == 415, headers
                    error = (await resp.json())["error"]
                    assert error["code"] == 41500 and "application/json" in error["message"]
            assert worker.invoked == []
            for kind in ("application/json", "application/json; charset=utf-8", "application/vnd.x+json"):
                async with http.post(url, data=BODY, headers={"Content-Type": kind}) as resp:
                    assert resp.status == 200, kind
                    assert await resp.json() == {"runId": "run-1", "invocationId": "inv-1"}
        assert worker.invoked == 3 * [("conversations:a", "e1")]
    finally:
        await runner.cleanup()


BAD = ["e1\nrun_refused forged=1", "e1\r", "e1\x00", "\x1b[2Je1", "e1\t", "e1\x7f"]


@pytest.mark.parametrize("event_id", ["e" * 513, *BAD])
def test_an_event_id_is_bounded_like_a_session_name(event_id: str) -> None:
    """Before, any string up to the body bound: kept by the invocation log (10 000 for 24 h) and
    printed in log lines, line breaks and terminal escapes included."""
    with pytest.raises(InvocationRefused, match="inputEventId is not a valid event id") as refused:
        Admission.event_id(event_id)
    assert refused.value.status_code == 400
    assert Admission.event_id("e" * 512) == "e" * 512


@pytest.mark.parametrize("name", BAD)
def test_a_session_name_with_control_characters_is_refused(name: str) -> None:
    """Before, only line breaks and NUL were refused: an escape sequence reached the console log."""
    admission = Admission(("*",), max_runs=1, retry_after_s=1)
    with pytest.raises(InvocationRefused, match="sessionName is not a valid channel name"):
        admission.session_name("conversations:" + name)
    assert admission.session_name("conversations:é ü") == "conversations:é ü"


async def test_a_port_that_cannot_be_bound_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}: .*--http HOST:PORT"):
            await serve(_Worker(), HttpConfig(port=port), host="127.0.0.1")


async def test_a_flood_of_refused_posts_costs_a_few_log_lines() -> None:
    """Each refused POST logged a line (a bad body, a wrong token, a full worker, an outage): a
    flood of them was a flood of log lines. Now a few per event per second, the next line after some
    were held back saying how many; the metrics still count each."""
    now = [0.0]
    runner = await serve(_Worker(), HttpConfig(port=0), host="127.0.0.1")
    budget = runner.app[LOG_BUDGET_KEY]
    assert (budget.per_window, budget.window_s) == (10, 1.0)  # the default: 10 lines a second
    budget.per_window, budget.clock = 3, lambda: now[0]
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/api/chat"
    try:
        async with aiohttp.ClientSession() as http:
            with structlog.testing.capture_logs() as logs:
                for _ in range(50):
                    async with http.post(url, data=b"{not json", headers=JSON) as resp:
                        assert resp.status == 400
                now[0] = 1.0  # the next window
                async with http.post(url, data=b"{not json", headers=JSON) as resp:
                    assert resp.status == 400
        refused = [e for e in logs if e["event"] == "invocation_refused"]
        assert [e.get("suppressed", 0) for e in refused] == [0, 0, 0, 47]
        metrics = runner.app[WORKER_KEY].metrics.render().decode()
        assert 'agent_worker_invocations_total{result="refused"} 51.0' in metrics
    finally:
        await runner.cleanup()


async def test_the_web_client_bundle_is_compressed_once_for_a_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each request that came before the first compression was done started its own (35 ms of
    CPU for the 1.1 MB bundle): 40 at once cost 40. Now they share one."""
    compressions: list[int] = []
    real = gzip.compress

    def counted(data: bytes, compresslevel: int = 9, *, mtime: float | None = None) -> bytes:
        compressions.append(len(data))
        return real(data, compresslevel, mtime=mtime)

    monkeypatch.setattr(gzip, "compress", counted)
    runner = await serve(
        _Worker(), HttpConfig(port=0), host="127.0.0.1", web_client=WebSettings(ably_host=None)
    )
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/app.js"
    try:
        async with aiohttp.ClientSession() as http:

            async def fetch() -> bytes:
                async with http.get(url, headers={"Accept-Encoding": "gzip"}) as resp:
                    assert resp.headers["Content-Encoding"] == "gzip"
                    return await resp.read()

            bodies = await asyncio.gather(*(fetch() for _ in range(40)))
        assert {len(b) for b in bodies} == {len(static_file("app.js"))}  # (aiohttp decompresses)
        assert compressions == [len(static_file("app.js"))]
    finally:
        await runner.cleanup()


def test_an_unreadable_config_file_is_a_clear_error(tmp_path: Path) -> None:
    """Not UTF-8, or a directory: a traceback (UnicodeDecodeError, IsADirectoryError) before."""
    latin = tmp_path / "latin1.toml"
    latin.write_bytes(b'[worker]\nadmin_client_ids = ["J\xfcrgen"]\n')
    with pytest.raises(ConfigError, match=r"latin1.toml is not UTF-8 text \(TOML is\)"):
        load_config(latin)
    with pytest.raises(ConfigError, match=f"cannot read config file {tmp_path}: Is a directory"):
        load_config(tmp_path)
    result = CliRunner().invoke(app, ["run", "--config", str(latin)])
    assert result.exit_code == 1 and "is not UTF-8 text" in result.output
