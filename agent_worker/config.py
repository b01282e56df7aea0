"""Configuration: TOML → frozen dataclasses, validated at startup.

Unknown keys fail loudly (a misspelt ``max_concurent_runs`` must not silently fall back to the
default). Secrets (the Ably key, the HTTP bearer token) are :class:`Secret` values that never show in
``repr``; config files should name an environment variable (``key_env``) rather than hold the key.
Command-line flags and their ``envvar=`` overrides are applied on top with :func:`dataclasses.replace`
by the CLI.

The ``[provider]``, ``[providers.*]``, ``[tools]`` and ``[prompts]`` sections belong to the provider
layer; they are kept here as plain mappings and validated by ``providers.registry``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from agent_worker.errors import ConfigError

__all__ = [
    "AblyConfig",
    "Config",
    "HttpConfig",
    "Secret",
    "WorkerConfig",
    "load_config",
    "parse_host_port",
]


class Secret:
    """A string that never shows itself in ``repr``/``str`` (so never in logs or tracebacks)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True, slots=True)
class AblyConfig:
    """Where the worker's Ably connection goes. No endpoint and no key ⇒ the embedded server."""

    endpoint: str | None = None
    """``host`` or ``host:port`` of an Ably-compatible service; ``None`` = Ably's default (with a key)."""
    key: Secret | None = None
    key_env: str | None = None
    """Read the key from this environment variable (preferred over ``key`` in files)."""
    tls: bool | None = None
    """Defaults to ``True`` for Ably, ``False`` for a ``127.0.0.1``/``localhost`` endpoint."""
    client_id: str = "agent-worker"
    """The worker's own clientId: its presence identity on each session."""
    use_binary_protocol: bool = True
    connections: int = 1
    """Realtime connections; sessions are spread over them (each stays under 50 messages/s)."""
    history_page_size: int = 100
    embedded_port: int = 8080
    """Port of the embedded server started when no endpoint and no key are configured (0 = any free
    port; a busy port falls back to a free one)."""

    def resolved_key(self) -> Secret | None:
        if self.key:
            return self.key
        if self.key_env:
            value = os.environ.get(self.key_env)
            if value:
                return Secret(value)
        return None

    @property
    def embedded(self) -> bool:
        return self.endpoint is None and self.resolved_key() is None


