"""``agent-worker chat`` (a terminal device on a session) and ``agent-worker token`` (mint a JWT)."""

from __future__ import annotations

import math
from typing import Annotated

import typer

__all__ = ["DEFAULT_AGENT_URL", "DEFAULT_LOCAL_ENDPOINT", "register"]

#: Where `agent-worker run` (offline default) serves its embedded Ably-compatible server and its
#: invocation endpoint, so `agent-worker chat SESSION` needs no flags on the same machine.
DEFAULT_LOCAL_ENDPOINT = "127.0.0.1:8080"
DEFAULT_AGENT_URL = "http://127.0.0.1:8787/api/chat"


def chat(  # noqa: PLR0917 - typer maps parameters to options
    session: Annotated[str, typer.Argument(help="Session (channel) name, e.g. 'conversations:demo'.")],
    client_id: Annotated[
        str | None,
        typer.Option("--client-id", envvar="AGENT_WORKER_CLIENT_ID", help="Your identity on the session."),
    ] = None,
    ably_endpoint: Annotated[
        str | None,
        typer.Option(
            "--ably-endpoint",
            envvar="AGENT_WORKER_ABLY_ENDPOINT",
            help=f"HOST:PORT of the Ably-compatible server (default {DEFAULT_LOCAL_ENDPOINT}; 'ably' = Ably)",
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option("--key", envvar="ABLY_KEY", help="API key; a JWT is minted from it locally."),
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar="ABLY_TOKEN", help="A JWT (see `agent-worker token`).")
    ] = None,
    agent_url: Annotated[
        str | None,
        typer.Option(
            "--agent-url",
            envvar="AGENT_WORKER_AGENT_URL",
            help=f"Where prompts are POSTed to wake the agent (default {DEFAULT_AGENT_URL}; 'none' = don't).",
        ),
    ] = None,
    codec: Annotated[
        str | None,
        typer.Option(
            "--codec",
            help="The session's codec: vercel-ai-sdk-ui-message or openai-responses "
            "(default: what the session's messages show, else vercel-ai-sdk-ui-message).",
        ),
    ] = None,
    no_color: Annotated[bool, typer.Option("--no-color", help="Plain text output.")] = False,
    transcript: Annotated[
        bool, typer.Option("--transcript", help="Print the conversation once and exit (non-interactive).")
    ] = False,
    wait: Annotated[
        float,
        typer.Option("--wait", help="With --transcript: first wait up to this many seconds for runs to end."),
    ] = 0.0,
    log_level: Annotated[
        str, typer.Option("--log-level", help="Diagnostics on stderr: debug, info, warning, error.")
    ] = "error",
) -> None:
    """Open a terminal device on SESSION: history, live runs from every device, prompts and cancel."""
    # Before anything global (logging) is configured: a refusal leaves the process as it was.
    if not (math.isfinite(wait) and wait >= 0):
        msg = f"--wait must be a finite number of seconds, 0 or more, not {wait}"
        raise typer.BadParameter(msg)
    import asyncio  # noqa: PLC0415 - keep `agent-worker --help` fast
    import logging  # noqa: PLC0415

    from agent_worker.client.app import ChatOptions, run_chat  # noqa: PLC0415
    from agent_worker.logs import configure_logging  # noqa: PLC0415
    from agent_worker.server.config import DEFAULT_DEV_KEY  # noqa: PLC0415

    # The terminal is the conversation: diagnostics go to stderr and stay quiet by default.
    configure_logging("console", log_level)
    if log_level == "error":
        # ably-python leaves "Task exception was never retrieved" noise behind on failed connects.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    if key is not None and token is not None:
        msg = "pass either --key or --token, not both"
        raise typer.BadParameter(msg)
    endpoint: str | None = ably_endpoint or DEFAULT_LOCAL_ENDPOINT
    if endpoint == "ably":
        endpoint = None  # Ably's own endpoint (TLS)
    if key is None and token is None:
        if endpoint is None:
            msg = "Ably needs --key or --token"
            raise typer.BadParameter(msg)
        key = DEFAULT_DEV_KEY  # the key every local embedded server accepts out of the box
    from agent_worker.protocol.codecs import CODECS  # noqa: PLC0415

    if codec is not None and codec not in CODECS:
        msg = f"--codec must be one of {', '.join(sorted(CODECS))}"
        raise typer.BadParameter(msg)
    url = agent_url or DEFAULT_AGENT_URL
    options = ChatOptions(
        session=session,
        client_id=client_id,
        endpoint=endpoint,
        key=key,
        token=token,
        agent_url=None if url.lower() == "none" else url,
        color=not no_color,
        codec=codec,
    )
    try:
        code = asyncio.run(run_chat(options, transcript=transcript, wait_s=wait))
    except KeyboardInterrupt:  # Ctrl-C before the interactive loop took over SIGINT
        code = 130
    raise typer.Exit(code)


def token(
    client_id: Annotated[
        str | None,
        typer.Option("--client-id", help="The token's clientId ('*' = any); omit for an anonymous token."),
    ] = None,
    capability: Annotated[
        str | None,
        typer.Option(
            "--capability",
            help='JSON, e.g. \'{"conversations:*":["publish","subscribe","history","presence"]}\'.',
        ),
    ] = None,
    ttl: Annotated[str, typer.Option("--ttl", help="Lifetime: 3600, 90s, 30m, 1h (max 24h).")] = "1h",
    key: Annotated[
        str | None,
        typer.Option("--key", envvar="ABLY_KEY", help="API key to sign with (default: the local dev key)."),
    ] = None,
) -> None:
    """Mint an Ably-style JWT (HS256, kid = key name) and print it."""
    from agent_worker.client.tokens import mint_token, parse_ttl  # noqa: PLC0415
    from agent_worker.errors import ConfigError  # noqa: PLC0415
    from agent_worker.server.config import DEFAULT_DEV_KEY  # noqa: PLC0415

    try:
        jwt_text = mint_token(
            key or DEFAULT_DEV_KEY, client_id=client_id, capability=capability, ttl_s=parse_ttl(ttl)
        )
    except ConfigError as exc:
        raise typer.BadParameter(exc.message) from exc
    typer.echo(jwt_text)


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)
    app.command("token")(token)
