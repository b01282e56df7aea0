"""The interactive ``agent-worker chat`` loop: a line reader, slash commands, and live rendering.

Input is read from stdin a line at a time with a plain fd reader (no prompt_toolkit), so it works in
any terminal or pseudo-terminal and with piped input. Ctrl-C (SIGINT) cancels the active run; a
second Ctrl-C, ``/quit`` or end of input exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import IO

from rich.console import Console

from agent_worker.client.render import (
    LivePrinter,
    MessageItem,
    conversation_view,
    make_console,
    plain_text,
    render,
)
from agent_worker.client.session import ChatSession, SentInput, SessionEvent
from agent_worker.client.tokens import ApiKey, decode_token, mint_token
from agent_worker.errors import AgentWorkerError, TransportError
from agent_worker.transport.ably import AblySettings, AblyTransport

__all__ = ["HELP", "ChatApp", "ChatOptions", "connect_session", "run_chat"]

HELP = """commands:
  <text>            send a message (the agent answers on every device)
  /stop             cancel the active run (Ctrl-C does the same; Ctrl-C again quits)
  /regenerate       regenerate the last assistant message
  /edit N <text>    replace your message #N with <text> (a new branch)
  /who              who is on this session (presence)
  /history          print the whole conversation again
  /help             this help
  /quit             leave (Ctrl-D too)"""


@dataclass(frozen=True, slots=True)
class ChatOptions:
    session: str
    client_id: str | None
    endpoint: str | None
    key: str | None
    token: str | None
    agent_url: str | None
    color: bool = True
    tls: bool | None = None
    codec: str | None = None
    """Pin the session's codec (``--codec``); None: the session's messages choose."""

    def __repr__(self) -> str:
        return (
            f"ChatOptions(session={self.session!r}, client_id={self.client_id!r}, "
            f"endpoint={self.endpoint!r}, agent_url={self.agent_url!r}, "
            f"key={'set' if self.key else 'unset'}, token={'set' if self.token else 'unset'})"
        )


def _settings(options: ChatOptions) -> tuple[AblySettings, str | None]:
    """Transport settings and the device's client id (from the flag or the token's claim)."""
    client_id = options.client_id
    if options.token is not None:
        claimed = decode_token(options.token).get("x-ably-clientId")
        if client_id is None and isinstance(claimed, str):
            client_id = claimed
        fixed = options.token

        async def fixed_token() -> str:
            return fixed

        source = fixed_token
    elif options.key is not None:
        api_key = ApiKey.parse(options.key)
        # A JWT minted locally on every (re-)auth: works over plain HTTP (ably-python refuses Basic
        # there) and renews itself, unlike a fixed token.
        minted_for = client_id

        async def fresh_token() -> str:
            return mint_token(api_key, client_id=minted_for, ttl_s=3600)

        source = fresh_token
    else:
        msg = "no credentials: pass --key KEY or --token JWT (see `agent-worker run` output)"
        raise AgentWorkerError(msg, code=40101, status_code=401)
    # No client_id option: ably-python would reject the bare JWT string the callback returns ("Client
    # ID cannot be changed", it cannot read the claim); the identity comes from the token instead.
    # One connection, never more: the pool's growth and its spare SDK clients built ahead (~0.8 MB
    # and ~20 ms of CPU each, 31 by default) are for a worker's load, not one terminal's session.
    settings = AblySettings(
        endpoint=options.endpoint,
        token_source=source,
        tls=options.tls,
        connections=1,
        max_connections=1,
        spare_clients=0,
    )
    return settings, client_id


async def _probe(endpoint: str) -> None:
    """Fail fast (instead of ably-python's retry loop) when nothing listens on a host:port endpoint."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)
    except (OSError, TimeoutError) as exc:
        msg = f"nothing answers on {endpoint} ({exc.__class__.__name__})"
        raise TransportError(msg, code=80003) from exc
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def connect_session(options: ChatOptions) -> ChatSession:
    """Connect the transport and the session (history hydrated, presence entered)."""
    if options.endpoint is not None:
        await _probe(options.endpoint)
    settings, client_id = _settings(options)
    transport = AblyTransport(settings)
    await transport.connect()
    # A worker reachable beyond loopback authenticates invokers by their Ably token.
    bearer = options.token or (
        mint_token(options.key, client_id=client_id, ttl_s=86_400) if options.key else None
    )
    session = ChatSession(
        transport,
        options.session,
        client_id=client_id,
        agent_url=options.agent_url,
        codec=options.codec,
        agent_headers={"Authorization": f"Bearer {bearer}"} if bearer and client_id else None,
    )
    try:
        await session.connect(presence_data={"device": "chat"})
    except BaseException:
        await transport.close()
        raise
    return session


class ChatApp:
    """Wires a :class:`ChatSession` to a terminal."""

    def __init__(self, session: ChatSession, console: Console) -> None:
        self.session = session
        self.console = console
        self.printer = LivePrinter(console)
        self._loop = asyncio.get_running_loop()
        self._redraw_scheduled = False
        self._done = asyncio.Event()
        self._armed_quit = False
        self._tasks: set[asyncio.Task[None]] = set()
        session.on_update(self._schedule_redraw)
        session.on_event(self._on_event)

    # --- output --------------------------------------------------------------------------------

    def _schedule_redraw(self) -> None:
        # Coalesce a burst of deliveries (e.g. many appends in one frame) into one redraw.
        if not self._redraw_scheduled:
            self._redraw_scheduled = True
            self._loop.call_soon(self.redraw)

    def redraw(self) -> None:
        self._redraw_scheduled = False
        self.printer.update(render(conversation_view(self.session.tree, self.session.authors)))
        if not self.session.active_runs() and not self.session.pending_own():
            self.printer.settle()

    def _on_event(self, event: SessionEvent) -> None:
        style = {"connection": "dim yellow", "error": "bold red", "info": "dim"}[event.kind]
        self.notice(event.text, style)

    def notice(self, text: str, style: str = "dim") -> None:
        self.redraw()
        self.printer.notice(text, style)

    # --- input ---------------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except AgentWorkerError as exc:
                self.notice(f"✖ {exc.message}", "bold red")
            except Exception as exc:  # a device keeps running whatever one command did
                self.notice(f"✖ {type(exc).__name__}: {exc}", "bold red")

        task = self._loop.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_and_invoke(self, send: Callable[[], Awaitable[SentInput]]) -> None:
        sent = await send()
        if self.session.agent_url is not None:
            await self.session.invoke(sent)

    def handle_line(self, line: str) -> None:
        """One line of user input (without the newline)."""
        self.printer.interrupted()
        text = line.strip()
        if not text:
            return
        if not text.startswith("/") or text.startswith("//"):
            body = text[1:] if text.startswith("//") else text
            self._armed_quit = False
            self._spawn(self._send_and_invoke(lambda: self.session.send_text(body)))
            return
        command, _, rest = text.partition(" ")
        match command:
            case "/quit" | "/exit":
                self._done.set()
            case "/help":
                self.notice(HELP)
            case "/stop":
                self._spawn(self._stop())
            case "/regenerate" | "/regen":
                self._spawn(self._send_and_invoke(self.session.regenerate))
            case "/edit":
                self._edit(rest)
            case "/who":
                self._spawn(self._who())
            case "/history":
                self.printer.notice("── conversation ──")
                self.printer = LivePrinter(self.console)
                self.redraw()
            case _:
                self.notice(f"unknown command {command}; /help lists them", "yellow")

    def _edit(self, rest: str) -> None:
        number_text, _, new_text = rest.strip().partition(" ")
        new_text = new_text.strip()
        if not number_text.lstrip("#").isdigit() or not new_text:
            self.notice("usage: /edit N <new text>   (N is the #number shown before a message)", "yellow")
            return
        number = int(number_text.lstrip("#"))
        view = conversation_view(self.session.tree, self.session.authors)
        target = next((i for i in view if isinstance(i, MessageItem) and i.number == number), None)
        if target is None:
            self.notice(f"no message #{number} on this branch", "yellow")
            return
        cmid = target.codec_message_id
        self._armed_quit = False
        self._spawn(self._send_and_invoke(lambda: self.session.edit(cmid, new_text)))

    async def _stop(self) -> None:
        what = await self.session.cancel_active()
        self.notice(f"cancel requested ({what})" if what else "nothing is running", "yellow")

    async def _who(self) -> None:
        members = await self.session.who()
        self.notice("present: " + (", ".join(members) if members else "(nobody)"), "cyan")

    def on_interrupt(self) -> None:
        """Ctrl-C: cancel what is running; quit when nothing is (or on the second press)."""
        if self._armed_quit or (not self.session.pending_own() and not self.session.active_runs()):
            self._done.set()
            return
        self._armed_quit = True
        self._spawn(self._stop())
        self.notice("(Ctrl-C again to quit)")

    # --- main loop -----------------------------------------------------------------------------

    async def run(self, stdin: IO[str] | None = None) -> None:
        stream = stdin if stdin is not None else sys.stdin
        fd = stream.fileno()
        buffer = bytearray()

        def readable() -> None:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                if buffer:
                    self.handle_line(buffer.decode(errors="replace"))
                    buffer.clear()
                self._done.set()
                return
            buffer.extend(chunk)
            while (nl := buffer.find(b"\n")) >= 0:
                line = buffer[:nl].decode(errors="replace").rstrip("\r")
                del buffer[: nl + 1]
                self.handle_line(line)

        self.redraw()
        self.printer.notice(f"joined {self.session.channel_name} — type a message, /help for commands")
        self._loop.add_reader(fd, readable)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            self._loop.add_signal_handler(signal.SIGINT, self.on_interrupt)
        try:
            await self._done.wait()
        finally:
            self._loop.remove_reader(fd)
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.remove_signal_handler(signal.SIGINT)
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)


