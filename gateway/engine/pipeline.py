"""Pipeline wiring: the stages configured on a model (``stages: [ecso]``) around its backend call.

Stages are registered by name (entry points of the ``llm_gateway.stages`` group; ``safety`` registers ecso
and aligncot) and each is built from the model's config entry, so the engine never imports a stage package.
They run on chat requests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Any

from gateway.backends import Backend
from gateway.core.config import ConfigError, GatewayConfig, ModelConfig
from gateway.core.errors import InvalidRequestError
from gateway.core.metrics import GatewayMetrics
from gateway.engine.pool import ModelPool
from gateway.wire.openai import ChatCompletionRequest
from gateway.wire.stages import CompleteNext, Stage, StageBuilder, StageContext, StreamNext, registered_stages

STAGES_HEADER = "x-gateway-stages"


def build_stages(model: ModelConfig, config: GatewayConfig,
                 builders: dict[str, StageBuilder] | None = None) -> list[Stage]:
    if not model.stages:
        return []
    builders = builders if builders is not None else registered_stages()
    stages = []
    for name in model.stages:
        if name not in builders:
            raise ConfigError(f"model '{model.name}': unknown stage '{name}'; known stages: "
                              f"{', '.join(sorted(builders)) or 'none installed'}")
        try:
            stage = builders[name](model, config)
        except ValueError as exc:
            raise ConfigError(f"model '{model.name}': {exc}") from None
        for referenced in stage.referenced_models():
            if config.model(referenced) is None:
                raise ConfigError(f"model '{model.name}': stage '{name}' uses model '{referenced}', which is not "
                                  "configured")
        stages.append(stage)
    return stages


class PoolCaller:
    """Reaches configured models by name for stages (backend only: no stages, no failover)."""

    def __init__(self, pool: ModelPool) -> None:
        self._pool = pool

    def _backend(self, model: str) -> Backend:
        backend = self._pool.get(model)
        if backend is None:
            raise ConfigError(f"a stage asked for model '{model}', which is not configured")
        return backend

    async def complete(self, model: str, request: ChatCompletionRequest) -> dict[str, Any]:
        return await self._backend(model).complete("chat", request)

    def stream(self, model: str, request: ChatCompletionRequest) -> AsyncIterator[dict[str, Any]]:
        return self._backend(model).stream("chat", request)


class Pipeline:
    """One model's stages around its backend."""

    def __init__(self, backend: Backend, stages: list[Stage], caller: PoolCaller, metrics: GatewayMetrics) -> None:
        self.backend, self.stages, self._caller, self._metrics = backend, stages, caller, metrics

    def check(self, request: ChatCompletionRequest) -> None:
        """A stage judges and rewrites one answer: ``n > 1`` through a stage is refused (400) rather than
        returning choices no stage looked at."""
        applying = [stage.name for stage in self.stages if stage.applies(request)]
        if applying and request.n > 1:
            raise InvalidRequestError(f"n={request.n} is not supported through the safety stage "
                                      f"{', '.join(applying)} of model '{self.backend.name}' (each answer must be "
                                      "checked on its own): send n separate requests", param="n")

    def context(self) -> StageContext:
        return StageContext(model=self.backend.name, models=self._caller,
                            count_outcome=lambda stage, outcome: self._metrics.stage_runs.labels(stage, outcome).inc())

    def complete(self, ctx: StageContext, request: ChatCompletionRequest, index: int = 0) -> Awaitable[dict[str, Any]]:
        for position in range(index, len(self.stages)):
            stage = self.stages[position]
            if stage.applies(request):
                ctx.applied.append(stage.name)
                return stage.complete(ctx, request, self._complete_from(ctx, position + 1))
        return self.backend.complete("chat", request)

    def stream(self, ctx: StageContext, request: ChatCompletionRequest, index: int = 0
               ) -> AsyncIterator[dict[str, Any]]:
        for position in range(index, len(self.stages)):
            stage = self.stages[position]
            if stage.applies(request):
                ctx.applied.append(stage.name)
                return stage.stream(ctx, request, self._complete_from(ctx, position + 1),
                                    self._stream_from(ctx, position + 1))
        return self.backend.stream("chat", request)

    def _complete_from(self, ctx: StageContext, index: int) -> CompleteNext:
        """What a stage calls next: the stages after it, then the model."""
        return lambda request: self.complete(ctx, request, index)

    def _stream_from(self, ctx: StageContext, index: int) -> StreamNext:
        return lambda request: self.stream(ctx, request, index)


def stage_headers(ctx: StageContext) -> dict[str, str]:
    headers = {}
    if ctx.applied:
        headers[STAGES_HEADER] = ",".join(dict.fromkeys(ctx.applied))
    for stage, outcome in ctx.report.items():
        if isinstance(outcome, str):
            headers[f"x-gateway-{stage}"] = outcome
    return headers
