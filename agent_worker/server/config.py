"""Server configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent_worker.server.log import Retention

__all__ = ["DEFAULT_DEV_KEY", "Retention", "ServerConfig"]

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
    retention: Retention | None = None  # None = keep everything
    # Promised to clients as maxIdleInterval; a protocol HEARTBEAT goes out at least this often.
    max_idle_interval_ms: int = 15_000
    heartbeat_interval_ms: int = 10_000
    # How long members of an abruptly dropped connection stay present (a resume cancels the LEAVE).
    presence_leave_delay_ms: int = 15_000
    rate_limit_per_s: int = 50
    max_frame_size: int = 524_288
    # permessage-deflate costs 3-4x throughput on loopback (measured by bench.server), so it is off
    # unless asked for; clients work either way.
    websocket_compression: bool = False
