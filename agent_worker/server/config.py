"""Server configuration."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_worker.errors import AgentWorkerError, ConfigError
from agent_worker.server.auth import Capability
from agent_worker.server.channel_rules import DEFAULT_CHANNEL_RULES, UNPERSISTED_HISTORY_MS, ChannelRule
from agent_worker.server.log import DEFAULT_MEMORY_RETENTION, Retention

__all__ = ["DEFAULT_DEV_KEY", "Retention", "ServerConfig", "parse_key_capability", "server_settings"]

# A fixed, obviously-local key so `agent-worker server` and `agent-worker run` agree out of the box.
DEFAULT_DEV_KEY = "local.dev:local-dev-secret-not-for-production"


@dataclass(frozen=True)
class ServerConfig:
    """Everything the embedded server needs; ``keys`` are ``APP.KEY:SECRET`` strings (kept out of repr)."""

    host: str = "127.0.0.1"
    port: int = 0  # 0 = ephemeral
    keys: list[str] = field(default_factory=list, repr=False)  # empty = DEFAULT_DEV_KEY
    data_dir: str | Path | None = None  # None = in memory
    max_message_size: int = 65536
    connection_state_ttl_ms: int = 120_000
    enforce_rate_limits: bool = False
    # None = DEFAULT_MEMORY_RETENTION in memory (24 h, 16 MB per channel), everything with data_dir.
    retention: Retention | None = None
    # Promised to clients as maxIdleInterval; a protocol HEARTBEAT goes out at least this often.
    max_idle_interval_ms: int = 15_000
    heartbeat_interval_ms: int = 10_000
    # How long members of an abruptly dropped connection stay present (a resume cancels the LEAVE).
    presence_leave_delay_ms: int = 15_000
    rate_limit_per_s: int = 50
    # Server-side append rollup for connections that do not send the appendRollupWindow transport
    # parameter (Ably's default is 40 ms; 0 turns rollup off), see server/rollup.py.
    append_rollup_window_ms: int = 40
    max_frame_size: int = 524_288
    # permessage-deflate costs 3-4x throughput on loopback (measured by bench.server), so it is off
    # unless asked for; clients work either way.
    websocket_compression: bool = False
    # Per-namespace channel rules as on Ably's dashboard (mutable messages, persisted,
    # identified-only); the default enables mutable messages everywhere.
    channel_rules: tuple[ChannelRule, ...] = DEFAULT_CHANNEL_RULES
    # How long history keeps messages of channels without a persistence rule (Ably: 2 minutes).
    unpersisted_history_ms: int = UNPERSISTED_HISTORY_MS
    # Capabilities of keys, by key name (APP.KEY); keys not listed may do everything.
    key_capabilities: Mapping[str, str] = field(default_factory=dict)
    # The VAPID ``sub`` claim (RFC 8292 §2.1): a contact for push services about this sender.
    push_vapid_subject: str = "mailto:push@agent-worker.invalid"
    # Accept http:// push endpoints on loopback (local Web Push receivers in tests and demos). Off by
    # default: a token holder could otherwise make the server POST to local ports.
    push_allow_loopback_http: bool = False
    # Bytes queued for one connection before it is disconnected as a slow consumer (80020).
    max_outbound_bytes: int = 8 << 20
    # How long closing a socket (80020, a refused frame, an expired token, CLOSE) may take to send
    # its last frames and finish the handshake; then it is dropped with whatever it still buffers.
    close_timeout_ms: int = 5_000
    # How long an HTTP connection may go without a complete request (from its opening, and between
    # requests; aiohttp's keepalive_timeout, 3630 s by default). Not applied to realtime sockets.
    http_idle_timeout_s: float = 75.0
    # How long a REST request's body may take to arrive once its headers have (then 408 / 40800).
    http_body_timeout_s: float = 10.0
    # How long a connection's writes may drain less than 16 KiB — its buffer full behind a client
    # that does not read or trickles, or a close waiting on bytes never read — before it is dropped
    # (REST answers and realtime sockets alike; one that keeps draining faster is never cut). See
    # conncap.py.
    http_write_timeout_s: float = 30.0
    # Channels the server holds at once (their runtimes, and in memory their history). At the cap,
    # idle channels (nobody attached or present) are released, least recently used first — in
    # memory their history goes with them — and with none idle a new channel is refused (40114).
    max_channels: int = 10_000
    # Approximate bytes of history all channels hold together (``Retention.max_bytes`` counts the
    # same way); beyond it idle channels are released as at ``max_channels``, oldest use first.
    max_history_bytes: int = 64 << 20
    # Messages one publish (a ProtocolMessage or a REST body) may carry (more: 40034). Ably's size
    # rule counts only name, data, clientId and extras, so 200,000 empty messages fit in one 800 KB
    # body and held the event loop 3.2 s; 1000 costs ~16 ms.
    max_messages_per_publish: int = 1000
    # Members one channel's presence set may hold (more: 91003 on enter), as on Ably.
    max_presence_members: int = 20_000
    # Channels one connection may have attached at once (more: ERROR 90010 on ATTACH).
    max_channels_per_connection: int = 1000
    # Connections (live or resumable) one API key's clients may hold (more: ERROR 40111, 403).
    max_connections_per_key: int = 10_000
    # Host names answered besides loopback names and IP addresses ("*.example.com", "*" for any):
    # bound to loopback, another Host is refused 421 (42100) — a web page reaching the server
    # through a DNS-rebinding name. Empty = that default on loopback, any host beyond it.
    allowed_hosts: tuple[str, ...] = ()
    # TCP connections the port holds at once, realtime and REST (more: 503 / 50300 at once, see
    # agent_worker/conncap.py); aiohttp itself has no bound but the file descriptor limit.
    max_connections: int = 4096

    def __post_init__(self) -> None:
        """Every number finite, none negative, the timeouts above 0: an ``inf`` timeout or a ``nan``
        (compared false everywhere) would silently mean "no bound"; an infinite retention age
        failed every publish (``int(inf)``). A :class:`ConfigError` names the setting."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            _check_number(f.name, value, positive=f.name.endswith("_s"))
        if self.retention is not None:
            for name in ("max_messages", "max_age_s", "max_bytes"):
                value = getattr(self.retention, name)
                if value is not None:
                    _check_number(f"retention {name}", value, positive=name == "max_age_s")

    @property
    def effective_retention(self) -> Retention | None:
        if self.retention is not None:
            return self.retention
        return DEFAULT_MEMORY_RETENTION if self.data_dir is None else None

    @property
    def frame_limit(self) -> int:
        """Bytes one WebSocket frame may have (larger: ERROR 40009): a batch of maximal messages fits."""
        return max(self.max_frame_size, 4 * self.max_message_size)

    @property
    def body_limit(self) -> int:
        """Bytes one REST request body may have (larger: 413 / 40009, refused before it is read)."""
        return max(1 << 20, 4 * self.max_message_size)


