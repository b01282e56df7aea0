"""The worker's HTTP face: the AIT invocation endpoint, ``/healthz`` and Prometheus ``/metrics``.

``POST /api/chat`` (path configurable) takes the official ChatTransport body
``{"inputEventId", "sessionName", ...custom}`` and answers ``200 {"runId", "invocationId"}`` as soon
as the run task exists — the work happens after the response, like the README's ``after()``. The
client only checks ``response.ok``; refusals carry an Ably-style error body
``{"error": {"code", "statusCode", "message"}}`` and the matching status (400/401/404/413/415/429/503);
a body must be declared JSON (``Content-Type: application/json``, as the ChatTransport sends it).
Bound to loopback, only requests whose ``Host`` is a loopback name, an IP address or one of
``[http] allowed_hosts`` are answered (421/42100 otherwise: DNS rebinding, see hostcheck.py).

``/metrics`` and ``/healthz``'s details (run and session counts) are open on loopback and, beyond it,
only to ``Authorization: Bearer <[http] metrics token>`` (401/40101 without it; 403/40300 when no
token is configured; ``[http] metrics_auth``); ``/healthz``'s status code is answered to anyone.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Sized
from typing import Any, Protocol

from aiohttp import web

from agent_worker.client.tokens import decode_token
from agent_worker.config import HttpConfig, Secret
from agent_worker.conncap import CappedSite, ConnectionCap
from agent_worker.errors import AgentWorkerError, AuthError, ConfigError, ProtocolError, TransportError
from agent_worker.hostcheck import HOST_REFUSED_CODE, HostAllowList
from agent_worker.limits import loads_json, read_body
from agent_worker.logs import get_logger
from agent_worker.server.auth import Capability
from agent_worker.telemetry import continue_trace
from agent_worker.web import WebSettings, add_web_routes
from agent_worker.worker.admission import CallerBusy, Invocation, InvocationRefused, WorkerBusy
from agent_worker.worker.metrics import CONTENT_TYPE_LATEST, WorkerMetrics

__all__ = ["HttpWorker", "LogBudget", "build_app", "serve"]

log = get_logger("agent_worker.worker.http")


class _Connected(Protocol):
    @property
    def connected(self) -> bool: ...


class HttpWorker(Protocol):
    """What the HTTP face needs from the worker (:class:`agent_worker.Worker` provides it)."""

    @property
    def metrics(self) -> WorkerMetrics: ...

    @property
    def transport(self) -> _Connected | None: ...

    @property
    def state(self) -> str: ...

    @property
    def active_runs(self) -> Sized: ...

    @property
    def sessions(self) -> Sized: ...

    async def invoke(
        self, session_name: object, input_event_id: object, *, caller_client_id: str | None = None
    ) -> Invocation: ...


WORKER_KEY: web.AppKey[HttpWorker] = web.AppKey("worker")
CONFIG_KEY: web.AppKey[HttpConfig] = web.AppKey("http_config", HttpConfig)
TOKEN_KEY: web.AppKey[str | None] = web.AppKey("token_key")


class LogBudget:
    """At most ``per_window`` log lines per event per ``window_s``: a flood of refused POSTs (bad
    bodies, wrong tokens, a full worker, an outage) costs a few lines a second, not one per POST.
    The next line logged after some were held back says how many (``suppressed=``); the metrics
    still count every one."""

    def __init__(
        self, per_window: int = 10, window_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_window = per_window
        self.window_s = window_s
        self.clock = clock
        self._windows: dict[str, list[float]] = {}  # event -> [window start, logged, held back]

    def allow(self, event: str) -> int | None:
        """``None``: hold this line back; else how many were held back since the last one."""
        now = self.clock()
        window = self._windows.get(event)
        if window is None or now - window[0] >= self.window_s:
            held = int(window[2]) if window is not None else 0
            self._windows[event] = [now, 1, 0]
            return held
        if window[1] < self.per_window:
            window[1] += 1
            return 0
        window[2] += 1
        return None


LOG_BUDGET_KEY: web.AppKey[LogBudget] = web.AppKey("log_budget", LogBudget)
HOSTS_KEY: web.AppKey[HostAllowList] = web.AppKey("allowed_hosts", HostAllowList)

_HOST_SETTING = "[http] allowed_hosts, --http-allowed-host"


@web.middleware
async def _check_host(request: web.Request, handler: Any) -> web.StreamResponse:
    """421 (42100) to a ``Host`` the worker does not answer (DNS rebinding, see hostcheck.py)."""
    hosts = request.app[HOSTS_KEY]
    header = request.headers.get("Host")
    if hosts.allows(header):
        return await handler(request)  # type: ignore[no-any-return]
    assert header is not None
    _log(request, "warning", "http_host_refused", host=header[:100], remote=request.remote)
    return _error(421, HOST_REFUSED_CODE, hosts.refusal(header, _HOST_SETTING))


def _log(request: web.Request, level: str, event: str, **fields: object) -> None:
    held = request.app[LOG_BUDGET_KEY].allow(event)
    if held is None:
        return
    if held:
        fields["suppressed"] = held
    getattr(log, level)(event, **fields)


def _error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"code": code, "statusCode": status, "message": message}}
    return web.json_response(body, status=status, headers=headers)


def _cors_headers(request: web.Request, config: HttpConfig) -> dict[str, str]:
    origin = request.headers.get("Origin")
    if not origin or not config.cors_origins:
        return {}
    if "*" in config.cors_origins:
        allowed = "*"
    elif origin in config.cors_origins:
        allowed = origin
    else:
        return {}
    return {
        "Access-Control-Allow-Origin": allowed,
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": "Content-Type, Authorization, traceparent, tracestate",
        "Vary": "Origin",
    }


def _bearer_matches(request: web.Request, token: Secret) -> bool:
    """Whether the request's ``Authorization: Bearer`` value is ``token`` (compared in constant time)."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value:
        return False
    return hmac.compare_digest(value.strip().encode(), token.get().encode())


