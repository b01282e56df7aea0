"""The one error tree of agent-worker.

Every error carries an Ably/AIT ``code`` and an HTTP-style ``status_code`` so that any layer can turn
it into an Ably ErrorInfo, an ``ai-run-end`` ``error-code`` or an HTTP error body without a lookup
table of its own.

    AgentWorkerError                      (code 50000)
    ├── ConfigError                       raised at startup: fix the config and restart
    │   ├── UnknownProviderError
    │   └── UnknownToolError
    ├── ProtocolError                     wire input we refuse (40000, or the code given)
    │   └── CodecError                    a message the AIT codec cannot decode/encode
    ├── AuthError                         bad or missing credentials (40101, 40160, ...)
    ├── TransportError                    Ably connection / publish / history failure
    ├── ProviderError                     model vendor failure
    │   ├── ProviderHTTPError             HTTP status from the vendor (status_code, body, retry_after)
    │   └── ProviderConnectionError       network failure talking to the vendor
    ├── ToolError                         a tool raised; becomes a tool-error result for the model
    └── RunError                          a run ended abnormally (104008 unless given)
        ├── RunCancelled                  the run was cancelled by its owner, an admin or shutdown
        └── InputEventNotFound            the trigger event never appeared (104010)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AgentWorkerError",
    "AuthError",
    "CodecError",
    "ConfigError",
    "InputEventNotFound",
    "ProtocolError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderHTTPError",
    "RunCancelled",
    "RunError",
    "ToolError",
    "TransportError",
    "UnknownProviderError",
    "UnknownToolError",
]


class AgentWorkerError(Exception):
    """Root of every error this package raises on purpose."""

    code: int = 50000
    status_code: int = 500

    def __init__(self, message: str, *, code: int | None = None, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
            if status_code is None and 10000 <= code < 60000:
                self.status_code = code // 100
        if status_code is not None:
            self.status_code = status_code

    def to_error_info(self) -> dict[str, Any]:
        """Ably ErrorInfo shape (``{code, statusCode, message, href}``)."""
        return {
            "code": self.code,
            "statusCode": self.status_code,
            "message": self.message,
            "href": f"https://help.ably.io/error/{self.code}",
        }


class ConfigError(AgentWorkerError):
    """Developer or configuration misuse, detected at startup."""

    code = 40000
    status_code = 400


class UnknownProviderError(ConfigError):
    """A provider name that no plugin registered."""


class UnknownToolError(ConfigError):
    """A tool name that no plugin registered."""


class ProtocolError(AgentWorkerError):
    """Wire input we refuse; ``code`` is the Ably/AIT error code to answer with."""

    code = 40000
    status_code = 400


class CodecError(ProtocolError):
    """An AI Transport message the codec cannot decode or a chunk it cannot encode."""

    def __init__(
        self, message: str, *, field: str | None = None, payload: object = None, code: int = 40000
    ) -> None:
        detail = message
        if field is not None:
            detail = f"{message} (field {field!r})"
        if payload is not None:
            text = repr(payload)
            detail = f"{detail}; payload {text[:200]}{'…' if len(text) > 200 else ''}"
        super().__init__(detail, code=code)
        self.field = field
        self.payload = payload


class AuthError(AgentWorkerError):
    """Missing, invalid or insufficient credentials."""

    code = 40101
    status_code = 401


class TransportError(AgentWorkerError):
    """The Ably transport failed (connection, publish, history)."""

    code = 80003
    status_code = 500


class NotSentError(TransportError):
    """An operation never handed to the connection (so certainly not applied)."""

    status_code = 503


class AppendNotSentError(NotSentError):
    """An append held back across a continuity loss and never sent (so certainly not applied)."""

    code = 80008
    status_code = 500


class ProviderError(AgentWorkerError):
    """A model provider failed."""

    code = 104008
    status_code = 500


class ProviderHTTPError(ProviderError):
    """The vendor answered with an HTTP error status."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int,
        body: object = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.body = body
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.http_status == 429 or self.http_status >= 500


class ProviderConnectionError(ProviderError):
    """The vendor could not be reached, or the stream broke."""


class ToolError(AgentWorkerError):
    """A tool failed; the message goes back to the model as a tool-error result."""


class RunError(AgentWorkerError):
    """A run ended abnormally."""

    code = 104008
    status_code = 500


class RunCancelled(RunError):
    """The run was cancelled (by an authorised ``ai-cancel``, shutdown or timeout)."""

    code = 40033
    status_code = 400


class InputEventNotFound(RunError):
    """The trigger ``event-id`` never appeared on the channel within the wait."""

    code = 104010
    status_code = 404
