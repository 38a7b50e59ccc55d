"""Per-key rate limits: requests and tokens per minute, in memory or shared through Redis.

Sliding-window counters: a key's use "in the last minute" is this minute's count plus last minute's weighted
by the share of it still inside the window (no 2x burst at a minute boundary, O(1) state). Tokens are
*reserved* when a request is admitted (its prompt, estimated at 4 characters a token, plus its completion
limit) and *settled* with the real usage when it ends, so concurrent requests cannot overrun the budget
between admission and usage. Check and count happen in one step: the event loop serialises them in memory;
in Redis one Lua script does both, on keys that share a hash tag (one slot: it works on Redis Cluster). In
Redis, settlements are sent in batches (``SETTLE_BATCH_S``, 20 ms), one script call per API key.

Redis calls are bounded by ``limits.redis_timeout_s``. When Redis fails or is slow, ``limits.on_limiter_error``
decides: ``open`` (default) admits the request uncounted and counts the failure in
``gateway_rate_limiter_errors_total``; ``closed`` refuses it with 503 and ``Retry-After: 1``.

Why not the ``limits`` library: its ``hit(cost)`` counts a request's cost once, up front; a reservation that
is settled with the real usage later, and a requests budget and a tokens budget checked together atomically,
are what keep a tokens-per-minute limit honest under concurrency, and neither fits its API.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from dataclasses import dataclass

from gateway.core.errors import RateLimitError, UpstreamUnavailableError
from gateway.engine.auth import ApiKey

logger = logging.getLogger(__name__)
WINDOW_S = 60


@dataclass(frozen=True)
class Reservation:
    """What an admitted request holds: the tokens reserved, in the window they were counted in."""

    window: int
    tokens: int


class LimiterUnavailable(Exception):
    """The shared counter store did not answer in time or failed."""


def _position(now: float) -> tuple[int, float]:
    """(current window, share of the previous window still inside the sliding minute)."""
    window = int(now // WINDOW_S)
    return window, 1.0 - (now - window * WINDOW_S) / WINDOW_S


def _retry_after(current: float, previous: float, weight: float, limit: float, needed: float) -> float:
    """Seconds until ``current + previous * weight(t) + needed <= limit``, as the previous window slides out."""
    if current + needed > limit:  # only the next windows will make room
        return (weight * WINDOW_S) + WINDOW_S * min(1.0, (current + needed - limit) / max(current, 1.0))
    if previous <= 0:
        return 1.0
    room = (limit - current - needed) / previous  # the weight at which it fits
    return max(1.0, (weight - room) * WINDOW_S)


def _refuse(key: ApiKey, what: str, limit: int, retry_after_s: float) -> RateLimitError:
    return RateLimitError(f"rate limit of key '{key.name}' reached: {limit} {what} per minute; retry in "
                          f"{max(1, int(retry_after_s + 0.999))} s", retry_after_s=min(retry_after_s, WINDOW_S))


class RateLimiter(ABC):
    @abstractmethod
    async def admit(self, key: ApiKey, reserve_tokens: int) -> Reservation:
        """Count one request for ``key`` and reserve ``reserve_tokens``; ``RateLimitError`` when over a limit,
        ``LimiterUnavailable`` when the counters cannot be reached."""

    @abstractmethod
    def settle(self, key: ApiKey, reservation: Reservation, tokens: int) -> Awaitable[None] | None:
        """Replace the reservation by the request's real token usage (prompt + completion): done at once, or,
        where that takes I/O, returned as an awaitable for the caller to run (``LimiterUnavailable`` from it
        when the counters cannot be reached)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        pass


class InMemoryRateLimiter(RateLimiter):
    """One process's counters (the event loop serialises admit/settle, so check-and-count is atomic)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], list[int]] = {}  # (key, window) -> [requests, tokens]

    async def admit(self, key: ApiKey, reserve_tokens: int) -> Reservation:
        window, weight = _position(time.time())
        current = self._counts.setdefault((key.name, window), [0, 0])
        previous = self._counts.get((key.name, window - 1), [0, 0])
        if key.requests_per_minute is not None:
            used = current[0] + previous[0] * weight
            if used + 1 > key.requests_per_minute:
                raise _refuse(key, "requests", key.requests_per_minute,
                              _retry_after(current[0], previous[0], weight, key.requests_per_minute, 1))
        reserve = min(reserve_tokens, key.tokens_per_minute) if key.tokens_per_minute else 0
        if key.tokens_per_minute is not None:
            used = current[1] + previous[1] * weight
            if used + reserve > key.tokens_per_minute:
                raise _refuse(key, "tokens", key.tokens_per_minute,
                              _retry_after(current[1], previous[1], weight, key.tokens_per_minute, reserve))
        current[0] += 1
        current[1] += reserve
        for old in [k for k in self._counts if k[1] < window - 1]:
            del self._counts[old]
        return Reservation(window, reserve)

    def settle(self, key: ApiKey, reservation: Reservation, tokens: int) -> None:
        counts = self._counts.get((key.name, reservation.window))
        if counts is not None:
            counts[1] += tokens - reservation.tokens


# KEYS: requests (this window), requests (previous), tokens (this window), tokens (previous) - one hash tag.
# ARGV: rpm (0 = none), tpm (0 = none), tokens to reserve, weight of the previous window, ttl seconds.
# Returns {0} when admitted; {1, current, previous} over requests; {2, current, previous} over tokens.
_ADMIT = """
local rpm, tpm, reserve, weight = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local requests = tonumber(redis.call('GET', KEYS[1]) or '0')
local previous_requests = tonumber(redis.call('GET', KEYS[2]) or '0')
if rpm > 0 and requests + previous_requests * weight + 1 > rpm then return {1, requests, previous_requests} end
local tokens = tonumber(redis.call('GET', KEYS[3]) or '0')
local previous_tokens = tonumber(redis.call('GET', KEYS[4]) or '0')
if tpm > 0 and tokens + previous_tokens * weight + reserve > tpm then return {2, tokens, previous_tokens} end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
if reserve > 0 then
  redis.call('INCRBY', KEYS[3], reserve)
  redis.call('EXPIRE', KEYS[3], ARGV[5])
