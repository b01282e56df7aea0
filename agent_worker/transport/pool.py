"""The worker's realtime connections: a pool that grows and shrinks with the load it carries.

Ably limits what one connection may publish (50 messages/s inbound), so how many streams a worker
can serve at a low latency is a matter of how many connections carry them. Each session channel is
placed on one connection when it is opened, and stays there (moving a live channel would mean a
re-attach). Placement is by *load*: what a connection sent in the last second
(``RateLimiter.recent_rate``) plus a reservation of ``session_rate`` messages/s for each session
placed on it less than ``reserve_s`` seconds after the connection was up (a session about to start
a run has sent nothing yet, and a burst of simultaneous starts must not all land on one connection).
Sessions are served first come, first served: a new one takes the least-loaded open connection with
room (load + one reservation <= ``target_rate``); when none has room it queues, and the pool opens,
in parallel, as many connections as the queue needs (up to ``max_connections``). Each connection that
comes up takes the oldest waiting sessions it has room for, so in a burst the first sessions start
when the first new connections are up, not when the slowest is. A connection that carries no
session for ``idle_close_s`` is closed, down to ``min_connections``. Each connection keeps its own
token bucket as a hard ceiling, so a connection whose sessions all turn busy at once slows down (its
streams' coalescing windows widen) instead of being refused by Ably.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from agent_worker.errors import TransportError
from agent_worker.logs import get_logger
from agent_worker.transport.ratelimit import RateLimiter

__all__ = ["ConnectionPool", "PoolPolicy", "PooledConnection"]

log = get_logger("agent_worker.transport.pool")

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class PoolPolicy:
    min_connections: int = 1
    max_connections: int = 32
    max_messages_per_second: float = 45.0
    """Hard ceiling per connection, in any sliding second (Ably's limit is 50/s)."""
    burst: int = 30
    target_rate: float = 36.0
    """Place no more load than this on a connection while the pool may still grow."""
    session_rate: float = 12.0
    """Load reserved for a freshly placed session (a 10 tokens/s stream plus its lifecycle)."""
    reserve_s: float = 2.0
    idle_close_s: float = 30.0
    retry_open_s: float = 5.0
    """After a connection failed to open, queued sessions use the open ones this long."""
    warm: int = 0
    """Connections kept open ahead of need, carrying no session (room for a burst of starts: each
    takes three starting sessions at once instead of opening then); idle ones beyond this close."""
    warm_after_s: float = 5.0
    """Warm connections are opened once the pool has run this long, one at a time, while quiet."""
    warm_check_s: float = 0.5


@dataclass(eq=False)
class PooledConnection(Generic[C]):
    limiter: RateLimiter
    ready: asyncio.Future[None]
    client: C | None = None
    channels: set[str] = field(default_factory=set)
    placed: dict[str, float] = field(default_factory=dict)
    """When each recent session was placed, oldest first (its reservation runs from when the
    connection is up, until ``reserve_s`` later or until the session's run is over)."""
    ready_at: float | None = None
    idle_since: float | None = None
    failed: bool = False

    def load(self, now: float, policy: PoolPolicy) -> float:
        """Messages/s sent in the last second plus the reservations of sessions too new to show."""
        placed = self.placed
        if self.ready_at is not None:
            while placed:
                oldest = next(iter(placed))
                if now - max(placed[oldest], self.ready_at) <= policy.reserve_s:
                    break
                del placed[oldest]
        return self.limiter.recent_rate(now) + policy.session_rate * len(placed)


class ConnectionPool(Generic[C]):
    """Placement and lifecycle of ``C`` clients; ``connect``/``close`` do the SDK work."""

    def __init__(
        self,
        policy: PoolPolicy,
        connect: Callable[[], Awaitable[C]],
        close: Callable[[C], Awaitable[None]],
        *,
        quiet: Callable[[], bool] = lambda: True,
    ) -> None:
        self.policy = policy
        self._connect = connect
        self._close = close
        self._quiet = quiet
        """Whether now is a good time to open a warm connection (the transport: little traffic)."""
        self._warmer: asyncio.Task[None] | None = None
        self.connections: list[PooledConnection[C]] = []
        self._placement: dict[str, PooledConnection[C]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._queue: deque[str] = deque()
        self._waiters: dict[str, asyncio.Future[PooledConnection[C]]] = {}
        self._grow_after = 0.0
        """After a failed open, no new one before this (``time.monotonic()``)."""
        self._reaper: asyncio.Task[None] | None = None
        self.on_wait: Callable[[], None] | None = None
        """Called (in the waiting task) when :meth:`acquire` queues a session for a connection to
        open: the worker's start gate takes the start's place back (worker/startgate.py)."""
        self.opened = 0
        self.closed = 0
        self.peak = 0

    @property
    def ready_connections(self) -> list[PooledConnection[C]]:
        return [c for c in self.connections if c.client is not None]

    async def start(self) -> None:
        """Open ``min_connections`` (all must succeed) and start closing idle ones."""
        conns = [self._open() for _ in range(max(1, self.policy.min_connections))]
        results = await asyncio.gather(*(c.ready for c in conns), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.close()
            raise errors[0]
        self._reaper = asyncio.get_running_loop().create_task(self._reap())
        if self.policy.warm > 0:
            self._warmer = asyncio.get_running_loop().create_task(self._warm())

    def _idle_count(self) -> int:
        """Connections (open or opening) carrying no session."""
        return sum(1 for c in self.connections if not c.channels)

    def _wants_warm(self) -> bool:
        return self._idle_count() < self.policy.warm and len(self.connections) < self.policy.max_connections

    async def _warm(self) -> None:
        """Keep ``policy.warm`` idle connections open ahead of need. Opening one costs the loop a
        websocket handshake and the service a connection setup: done in a burst of starts, 31 of
        them in parallel held up every start by ~50-250 ms; done here, one at a time while the
        transport is quiet, the burst's sessions are placed on open connections at once."""
        policy = self.policy
        await asyncio.sleep(policy.warm_after_s)
        pause = policy.retry_open_s
        while True:
            if self._wants_warm() and self._quiet() and time.monotonic() >= self._grow_after:
                conn = self._open()
                try:
                    await conn.ready
                except Exception:  # logged by _open; the service may refuse more connections (its
                    # limit per account): ask again ever more rarely, a burst still grows on demand
                    await asyncio.sleep(pause)
                    pause = min(300.0, pause * 2)
                else:
                    pause = policy.retry_open_s
                continue
            await asyncio.sleep(policy.warm_check_s)

    def _open(self) -> PooledConnection[C]:
        loop = asyncio.get_running_loop()
        conn: PooledConnection[C] = PooledConnection(
            RateLimiter(self.policy.max_messages_per_second, self.policy.burst), loop.create_future()
        )
        self.connections.append(conn)
        self.peak = max(self.peak, len(self.connections))

        async def run() -> None:
            try:
                client = await self._connect()
            except BaseException as exc:
                conn.failed = True
                with contextlib.suppress(ValueError):
                    self.connections.remove(conn)
                if not conn.ready.done():
                    conn.ready.set_exception(exc)
                    conn.ready.exception()  # retrieved here: placement falls back
                if not isinstance(exc, asyncio.CancelledError):
                    log.warning("connection_pool_open_failed", error=str(exc))
                    self._grow_after = time.monotonic() + self.policy.retry_open_s
                    self._dispatch()
                return
            conn.client = client
            conn.ready_at = time.monotonic()
            self.opened += 1
            conn.ready.set_result(None)
            self._dispatch()

        task = loop.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return conn

    def _has_room(self, conn: PooledConnection[C], now: float) -> bool:
        """Whether ``conn`` (up) can take one more fresh session: its load plus a reservation stays
        under ``target_rate``; a connection carrying nothing always can."""
        if conn.client is None:
            return False
        if not conn.channels and not conn.placed:
            return True
        return conn.load(now, self.policy) + self.policy.session_rate <= self.policy.target_rate

    def _assign(self, name: str, conn: PooledConnection[C], now: float) -> PooledConnection[C]:
        conn.placed.pop(name, None)  # placed again (after a failed connection): a fresh reservation
        conn.placed[name] = now
        conn.channels.add(name)
        conn.idle_since = None
        self._placement[name] = conn
        return conn

    def place(self, name: str) -> PooledConnection[C]:
        """Place a new session channel now, on the least-loaded open connection (no waiting, no
        growing: for channels used without :meth:`acquire`)."""
        existing = self._placement.get(name)
        if existing is not None and not existing.failed:
            return existing
        ready = self.ready_connections
        if not ready:
            msg = "transport is not connected; call await transport.connect() first"
            raise RuntimeError(msg)
        now = time.monotonic()
        return self._assign(name, min(ready, key=lambda c: c.load(now, self.policy)), now)

    async def acquire(self, name: str) -> PooledConnection[C]:
        """The connection a new session channel goes on, once it is up.

        First come, first served: a session takes the least-loaded open connection with room;
        when none has room it queues, and the pool opens (in parallel) as many connections as the
        queue needs. Each connection that comes up takes the oldest waiting sessions it has room
        for, so under a burst the first sessions start as soon as the first connections are up
        instead of every session waiting for the slowest open. With no room left and nothing more
        to open, sessions go to the least-loaded connection (its rate limiter keeps it under Ably's
        limit)."""
        existing = self._placement.get(name)
        if existing is not None and not existing.failed:
            await existing.ready
            return existing
        waiter = self._waiters.get(name)
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters[name] = waiter
            # Behind others already waiting, no connection has room (or they would not wait): only
            # the growth part applies, not a scan of every connection for each session of a burst.
            self._queue.append(name)
            self._dispatch(scan=len(self._queue) == 1)
            if not waiter.done() and self.on_wait is not None:
                self.on_wait()
        try:
            return await asyncio.shield(waiter)
        except asyncio.CancelledError:
            if self._waiters.get(name) is waiter:  # still queued: leave the queue
                del self._waiters[name]
                self._queue.remove(name)
            elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release(name)  # placed meanwhile: give the reservation back
            raise

    def _dispatch(self, *, scan: bool = True) -> None:
        """Hand waiting sessions (oldest first) to connections with room; open more for the rest.
        One scan of the connections per call: a placement changes only the chosen one's load."""
        now = time.monotonic()
        policy = self.policy
        queue = self._queue
        if scan and queue:
            # _has_room's test with each connection's load computed once (it is read again below)
            spare: dict[PooledConnection[C], float] = {}
            for c in self.connections:
                if c.client is None:
                    continue
                empty = not c.channels and not c.placed  # before load() trims `placed`, as _has_room
                load = c.load(now, policy)
                if empty or load + policy.session_rate <= policy.target_rate:
                    spare[c] = load
            while queue and spare:
                conn = min(spare, key=spare.__getitem__)
                self._resolve(queue.popleft(), conn, now)
                if self._has_room(conn, now):
                    spare[conn] = conn.load(now, policy)
                else:
                    del spare[conn]
        if not queue:
            return
        opening = sum(1 for c in self.connections if c.client is None)
        per_connection = max(1, int(policy.target_rate // policy.session_rate))
        wanted = -(-len(queue) // per_connection) - opening
        room = policy.max_connections - len(self.connections)
        if now >= self._grow_after:
            for _ in range(max(0, min(wanted, room))):
                self._open()
                opening += 1
            if wanted > 0 and room > 0:
                log.info("connection_pool_grow", connections=len(self.connections), waiting=len(queue))
        if opening:
            return  # the connections coming up take the queue
        ready = self.ready_connections
        while queue:
            if not ready:
                self._fail_waiters(TransportError("no realtime connection could be opened", code=80003))
                return
            self._resolve(queue.popleft(), min(ready, key=lambda c: c.load(now, policy)), now)

    def _fail_waiters(self, error: TransportError) -> None:
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(error)
                waiter.exception()  # retrieved: a waiter whose caller was cancelled stays quiet
        self._waiters.clear()
        self._queue.clear()

    def _resolve(self, name: str, conn: PooledConnection[C], now: float) -> None:
        waiter = self._waiters.pop(name)
        if not waiter.done():
            waiter.set_result(self._assign(name, conn, now))

    def settle(self, name: str) -> None:
        """``name``'s run is over: drop its reservation. A reservation stands for traffic a starting
        session has not sent yet; once its run has ended it will send none, and what it did send
        shows in the connection's rate. (Kept, the reservations of short runs just finished made a
        connection look full for up to ``reserve_s``: in a burst right after a few such runs, their
        connections took fewer new sessions, and one more session went to a connection already
        carrying three starts.)"""
        conn = self._placement.get(name)
        if conn is not None:
            conn.placed.pop(name, None)

    def release(self, name: str) -> None:
        conn = self._forget(name)
        if conn is not None and not conn.channels:
            conn.idle_since = time.monotonic()

    def _forget(self, name: str) -> PooledConnection[C] | None:
        conn = self._placement.pop(name, None)
        if conn is not None:
            conn.channels.discard(name)
            conn.placed.pop(name, None)
        return conn

    async def _reap(self) -> None:
        interval = max(0.5, min(10.0, self.policy.idle_close_s / 3))
        while True:
            await asyncio.sleep(interval)
            await self.close_idle()

    async def close_idle(self) -> int:
        """Close connections idle for ``idle_close_s`` while more than ``min_connections`` remain
        and more than ``warm`` carry no session."""
        now = time.monotonic()
        closed = 0
        spare = sum(1 for c in self.connections if c.client is not None and not c.channels)
        for conn in reversed(list(self.connections)):  # newest first: the long-lived ones stay
            if len(self.connections) <= max(1, self.policy.min_connections) or spare <= self.policy.warm:
                break
            idle = conn.idle_since
            if conn.client is None or conn.channels or idle is None or now - idle < self.policy.idle_close_s:
                continue
            self.connections.remove(conn)
            self.closed += 1
            closed += 1
            spare -= 1
            log.info("connection_pool_shrink", connections=len(self.connections))
            with contextlib.suppress(Exception):
                await self._close(conn.client)
        return closed

    async def close(self) -> None:
        if self._warmer is not None:
            self._warmer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warmer
            self._warmer = None
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        self._fail_waiters(TransportError("the connection pool is closed", code=80017))
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        connections, self.connections = self.connections, []
        self._placement.clear()
        for conn in connections:
            if conn.client is not None:
                with contextlib.suppress(Exception):
                    await self._close(conn.client)