def _authorised(request: web.Request, config: HttpConfig) -> bool:
    token = config.resolved_token()
    return token is None or _bearer_matches(request, token)


def _metrics_refusal(request: web.Request) -> web.Response | None:
    """``None`` when the caller may read ``/metrics`` and ``/healthz``'s details, else the refusal:
    401/40101 without the metrics token, 403/40300 when none is configured (closed beyond loopback)."""
    config = request.app[CONFIG_KEY]
    if config.metrics_open():
        return None
    token = config.resolved_metrics_token()
    if token is None:
        msg = (
            "/metrics and /healthz details are closed beyond loopback: set a metrics token "
            '([http] metrics_token_env, --http-metrics-token) or [http] metrics_auth = "none"'
        )
        return _error(403, 40300, msg)
    if _bearer_matches(request, token):
        return None
    return _error(401, 40101, "missing or invalid metrics bearer token", {"WWW-Authenticate": "Bearer"})


def _json_content_type(request: web.Request) -> bool:
    # (the header by hand: aiohttp's request.content_type parses it fully, ~7 us per POST)
    kind = request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def _ably_caller(request: web.Request, session: object) -> str:
    """The clientId of an ``Authorization: Bearer <JWT>`` caller whose token (signed with the
    worker's key) may publish on ``session``; ``AuthError`` otherwise."""
    key = request.app[TOKEN_KEY]
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip() or key is None:
        msg = "this worker requires an Ably token: Authorization: Bearer <JWT>"
        raise AuthError(msg, code=40101, status_code=401)
    claims = decode_token(value.strip(), key)
    client_id = claims.get("x-ably-clientId")
    if not isinstance(client_id, str) or not client_id:
        msg = "the token has no clientId, so it cannot prove who published the input"
        raise AuthError(msg, code=40101, status_code=401)
    try:
        capability = Capability.parse(claims.get("x-ably-capability", '{"*":["*"]}'))
    except AgentWorkerError:
        msg = "the token's capability is malformed"
        raise AuthError(msg, code=40101, status_code=401) from None
    if not isinstance(session, str) or not capability.allows(session, "publish"):
        msg = "the token's capability does not cover this session"
        raise AuthError(msg, code=40160, status_code=401)
    return client_id


