"""Configuration: TOML → frozen, strict pydantic models, validated at startup.

Unknown keys fail loudly with the key's path (a misspelt ``[worker] max_concurent_runs`` must not
silently fall back to the default), as do wrong types (strict: ``"10"`` is not a number). Secrets
(the Ably key, the HTTP bearer token) are :class:`Secret` values that never show in ``repr``;
config files should name an environment variable (``key_env``) rather than hold the key.
Command-line flags and their ``envvar=`` overrides are applied on top with ``model_copy`` by the CLI.

``[provider]``, ``[tools]`` and ``[prompts]`` are typed here too; the options under
``[providers.<name>]`` belong to that provider and are checked by its ``from_options``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from agent_worker.errors import ConfigError

__all__ = [
    "AblyConfig",
    "Config",
    "EngineConfig",
    "HttpConfig",
    "PromptsConfig",
    "ProviderConfig",
    "Secret",
    "ToolsConfig",
    "WorkerConfig",
    "config_error",
    "config_from_mapping",
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


def _to_secret(value: Any) -> Any:
    return Secret(value) if isinstance(value, str) else value


def _to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


SecretField = Annotated[Secret | None, BeforeValidator(_to_secret)]
StrTuple = Annotated[tuple[str, ...], BeforeValidator(_to_tuple)]


class _Section(BaseModel):
    """Frozen, strict, and no unknown keys."""

    # allow_inf_nan=False: a TOML ``inf`` / ``nan`` (or one passed in code) is refused by name, not
    # taken as "no bound" (an infinite timeout) or compared false everywhere (nan).
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, arbitrary_types_allowed=True, allow_inf_nan=False
    )


class AblyConfig(_Section):
    """Where the worker's Ably connection goes. No endpoint and no key ⇒ the embedded server."""

    endpoint: str | None = None
    """``host`` or ``host:port`` of an Ably-compatible service; ``None`` = Ably's default (with a key)."""
    key: SecretField = None
    key_env: str | None = None
    """Read the key from this environment variable (preferred over ``key`` in files)."""
    tls: bool | None = None
    """Defaults to ``True`` for Ably, ``False`` for a ``127.0.0.1``/``localhost`` endpoint."""
    client_id: str = "agent-worker"
    """The worker's own clientId: its presence identity on each session."""
    use_binary_protocol: bool = True
    connections: Annotated[int, Field(ge=1)] = 1
    """Realtime connections kept open at all times; sessions are placed on them by load."""
    max_connections: Annotated[int, Field(ge=1)] = 32
    """The pool opens more connections, up to this many, when the open ones are loaded (each stays
    under Ably's 50 messages/s inbound limit); idle ones close again."""
    spare_clients: Annotated[int, Field(ge=0)] | None = None
    """SDK clients built ahead (~0.8 MB each, once the worker has run 5 s) so the pool grows in a
    burst without building them then; unset = enough to reach ``max_connections``, 0 = none."""
    warm_connections: Annotated[int, Field(ge=0)] = 24
    """Connections kept open ahead of need with no session on them (opened one at a time while the
    worker is quiet, once it has run 5 s), so a burst of simultaneous starts is placed at once
    instead of waiting for new connections; 0 = open connections only when sessions need them."""
    append_rollup_window_ms: Annotated[int, Field(ge=0, le=500)] | None = None
    """``appendRollupWindow`` transport parameter (Ably's server-side append rollup, 0-500 ms);
    unset = the service's default (40 ms)."""
    echo_messages: bool = False
    """Whether the worker's connections receive their own messages back (Ably's ``echoMessages``).
    Off: each session folds what it published from the ACKs instead (transport/local.py), which
    spares the worker a decode per own message and Ably a billed message per own append."""
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


