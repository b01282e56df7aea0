"""Small helpers shared by the vendor adapters (no vendor SDK imported here)."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from agent_worker.errors import ProviderConnectionError, ProviderError, ProviderHTTPError
from agent_worker.providers.retries import parse_retry_after

__all__ = [
    "dump_json",
    "map_sdk_errors",
    "parse_json_object",
    "raise_missing_extra",
    "tool_output_text",
    "transport_errors",
]


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


@contextmanager
def map_sdk_errors(sdk: Any, provider: str, status_of: Callable[[Any], int] | None = None) -> Iterator[None]:
    """Translate the exceptions of a vendor SDK module (``openai``, ``anthropic``: generated from the
    same template, so the same class names and fields) and raw transport failures into
    :mod:`agent_worker.errors`. ``status_of(exc)`` lets an adapter correct an ``APIStatusError``'s
    status (an error event inside a 200 stream)."""
    try:
        yield
    except sdk.APIStatusError as exc:
        status = status_of(exc) if status_of is not None else exc.status_code
        msg = f"{provider}: HTTP {status}: {exc.message}"
        raise ProviderHTTPError(
            msg, http_status=status, body=exc.body, retry_after=parse_retry_after(exc.response.headers)
        ) from exc
    except sdk.APIConnectionError as exc:  # includes APITimeoutError
        msg = f"{provider}: connection failed: {exc.message}"
        raise ProviderConnectionError(msg) from exc
    except sdk.APIError as exc:  # an error object inside an otherwise fine stream
        msg = f"{provider}: {exc.message}"
        raise ProviderError(msg) from exc
    except transport_errors() as exc:
        msg = f"{provider}: stream broke: {type(exc).__name__}: {exc}"
        raise ProviderConnectionError(msg) from exc


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
