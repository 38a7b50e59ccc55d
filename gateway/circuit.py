"""Circuit breakers: a backend that keeps failing is taken out of routing and probed back in."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures. While open the backend is skipped by routing, and a
    probe (the backend's health check, e.g. vLLM's ``GET /health``) runs every ``open_seconds``; the first
    healthy probe, or any successful request, closes it again."""

    def __init__(self, name: str, *, threshold: int, open_seconds: float,
                 probe: Callable[[], Awaitable[tuple[bool, str]]],
                 on_change: Callable[[str, bool], None] | None = None) -> None:
        self.name, self.threshold, self.open_seconds = name, threshold, open_seconds
        self._probe, self._on_change = probe, on_change
        self.failures = 0
        self.opened_at: float | None = None
        self._prober: asyncio.Task[None] | None = None

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def record_success(self) -> None:
        self.failures = 0
        if self.is_open:
            self._close("a request succeeded")

    def record_failure(self) -> None:
        self.failures += 1
        if not self.is_open and self.failures >= self.threshold:
            self.opened_at = time.monotonic()
            logger.warning("circuit opened", extra={"fields": {"model": self.name, "failures": self.failures}})
            if self._on_change:
                self._on_change(self.name, True)
            self._prober = asyncio.get_running_loop().create_task(self._probe_until_healthy())

    def _close(self, reason: str) -> None:
        self.opened_at, self.failures = None, 0
        logger.info("circuit closed", extra={"fields": {"model": self.name, "reason": reason}})
        if self._on_change:
            self._on_change(self.name, False)
        if self._prober is not None and self._prober is not asyncio.current_task():
            self._prober.cancel()
        self._prober = None

    async def _probe_until_healthy(self) -> None:
        while self.is_open:
            await asyncio.sleep(self.open_seconds)
            try:
                healthy, _ = await self._probe()
            except Exception:  # a probe that crashes counts as unhealthy
                healthy = False
            if healthy and self.is_open:
                self._close("health probe passed")
                return

    def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
