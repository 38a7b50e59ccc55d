"""Dollar budgets without sockets: the reservation rule, the period, and a counter's start from the store read once
however many requests wait for it, surviving a waiter that leaves and a store that fails."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime

import pytest

from gateway.core.errors import BudgetExceededError
from gateway.engine.auth import ApiKey
from gateway.engine.budgets import InMemoryBudgets, current_period
from gateway.engine.limits import LimiterUnavailable

KEY = ApiKey("team-a", None, None, budget_usd=1.0, budget_period="day")


class SlowStore:
    """A usage store whose spend query waits for ``release`` (and fails while ``failing``)."""

    def __init__(self, spent: float) -> None:
        self.value, self.calls, self.failing = spent, 0, False
        self.release = threading.Event()

    def spent(self, key_name: str, since: datetime | None) -> float:
        self.calls += 1
        self.release.wait(10)
        if self.failing:
            raise OSError("store down")
        return self.value


def test_reservations_never_pass_the_budget_and_settle_to_the_real_cost():
    async def run() -> None:
        store = SlowStore(0.25)
        store.release.set()
        budgets = InMemoryBudgets(store)  # type: ignore[arg-type]
        holds = [await budgets.reserve(KEY, 0.25) for _ in range(3)]  # 0.25 recorded + 3 x 0.25 = the budget
        with pytest.raises(BudgetExceededError, match=r"1.00 of 1.00 USD spent this day .*resets at"):
            await budgets.reserve(KEY, 0.01)
        for hold in holds:
            budgets.settle(KEY, hold, 0.05)  # cheaper than reserved: room again
        assert (await budgets.reserve(KEY, 0.5)).reserved == 500_000_000
        assert store.calls == 1  # the counter started from the store once

    asyncio.run(run())


def test_the_counter_starts_from_one_read_that_a_leaving_waiter_does_not_cancel():
    async def run() -> None:
        store = SlowStore(0.5)
        budgets = InMemoryBudgets(store)  # type: ignore[arg-type]
        first = asyncio.ensure_future(budgets.reserve(KEY, 0.1))
        second = asyncio.ensure_future(budgets.reserve(KEY, 0.1))
        await asyncio.sleep(0.05)
        first.cancel()  # its client left while the store was read
        await asyncio.sleep(0.05)
        store.release.set()
        assert (await second).reserved == 100_000_000
        assert first.cancelled() and store.calls == 1
        third = await asyncio.wait_for(budgets.reserve(KEY, 0.1), 5)  # nothing hangs afterwards
        assert third.reserved == 100_000_000

    asyncio.run(run())


def test_a_store_that_fails_fails_every_waiter_and_the_next_request_tries_again():
    async def run() -> None:
        store = SlowStore(0.0)
        store.failing = True
        budgets = InMemoryBudgets(store)  # type: ignore[arg-type]
        waiting = [asyncio.ensure_future(budgets.reserve(KEY, 0.1)) for _ in range(3)]
        await asyncio.sleep(0.05)
        store.release.set()
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(o, LimiterUnavailable) for o in outcomes) and store.calls == 1
        store.failing = False
        assert (await asyncio.wait_for(budgets.reserve(KEY, 0.1), 5)).reserved == 100_000_000
        assert store.calls == 2

    asyncio.run(run())


def test_periods_are_utc_days_months_or_everything():
    day = current_period("day", datetime(2026, 12, 31, 23, 59))
    month = current_period("month", datetime(2026, 12, 31, 23, 59))
    assert (day.id, day.start, day.end) == ("day:2026-12-31", datetime(2026, 12, 31), datetime(2027, 1, 1))
    assert (month.id, month.start, month.end) == ("month:2026-12", datetime(2026, 12, 1), datetime(2027, 1, 1))
    assert current_period("total").end is None
    assert current_period("day") is current_period("day")  # cached until the period ends
