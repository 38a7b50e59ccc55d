"""Per-key limits under pressure: the sliding window at a minute boundary, reservations under concurrency,
and a real Redis that is stopped or frozen (fail-open and fail-closed), with keys that share one cluster slot."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest

from gateway.core.errors import RateLimitError
from gateway.engine import limits
from gateway.engine.auth import ApiKey
from gateway.engine.limits import InMemoryRateLimiter, RedisRateLimiter
from tests.support.upstream import Reply

KEY = "sk-limits-test-0123456789"
MESSAGES = [{"role": "user", "content": "hi"}]


def _key(**limits_: int) -> ApiKey:
    return ApiKey(name="team", requests_per_minute=limits_.get("rpm"), tokens_per_minute=limits_.get("tpm"))


def _config(upstream, **extra) -> dict:
    auth = {"api_keys": [{"key": KEY, "name": "team", **extra.pop("key_limits", {})}]}
    return {"models": [{"name": "pub", "backend": "openai", "base_url": upstream.base_url}], "auth": auth, **extra}


def test_the_window_slides_over_a_minute_boundary(monkeypatch):
    """A fixed window resets at :00 and lets a key send twice its limit within a second; the sliding window
    still counts the minute before, weighted by how much of it is inside the last 60 s."""
    now = [60 * 1000 + 59.5]
    monkeypatch.setattr(limits.time, "time", lambda: now[0])
    limiter, key = InMemoryRateLimiter(), _key(rpm=10)

    async def burst(count: int) -> int:
        admitted = 0
        for _ in range(count):
            try:
                await limiter.admit(key, 0)
                admitted += 1
            except RateLimitError:
                pass
        return admitted

    assert asyncio.run(burst(10)) == 10
    now[0] += 1.0  # 0.5 s into the next minute: the previous one still weighs 99%
    assert asyncio.run(burst(10)) == 0
    now[0] += 30  # half of it has slid out
    assert asyncio.run(burst(10)) == 5
    with pytest.raises(RateLimitError) as refused:
        asyncio.run(limiter.admit(key, 0))
    assert 1 <= refused.value.retry_after_s <= 60


def test_reservations_hold_under_concurrency(upstream, make_gateway):
    """tokens_per_minute is reserved on admission: five concurrent requests that may each use ~43 tokens
    against a budget of 100 are not all admitted before any of them reports its usage."""
    upstream.responder = lambda body: Reply(text="ok", delay_s=0.5)
    gateway = make_gateway(_config(upstream, key_limits={"tokens_per_minute": 100}))

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"model": "pub", "messages": MESSAGES, "max_tokens": 40}
            requests = [client.post(f"{gateway.base_url}/chat/completions", json=body,
                                    headers={"authorization": f"Bearer {KEY}"}) for _ in range(5)]
            return sorted(r.status_code for r in await asyncio.gather(*requests))

    assert asyncio.run(burst()) == [200, 200, 429, 429, 429]


def test_redis_keys_of_one_api_key_share_a_cluster_slot():
    from redis.crc import key_slot

    limiter = RedisRateLimiter("redis://127.0.0.1:1/0")
    key = _key(rpm=1, tpm=1)
    names = [limiter._key(key, window, what) for window in (10, 11) for what in ("requests", "tokens")]
    assert len({key_slot(name.encode()) for name in names}) == 1
    assert len({key_slot(limiter._key(_key(), 10, "requests").encode()),
                key_slot(RedisRateLimiter("redis://127.0.0.1:1/0", prefix="other")._key(key, 10, "x").encode())}) == 2


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_a_stopped_redis(upstream, make_gateway, redis_server, mode):
    gateway = make_gateway(_config(upstream, key_limits={"requests_per_minute": 100},
                                   limits={"redis_url": redis_server.url, "on_limiter_error": mode}))
    headers = {"authorization": f"Bearer {KEY}"}
    body = {"model": "pub", "messages": MESSAGES}
    assert httpx.post(f"{gateway.base_url}/chat/completions", json=body, headers=headers).status_code == 200
    redis_server.process.kill()
    redis_server.process.wait(10)
    started = time.monotonic()
    response = httpx.post(f"{gateway.base_url}/chat/completions", json=body, headers=headers, timeout=10)
    assert time.monotonic() - started < 2
    if mode == "open":
        assert response.status_code == 200
    else:
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "rate_limiter_unavailable"
    assert "gateway_rate_limiter_errors_total 1.0" in httpx.get(f"{gateway.url}/metrics").text


def test_a_frozen_redis_does_not_hang_requests(upstream, make_gateway, redis_server):
    gateway = make_gateway(_config(upstream, key_limits={"requests_per_minute": 100},
                                   limits={"redis_url": redis_server.url, "redis_timeout_s": 0.2}))
    headers = {"authorization": f"Bearer {KEY}"}
    body = {"model": "pub", "messages": MESSAGES}
    assert httpx.post(f"{gateway.base_url}/chat/completions", json=body, headers=headers).status_code == 200
    redis_server.process.send_signal(signal.SIGSTOP)  # connections stay open, nothing answers
    try:
        started = time.monotonic()
        response = httpx.post(f"{gateway.base_url}/chat/completions", json=body, headers=headers, timeout=10)
        elapsed = time.monotonic() - started
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    assert response.status_code == 200 and elapsed < 1.5


def test_redis_settlements_leave_in_one_batch_per_api_key(redis_server):
    """Real usage replaces the reservations in Redis: the settlements of many requests (two API keys) leave
    together, one script call per key, and the next request's settlement starts the next batch."""
    import redis

    team, other = _key(tpm=100_000), ApiKey(name="other", requests_per_minute=None, tokens_per_minute=100_000)

    async def run() -> list[object]:
        limiter = RedisRateLimiter(redis_server.url)
        try:
            reservations = [(key, await limiter.admit(key, 100)) for key in (team, other, team, team, other)]
            pending = [limiter.settle(key, reservation, 30) for key, reservation in reservations]
            await asyncio.gather(*[p for p in pending if p is not None])
            later = limiter.settle(team, await limiter.admit(team, 100), 7)
            assert later is not None
            await later
            return pending
        finally:
            await limiter.aclose()

    client = redis.Redis.from_url(redis_server.url)

    def script_calls() -> int:  # successful ones (a script's first call fails with NOSCRIPT, then it is loaded)
        stats = client.info("commandstats").get("cmdstat_evalsha", {})
        return stats.get("calls", 0) - stats.get("failed_calls", 0)

    before = script_calls()
    pending = asyncio.run(run())
    assert sum(p is not None for p in pending) == 1  # five settlements, one batch
    tokens = {name.decode(): int(client.get(name)) for name in client.scan_iter("*:tokens")}
    assert sum(v for k, v in tokens.items() if "team}" in k) == 3 * 30 + 7
    assert sum(v for k, v in tokens.items() if "other}" in k) == 2 * 30
    # 6 admissions + 2 script calls for the first batch (one per API key) + 1 for the later one
    assert script_calls() - before == 9


def test_a_gateway_charges_real_usage_to_redis_and_flushes_on_shutdown(upstream, make_gateway, redis_server):
    import redis

    gateway = make_gateway(_config(upstream, key_limits={"tokens_per_minute": 100_000},
                                   limits={"redis_url": redis_server.url}))
    client = gateway.client(api_key=KEY)
    used = sum(client.chat.completions.create(model="pub", messages=MESSAGES, max_tokens=200).usage.total_tokens
               for _ in range(3))
    gateway.server.stop()  # the last settlement is still on its way: shutdown sends it
    counters = redis.Redis.from_url(redis_server.url)
    assert sum(int(counters.get(name)) for name in counters.scan_iter("*team}*:tokens")) == used
