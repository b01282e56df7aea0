"""Ably JWTs: the one place they are signed and decoded (the server, the client CLI and the worker's
dev-token endpoint all come here).

An Ably JWT is HS256-signed with an API key's secret, names the key in its ``kid`` header and
carries ``x-ably-capability`` (a JSON *string*) and optionally ``x-ably-clientId``
(https://ably.com/docs/auth/token/jwt). PyJWT errors propagate as ``jwt.PyJWTError``; each caller
maps them to its own Ably error code.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import jwt
from jwt.warnings import InsecureKeyLengthWarning

__all__ = ["decode_jwt", "encode_jwt", "unverified_header"]


@contextlib.contextmanager
def _short_secrets_ok() -> Iterator[None]:
    # A key's secret length is Ably's (or a local dev key's) choice, not ours to warn about; PyJWT's
    # warning would be noise (and an error under pytest's warnings-as-errors).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)
        yield


def encode_jwt(
    key_name: str,
    secret: str,
    *,
    issued_s: int,
    expires_s: float,
    capability_json: str,
    client_id: str | None = None,
) -> str:
    """Sign the Ably claims; ``client_id=None`` is an anonymous token, ``"*"`` a wildcard one."""
    payload: dict[str, Any] = {"iat": issued_s, "exp": expires_s, "x-ably-capability": capability_json}
    if client_id is not None:
        payload["x-ably-clientId"] = client_id
    with _short_secrets_ok():
        return jwt.encode(payload, secret, algorithm="HS256", headers={"kid": key_name, "typ": "JWT"})


def unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header (``kid`` names the signing key), before the signature is checked."""
    return jwt.get_unverified_header(token)


def decode_jwt(
    token: str, secret: str | None, *, require_exp: bool = False, check_expiry: bool = False
) -> dict[str, Any]:
    """The claims; the signature is verified against ``secret`` unless it is ``None``. Expiry is
    checked only with ``check_expiry`` (servers judge it against their own clock, in ms)."""
    if secret is None:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        return claims
    required = ["exp"] if require_exp else []
    with _short_secrets_ok():
        verified: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            options={"require": required, "verify_exp": check_expiry, "verify_iat": check_expiry},
        )
    return verified
