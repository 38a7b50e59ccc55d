"""Dollar budgets per API key (``budget_usd`` per ``budget_period``: a UTC day, a UTC month, or in total).

The same reserve / settle as the token limits (``engine/limits.py``): admission reserves the request's worst-case
cost (its prompt, estimated, plus its completion limit, at the prices of the most expensive model it may reach)
and is refused when what is spent and reserved would pass the budget; the request's end replaces the reservation
by its real cost. So concurrent requests cannot overrun a budget between admission and usage: what is admitted
never passes the budget while requests cost at most their reservation (a prompt longer in tokens than estimated
can pass it by that difference).

The spend counter of a key and period lives in memory (one process) or in Redis (``limits.redis_url``: every
worker and replica shares it; check-and-reserve is one Lua script). It is durable through the usage store: a
counter that does not exist yet (a new process, a new period, Redis restarted empty) starts from the spend the
store has recorded for that key and period. Amounts are counted in integer nano-dollars, so sums are exact.
"""

from __future__ import annotations

import asyncio
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateway.core.errors import BudgetExceededError
from gateway.engine.auth import ApiKey
from gateway.engine.limits import LimiterUnavailable
from gateway.engine.usage.store import UsageStore

NANO_PER_USD = 1_000_000_000


def nano(usd: float) -> int:
    return round(usd * NANO_PER_USD)


@dataclass(frozen=True)
class Period:
    """One budget period of a key: ``id`` names its counter; ``start`` / ``end`` are naive UTC (None: unbounded)."""

    id: str
    start: datetime | None
    end: datetime | None


def current_period(kind: str, now: datetime | None = None) -> Period:
    """The period ``now`` (default: this moment, UTC) is in; this moment's is cached until the period ends (it is
    asked for on every budgeted request)."""
    if now is None:
        cached = _CURRENT.get(kind)
        if cached is not None and time.time() < cached[1]:
            return cached[0]
    period = _period_at(kind, now or datetime.now(UTC).replace(tzinfo=None))
    if now is None:
        _CURRENT[kind] = (period, math.inf if period.end is None else period.end.replace(tzinfo=UTC).timestamp())
    return period


_CURRENT: dict[str, tuple[Period, float]] = {}  # kind -> (the current period, when it ends: epoch seconds)


def _period_at(kind: str, now: datetime) -> Period:
    if kind == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return Period(f"day:{start:%Y-%m-%d}", start, start + timedelta(days=1))
    if kind == "month":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=32)).replace(day=1)
        return Period(f"month:{start:%Y-%m}", start, end)
    return Period("total", None, None)


@dataclass(frozen=True)
class BudgetHold:
    """What an admitted request holds against its key's budget: nano-dollars reserved in one period."""

    period: Period
    reserved: int


def _refuse(key: ApiKey, period: Period, spent: int, reserve: int) -> BudgetExceededError:
    assert key.budget_usd is not None
    what = "in total" if period.end is None else f"this {key.budget_period} (UTC)"
    resets = "" if period.end is None else f"; it resets at {period.end:%Y-%m-%dT%H:%M:%SZ}"
    message = (f"budget of key '{key.name}' reached: {spent / NANO_PER_USD:.2f} of {key.budget_usd:.2f} USD spent "
               f"{what}, and this request may cost up to {reserve / NANO_PER_USD:.6f} USD (a lower max_tokens "
               f"reserves less){resets}")
    retry = None if period.end is None else max(1.0, (period.end - datetime.now(UTC).replace(tzinfo=None))
                                                .total_seconds())
    return BudgetExceededError(message, retry_after_s=retry)


class BudgetLedger(ABC):
    """Reserve and settle dollars against API keys' budgets."""

    def __init__(self, store: UsageStore) -> None:
        self.store = store
        self._reading: dict[tuple[str, str], asyncio.Future[int]] = {}

    @abstractmethod
    async def reserve(self, key: ApiKey, worst_case_usd: float) -> BudgetHold:
        """Reserve ``worst_case_usd`` for one request of ``key`` (which has a budget): ``BudgetExceededError`` when
        it would pass the budget, ``LimiterUnavailable`` when the counter or the store cannot be reached."""

    @abstractmethod
    def settle(self, key: ApiKey, hold: BudgetHold, cost_usd: float) -> Awaitable[None] | None:
        """Replace the reservation by the request's real cost (an awaitable where that takes I/O)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        pass

    async def _recorded(self, key: ApiKey, period: Period) -> int:
        """Nano-dollars the store has for ``key`` in ``period`` (where a new counter starts), read once however many
        requests of this process wait for it; a failure is each waiter's ``LimiterUnavailable`` and the next
        request tries again."""
        slot = (key.name, period.id)
        reading = self._reading.get(slot)
        if reading is None:
            reading = asyncio.ensure_future(self._read_store(key, period))
            self._reading[slot] = reading
            reading.add_done_callback(lambda _: self._reading.pop(slot, None))
        # Shielded: a waiter that is cancelled (its client left) does not cancel the read the others wait for.
        return await asyncio.shield(reading)

    async def _read_store(self, key: ApiKey, period: Period) -> int:
        try:
            return nano(await asyncio.to_thread(self.store.spent, key.name, period.start))
        except Exception as exc:  # the store down, or a schema it cannot use: no budget can be checked
            raise LimiterUnavailable(f"usage store: {exc}") from exc


class InMemoryBudgets(BudgetLedger):
    """One process's counters; the event loop serialises check-and-reserve."""

    def __init__(self, store: UsageStore) -> None:
        super().__init__(store)
        self._spent: dict[tuple[str, str], int] = {}

    async def reserve(self, key: ApiKey, worst_case_usd: float) -> BudgetHold:
        assert key.budget_usd is not None
        period = current_period(key.budget_period)
        slot = (key.name, period.id)
        if slot not in self._spent:
            recorded = await self._recorded(key, period)
            self._spent.setdefault(slot, recorded)  # the first waiter to resume starts it; the others find it
        reserve = nano(worst_case_usd)
        spent = self._spent[slot]
        if spent + reserve > nano(key.budget_usd):
            raise _refuse(key, period, spent, reserve)
        self._spent[slot] = spent + reserve
        return BudgetHold(period, reserve)

    def settle(self, key: ApiKey, hold: BudgetHold, cost_usd: float) -> None:
        slot = (key.name, hold.period.id)
        if slot in self._spent:
            self._spent[slot] += nano(cost_usd) - hold.reserved