end
return {0}
"""
# KEYS: token counters of one API key (one hash tag). ARGV: the change of each, then the ttl seconds.
_SETTLE = """
for i, name in ipairs(KEYS) do
  redis.call('INCRBY', name, ARGV[i])
  redis.call('EXPIRE', name, ARGV[#ARGV])
end
return 0
"""
# Settlements leave for Redis together, at most this many seconds after the request ended: one script call per
# API key and batch instead of one per request (that call was ~13% of a Redis-limited request's CPU).
SETTLE_BATCH_S = 0.02


class RedisRateLimiter(RateLimiter):
    """Counters in Redis, shared by every gateway replica; every call is bounded by ``timeout_s``."""

    def __init__(self, url: str, *, timeout_s: float = 0.25, prefix: str = "llm-gateway:limits") -> None:
        import redis.asyncio as redis

        self._redis = redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                     retry_on_timeout=False)
        self._timeout_s = timeout_s
        self._prefix = prefix
        self._admit = self._redis.register_script(_ADMIT)
        self._settle = self._redis.register_script(_SETTLE)
        self._unsettled: dict[str, dict[str, int]] = {}  # API key name -> token counter -> change
        self._flush_due = False

    def _key(self, key: ApiKey, window: int, what: str) -> str:
        # The braces are a Redis Cluster hash tag: every key of one API key lands in the same slot.
        return f"{{{self._prefix}:{key.name}}}:{window}:{what}"

    async def _run(self, script, keys: list[str], args: list[object]):  # type: ignore[no-untyped-def]
        from redis.exceptions import RedisError

        try:
            async with asyncio.timeout(self._timeout_s * 2):
                return await script(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise LimiterUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def admit(self, key: ApiKey, reserve_tokens: int) -> Reservation:
        window, weight = _position(time.time())
        reserve = min(reserve_tokens, key.tokens_per_minute) if key.tokens_per_minute else 0
        keys = [self._key(key, window, "requests"), self._key(key, window - 1, "requests"),
                self._key(key, window, "tokens"), self._key(key, window - 1, "tokens")]
        verdict = await self._run(self._admit, keys, [key.requests_per_minute or 0, key.tokens_per_minute or 0,
                                                      reserve, repr(weight), WINDOW_S * 3])
        if verdict[0] == 1:
            limit = key.requests_per_minute or 0
            raise _refuse(key, "requests", limit, _retry_after(int(verdict[1]), int(verdict[2]), weight, limit, 1))
        if verdict[0] == 2:
            limit = key.tokens_per_minute or 0
            raise _refuse(key, "tokens", limit, _retry_after(int(verdict[1]), int(verdict[2]), weight, limit,
                                                             reserve))
        return Reservation(window, reserve)

    def settle(self, key: ApiKey, reservation: Reservation, tokens: int) -> Awaitable[None] | None:
        """Queued for the next batch; the first settlement of a batch returns the awaitable that sends it (it
        must be run: until it has, later settlements wait for it)."""
        if tokens == reservation.tokens:
            return None
        counters = self._unsettled.setdefault(key.name, {})
        counter = self._key(key, reservation.window, "tokens")
        counters[counter] = counters.get(counter, 0) + tokens - reservation.tokens
        if self._flush_due:
            return None
        self._flush_due = True
        return self._flush_after(SETTLE_BATCH_S)

    async def _flush_after(self, delay_s: float) -> None:
        try:
            await asyncio.sleep(delay_s)
        finally:
            batch, self._unsettled, self._flush_due = self._unsettled, {}, False
        # One call per API key: a script's keys must share a hash slot (Redis Cluster).
        await asyncio.gather(*(self._run(self._settle, list(counters), [*counters.values(), WINDOW_S * 3])
                               for counters in batch.values()))

    async def aclose(self) -> None:
        await self._redis.aclose()


def build_rate_limiter(redis_url: str | None, timeout_s: float = 0.25) -> RateLimiter:
    return RedisRateLimiter(redis_url, timeout_s=timeout_s) if redis_url else InMemoryRateLimiter()


def limiter_unavailable_error() -> UpstreamUnavailableError:
    return UpstreamUnavailableError("the rate limiter's store (Redis) is unavailable and limits.on_limiter_error "
                                    "is 'closed'; retry shortly", code="rate_limiter_unavailable", retry_after_s=1.0)