async def invoke(request: web.Request) -> web.Response:
    worker = request.app[WORKER_KEY]
    config = request.app[CONFIG_KEY]
    cors = _cors_headers(request, config)
    if not _authorised(request, config):
        worker.metrics.invocations.labels("unauthorized").inc()
        _log(request, "warning", "invocation_unauthorized", remote=request.remote)
        return _error(401, 40101, "missing or invalid bearer token", {**cors, "WWW-Authenticate": "Bearer"})
    if not _json_content_type(request):
        # Only a JSON body: a web page may POST text/plain (or a form) to any origin without a CORS
        # preflight, so on loopback (no auth by default) any site the user visits could invoke.
        worker.metrics.invocations.labels("refused").inc()
        declared = request.headers.get("Content-Type")
        msg = f"Content-Type must be application/json, not {declared[:100] if declared else 'none'!r}"
        return _error(415, 41500, msg, cors)
    try:
        # Bounded in time as well as size: a stranger that sends headers and then stalls mid-body
        # would otherwise hold a connection and a handler for as long as it likes (slowloris).
        async with asyncio.timeout(config.body_timeout_s):
            raw = await read_body(request, config.max_body_bytes)
    except TimeoutError:
        worker.metrics.invocations.labels("refused").inc()
        reason, remote = "body timeout", request.remote
        _log(request, "warning", "invocation_refused", reason=reason, code=40800, remote=remote)
        msg = f"the request body did not arrive within {config.body_timeout_s:g}s"
        resp = _error(408, 40800, msg, cors)
        resp.force_close()  # no keep-alive: closed once aiohttp's lingering read (<= 10 s) ends
        return resp
    except ProtocolError as exc:
        worker.metrics.invocations.labels("refused").inc()
        _log(request, "warning", "invocation_refused", reason=exc.message, code=exc.code)
        return _error(exc.status_code, exc.code, exc.message, cors)
    try:
        body: Any = loads_json(raw or b"null", "body", code=40000)
    except ProtocolError as exc:
        worker.metrics.invocations.labels("refused").inc()
        _log(request, "warning", "invocation_refused", reason=exc.message, code=exc.code)
        return _error(exc.status_code, exc.code, exc.message, cors)
    if not isinstance(body, dict):
        worker.metrics.invocations.labels("refused").inc()
        return _error(400, 40000, "body must be a JSON object {inputEventId, sessionName}", cors)
    caller: str | None = None
    if config.requires_ably_token():
        try:
            caller = _ably_caller(request, body.get("sessionName"))
        except AuthError as exc:
            worker.metrics.invocations.labels("unauthorized").inc()
            _log(request, "warning", "invocation_unauthorized", remote=request.remote, reason=exc.message)
            return _error(exc.status_code, exc.code, exc.message, {**cors, "WWW-Authenticate": "Bearer"})
    try:
        # A W3C traceparent on the POST makes the run's spans part of the caller's trace.
        invocation = await continue_trace(
            request.headers,
            worker.invoke(body.get("sessionName"), body.get("inputEventId"), caller_client_id=caller),
        )
    except WorkerBusy as exc:
        if not isinstance(exc, CallerBusy):  # logged once per burst by Admission, not per POST
            _log(request, "info", "invocation_busy", retry_after=exc.retry_after)
        return _error(429, exc.code, exc.message, {**cors, "Retry-After": str(exc.retry_after)})
    except InvocationRefused as exc:
        worker.metrics.invocations.labels("refused").inc()
        _log(request, "warning", "invocation_refused", reason=exc.message, status=exc.status_code)
        return _error(exc.status_code, exc.code, exc.message, cors)
    except TransportError as exc:
        _log(request, "error", "invocation_transport_failed", error=exc.message)
        return _error(503, exc.code, f"cannot reach Ably: {exc.message}", {**cors, "Retry-After": "1"})
    except AgentWorkerError as exc:
        return _error(exc.status_code, exc.code, exc.message, cors)
    except Exception:
        log.exception("invocation_failed")
        return _error(500, 50000, "internal error while accepting the invocation", cors)
    if not invocation.duplicate:
        # The run's first step (locate the trigger, send the run-start, call the model) goes before
        # this response: its task was queued just now, so one yield puts the response behind it. In
        # a burst of starts the loop is saturated, and the response (which nothing on the run's
        # path waits for) would otherwise come between every start and its model call.
        await asyncio.sleep(0)
    return web.json_response(invocation.to_json(), headers=cors)


async def preflight(request: web.Request) -> web.Response:
    cors = _cors_headers(request, request.app[CONFIG_KEY])
    return web.Response(status=204 if cors else 405, headers=cors)


