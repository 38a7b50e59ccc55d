"""Circuit breakers: a backend that keeps failing is taken out of routing and let back in on trial.

States: **closed** (routed to) → ``threshold`` consecutive backend faults → **open** (skipped; its health,
e.g. vLLM's ``GET /health``, is probed every ``open_seconds``) → a healthy probe → **half-open** (routed to
again) → the next real request decides: success closes it, a fault opens it again. A passing health check
alone never closes a circuit: a server whose ``/health`` is fine but which cannot serve the model (a 404 from
a misconfigured upstream) would otherwise flap between open and closed forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from gateway.core.errors import GatewayError, OverloadedError, RateLimitError, UpstreamError, UpstreamTimeoutError

# Failures before any byte reached the client that the next candidate (another replica, another model) may fix.
FAILOVER_ERRORS = (UpstreamError, OverloadedError, RateLimitError)

logger = logging.getLogger(__name__)
State = Literal["closed", "open", "half_open"]
STATE_GAUGE = {"closed": 0.0, "half_open": 0.5, "open": 1.0}


class CircuitBreaker:
    def __init__(self, name: str, *, threshold: int, open_seconds: float,
                 probe: Callable[[], Awaitable[tuple[bool, str]]],
                 on_change: Callable[[str, State], None] | None = None) -> None:
        self.name, self.threshold, self.open_seconds = name, threshold, open_seconds
        self._probe, self._on_change = probe, on_change
        self.failures = 0
        self.state: State = "closed"
        self.opened_at: float | None = None
        self._prober: asyncio.Task[None] | None = None

    @property
    def is_open(self) -> bool:
        """Whether routing should skip the backend (half-open lets requests through on trial)."""
        return self.state == "open"

    def record_success(self) -> None:
        self.failures = 0
        if self.state != "closed":
            self._set("closed", "a request succeeded")

    def record_failure(self) -> None:
        self.failures += 1
        if self.state == "half_open" or (self.state == "closed" and self.failures >= self.threshold):
            self.opened_at = time.monotonic()
            self._set("open", f"{self.failures} consecutive failures")
            self._prober = asyncio.get_running_loop().create_task(self._probe_until_healthy())

    def _set(self, state: State, reason: str) -> None:
        self.state = state
        if state != "open":
            self.opened_at = None
        log = logger.warning if state == "open" else logger.info
        log("circuit %s", state.replace("_", "-"), extra={"fields": {"model": self.name, "reason": reason}})
        if self._on_change:
            self._on_change(self.name, state)
        if state == "closed" and self._prober is not None and self._prober is not asyncio.current_task():
            self._prober.cancel()
            self._prober = None

    async def _probe_until_healthy(self) -> None:
        while self.state == "open":
            await asyncio.sleep(self.open_seconds)
            try:
                healthy, _ = await self._probe()
            except Exception:  # a probe that crashes counts as unhealthy
                healthy = False
            if healthy and self.state == "open":
                self._set("half_open", "health probe passed; the next request decides")
                return

    def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()


def is_backend_fault(exc: GatewayError, streamed: bool) -> bool:
    """Whether a failure says something about the backend's health (what circuit breakers count): refused or
    broken connections and 5xx do; a full queue or an upstream 429 is load, not a fault; a timeout counts only
    while waiting for a stream's first chunk (a whole long generation that outlives timeout_s is the
    request's size, not the server's health)."""
    if isinstance(exc, OverloadedError | RateLimitError):
        return False
    if isinstance(exc, UpstreamTimeoutError):
        return streamed
    return isinstance(exc, UpstreamError)
