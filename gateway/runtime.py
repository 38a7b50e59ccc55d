"""The running gateway: configuration, model pool, service and metrics, with their life cycle."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, GatewayConfig
from gateway.metrics import GatewayMetrics, RequestRecord
from gateway.pool import ModelPool
from gateway.routing import RoutedModel
from gateway.serving import CompletionService


class Gateway:
    def __init__(self, config: GatewayConfig, cache_dir: Path) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        self.pool = ModelPool(config, cache_dir)
        self.service = CompletionService(self.pool, self.metrics, self._load_router(), config.router)
        self.started_at = int(time.time())

    def _load_router(self) -> RoutedModel | None:
        """The routed model, loaded now so a bad checkpoint or mapping stops the start with a clear message."""
        if self.config.router is None:
            return None
        from routers.routerdc import load_routerdc

        try:
            router = load_routerdc(self.config.router.checkpoint)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"router.checkpoint: {exc}") from None
        return RoutedModel(self.config.router, self.config, router, self.metrics)

    def new_record(self, endpoint: str, model: str, log_fields: dict[str, Any]) -> RequestRecord:
        return RequestRecord(self.metrics, endpoint, model, log_fields)

    async def start(self) -> None:
        await self.pool.start()

    async def aclose(self) -> None:
        self.service.close()
        await self.pool.aclose()