async def healthz(request: web.Request) -> web.Response:
    """200 ``{"status": "ok"}`` or 503 with the worker's state, to anyone (a load balancer's health
    check sends no credentials); the details (connection, run and session counts) only to a caller
    that may read ``/metrics``."""
    worker = request.app[WORKER_KEY]
    connected = worker.transport is not None and worker.transport.connected
    healthy = connected and worker.state == "running"
    body: dict[str, object] = {"status": "ok" if healthy else worker.state}
    if _metrics_refusal(request) is None:
        body["connected"] = connected
        body["activeRuns"] = len(worker.active_runs)
        body["sessions"] = len(worker.sessions)
    return web.json_response(body, status=200 if healthy else 503)


async def metrics(request: web.Request) -> web.Response:
    refusal = _metrics_refusal(request)
    if refusal is not None:
        return refusal
    worker = request.app[WORKER_KEY]
    resp = web.Response(body=worker.metrics.render())
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


def build_app(
    worker: HttpWorker,
    config: HttpConfig | None = None,
    *,
    token_key: str | None = None,
    web_client: WebSettings | None = None,
    bind_host: str | None = None,
) -> web.Application:
    """The app; with ``config.dev_token_endpoint`` and a ``token_key`` it also serves dev tokens, and
    with ``web_client`` the browser client at ``/`` (:mod:`agent_worker.web`). ``bind_host`` (default
    ``config.host``) decides the default ``Host`` allow-list (``[http] allowed_hosts``)."""
    cfg = config or HttpConfig()
    app = web.Application(client_max_size=cfg.max_body_bytes + 1024, middlewares=[_check_host])
    app[HOSTS_KEY] = HostAllowList(cfg.allowed_hosts, bind_host or cfg.host)
    app[WORKER_KEY] = worker
    app[CONFIG_KEY] = cfg
    app[TOKEN_KEY] = token_key
    app[LOG_BUDGET_KEY] = LogBudget()
    if cfg.requires_ably_token() and token_key is None:
        msg = "[http] auth = ably-token needs the worker's API key to verify callers' tokens"
        raise ConfigError(msg)
    cfg.check_metrics_auth()
    if not cfg.metrics_open() and cfg.resolved_metrics_token() is None:
        log.warning(
            "metrics_closed_beyond_loopback",
            host=cfg.host,
            hint='set [http] metrics_token_env (--http-metrics-token) or metrics_auth = "none"',
        )
    app.router.add_post(cfg.path, invoke)
    app.router.add_route("OPTIONS", cfg.path, preflight)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    if cfg.dev_token_endpoint:
        if token_key is None:
            msg = "[http] dev_token_endpoint needs the worker's API key (embedded server or --key)"
            raise ConfigError(msg)
        from agent_worker.client.tokens import make_token_handler  # noqa: PLC0415

        app.router.add_get("/api/auth/token", make_token_handler(token_key, cfg.dev_token_capability))
        log.warning("dev_token_endpoint_enabled", path="/api/auth/token")
    if web_client is not None:
        add_web_routes(app, web_client)
    return app


async def serve(
    worker: HttpWorker,
    config: HttpConfig,
    *,
    host: str | None = None,
    port: int | None = None,
    token_key: str | None = None,
    web_client: WebSettings | None = None,
) -> web.AppRunner:
    """Start the HTTP server; returns the runner (``await runner.cleanup()`` to stop).
    The bound port is ``runner.addresses[0][1]``."""
    bind_host, bind_port = host or config.host, config.port if port is None else port
    app = build_app(worker, config, token_key=token_key, web_client=web_client, bind_host=bind_host)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=config.idle_timeout_s)
    await runner.setup()
    cap = ConnectionCap(
        config.max_connections, name="the worker's HTTP endpoint", write_timeout_s=config.write_timeout_s
    )
    site = CappedSite(runner, bind_host, bind_port, cap)
    try:
        await site.start()
    except OSError as exc:  # a port in use, an address not on this host: say which, not a traceback
        await runner.cleanup()
        msg = f"[http] cannot listen on {bind_host}:{bind_port}: {exc.strerror or exc} (--http HOST:PORT)"
        raise ConfigError(msg) from None
    return runner
