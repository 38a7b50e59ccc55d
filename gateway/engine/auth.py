"""API keys: ``Authorization: Bearer <key>`` on every ``/v1`` request once keys are configured.

Keys are stored and compared as sha256 digests, with ``hmac.compare_digest`` against every configured
key (no early exit), so neither the comparison nor its timing tells which prefix matched. Only the key's
name is ever logged.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from gateway.core.config import AuthConfig, hash_key
from gateway.core.errors import AuthenticationError


@dataclass(frozen=True)
class ApiKey:
    name: str
    requests_per_minute: int | None
    tokens_per_minute: int | None
    budget_usd: float | None = None
    budget_period: str = "month"  # day | month | total


class ApiKeyStore:
    def __init__(self, config: AuthConfig) -> None:
        self._keys = [(entry.digest(), ApiKey(entry.name, entry.requests_per_minute, entry.tokens_per_minute,
                                               entry.budget_usd, entry.budget_period))
                      for entry in config.api_keys]

    def authenticate(self, authorization: str | None) -> ApiKey | None:
        """The caller's key (None when no keys are configured); 401 when missing or wrong."""
        if not self._keys:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>')")
        digest = hash_key(token.strip())
        found = None
        for stored, key in self._keys:
            if hmac.compare_digest(stored, digest):
                found = key
        if found is None:
            raise AuthenticationError("invalid API key")
        return found
