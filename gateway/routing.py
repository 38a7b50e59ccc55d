"""Routing ``model: auto``: the router checkpoint mapped onto configured models, ranked per request.

A router whose scoring is cheap per query (a static encoder: ~0.1-0.4 ms) scores inline on the event loop:
a thread hop and a batch window would cost more than the work. One with a contextual encoder runs off the
loop on one worker thread, and requests that arrive within a few milliseconds of each other are encoded
together (micro-batching), so throughput holds under load.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from gateway.audio import SpeechRequest, TranscriptionRequest
from gateway.config import ConfigError, GatewayConfig, RouterConfig
from gateway.errors import InvalidRequestError, UpstreamUnavailableError
from gateway.metrics import GatewayMetrics
from gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Preference
from gateway.rerank import RerankRequest
from routers.base import LearnedRouter

ROUTED_MODEL_HEADER = "x-gateway-routed-model"
ROUTE_SCORES_HEADER = "x-gateway-route-scores"


@dataclass(frozen=True)
class RouteDecision:
    """Configured model names best first, with the scores that ordered them and, where known, each one's
    expected quality (accuracy, 0-1) and expected price of this request (US dollars)."""

    models: list[str]
    scores: list[float]
    quality: list[float | None] | None = None
    cost_usd: list[float | None] | None = None

    def header_value(self, top: int) -> str:
        entries = []
        for i, (model, score) in enumerate(zip(self.models[:top], self.scores[:top], strict=True)):
            entry: dict[str, object] = {"model": model, "score": round(score, 4)}
            if self.quality is not None and self.quality[i] is not None:
                entry["quality"] = round(float(self.quality[i]), 4)  # type: ignore[arg-type]
            if self.cost_usd is not None and self.cost_usd[i] is not None:
                entry["cost_usd"] = float(f"{self.cost_usd[i]:.3g}")
            entries.append(entry)
        return json.dumps(entries, separators=(",", ":"))


class MicroBatcher:
    """Collects texts for up to ``window_s`` (or ``max_batch`` of them) and encodes them in one call on a
    worker thread. A batch that fails is retried text by text, so one bad text fails only its own request;
    ``close`` fails whatever is still waiting instead of leaving it unresolved."""

    def __init__(self, encode: Callable[[list[str]], np.ndarray], window_s: float, max_batch: int) -> None:
        self._encode, self._window_s, self._max_batch = encode, window_s, max_batch
        self._pending: list[tuple[str, asyncio.Future[np.ndarray]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="router")
        self._closed = False

    async def encode(self, text: str) -> np.ndarray:
        if self._closed:
            raise UpstreamUnavailableError("the router is shutting down", code="shutting_down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.append((text, future))
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
        if batch:
            job = asyncio.get_running_loop().run_in_executor(self._executor, self._encode_each,
                                                             [text for text, _ in batch])
            job.add_done_callback(lambda done: self._deliver(batch, done))

    def _encode_each(self, texts: list[str]) -> list[np.ndarray | BaseException]:
        try:
            return list(self._encode(texts))
        except Exception:  # noqa: BLE001 - find the text at fault; the others still get their vectors
            results: list[np.ndarray | BaseException] = []
            for text in texts:
                try:
                    results.append(self._encode([text])[0])
                except Exception as exc:  # noqa: BLE001
                    results.append(exc)
            return results

    @staticmethod
    def _deliver(batch: list[tuple[str, asyncio.Future[np.ndarray]]], done: asyncio.Future[list]) -> None:  # type: ignore[type-arg]
        error = done.exception() if not done.cancelled() else asyncio.CancelledError()
        for row, (_, future) in enumerate(batch):
            if future.done():
                continue
            result = error if error is not None else done.result()[row]
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for _, future in self._pending:
            if not future.done():
                future.set_exception(UpstreamUnavailableError("the router is shutting down", code="shutting_down"))
        self._pending = []
        self._executor.shutdown(wait=False, cancel_futures=True)


def query_text(request: ChatCompletionRequest | CompletionRequest, turns: int) -> str:
    """What the router reads: the last ``turns`` user messages' text (images ignored) or the prompt."""
    if isinstance(request, CompletionRequest):
        prompt = request.prompt
        return prompt if isinstance(prompt, str) else " ".join(p for p in prompt if isinstance(p, str))
    users = [m.text for m in request.messages if m.role == "user"]
    return "\n".join(users[-turns:]) if users else request.messages[-1].text


