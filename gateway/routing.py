"""Routing ``model: auto``: the router checkpoint mapped onto configured models, ranked per request.

The router runs off the event loop on one worker thread; requests that arrive within a few milliseconds
of each other are encoded together (micro-batching), so throughput holds under load.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from gateway.config import ConfigError, GatewayConfig, RouterConfig
from gateway.errors import InvalidRequestError
from gateway.metrics import GatewayMetrics
from gateway.protocol import ChatCompletionRequest, CompletionRequest
from routers.base import Router

ROUTED_MODEL_HEADER = "x-gateway-routed-model"
ROUTE_SCORES_HEADER = "x-gateway-route-scores"


@dataclass(frozen=True)
class RouteDecision:
    """Configured model names best first, with the (cost-adjusted) scores that ordered them."""

    models: list[str]
    scores: list[float]

    def header_value(self, top: int) -> str:
        pairs = [{"model": m, "score": round(s, 4)} for m, s in zip(self.models[:top], self.scores[:top], strict=True)]
        return json.dumps(pairs, separators=(",", ":"))


class MicroBatcher:
    """Collects queries for up to ``window_s`` (or ``max_batch`` of them) and scores them in one call."""

    def __init__(self, score: Callable[[list[str]], np.ndarray], window_s: float, max_batch: int) -> None:
        self._score, self._window_s, self._max_batch = score, window_s, max_batch
        self._pending: list[tuple[str, asyncio.Future[np.ndarray]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="router")

    async def score(self, query: str) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.append((query, future))
        if len(self._pending) >= self._max_batch or self._window_s == 0:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._window_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        job = asyncio.get_running_loop().run_in_executor(self._executor, self._score, [q for q, _ in batch])

        def deliver(done: asyncio.Future[np.ndarray]) -> None:
            error = done.exception()
            for row, (_, future) in enumerate(batch):
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(done.result()[row])

        job.add_done_callback(deliver)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def query_text(request: ChatCompletionRequest | CompletionRequest, turns: int) -> str:
    """What the router reads: the last ``turns`` user messages' text (images ignored) or the prompt."""
    if isinstance(request, CompletionRequest):
        prompt = request.prompt
        return prompt if isinstance(prompt, str) else " ".join(p for p in prompt if isinstance(p, str))
    users = [m.text for m in request.messages if m.role == "user"]
    return "\n".join(users[-turns:]) if users else request.messages[-1].text


class RoutedModel:
    """The public routed name (``auto``): checkpoint LLMs bound to configured models."""

    def __init__(self, config: RouterConfig, gateway_config: GatewayConfig, router: Router,
                 metrics: GatewayMetrics) -> None:
        self.config, self.router, self.metrics = config, router, metrics
        self.models = bind_models(config, gateway_config, router.llm_names)  # [n_llms] configured names
        entries = [gateway_config.model(name) for name in self.models]
        costs = np.array([(e.cost_per_1k_tokens or 0.0) if e else 0.0 for e in entries])
        self.normalised_cost = costs / costs.max() if costs.max() > 0 else costs
        self.vision = np.array([bool(e and e.vision) for e in entries])
        allowed = set(config.candidates or self.models)
        self.allowed = np.array([m in allowed for m in self.models])
        self._batcher = MicroBatcher(router.score, config.batch_window_ms / 1000, config.max_batch)

    @property
    def name(self) -> str:
        return self.config.model_name

    def rank_scores(self, scores: np.ndarray, cost_weight: float, needs_vision: bool) -> RouteDecision:
        adjusted = scores - cost_weight * self.normalised_cost
        eligible = self.allowed & (self.vision if needs_vision else True)
        if not eligible.any():
            raise InvalidRequestError(f"the request carries images, but none of the models '{self.name}' routes "
                                      "to accepts images", param="messages")
        order = [int(i) for i in np.argsort(-adjusted, kind="stable") if eligible[i]]
        return RouteDecision([self.models[i] for i in order], [float(adjusted[i]) for i in order])

    async def decide(self, request: ChatCompletionRequest | CompletionRequest) -> RouteDecision:
        started = time.perf_counter()
        scores = await self._batcher.score(query_text(request, self.config.query_turns))
        weight = self.config.cost_weight
        if request.routing is not None and request.routing.cost_weight is not None:
            weight = request.routing.cost_weight
        needs_vision = isinstance(request, ChatCompletionRequest) and request.has_images
        decision = self.rank_scores(np.asarray(scores, dtype=np.float64), weight, needs_vision)
        self.metrics.routing_seconds.observe(time.perf_counter() - started)
        return decision

    def close(self) -> None:
        self._batcher.close()


def bind_models(config: RouterConfig, gateway_config: GatewayConfig, llm_names: Sequence[str]) -> list[str]:
    """The configured model each checkpoint LLM routes to; every mismatch is a ``ConfigError``."""
    unknown_keys = sorted(set(config.model_map) - set(llm_names))
    if unknown_keys:
        raise ConfigError(f"router.model_map names LLMs the checkpoint does not know: {', '.join(unknown_keys)}; "
                          f"the checkpoint's LLMs are: {', '.join(llm_names)}")
    configured = {m.name for m in gateway_config.models}
    bound = [config.model_map.get(llm, llm) for llm in llm_names]
    missing = [f"{llm} -> {model}" if llm != model else llm
               for llm, model in zip(llm_names, bound, strict=True) if model not in configured]
    if missing:
        raise ConfigError("router checkpoint LLMs with no configured model: " + ", ".join(missing)
                          + "; add them to models[] or map them with router.model_map")
    for name in config.candidates or []:
        if name not in configured:
            raise ConfigError(f"router.candidates: '{name}' is not a configured model")
        if name not in bound:
            raise ConfigError(f"router.candidates: model '{name}' is not in the router checkpoint "
                              f"(it routes to: {', '.join(bound)})")
    return bound
