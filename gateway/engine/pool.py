"""The configured models: one backend per entry, looked up by public name or alias."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.backends import AdapterView, Backend, create_backend
from gateway.backends.embeddings import LocalEmbeddingBackend
from gateway.core.config import GatewayConfig, ModelConfig

# Entry fields that do not change how a local model is loaded or generates: entries equal in everything else
# share one loaded model.
_SERVING_ONLY_FIELDS = {"name", "aliases", "stages", "ecso_model", "aligncot", "cost_per_1k_tokens", "price",
                        "max_tokens_cap", "adapters"}


def _weights_key(model: ModelConfig) -> str:
    return model.model_dump_json(exclude=_SERVING_ONLY_FIELDS)


class ModelPool:
    def __init__(self, config: GatewayConfig, cache_dir: Path) -> None:
        self.config = config
        self.backends: dict[str, Backend] = {}
        loaded: dict[str, Backend] = {}  # weights key -> the local backend that loads them
        for model in config.models:
            if model.task == "embed" and model.backend == "local":
                self.backends[model.name] = LocalEmbeddingBackend(model, cache_dir)
                continue
            key = _weights_key(model) if model.backend == "local" and model.task == "generate" else None
            shared = loaded.get(key) if key and not model.adapters else None
            if shared is not None:  # same weights and settings as an earlier entry: no second copy in memory
                self.backends[model.name] = AdapterView(model, shared, None)
                continue
            self.backends[model.name] = create_backend(model, cache_dir, config.images)
            if key:
                loaded.setdefault(key, self.backends[model.name])
        for model in config.models:  # each LoRA adapter of a local model is served under its own name
            for adapter in model.adapters:
                entry = config.model(adapter)
                assert entry is not None
                self.backends[adapter] = AdapterView(entry, self.backends[model.name], adapter)
        self._by_alias = {alias: m.name for m in config.models for alias in m.aliases}

    def get(self, name: str) -> Backend | None:
        backend = self.backends.get(name)
        if backend is None and name in self._by_alias:
            backend = self.backends[self._by_alias[name]]
        return backend

    async def start(self) -> None:
        for backend in self.backends.values():
            if not isinstance(backend, AdapterView):
                await backend.start()

    async def aclose(self) -> None:
        await asyncio.gather(*(backend.aclose() for backend in self.backends.values()), return_exceptions=True)

    async def abort(self) -> None:
        """End every in-flight request with an error (shutdown deadline)."""
        await asyncio.gather(*(backend.abort() for backend in self.backends.values()), return_exceptions=True)

    async def readiness(self) -> dict[str, dict[str, object]]:
        names = list(self.backends)
        checks = await asyncio.gather(*(self.backends[name].check_ready() for name in names))
        return {name: {"ready": ready, "detail": detail} for name, (ready, detail) in zip(names, checks, strict=True)}