class HttpConfig(_Section):
    host: str = "127.0.0.1"
    port: int = 8787
    path: Annotated[str, Field(pattern="^/")] = "/api/chat"
    """Where the official ChatTransport POSTs invocations (its default ``api``)."""
    bearer_token: SecretField = None
    bearer_token_env: str | None = None
    max_body_bytes: int = 64 * 1024
    body_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    """How long a POST's body may take to arrive once its headers have: a caller that stops sending
    mid-body is answered 408 (40800) and its connection closed, rather than held open for ever."""
    idle_timeout_s: Annotated[float, Field(gt=0)] = 75.0
    """How long a connection may go without a complete request: from its opening (so a caller that
    never finishes its request line or headers is closed after this), and between requests on a
    kept-alive one (aiohttp's ``keepalive_timeout``, 3630 s by default). Above the usual 60 s idle
    timeout of proxies and load balancers; behind one that keeps idle upstreams longer, raise it
    past that."""
    write_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    """How long a connection's answer may drain less than 16 KiB — its buffer full behind a caller
    that does not read (the 1 MB web client, say) or reads a few bytes at a time, or a close waiting
    on bytes never read — before the connection is reset and its buffers released (aiohttp has no
    write timeout). A floor on the send rate, not a bound per answer: one that keeps draining at
    least 16 KiB per bound is not cut, however long it takes."""
    max_connections: Annotated[int, Field(ge=1)] = 1024
    """Connections the port holds at once (aiohttp has no bound but the file descriptor limit):
    past it a new one is answered ``503`` (50300, ``Retry-After: 1``) and closed, while those in are
    served as before. Far above ``max_concurrent_runs`` + ``max_pending_invocations``."""
    cors_origins: StrTuple = ()
    """Origins allowed to POST from a browser (``"*"`` for any); empty = no CORS headers."""
    allowed_hosts: StrTuple = ()
    """``Host`` names answered besides loopback names and IP addresses (``"worker.example.com"``,
    ``"*.example.com"``, ``"*"`` for any): bound to loopback, a request naming another host is
    refused 421 (42100), so a web page cannot reach the worker through a DNS-rebinding name. Empty
    = that default on loopback, any host when bound beyond it (``--http-allowed-host``)."""
    dev_token_endpoint: bool | None = None
    """Serve ``GET /api/auth/token?clientId=&ttl=`` (JWTs signed with the worker's key) for local
    development; anyone who can reach it gets a token, so unset it is on only with the embedded
    server (the offline default) and off when the worker is pointed at Ably."""
    dev_token_capability: str | None = None
    """JSON capability of those tokens (default: publish/subscribe/history/presence on everything)."""
    enabled: bool = True
    web: bool | None = None
    """Serve the browser client at ``GET /`` (:mod:`agent_worker.web`); unset it is on with the
    embedded server and off when the worker is pointed at Ably."""
    auth: Literal["auto", "none", "ably-token"] = "auto"
    """Who may invoke: ``ably-token`` = a caller presenting ``Authorization: Bearer <Ably JWT>``
    signed with the worker's key, whose capability covers the session and whose clientId published
    the input; ``none`` = anyone who can reach the port; ``auto`` (default) = ``none`` on loopback,
    ``ably-token`` when bound beyond it. A configured ``bearer_token`` replaces either."""
    metrics_auth: Literal["auto", "none", "token"] = "auto"
    """Who may read ``/metrics`` and ``/healthz``'s details (run and session counts): ``token`` = a
    caller presenting ``Authorization: Bearer <metrics token>`` (others get 401/40101; the worker
    refuses to start without a token); ``none`` = anyone who can reach the port; ``auto`` (default)
    = ``none`` on loopback, ``token`` beyond it — and with no token configured, closed beyond
    loopback (403/40300). ``/healthz``'s status code and ``status`` are answered to anyone either
    way (load balancers' health checks send no credentials). A configured token implies ``token``."""
    metrics_token: SecretField = None
    metrics_token_env: str | None = None
    """Read the metrics bearer token from this environment variable (preferred over
    ``metrics_token`` in files; ``--http-metrics-token`` / ``AGENT_WORKER_HTTP_METRICS_TOKEN``)."""

    def on_loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1")

    def requires_ably_token(self) -> bool:
        if self.resolved_token() is not None:
            return False
        if self.auth == "auto":
            return not self.on_loopback()
        return self.auth == "ably-token"

    def resolved_metrics_token(self) -> Secret | None:
        if self.metrics_token:
            return self.metrics_token
        if self.metrics_token_env:
            value = os.environ.get(self.metrics_token_env)
            if value:
                return Secret(value)
        return None

    def check_metrics_auth(self) -> None:
        """Refuse settings that cannot mean what they say (``ConfigError``)."""
        token = self.resolved_metrics_token()
        if self.metrics_auth == "token" and token is None:
            msg = (
                "[http] metrics_auth = token needs a metrics token: set [http] metrics_token_env "
                "(or --http-metrics-token / AGENT_WORKER_HTTP_METRICS_TOKEN)"
            )
            raise ConfigError(msg)
        if self.metrics_auth == "none" and token is not None:
            msg = "[http] metrics_auth = none contradicts the metrics token configured: drop one of them"
            raise ConfigError(msg)

    def metrics_open(self) -> bool:
        """Whether ``/metrics`` and ``/healthz``'s details need no credential."""
        if self.metrics_auth == "auto":
            return self.on_loopback() and self.resolved_metrics_token() is None
        return self.metrics_auth == "none"

    def resolved_token(self) -> Secret | None:
        if self.bearer_token:
            return self.bearer_token
        if self.bearer_token_env:
            value = os.environ.get(self.bearer_token_env)
            if value:
                return Secret(value)
        return None


CancelPolicy = Literal["owner", "any"]


