"""Run a Node script from pytest and get its structured result.

Protocol (implemented for ably-js scripts by ``tests/js/server/lib.mjs``; any script can follow it):

* Configuration goes in as environment variables (``env``, merged over ``os.environ``); the
  convention for JSON configuration is one ``AW_NODE_CONFIG`` variable (see :func:`node_config`),
  which keeps keys and tokens out of argv and out of failure messages.
* The script prints ``@@result <json>`` once, at the end. ``{"ok": false, "error": ...}`` (or a
  missing result, or a non-zero exit) raises :class:`NodeScriptError`; otherwise the decoded
  object is returned.
* The script may print ``@@ctl <json>`` requests; ``on_control`` receives the decoded request and
  its (JSON-serialisable) return value is written back as one line on the script's stdin. This lets
  a script ask the test to act on an in-process server (e.g. drop connections) mid-scenario.
* Anything else on stdout/stderr is kept only for error messages.

Use :func:`run_node_async` when the server under test runs on the test's own event loop (the usual
case with an in-process ``EmbeddedServer``); :func:`run_node` is a blocking variant for servers
running in another thread or process.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

JS_ROOT = Path(__file__).resolve().parent / "js"
RESULT_TAG = "@@result "
CONTROL_TAG = "@@ctl "
_TAIL = 4000
_LINE_LIMIT = 64 * 1024 * 1024  # results can be one long JSON line

ControlHandler = Callable[[dict[str, Any]], Any]


class NodeScriptError(AssertionError):
    """The script failed, timed out, or printed no result; the message says which and why."""


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        msg = "node is not on PATH (Node 20+ is required; run `make setup`)"
        raise NodeScriptError(msg)
    return node


def node_config(**values: Any) -> dict[str, str]:
    """The ``env`` mapping carrying ``values`` as the ``AW_NODE_CONFIG`` JSON document."""
    return {"AW_NODE_CONFIG": json.dumps(values)}


def _environment(env: Mapping[str, str] | None) -> dict[str, str]:
    merged = dict(os.environ)
    merged.update(env or {})
    return merged


class _Transcript:
    """Collects a script's output; knows its result and how to describe a failure."""

    def __init__(self, script: Path) -> None:
        self.script = script
        self.stdout: list[str] = []
        self.stderr = ""
        self.result: dict[str, Any] | None = None

    def control_request(self, line: str) -> dict[str, Any] | None:
        """Records one stdout line; returns it decoded when it is a control request."""
        self.stdout.append(line)
        try:
            if line.startswith(RESULT_TAG):
                self.result = json.loads(line[len(RESULT_TAG) :])
            elif line.startswith(CONTROL_TAG):
                request: dict[str, Any] = json.loads(line[len(CONTROL_TAG) :])
                return request
        except json.JSONDecodeError as exc:
            why = f"printed an undecodable {line[:8]!r} line ({exc})"
            raise self.failure(why) from None
        return None

    def failure(self, why: str) -> NodeScriptError:
        out = "\n".join(line for line in self.stdout if not line.startswith(RESULT_TAG))
        return NodeScriptError(
            f"{self.script.name}: {why}\n--- stdout (tail) ---\n{out[-_TAIL:]}\n"
            f"--- stderr (tail) ---\n{self.stderr[-_TAIL:]}"
        )

    def finish(self, returncode: int | None) -> dict[str, Any]:
        result = self.result
        if result is None:
            why = f"exited with {returncode} without printing a result"
            raise self.failure(why)
        if not result.get("ok", False):
            why = f"failed in step {result.get('step')!r}: {result.get('error')}\n{result.get('stack') or ''}"
            raise self.failure(why)
        if returncode != 0:
            why = f"printed a result but exited with {returncode}"
            raise self.failure(why)
        return result


async def run_node_async(
    script: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 90.0,  # noqa: ASYNC109 - bounds the child process, mirrors run_node
    on_control: ControlHandler | None = None,
) -> dict[str, Any]:
    """Runs ``node script *args`` without blocking the event loop; returns the ``@@result`` object.

    ``on_control`` may be a plain or an async function. The process is killed after ``timeout``
    seconds (scripts should carry a shorter timeout of their own, which names the stuck step).
    """
    transcript = _Transcript(script)
    proc = await asyncio.create_subprocess_exec(
        node_binary(),
        str(script),
        *args,
        cwd=JS_ROOT,
        env=_environment(env),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        limit=_LINE_LIMIT,
    )
    assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None

    async def pump_stdout() -> None:
        assert proc.stdout is not None and proc.stdin is not None
        async for raw in proc.stdout:
            request = transcript.control_request(raw.decode(errors="replace").rstrip("\n"))
            if request is None:
                continue
            if on_control is None:
                msg = f"control request {request} but no on_control handler was given"
                raise transcript.failure(msg)
            answer = on_control(request)
            if inspect.isawaitable(answer):
                answer = await answer
            proc.stdin.write((json.dumps(answer) + "\n").encode())
            await proc.stdin.drain()

    async def pump_stderr() -> None:
        assert proc.stderr is not None
        transcript.stderr = (await proc.stderr.read()).decode(errors="replace")

    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(pump_stdout(), pump_stderr())
            returncode = await proc.wait()
    except TimeoutError:
        why = f"killed after {timeout} s"
        raise transcript.failure(why) from None
    finally:
        if proc.returncode is None:
            proc.kill()
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
    return transcript.finish(returncode)


def run_node(
    script: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 90.0,
    on_control: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Blocking twin of :func:`run_node_async` (``on_control`` must be a plain function here).

    Do not call it from a coroutine whose event loop also runs the server the script talks to: the
    loop would be blocked for the script's whole run.
    """
    transcript = _Transcript(script)
    proc = subprocess.Popen(
        [node_binary(), str(script), *args],
        cwd=JS_ROOT,
        env=_environment(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None
    stderr_chunks: list[str] = []
    reader = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        for raw in proc.stdout:
            request = transcript.control_request(raw.rstrip("\n"))
            if request is None:
                continue
            if on_control is None:
                msg = f"control request {request} but no on_control handler was given"
                raise transcript.failure(msg)
            proc.stdin.write(json.dumps(on_control(request)) + "\n")
            proc.stdin.flush()
        returncode = proc.wait()
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
        transcript.stderr = "".join(stderr_chunks)
    if returncode < 0 and transcript.result is None:
        why = f"killed (signal {-returncode}); timeout was {timeout} s"
        raise transcript.failure(why)
    return transcript.finish(returncode)
