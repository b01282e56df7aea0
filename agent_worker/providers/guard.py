"""A switch that keeps tests from reaching real model vendors by accident.

Tests set ``ALLOW_PROVIDER_REQUESTS = False`` (see ``tests/providers/conftest.py``); the vendor
adapters then refuse any ``base_url`` that is not on the loopback interface, so a test can talk to a
local replay server but never to api.openai.com with a forgotten key.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from agent_worker.errors import ConfigError

__all__ = ["ALLOW_PROVIDER_REQUESTS", "check_allow_provider_requests"]

ALLOW_PROVIDER_REQUESTS = True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_allow_provider_requests(base_url: str | None, provider: str) -> None:
    if ALLOW_PROVIDER_REQUESTS:
        return
    host = urlsplit(base_url or "").hostname or ""
    if not _is_loopback(host):
        msg = (
            f"provider {provider!r} would call {base_url or 'the vendor default URL'} but "
            "ALLOW_PROVIDER_REQUESTS is False; point base_url at a loopback server or use the "
            "allow_provider_requests fixture"
        )
        raise ConfigError(msg)