@dataclass(frozen=True, slots=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8787
    path: str = "/api/chat"
    """Where the official ChatTransport POSTs invocations (its default ``api``)."""
    bearer_token: Secret | None = None
    bearer_token_env: str | None = None
    max_body_bytes: int = 64 * 1024
    cors_origins: tuple[str, ...] = ()
    """Origins allowed to POST from a browser (``"*"`` for any); empty = no CORS headers."""
    dev_token_endpoint: bool = False
    """Serve ``GET /api/auth/token?clientId=&ttl=`` (JWTs signed with the worker's key) for local
    development; anyone who can reach it gets a token, so it is off by default."""
    dev_token_capability: str | None = None
    """JSON capability of those tokens (default: publish/subscribe/history/presence on everything)."""
    enabled: bool = True

    def resolved_token(self) -> Secret | None:
        if self.bearer_token:
            return self.bearer_token
        if self.bearer_token_env:
            value = os.environ.get(self.bearer_token_env)
            if value:
                return Secret(value)
        return None


CancelPolicy = Literal["owner", "any"]


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    max_concurrent_runs: int = 32
    """Runs in flight per worker; a full worker answers 429 with ``Retry-After``."""
    retry_after_s: int = 1
    drain_timeout_s: float = 30.0
    """On SIGTERM, how long in-flight runs may finish before they are cancelled."""
    trigger_wait_s: float = 5.0
    """After history is exhausted, how long to wait for the trigger to arrive live (then 104010)."""
    history_max_pages: int = 20
    """History pages searched for the trigger (the JS ``pageUntilLocated`` bound)."""
    history_max_branch_pages: int = 10_000
    """Safety net for rebuilding a conversation: pages read until the branch reaches its root."""
    coalesce_window_ms: float = 40.0
    """Deltas of one stream are merged into one append per window (0 = one append per delta)."""
    max_messages_per_second: float = 45.0
    """Outbound messages per connection; Ably's inbound limit is 50/s per connection."""
    burst: int = 10
    sessions: tuple[str, ...] = ("*",)
    """Glob patterns of session (channel) names this worker serves; others are refused with 404."""
    watch_channels: tuple[str, ...] = ()
    """Channel-watch mode: sessions attached at startup; a fresh user ``ai-input`` starts a run."""
    cancel_policy: CancelPolicy = "owner"
    """``owner``: only the run owner's verified clientId or an admin may cancel; ``any``: the JS default."""
    admin_client_ids: tuple[str, ...] = ()
    max_input_bytes: int = 64 * 1024
    """Trigger ``ai-input`` payloads above this are refused (the run ends with an error)."""
    max_model_calls: int = 8
    """Server-side tool loop bound per run."""
    presence: bool = True
    session_idle_s: float = 300.0
    """Detach a session's channel after it has had no runs for this long (watched channels stay)."""
    log_format: Literal["console", "json"] = "console"
    log_level: str = "info"
    gc_tuning: bool = True
    """After start-up, freeze the start-up objects out of CPython's full collections (p99 latency)."""


@dataclass(frozen=True, slots=True)
class Config:
    ably: AblyConfig = field(default_factory=AblyConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    provider: Mapping[str, Any] = field(default_factory=dict)
    providers: Mapping[str, Any] = field(default_factory=dict)
    tools: Mapping[str, Any] = field(default_factory=dict)
    prompts: Mapping[str, Any] = field(default_factory=dict)


T = TypeVar("T")

_SECRET_FIELDS = {"key", "bearer_token"}


def _build(cls: type[T], section: str, raw: Any) -> T:
    if not isinstance(raw, Mapping):
        msg = f"config section [{section}] must be a table"
        raise ConfigError(msg)
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        msg = f"unknown key(s) {', '.join(unknown)} in [{section}]; allowed: {', '.join(sorted(known))}"
        raise ConfigError(msg)
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name in _SECRET_FIELDS:
            if not isinstance(value, str):
                msg = f"[{section}] {name} must be a string"
                raise ConfigError(msg)
            values[name] = Secret(value)
            continue
        values[name] = _coerce(section, name, known[name].type, value)
    return cls(**values)


def _coerce(section: str, name: str, annotation: Any, value: Any) -> Any:
    text = str(annotation)
    if "tuple" in text:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            msg = f"[{section}] {name} must be a list of strings"
            raise ConfigError(msg)
        return tuple(value)
    if text.startswith("Literal") or "CancelPolicy" in text:
        allowed = get_args(CancelPolicy) if "CancelPolicy" in text else ("console", "json")
        if value not in allowed:
            msg = f"[{section}] {name} must be one of {', '.join(allowed)}"
            raise ConfigError(msg)
        return value
    expected: tuple[type, ...]
    if "bool" in text:
        expected = (bool,)
    elif "float" in text:
        expected = (int, float)
    elif "int" in text:
        expected = (int,)
    else:
        expected = (str,)
    ok = not (isinstance(value, bool) and bool not in expected) and isinstance(value, expected)
    if not ok:
        msg = f"[{section}] {name} has the wrong type ({type(value).__name__}); expected {text}"
        raise ConfigError(msg)
    return float(value) if expected == (int, float) else value


def config_from_mapping(raw: Mapping[str, Any]) -> Config:
    allowed = {"ably", "http", "worker", "provider", "providers", "tools", "prompts"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        msg = f"unknown config section(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        raise ConfigError(msg)
    cfg = Config(
        ably=_build(AblyConfig, "ably", raw.get("ably", {})),
        http=_build(HttpConfig, "http", raw.get("http", {})),
        worker=_build(WorkerConfig, "worker", raw.get("worker", {})),
        provider=dict(raw.get("provider", {})),
        providers=dict(raw.get("providers", {})),
        tools=dict(raw.get("tools", {})),
        prompts=dict(raw.get("prompts", {})),
    )
    _validate(cfg)
    return cfg


def _validate(cfg: Config) -> None:
    w = cfg.worker
    if w.max_concurrent_runs < 1:
        msg = "[worker] max_concurrent_runs must be at least 1"
        raise ConfigError(msg)
    if w.max_messages_per_second <= 0 or w.burst < 1:
        msg = "[worker] max_messages_per_second must be positive and burst at least 1"
        raise ConfigError(msg)
    if w.coalesce_window_ms < 0:
        msg = "[worker] coalesce_window_ms must not be negative"
        raise ConfigError(msg)
    if cfg.ably.connections < 1:
        msg = "[ably] connections must be at least 1"
        raise ConfigError(msg)
    if not cfg.http.path.startswith("/"):
        msg = "[http] path must start with '/'"
        raise ConfigError(msg)


def load_config(path: str | Path | None) -> Config:
    """Load a TOML file (``None`` = all defaults)."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        msg = f"config file {p} not found; pass --config with an existing file or omit it"
        raise ConfigError(msg) from exc
    except tomllib.TOMLDecodeError as exc:
        msg = f"config file {p} is not valid TOML: {exc}"
        raise ConfigError(msg) from exc
    return config_from_mapping(raw)


def parse_host_port(value: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``"HOST:PORT"`` or ``":PORT"`` or ``"PORT"`` → ``(host, port)``."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "", value
    try:
        number = int(port)
    except ValueError as exc:
        msg = f"expected HOST:PORT, got {value!r}"
        raise ConfigError(msg) from exc
    if not 0 <= number <= 65535:
        msg = f"port out of range in {value!r}"
        raise ConfigError(msg)
    return host or default_host, number
