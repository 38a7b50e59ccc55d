"""The running gateway: configuration, model pool, service and metrics, with their life cycle."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig
from gateway.metrics import GatewayMetrics, RequestRecord
from gateway.pool import ModelPool
from gateway.serving import CompletionService


class Gateway:
    def __init__(self, config: GatewayConfig, cache_dir: Path) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        self.pool = ModelPool(config, cache_dir)
        self.service = CompletionService(self.pool, self.metrics)
        self.started_at = int(time.time())

    def new_record(self, endpoint: str, model: str, log_fields: dict[str, Any]) -> RequestRecord:
        return RequestRecord(self.metrics, endpoint, model, log_fields)

    async def start(self) -> None:
        await self.pool.start()

    async def aclose(self) -> None:
        await self.pool.aclose()