def _check_number(name: str, value: float, *, positive: bool) -> None:
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "above 0" if positive else "0 or more"
        msg = f"server setting {name} must be a finite number {bound}, not {value}"
        raise ConfigError(msg)


def _capability_text(where: str, value: Any) -> str:
    if isinstance(value, Mapping):
        value = json.dumps(dict(value))
    if not isinstance(value, str):
        msg = f"{where} capability must be a JSON string or a table"
        raise ConfigError(msg)
    try:
        Capability.parse(value)
    except AgentWorkerError as exc:
        msg = f"{where} capability is invalid: {exc.message}"
        raise ConfigError(msg) from None
    return value


def parse_key_capability(spec: str) -> tuple[str, str]:
    """``APP.KEY=JSON`` (the ``--key-capability`` option) → ``(key name, capability JSON)``."""
    name, sep, cap = spec.partition("=")
    if not sep or "." not in name or ":" in name:
        msg = f'--key-capability {spec!r} must look like APP.KEY=\'{{"channel:*":["subscribe"]}}\''
        raise ConfigError(msg)
    return name.strip(), _capability_text(f"--key-capability {name}", cap)


def server_settings(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``ServerConfig`` fields from a config file's ``[server]`` table.

    ``[[server.keys]]`` tables take ``key`` (``APP.KEY:SECRET``) or ``key_env`` (an environment
    variable holding it) and an optional ``capability`` (JSON string or table);
    ``[[server.channel_rules]]`` tables take ``namespace`` and ``mutable_messages`` / ``persisted`` /
    ``identified_only``; ``unpersisted_history_ms``, ``max_channels`` and ``max_history_bytes`` are
    numbers; ``allowed_hosts`` an array of host names.
    """
    allowed = {
        "keys",
        "channel_rules",
        "unpersisted_history_ms",
        "max_channels",
        "max_history_bytes",
        "allowed_hosts",
    }
    unknown = sorted(set(raw) - allowed)
    if unknown:
        msg = f"unknown key(s) {', '.join(unknown)} in [server]; allowed: {', '.join(sorted(allowed))}"
        raise ConfigError(msg)
    out: dict[str, Any] = {}
    keys: list[str] = []
    caps: dict[str, str] = {}
    for i, entry in enumerate(raw.get("keys", [])):
        where = f"[[server.keys]] #{i + 1}"
        if not isinstance(entry, Mapping) or set(entry) - {"key", "key_env", "capability"}:
            msg = f"{where} takes key or key_env, and capability"
            raise ConfigError(msg)
        text = entry.get("key") or (os.environ.get(entry["key_env"], "") if entry.get("key_env") else "")
        if not isinstance(text, str) or not text:
            msg = f"{where} has no key (set key, or key_env to a set environment variable)"
            raise ConfigError(msg)
        keys.append(text)
        if entry.get("capability") is not None:
            caps[text.partition(":")[0]] = _capability_text(where, entry["capability"])
    if keys:
        out["keys"] = keys
        out["key_capabilities"] = caps
    if "channel_rules" in raw:
        rules = raw["channel_rules"]
        if not isinstance(rules, list) or not all(isinstance(r, Mapping) for r in rules):
            msg = "[server] channel_rules must be an array of tables ([[server.channel_rules]])"
            raise ConfigError(msg)
        out["channel_rules"] = tuple(ChannelRule.from_mapping(r) for r in rules)
    if "unpersisted_history_ms" in raw:
        value = raw["unpersisted_history_ms"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            msg = "[server] unpersisted_history_ms must be a non-negative integer"
            raise ConfigError(msg)
        out["unpersisted_history_ms"] = value
    if "allowed_hosts" in raw:
        hosts = raw["allowed_hosts"]
        if not isinstance(hosts, list) or not all(isinstance(h, str) and h.strip() for h in hosts):
            msg = '[server] allowed_hosts must be an array of host names (["worker.example.com"])'
            raise ConfigError(msg)
        out["allowed_hosts"] = tuple(hosts)
    for name in ("max_channels", "max_history_bytes"):
        if name in raw:
            value = raw[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                msg = f"[server] {name} must be a positive integer"
                raise ConfigError(msg)
            out[name] = value
    return out
