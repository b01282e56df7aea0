"""Channel rules per namespace, as an Ably app's dashboard has them. Pure: no I/O.

A rule is keyed by a namespace (the part of a channel name before the first ``:``) or by a full
channel name; ``*`` is a local convenience matching every channel. The most specific rule wins:
exact channel name, then namespace, then ``*``. A channel no rule matches gets Ably's defaults:
no mutable messages (appends/updates/deletes refused with 93002), history kept for two minutes,
anonymous clients allowed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent_worker.errors import AuthError, ConfigError, ProtocolError

__all__ = [
    "DEFAULT_CHANNEL_RULES",
    "UNPERSISTED_HISTORY_MS",
    "ChannelRule",
    "ChannelRules",
    "namespace_of",
    "rules_for_sessions",
]

# Ably keeps messages of channels without a persistence rule for two minutes.
UNPERSISTED_HISTORY_MS = 120_000

_FLAGS = {
    "mutable": "mutable_messages",
    "mutable_messages": "mutable_messages",
    "mutablemessages": "mutable_messages",
    "persisted": "persisted",
    "identified": "identified_only",
    "identified_only": "identified_only",
    "authenticated": "identified_only",
}


def namespace_of(channel: str) -> str:
    """The namespace of a channel name (qualifier such as ``[?rewind=1]`` stripped)."""
    if channel.startswith("[") and "]" in channel:
        channel = channel[channel.index("]") + 1 :]
    return channel.split(":", 1)[0]


@dataclass(frozen=True, slots=True)
class ChannelRule:
    namespace: str
    mutable_messages: bool = False
    """Ably's "Message annotations, updates, deletes and appends" rule (also persists history)."""
    persisted: bool = False
    identified_only: bool = False
    """Only clients with a clientId may use the channels (Ably's "identified"/"authenticated")."""

    @property
    def persists(self) -> bool:
        return self.persisted or self.mutable_messages

    @classmethod
    def parse(cls, spec: str) -> ChannelRule:
        """``NAMESPACE=flag,flag`` with flags ``mutable``, ``persisted``, ``identified``."""
        name, sep, flags = spec.partition("=")
        name = name.strip()
        if not sep or not name:
            msg = f"channel rule {spec!r} must look like NAMESPACE=mutable,persisted,identified"
            raise ConfigError(msg)
        values: dict[str, bool] = {}
        for raw in flags.split(","):
            flag = raw.strip().lower().replace("-", "_")
            if not flag:
                continue
            if flag not in _FLAGS:
                msg = f"unknown channel rule flag {raw.strip()!r}; use mutable, persisted or identified"
                raise ConfigError(msg)
            values[_FLAGS[flag]] = True
        return cls(name, **values)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> ChannelRule:
        """A ``[[server.channel_rules]]`` table: ``namespace`` plus boolean flags."""
        raw = dict(raw)
        name = raw.pop("namespace", None)
        if not isinstance(name, str) or not name:
            msg = "[[server.channel_rules]] needs a non-empty namespace"
            raise ConfigError(msg)
        values: dict[str, bool] = {}
        for key, value in raw.items():
            field = _FLAGS.get(key.lower().replace("-", "_"))
            if field is None or not isinstance(value, bool):
                msg = (
                    f"[[server.channel_rules]] {key!r} must be one of mutable_messages, persisted, "
                    "identified_only (true/false)"
                )
                raise ConfigError(msg)
            values[field] = value
        return cls(name, **values)

    def describe(self) -> str:
        flags = [
            f
            for f, on in (
                ("mutable messages", self.mutable_messages),
                ("persisted", self.persists),
                ("identified only", self.identified_only),
            )
            if on
        ]
        where = "every channel" if self.namespace == "*" else f"{self.namespace}:*"
        return f"{where}: {', '.join(flags) or 'defaults'}"


# What a bare ServerConfig uses: everything mutable, so tests and scripts need no setup. The
# worker's embedded server and `agent-worker server` print the rules they run with.
DEFAULT_CHANNEL_RULES: tuple[ChannelRule, ...] = (ChannelRule("*", mutable_messages=True),)

_NO_RULE = ChannelRule("")


class ChannelRules:
    def __init__(
        self, rules: Iterable[ChannelRule], unpersisted_history_ms: int = UNPERSISTED_HISTORY_MS
    ) -> None:
        self._rules = {r.namespace: r for r in rules}
        self.unpersisted_history_ms = unpersisted_history_ms
        self._cache: dict[str, ChannelRule] = {}  # per channel name: looked up on every publish

    def __repr__(self) -> str:
        return f"ChannelRules({sorted(self._rules)})"

    def for_channel(self, channel: str) -> ChannelRule:
        rule = self._cache.get(channel)
        if rule is None:
            if len(self._cache) >= 10_000:
                self._cache.clear()
            rule = self._cache[channel] = self._lookup(channel)
        return rule

    def _lookup(self, channel: str) -> ChannelRule:
        bare = channel[channel.index("]") + 1 :] if channel.startswith("[") and "]" in channel else channel
        for key in (bare, namespace_of(bare), "*"):
            rule = self._rules.get(key)
            if rule is not None:
                return rule
        return _NO_RULE

    def require_mutable(self, channel: str) -> None:
        if not self.for_channel(channel).mutable_messages:
            msg = (
                "Can only update/delete/append messages on channels with mutableMessages enabled "
                f"(enable the 'Message annotations, updates, deletes and appends' rule for namespace "
                f"{namespace_of(channel)!r})"
            )
            raise ProtocolError(msg, code=93002, status_code=400)

    def require_identified(self, channel: str, client_id: str | None) -> None:
        if client_id is None and self.for_channel(channel).identified_only:
            msg = f"Access denied to channel: namespace {namespace_of(channel)!r} requires identified clients"
            raise AuthError(msg, code=40161, status_code=401)

    def history_horizon(self, channel: str, now_ms: int) -> int | None:
        """Oldest timestamp history may show (``None`` = everything, the channel persists)."""
        if self.for_channel(channel).persists:
            return None
        return now_ms - self.unpersisted_history_ms


def rules_for_sessions(patterns: Iterable[str]) -> tuple[ChannelRule, ...]:
    """Mutable-message rules covering the channels matching the worker's session globs.

    ``conversations:*`` gives a rule for namespace ``conversations``; a pattern whose namespace is
    itself a glob (``*``, ``chat-*:x``) can match any namespace, so it gives the ``*`` rule.
    """
    names: dict[str, None] = {}
    for pattern in patterns:
        ns = namespace_of(pattern)
        names["*" if any(c in ns for c in "*?[") else ns] = None
    if "*" in names:
        return (ChannelRule("*", mutable_messages=True),)
    return tuple(ChannelRule(ns, mutable_messages=True) for ns in names)
