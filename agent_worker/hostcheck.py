"""The ``Host`` allow-list of the worker's HTTP API and the embedded server (DNS rebinding).

A server bound to loopback trusts whoever reaches it (the worker invokes without a credential there,
the dev token endpoint mints tokens). A web page cannot reach loopback from its own origin, but it
can through a name it controls: ``evil.example`` first resolves to the attacker's server, which
serves the page, then to ``127.0.0.1`` — the page's requests to ``http://evil.example:8787`` now reach
the local worker as same-origin requests, no CORS involved, and the browser reads the answers. What
gives them away is the ``Host`` header, which is still ``evil.example:8787``.

So bound to loopback, both answer only requests whose ``Host`` is a loopback name (``localhost``,
``*.localhost``), an IP address literal (a page at ``http://127.0.0.1:8787`` *is* that server's
origin; an IP cannot be rebound) or the bound host itself — plus whatever ``allowed_hosts`` adds
(``"worker.example.com"``, ``"*.example.com"``, ``"*"`` for any). Others get ``421`` (42100). A request
without ``Host`` (HTTP/1.0, not a browser) passes. Bound beyond loopback (``0.0.0.0``, a public
address) the default is any host: such a deployment is reached by names of its own and requires
credentials there (``[http] auth = "auto"``); ``allowed_hosts`` narrows it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["HOST_REFUSED_CODE", "HostAllowList", "is_loopback_host"]

HOST_REFUSED_CODE = 42100
"""The error code of a refused ``Host`` (status 421 Misdirected Request, as the 41500 of a 415)."""

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback_host(host: str) -> bool:
    """Whether a bind address (or a ``Host`` name) is loopback: ``localhost`` or a loopback IP."""
    host = host.strip().strip("[]").lower().rstrip(".")
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostname(header: str) -> str:
    """``Host`` without its port, lower case, without a trailing dot (``[::1]:80`` → ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        inner, bracket, rest = header[1:].partition("]")
        return inner if bracket and (not rest or rest[0] == ":") else ""
    if header.count(":") == 1:
        header = header.partition(":")[0]
    return header.rstrip(".")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class HostAllowList:
    """Which ``Host`` headers a listener bound to ``bind_host`` answers (see the module docstring).

    ``allowed``: extra names, ``*.suffix`` patterns or ``*``; empty = the default for the bind."""

    _CACHE_MAX = 1024

    def __init__(self, allowed: Iterable[str], bind_host: str) -> None:
        extra = [a.strip().lower().rstrip(".") for a in allowed if a.strip()]
        self.bind_host = bind_host
        self.any = "*" in extra or (not extra and not is_loopback_host(bind_host))
        self._names = {a for a in extra if not a.startswith("*.")}
        self._names.add(_hostname(bind_host))
        self._suffixes = tuple(a[1:] for a in extra if a.startswith("*."))  # ".example.com"
        self._cache: dict[str, bool] = {}  # Host value -> verdict (a client sends one value)

    def allows(self, header: str | None) -> bool:
        if self.any or header is None:
            return True
        verdict = self._cache.get(header)
        if verdict is None:
            verdict = self._judge(header)
            if len(self._cache) >= self._CACHE_MAX:
                self._cache.clear()
            self._cache[header] = verdict
        return verdict

    def _judge(self, header: str) -> bool:
        host = _hostname(header)
        if not host:
            return False
        if host in self._names or host == "localhost" or host.endswith(".localhost") or _is_ip(host):
            return True
        return any(host.endswith(suffix) for suffix in self._suffixes)

    def refusal(self, header: str, setting: str) -> str:
        """The message of a refused ``Host`` (the header shown escaped: it is the client's text),
        naming ``setting``, where more names are allowed."""
        shown = header[:100].encode("unicode_escape").decode("ascii")
        return (
            f"Host {shown!r} is not allowed: bound to {self.bind_host}, this server answers "
            f"loopback names and IP addresses only (a guard against DNS rebinding); to reach it by "
            f"that name add it to {setting}"
        )