def prompt_characters(request: ChatCompletionRequest | CompletionRequest | EmbeddingRequest | SpeechRequest
                      | TranscriptionRequest | RerankRequest) -> int:
    if isinstance(request, RerankRequest):
        return len(request.query) + sum(len(text) for text in request.texts())
    if isinstance(request, SpeechRequest):
        return len(request.input)
    if isinstance(request, TranscriptionRequest):
        return 0  # audio, priced by the recogniser's own usage
    if isinstance(request, EmbeddingRequest):
        return sum(len(item) if isinstance(item, str) else 4 * len(item) for item in request.texts_or_token_ids())
    if isinstance(request, CompletionRequest):
        prompt = request.prompt
        return len(prompt) if isinstance(prompt, str) else sum(len(p) if isinstance(p, str) else 4 for p in prompt)
    return sum(len(message.text) for message in request.messages)


CHARACTERS_PER_TOKEN = 4  # for a price estimate before the request is tokenised by the model that answers it


class RoutedModel:
    """The public routed name (``auto``): checkpoint LLMs bound to configured models.

    Ranking: a ``pareto`` checkpoint scores the LLMs under the request's preference (α); a quality-only one
    ranks by ``score − w · normalised configured price`` with ``w = α_cost / α_quality``. Then the candidates
    the request cannot use go (``candidates``, vision, ``max_cost_usd``).
    """

    def __init__(self, config: RouterConfig, gateway_config: GatewayConfig, router: LearnedRouter,
                 metrics: GatewayMetrics) -> None:
        self.config, self.router, self.metrics = config, router, metrics
        self.models = bind_models(config, gateway_config, router.llm_names)  # [n_llms] configured names
        entries = [gateway_config.model(name) for name in self.models]
        prices = [e.token_prices if e else None for e in entries]
        self.token_prices = np.array([p if p is not None else (np.nan, np.nan) for p in prices])  # [n, 2]
        # A quality-only router re-ranks by the configured price, normalised as before: the most expensive = 1.
        static = np.nan_to_num(self.token_prices.sum(axis=1))
        self.normalised_cost = static / static.max() if static.max() > 0 else static
        self.learnt_cost = router.cost_per_query
        self.vision = np.array([bool(e and e.vision) for e in entries])
        self.audio = np.array([bool(e and e.audio) for e in entries])
        allowed = set(config.candidates or self.models)
        self.allowed = np.array([m in allowed for m in self.models])
        # router.preference, else router.cost_weight, else the checkpoint's own default, else quality alone.
        fallback = np.asarray(getattr(router, "default_preference", (1.0, 0.0)), dtype=np.float32)
        self.default_preference = self._preference(config.preference, fallback, config.cost_weight or None)
        self._batcher = MicroBatcher(router.encoder.encode, config.batch_window_ms / 1000, config.max_batch) \
            if router.batches_help else None

    @property
    def name(self) -> str:
        return self.config.model_name

    def _preference(self, preference: dict[str, float] | Preference | None, default: np.ndarray | None,
                    cost_weight: float | None) -> np.ndarray:
        """α = (quality, cost) from a preference, else from a cost weight w (α = (1, w) / (1 + w))."""
        if preference is not None:
            values = preference if isinstance(preference, dict) else preference.model_dump()
            return np.array([values["quality"], values["cost"]], dtype=np.float32)
        if cost_weight is not None:
            return np.array([1.0, cost_weight], dtype=np.float32) / (1.0 + cost_weight)
        assert default is not None
        return default

    def expected_costs(self, request: ChatCompletionRequest | CompletionRequest) -> np.ndarray:
        """[n] expected US dollars of this request on each candidate: configured prices times the estimated
        tokens, else the checkpoint's learnt mean price per question, else NaN (unknown)."""
        prompt_tokens = prompt_characters(request) / CHARACTERS_PER_TOKEN
        completion_tokens = request.completion_token_limit or self.config.expected_output_tokens
        costs = self.token_prices @ np.array([prompt_tokens, completion_tokens])
        if self.learnt_cost is not None:
            costs = np.where(np.isnan(costs), self.learnt_cost, costs)
        return costs  # type: ignore[no-any-return]

    def rank(self, scores: np.ndarray, alpha: np.ndarray, costs: np.ndarray, needs_vision: bool,
             max_cost_usd: float | None, quality: np.ndarray | None = None,
             prefer_audio: bool = False) -> RouteDecision:
        if not self.router.preference_aware:
            weight = float(alpha[1] / alpha[0]) if alpha[0] > 0 else 1e6
            scores = scores - weight * self.normalised_cost
        eligible = self.allowed & (self.vision if needs_vision else True)
        if not eligible.any():
            raise InvalidRequestError(f"the request carries images, but none of the models '{self.name}' routes "
                                      "to accepts images", param="messages")
        if prefer_audio and (eligible & self.audio).any():  # models that hear the audio itself, when there are any
            eligible = eligible & self.audio
        if max_cost_usd is not None:
            affordable = eligible & ~np.isnan(costs) & (costs <= max_cost_usd)
            if not affordable.any():
                raise InvalidRequestError(_no_model_fits(self.models, costs, eligible, max_cost_usd),
                                          param="routing.max_cost_usd", code="no_model_within_budget")
            eligible = affordable
        order = [int(i) for i in np.argsort(-scores, kind="stable") if eligible[i]]
        return RouteDecision([self.models[i] for i in order], [float(scores[i]) for i in order],
                             None if quality is None else [float(quality[i]) for i in order],
                             [None if np.isnan(costs[i]) else float(costs[i]) for i in order])

    async def decide(self, request: ChatCompletionRequest | CompletionRequest,
                     prefer_audio: bool = False) -> RouteDecision:
        """Rank the candidates for ``request`` (its text: a transcript when it carried audio); ``prefer_audio``
        keeps only ``audio: true`` models when one is a candidate."""
        started = time.perf_counter()
        query = query_text(request, self.config.query_turns)
        encoded = (await self._batcher.encode(query))[None] if self._batcher else self.router.encoder.encode([query])
        options = request.routing
        alpha = self.default_preference if options is None else \
            self._preference(options.preference, self.default_preference, options.cost_weight)
        scores, quality = self.router.score_encoded(encoded, alpha)[0], self.router.expected_quality(encoded)
        needs_vision = isinstance(request, ChatCompletionRequest) and request.has_images
        decision = self.rank(np.asarray(scores, dtype=np.float64), alpha, self.expected_costs(request), needs_vision,
                             options.max_cost_usd if options else None, None if quality is None else quality[0],
                             prefer_audio)
        self.metrics.routing_seconds.observe(time.perf_counter() - started)
        return decision

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()


def _no_model_fits(models: Sequence[str], costs: np.ndarray, eligible: np.ndarray, cap: float) -> str:
    known = [(costs[i], models[i]) for i in range(len(models)) if eligible[i] and not np.isnan(costs[i])]
    if not known:
        return (f"routing.max_cost_usd is {cap:g} but no candidate model has a price (configure models[].price "
                "or route with a checkpoint that learnt prices)")
    cheapest, model = min(known)
    return (f"no model fits routing.max_cost_usd={cap:g}: the cheapest candidate, '{model}', is expected to cost "
            f"${cheapest:.3g} for this request")


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
