"""``OTEL_TRACES_EXPORTER=console agent-worker run`` as a user would set it: a real worker process on
its embedded server, an OpenAI-compatible model (a loopback replay server) that calls the built-in
``calculate`` tool, and the console exporter printing invoke_agent → chat → execute_tool → chat."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp

from agent_worker.server.testing import RemoteServer
from tests.providers.provider_replay import ReplayServer, Reply
from tests.runtime.runtime_support import ChatClient
from tests.worker.test_worker_cli import read_banner

SESSION = "conversations:otel"


def chunk(
    delta: dict[str, Any] | None, finish: str | None = None, usage: dict[str, int] | None = None
) -> str:
    body: dict[str, Any] = {
        "id": "chatcmpl-otel",
        "object": "chat.completion.chunk",
        "created": 1764600000,
        "model": "replayed-model",
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage
    return "data: " + json.dumps(body)


def tool_call_reply() -> Reply:
    call = {"index": 0, "id": "call_calc", "type": "function"}
    call["function"] = {"name": "calculate", "arguments": '{"expression": "6*7"}'}
    return Reply(
        events=[
            chunk({"role": "assistant", "content": None, "tool_calls": [call]}),
            chunk({}, "tool_calls"),
            chunk(None, usage={"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49}),
            "data: [DONE]",
        ]
    )


def text_reply() -> Reply:
    return Reply(
        events=[
            chunk({"role": "assistant", "content": "6*7 is "}),
            chunk({"content": "42."}),
            chunk({}, "stop"),
            chunk(None, usage={"prompt_tokens": 60, "completion_tokens": 4, "total_tokens": 64}),
            "data: [DONE]",
        ]
    )


def config(base_url: str) -> str:
    return f"""
[ably]
embedded_port = 0
[worker]
drain_timeout_s = 1.0
log_format = "json"
[provider]
name = "openai-compatible"
[providers.openai-compatible]
base_url = "{base_url}/v1"
model = "replayed-model"
[tools]
enabled = ["calculate"]
[prompts]
system = ""
"""


def console_objects(stdout: str) -> list[dict[str, Any]]:
    """The JSON objects the console exporters printed, skipping the banner's lines."""
    decoder = json.JSONDecoder()
    found, i = [], 0
    while (i := stdout.find("{", i)) != -1:
        try:
            obj, end = decoder.raw_decode(stdout, i)
        except json.JSONDecodeError:
            i += 1
            continue
        if isinstance(obj, dict):
            found.append(obj)
        i = end
    return found


def console_spans(stdout: str) -> list[dict[str, Any]]:
    return [o for o in console_objects(stdout) if "context" in o and "name" in o]


def console_metrics(stdout: str) -> dict[str, list[dict[str, Any]]]:
    """Metric name → its data points, from the console metric exporter's output."""
    out: dict[str, list[dict[str, Any]]] = {}
    for obj in console_objects(stdout):
        for rm in obj.get("resource_metrics", []):
            for sm in rm["scope_metrics"]:
                for m in sm["metrics"]:
                    out.setdefault(m["name"], []).extend(m["data"]["data_points"])
    return out


async def chat_once(banner: dict[str, str], text: str) -> tuple[str, str]:
    """As a user would: publish the prompt on the worker's embedded server, POST the invocation,
    wait for the run to end. Returns the run id and its text."""
    client = ChatClient(RemoteServer(banner["ably"], banner["key"]), SESSION, "user-abc")  # type: ignore[arg-type]
    await client.connect()
    try:
        sent = await client.send_text(text)
        async with (
            aiohttp.ClientSession() as http,
            http.post(banner["http"], json={"inputEventId": sent.event_id, "sessionName": SESSION}) as resp,
        ):
            assert resp.status == 200
            run_id = str((await resp.json())["runId"])
        end = await client.run_end_for(sent.codec_message_id, wait_s=30)
        assert end.transport_headers["run-reason"] == "complete"
        return run_id, client.run_text(run_id)
    finally:
        await client.close()


async def test_console_exporter_prints_the_run_trace(tmp_path: Path) -> None:
    replay = ReplayServer()
    await replay.start()
    replay.replies.extend([tool_call_reply(), text_reply()])
    path = tmp_path / "worker.toml"
    path.write_text(config(replay.base_url))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="console",
        OTEL_SERVICE_NAME="otel-cli-test",
        AGENT_WORKER_PROVIDER="",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent_worker.cli",
        "run",
        "--config",
        str(path),
        "--http",
        "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    try:
        banner = await read_banner(proc)
        run_id, text = await chat_once(banner, "What is 6*7?")
        assert text == "6*7 is 42."
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            stdout, _ = await proc.communicate()
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await replay.close()

    spans = console_spans(stdout.decode())
    by_name: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        by_name.setdefault(s["name"].split(" ")[0], []).append(s)
    (run,) = by_name["invoke_agent"]
    assert run["attributes"]["gen_ai.conversation.id"] == SESSION
    assert run["attributes"]["agent_worker.run.id"] == run_id
    assert run["attributes"]["agent_worker.client_id"] == "user-abc"
    assert run["resource"]["attributes"]["service.name"] == "otel-cli-test"
    run_span = run["context"]["span_id"]
    chats = sorted(by_name["chat"], key=lambda s: s["start_time"])
    (tool,) = by_name["execute_tool"]
    assert [c["parent_id"] for c in chats] == [run_span, run_span] and tool["parent_id"] == run_span
    assert chats[0]["name"] == "chat replayed-model"
    assert chats[0]["attributes"]["gen_ai.provider.name"] == "openai-compatible"
    assert chats[0]["attributes"]["gen_ai.usage.input_tokens"] == 40
    assert chats[0]["attributes"]["gen_ai.response.finish_reasons"] == ["tool-calls"]
    assert chats[1]["attributes"]["gen_ai.usage.output_tokens"] == 4
    assert tool["name"] == "execute_tool calculate"
    assert tool["attributes"]["gen_ai.tool.call.id"] == "call_calc"
    assert chats[0]["end_time"] <= tool["start_time"] <= tool["end_time"] <= chats[1]["start_time"]
    assert {s["context"]["trace_id"] for s in (run, tool, *chats)} == {run["context"]["trace_id"]}
    # The metrics are flushed at shutdown too: two model calls' tokens, one run's duration.
    points = console_metrics(stdout.decode())
    usage = {p["attributes"]["gen_ai.token.type"]: p for p in points["gen_ai.client.token.usage"]}
    assert usage["input"]["sum"] == 100 and usage["output"]["sum"] == 13
    ops = sorted(p["attributes"]["gen_ai.operation.name"] for p in points["gen_ai.client.operation.duration"])
    assert ops == ["chat", "invoke_agent"]
