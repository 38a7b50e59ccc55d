"""Per-key rate limits: requests and tokens per minute, in memory or shared through Redis.

Fixed one-minute windows. ``admit`` is checked before the upstream call (it counts the request and
refuses when either budget of the current window is spent); ``settle`` adds the request's real token usage
afterwards. In Redis both happen in one Lua script each, so N replicas never race between check and
increment.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

from gateway.auth import ApiKey
from gateway.errors import RateLimitError

WINDOW_S = 60


class RateLimiter(ABC):
    @abstractmethod
    async def admit(self, key: ApiKey) -> None:
        """Count one request for ``key``; raise ``RateLimitError`` when over a limit."""

    @abstractmethod
    async def settle(self, key: ApiKey, tokens: int) -> None:
        """Add the request's real token usage (prompt + completion)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        pass


def _window(now: float) -> tuple[int, float]:
    window = int(now // WINDOW_S)
    return window, (window + 1) * WINDOW_S - now


def _refuse(key: ApiKey, what: str, limit: int, retry_after_s: float) -> RateLimitError:
    return RateLimitError(f"rate limit of key '{key.name}' reached: {limit} {what} per minute; retry in "
                          f"{max(1, int(retry_after_s + 0.999))} s", retry_after_s=retry_after_s)


class InMemoryRateLimiter(RateLimiter):
    """One process's counters (the event loop serialises admit/settle, so check-and-count is atomic)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], list[int]] = {}  # (key, window) -> [requests, tokens]

    async def admit(self, key: ApiKey) -> None:
        window, remaining = _window(time.time())
        counts = self._counts.setdefault((key.name, window), [0, 0])
        if key.requests_per_minute is not None and counts[0] >= key.requests_per_minute:
            raise _refuse(key, "requests", key.requests_per_minute, remaining)
        if key.tokens_per_minute is not None and counts[1] >= key.tokens_per_minute:
            raise _refuse(key, "tokens", key.tokens_per_minute, remaining)
        counts[0] += 1
        for old in [k for k in self._counts if k[1] < window - 1]:
            del self._counts[old]

    async def settle(self, key: ApiKey, tokens: int) -> None:
        window, _ = _window(time.time())
        self._counts.setdefault((key.name, window), [0, 0])[1] += tokens


# KEYS: requests counter, tokens counter; ARGV: rpm (0 = none), tpm (0 = none), ttl seconds.
# Returns 0 when admitted, 1 over requests, 2 over tokens.
_ADMIT = """
local requests = tonumber(redis.call('GET', KEYS[1]) or '0')
local tokens = tonumber(redis.call('GET', KEYS[2]) or '0')
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
if rpm > 0 and requests >= rpm then return 1 end
if tpm > 0 and tokens >= tpm then return 2 end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 0
"""
_SETTLE = """
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 0
"""


class RedisRateLimiter(RateLimiter):
    """Counters in Redis, shared by every gateway replica."""

    def __init__(self, url: str, prefix: str = "llm-gateway:limits") -> None:
        import redis.asyncio as redis

        self._redis = redis.from_url(url)
        self._prefix = prefix
        self._admit = self._redis.register_script(_ADMIT)
        self._settle = self._redis.register_script(_SETTLE)

    def _keys(self, key: ApiKey, window: int) -> list[str]:
        return [f"{self._prefix}:{key.name}:{window}:requests", f"{self._prefix}:{key.name}:{window}:tokens"]

    async def admit(self, key: ApiKey) -> None:
        window, remaining = _window(time.time())
        verdict = await self._admit(keys=self._keys(key, window),
                                    args=[key.requests_per_minute or 0, key.tokens_per_minute or 0, WINDOW_S * 2])
        if verdict == 1:
            raise _refuse(key, "requests", key.requests_per_minute or 0, remaining)
        if verdict == 2:
            raise _refuse(key, "tokens", key.tokens_per_minute or 0, remaining)

    async def settle(self, key: ApiKey, tokens: int) -> None:
        if tokens:
            window, _ = _window(time.time())
            await self._settle(keys=self._keys(key, window)[1:], args=[tokens, WINDOW_S * 2])

    async def aclose(self) -> None:
        await self._redis.aclose()


def build_rate_limiter(redis_url: str | None) -> RateLimiter:
    return RedisRateLimiter(redis_url) if redis_url else InMemoryRateLimiter()