class WorkerConfig(_Section):
    max_concurrent_runs: Annotated[int, Field(ge=1)] = 32
    """Runs in flight per worker; a full worker answers 429 with ``Retry-After``."""
    max_pending_invocations: Annotated[int, Field(ge=1)] = 256
    """Invocations still looking for their input (they hold no run slot); beyond this, 429."""
    start_concurrency: Annotated[int, Field(ge=0)] = 0
    """Invocations between their POST and their run's handler at once (the start gate,
    worker/startgate.py): the others wait in line, first come first served, and count as pending.
    A start gives its place back when its handler is called (never across the model call), when it
    waits for a run slot or a connection to open, when it ends, and after 1 s at most. 0: no gate
    (every start proceeds at once, sharing the loop with the others)."""
    max_pending_per_caller: Annotated[int, Field(ge=1)] | None = None
    """Of those, how many one verified caller (its token's clientId) may hold; beyond this, 429
    (42910), so one caller's made-up event ids cannot lock the others out. Unset: a quarter of
    ``max_pending_invocations``, at least 4. Callers with no verified identity (auth off on
    loopback, a static bearer token) are one caller, bounded by ``max_pending_invocations`` only."""
    state_dir: str | None = None
    """Keep the invocation log (dedup of retried POSTs) in SQLite here, so it survives a restart, and
    the crash journal (runs a killed process left open are ended at start; one worker process per
    dir). Unset: ``agent-worker run`` picks a per-user state dir (none for an in-memory embedded
    server), an embedded ``Worker`` keeps nothing; ``""``: none."""
    retry_after_s: int = 1
    drain_timeout_s: Annotated[float, Field(ge=0)] = 30.0
    """On SIGTERM, how long in-flight runs may finish before they are cancelled."""
    trigger_wait_s: Annotated[float, Field(ge=0)] = 5.0
    """After history is exhausted, how long to wait for the trigger to arrive live (then 104010); the
    time the channel is down does not count (up to 120 s more, docs/durability.md)."""
    history_max_pages: int = 20
    """History pages searched for the trigger (the JS ``pageUntilLocated`` bound)."""
    history_max_branch_pages: int = 10_000
    """Safety net for rebuilding a conversation: pages read until the branch reaches its root."""
    coalesce_window_ms: Annotated[float, Field(ge=0)] = 40.0
    """At most one append per stream per window: a delta after a quiet window goes out at once, later
    ones are merged (0 = one append per delta). Ably's server-side rollup default is also 40 ms; the
    appends go 2 ms more than the window apart (``runtime.streaming.pacing_s``) so Ably never holds them."""
    max_messages_per_second: Annotated[float, Field(gt=0)] = 45.0
    """Outbound messages per connection: never more than this many in any sliding second, and evenly
    paced at this rate while the connection stays busy (Ably's inbound limit is 50/s per connection,
    counted per second; transport/ratelimit.py)."""
    burst: Annotated[int, Field(ge=1)] = 30
    """Messages a quiet connection may send at once (a burst of starts sends six each before its first
    text); a burst counts against the same second, so what follows it waits until it is a second old."""
    sessions: StrTuple = ("*",)
    """Glob patterns of session (channel) names this worker serves; others are refused with 404."""
    watch_channels: StrTuple = ()
    """Channel-watch mode: sessions attached at startup; a fresh user ``ai-input`` starts a run."""
    cancel_policy: CancelPolicy = "owner"
    """``owner``: only the run owner's verified clientId or an admin may cancel; ``any``: the JS default."""
    admin_client_ids: StrTuple = ()
    max_input_bytes: int = 64 * 1024
    """Trigger ``ai-input`` payloads above this are refused (the run ends with an error)."""
    max_model_calls: Annotated[int, Field(ge=1)] = 8
    """Server-side tool loop bound per run."""
    presence: bool = True
    notify: Literal["absent", "always", "never"] = "absent"
    """Push-notify a run's owner when it ends or waits for them: ``absent`` = only when none of the
    owner's devices is present on the session (see docs/push.md)."""
    notify_min_run_s: Annotated[float, Field(ge=0)] = 0.0
    """Runs shorter than this never notify (the user is likely still looking)."""
    session_idle_s: Annotated[float, Field(ge=0)] = 300.0
    """Detach a session's channel after it has had no runs for this long (watched channels stay)."""
    log_format: Literal["console", "json"] = "console"
    log_level: str = "info"
    gc_tuning: bool = True
    """After start-up, freeze the start-up objects out of CPython's full collections (p99 latency)."""
    codec: Literal["vercel-ai-sdk-ui-message", "openai-responses"] | None = None
    """Pin every session to one codec (``vercel-ai-sdk-ui-message`` / ``openai-responses``); by
    default each session speaks the codec its messages' codec headers show."""


