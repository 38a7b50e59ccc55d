"""The gateway as an ASGI app factory for another server: ``benchmarks/hot_path.py --granian`` runs it under
granian (``granian --interface asgi --factory benchmarks.granian_app:app``), the config from
``LLM_GATEWAY_CONFIG`` as ``llm-gateway serve`` reads it. Benchmark only: ``llm-gateway serve`` is the server."""

from __future__ import annotations

from typing import Any

from gateway.core.config import Settings, load_config
from gateway.core.logs import configure_logging
from gateway.http import create_app


def app() -> Any:
    settings = Settings()
    config = load_config(settings.config)
    configure_logging(config.server.log_level)
    return create_app(config, cache_dir=settings.cache_dir)
