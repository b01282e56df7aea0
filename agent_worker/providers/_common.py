"""Small helpers shared by the vendor adapters (no vendor SDK imported here)."""

from __future__ import annotations

import importlib
import json
from typing import Any, NoReturn

__all__ = ["dump_json", "parse_json_object", "raise_missing_extra", "tool_output_text", "transport_errors"]


def transport_errors() -> tuple[type[BaseException], ...]:
    """``RequestError`` of whichever httpx flavour the SDKs use (``httpx`` or ``httpx2``).

    Vendor SDKs wrap connection errors on the request, but some let a broken body read through
    unwrapped; these are the classes that mean "the network failed mid-stream".
    """
    errors: list[type[BaseException]] = []
    for name in ("httpx", "httpx2"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        errors.extend([module.RequestError, module.StreamError])
    return tuple(errors)


def dump_json(value: Any) -> str:
    """Tool arguments/outputs as compact JSON text (strings pass through: they already are text)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def tool_output_text(output: Any, is_error: bool) -> str:
    text = dump_json(output)
    return f"Error: {text}" if is_error else text


def parse_json_object(text: str | Any) -> dict[str, Any]:
    """Arguments for vendors that want an object (Anthropic ``tool_use.input``); bad JSON → wrapped."""
    if not isinstance(text, str):
        return text if isinstance(text, dict) else {"value": text}
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {"_raw_arguments": text}
    return value if isinstance(value, dict) else {"value": value}


def raise_missing_extra(package: str, extra: str, cause: BaseException | None = None) -> NoReturn:
    """Raise an ImportError that names the optional extra to install."""
    msg = f"{package} is not installed; install the optional extra: pip install 'agent-worker[{extra}]'"
    raise ImportError(msg) from cause