async def wait_until_idle(session: ChatSession, timeout_s: float) -> None:
    """Until no visible run is active and no own send is waiting (for ``--transcript --wait``)."""
    idle = asyncio.Event()

    def check() -> None:
        if not session.active_runs() and not session.pending_own():
            idle.set()

    off = session.on_update(check)
    try:
        check()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(idle.wait(), timeout_s)
    finally:
        off()


async def run_chat(options: ChatOptions, *, transcript: bool = False, wait_s: float = 0.0) -> int:
    """Entry point of ``agent-worker chat``; returns the process exit code."""
    console = make_console(color=options.color and "NO_COLOR" not in os.environ)
    try:
        session = await connect_session(options)
    except AgentWorkerError as exc:
        console.print(f"✖ {exc.message}", style="bold red")
        where = options.endpoint or "Ably"
        console.print(
            f"  (Ably endpoint {where}; start a local one with `agent-worker run`, "
            "or pass --ably-endpoint and --key/--token)",
            style="dim",
        )
        return 1
    try:
        if transcript:
            if wait_s > 0:
                await wait_until_idle(session, wait_s)
            blocks = render(conversation_view(session.tree, session.authors))
            console.print(plain_text(blocks), markup=False, highlight=False)
            return 0
        who = session.client_id or "anonymous"
        console.print(f"agent-worker chat · {options.session} · as {who}", style="bold")
        app = ChatApp(session, console)
        await app.run()
        return 0
    finally:
        transport = session.transport
        with contextlib.suppress(Exception):
            await asyncio.wait_for(session.close(), 10)
        with contextlib.suppress(Exception):
            await transport.close()