# KEYS: the key's spend counter for the period. ARGV: budget, reserve (nano-dollars).
# Returns {0, spent} when reserved, {1, spent} over the budget, {2} when the counter does not exist yet.
_RESERVE = """
local spent = redis.call('GET', KEYS[1])
if not spent then return {2} end
spent = tonumber(spent)
local budget, reserve = tonumber(ARGV[1]), tonumber(ARGV[2])
if spent + reserve > budget then return {1, spent} end
redis.call('INCRBY', KEYS[1], reserve)
return {0, spent}
"""
# KEYS: the counter. ARGV: the change. A counter that is gone (Redis restarted empty) is left alone: the next
# reservation starts it from the store, which has the request's row, instead of from a lone settlement.
_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('INCRBY', KEYS[1], ARGV[1]) end
return 0
"""


class RedisBudgets(BudgetLedger):
    """Counters in Redis, shared by every worker and replica; every call bounded by ``timeout_s``."""

    def __init__(self, store: UsageStore, url: str, *, timeout_s: float = 0.25,
                 prefix: str = "llm-gateway:budget") -> None:
        import redis.asyncio as redis

        super().__init__(store)
        self._redis = redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                     retry_on_timeout=False)
        self._timeout_s, self._prefix = timeout_s, prefix
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle_script = self._redis.register_script(_SETTLE)

    def _counter(self, key: ApiKey, period: Period) -> str:
        return f"{{{self._prefix}:{key.name}}}:{period.id}"

    @staticmethod
    def _expires_at(period: Period) -> int | None:
        """When Redis forgets the counter: a day after its period ends (late settlements land); never for total."""
        if period.end is None:
            return None
        return int((period.end + timedelta(days=1)).replace(tzinfo=UTC).timestamp())

    async def _call(self, work: Awaitable[object]) -> object:
        from redis.exceptions import RedisError

        try:
            async with asyncio.timeout(self._timeout_s * 2):
                return await work
        except (RedisError, OSError, TimeoutError) as exc:
            raise LimiterUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def reserve(self, key: ApiKey, worst_case_usd: float) -> BudgetHold:
        assert key.budget_usd is not None
        period = current_period(key.budget_period)
        counter = self._counter(key, period)
        reserve = nano(worst_case_usd)
        args = [nano(key.budget_usd), reserve]
        verdict = await self._call(self._reserve(keys=[counter], args=args))
        if verdict[0] == 2:  # type: ignore[index]
            recorded = await self._recorded(key, period)
            expires = self._expires_at(period)
            await self._call(self._redis.set(counter, recorded, nx=True, exat=expires))
            verdict = await self._call(self._reserve(keys=[counter], args=args))
        if verdict[0] == 1:  # type: ignore[index]
            raise _refuse(key, period, int(verdict[1]), reserve)  # type: ignore[index]
        if verdict[0] != 0:  # type: ignore[index]
            raise LimiterUnavailable(f"budget counter {counter} vanished while it was started")
        return BudgetHold(period, reserve)

    def settle(self, key: ApiKey, hold: BudgetHold, cost_usd: float) -> Awaitable[None] | None:
        change = nano(cost_usd) - hold.reserved
        if change == 0:
            return None
        return self._settle(self._counter(key, hold.period), change)

    async def _settle(self, counter: str, change: int) -> None:
        await self._call(self._settle_script(keys=[counter], args=[change]))

    async def aclose(self) -> None:
        await self._redis.aclose()


def build_budgets(store: UsageStore, redis_url: str | None, timeout_s: float = 0.25) -> BudgetLedger:
    return RedisBudgets(store, redis_url, timeout_s=timeout_s) if redis_url else InMemoryBudgets(store)
