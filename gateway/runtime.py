"""The running gateway: configuration, model pool, service and metrics, with their life cycle."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from gateway.audio import SpeechRequest, TranscriptionRequest
from gateway.auth import ApiKey, ApiKeyStore
from gateway.backends import Request
from gateway.config import ConfigError, GatewayConfig
from gateway.errors import RateLimitError, UpstreamUnavailableError
from gateway.limits import LimiterUnavailable, Reservation, build_rate_limiter, limiter_unavailable_error
from gateway.metrics import GatewayMetrics, RequestRecord
from gateway.pool import ModelPool
from gateway.protocol import EmbeddingRequest
from gateway.rerank import RerankRequest
from gateway.reranking import Reranker
from gateway.routing import CHARACTERS_PER_TOKEN, RoutedModel, prompt_characters
from gateway.serving import CompletionService

# What per-key limits admit: every request the API takes (the estimate reads its text and completion limit).
AdmittedRequest = Request | EmbeddingRequest | SpeechRequest | TranscriptionRequest | RerankRequest

logger = logging.getLogger(__name__)


class Gateway:
    def __init__(self, config: GatewayConfig, cache_dir: Path) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        self.pool = ModelPool(config, cache_dir)
        self.service = CompletionService(self.pool, self.metrics, self._load_router())
        self.reranker = Reranker(self.service, config.rerank)
        self.started_at = int(time.time())
        self.keys = ApiKeyStore(config.auth)
        self.limiter = build_rate_limiter(config.limits.redis_url, config.limits.redis_timeout_s)
        self._background: set[asyncio.Task[None]] = set()
        self.draining = False  # SIGTERM received: /ready says 503, requests are still served
        self.stopping = False  # the listener is closed: new work refused, in-flight work given its grace

    def _load_router(self) -> RoutedModel | None:
        """The routed model, loaded now so a bad checkpoint or mapping stops the start with a clear message."""
        if self.config.router is None:
            return None
        from routers.checkpoint import load_router

        try:
            router = load_router(self.config.router.checkpoint)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"router.checkpoint: {exc}") from None
        return RoutedModel(self.config.router, self.config, router, self.metrics)

    def begin_drain(self) -> None:
        """SIGTERM: /ready goes 503 at once; requests are still served (for ``drain_delay_s``, until the server
        stops accepting, see ``begin_stop``)."""
        if not self.draining:
            self.draining = True
            logger.info("draining: /ready reports 503", extra={"fields": {
                "delay_s": self.config.server.drain_delay_s}})

    def begin_stop(self) -> None:
        """The server stops accepting: refuse new work; after ``shutdown_grace_s`` less a second, end whatever
        is still running with an error (upstream connections closed, generations stopped) so no response is cut
        off silently when the server stops."""
        self.begin_drain()
        if self.stopping:
            return
        self.stopping = True
        grace = self.config.server.shutdown_grace_s
        logger.info("draining", extra={"fields": {"grace_s": grace}})
        loop = asyncio.get_running_loop()
        loop.call_later(max(0.0, grace - 1.0), lambda: self._keep(loop.create_task(self.pool.abort())))

    def _keep(self, task: asyncio.Task[None]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def admit(self, key: ApiKey | None, request: AdmittedRequest) -> Reservation | None:
        """Refuse work while stopping; per-key limits, before any upstream call (429 with Retry-After). The
        tokens the request may use are reserved now and settled with its real usage when it ends."""
        if self.stopping:
            raise UpstreamUnavailableError("the gateway is shutting down; retry on another replica",
                                           code="shutting_down")
        if key is None or (key.requests_per_minute is None and key.tokens_per_minute is None):
            return None
        try:
            return await self.limiter.admit(key, self._token_estimate(request))
        except RateLimitError:
            self.metrics.rate_limited.labels(key.name, "minute").inc()
            raise
        except LimiterUnavailable as exc:
            self.metrics.limiter_errors.inc()
            logger.warning("rate limiter unavailable", extra={"fields": {"error": str(exc)[:200]}})
            if self.config.limits.on_limiter_error == "closed":
                raise limiter_unavailable_error() from None
            return None

    def _token_estimate(self, request: AdmittedRequest) -> int:
        limit = request.completion_token_limit
        completion = self.config.limits.reserve_completion_tokens if limit is None else limit
        return prompt_characters(request) // CHARACTERS_PER_TOKEN + completion

    def new_record(self, endpoint: str, model: str, log_fields: dict[str, Any], key: ApiKey | None = None,
                   reservation: Reservation | None = None) -> RequestRecord:
        record = RequestRecord(self.metrics, endpoint, self.service.metric_label(model), log_fields)
        record.key_name = key.name if key is not None else None
        if key is not None and reservation is not None and key.tokens_per_minute is not None:
            record.on_finish = lambda tokens: self._settle(key, reservation, tokens)
        return record

    def _settle(self, key: ApiKey, reservation: Reservation, tokens: int) -> None:
        """Charge the request's real usage to its key (what needs I/O runs in the background: the response is
        not delayed)."""
        pending = self.limiter.settle(key, reservation, tokens)
        if pending is not None:
            self._keep(asyncio.ensure_future(self._settled(pending)))

    async def _settled(self, pending: Awaitable[None]) -> None:
        try:
            await pending
        except LimiterUnavailable as exc:
            self.metrics.limiter_errors.inc()
            logger.warning("rate limiter unavailable at settlement", extra={"fields": {"error": str(exc)[:200]}})

    async def start(self) -> None:
        await self.pool.start()

    async def aclose(self) -> None:
        self.service.close()
        if self._background:
            await asyncio.wait(self._background, timeout=5)
        await self.limiter.aclose()
        await self.pool.aclose()
        self.metrics.close()