class EngineConfig(_Section):
    """Where runs execute (docs/durability.md): ``local`` in this process (crash journal under
    ``[worker] state_dir``), or ``temporal``: each invocation is a Temporal workflow, so a fleet of
    workers on one task queue shares dedup, and a run whose worker dies moves on to another."""

    kind: Literal["local", "temporal"] = "local"
    address: str = "127.0.0.1:7233"
    """The Temporal frontend, ``HOST:PORT`` (a dev server: ``temporal server start-dev``)."""
    namespace: str = "default"
    task_queue: str = "agent-worker"
    """Every worker of one fleet (one agent) polls the same task queue."""
    heartbeat_timeout_s: Annotated[float, Field(gt=0, le=60)] = 10.0
    """A streaming activity not heard from for this long is retried on another worker."""
    turn_timeout_s: Annotated[float, Field(gt=0)] = 3600.0
    """Longest a turn (one run's passes, one attempt) may take before Temporal retries it."""
    tls: bool = False
    """TLS to the frontend (Temporal Cloud, a TLS cluster); implied by an API key or a client cert."""
    api_key_env: str | None = None
    """Environment variable holding a Temporal Cloud API key (``TEMPORAL_API_KEY``); never the key."""
    tls_cert: str | None = None
    """mTLS: the client certificate (PEM file) and its private key (``tls_key``)."""
    tls_key: str | None = None
    tls_ca: str | None = None
    """A private CA's certificate (PEM file) to verify the frontend with."""

    def api_key(self) -> Secret | None:
        """The API key from ``api_key_env`` (a configured variable that is unset is an error)."""
        if self.api_key_env is None:
            return None
        value = os.environ.get(self.api_key_env)
        if not value:
            msg = f"[engine] api_key_env names {self.api_key_env}, which is not set"
            raise ConfigError(msg)
        return Secret(value)


class ProviderConfig(_Section):
    name: str | None = None
    """A registered provider or an import path; omitted: chosen automatically (and the reason shown)."""
    model: str | None = None
    """Shortcut for ``[providers.<name>] model``."""


class ToolsConfig(_Section):
    enabled: StrTuple = ()
    """Registered tool names, or import paths ``"package.module:function"`` (``?client``/``?approval``)."""


class PromptsConfig(_Section):
    system: str = "default"
    """A prompt name (``prompts/<name>.md``) or a path to a ``.md`` file; ``""`` for none."""
    dir: str | None = None
    timezone: str = "UTC"
    values: dict[str, str] = Field(default_factory=dict)

    @property
    def system_set(self) -> bool:
        """Whether ``system`` was chosen explicitly (then the prompt must exist)."""
        return "system" in self.model_fields_set


class Config(_Section):
    ably: AblyConfig = AblyConfig()
    http: HttpConfig = HttpConfig()
    worker: WorkerConfig = WorkerConfig()
    engine: EngineConfig = EngineConfig()
    provider: ProviderConfig = ProviderConfig()
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    tools: ToolsConfig = ToolsConfig()
    prompts: PromptsConfig = PromptsConfig()
    server: dict[str, Any] = Field(default_factory=dict)
    """The embedded server's ``[server]`` table (keys, channel rules); validated by ``server.config``."""


def _where(loc: tuple[int | str, ...]) -> tuple[str, str]:
    """``("worker", "burst")`` → ``("[worker]", "burst")``; a top-level key is its own section."""
    parts = [str(p) for p in loc]
    if len(parts) == 1:
        return "config", parts[0]
    return f"[{'.'.join(parts[:-1])}]", parts[-1]


def _allowed(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def config_error(
    exc: ValidationError, model: type[BaseModel] = Config, prefix: tuple[str, ...] = ()
) -> ConfigError:
    """One message naming every bad key by its path, and the allowed keys for unknown ones.
    ``prefix``: where ``model`` sits in the file (``("providers", "openai")`` for its options)."""
    lines = []
    for err in exc.errors(include_url=False):
        section, key = _where((*prefix, *err["loc"]))
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed(model, err["loc"])) or "(none)"
            lines.append(f"unknown key {key!r} in {section}; allowed: {allowed}")
        else:
            lines.append(f"{section} {key}: {err['msg']}")
    return ConfigError("; ".join(lines))


def config_from_mapping(raw: Mapping[str, Any]) -> Config:
    try:
        return Config.model_validate(dict(raw))
    except ValidationError as exc:
        raise config_error(exc) from None


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
    except UnicodeDecodeError as exc:
        msg = f"config file {p} is not UTF-8 text (TOML is): {exc.reason} at byte {exc.start}"
        raise ConfigError(msg) from exc
    except OSError as exc:  # a directory, no permission, ...
        msg = f"cannot read config file {p}: {exc.strerror or exc}"
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
