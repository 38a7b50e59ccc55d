"""Routing ``model: auto``: the router checkpoint mapped onto configured models, ranked per request.

A router whose scoring is cheap per query (a static encoder: ~0.1-0.4 ms) scores inline on the event loop:
a thread hop and a batch window would cost more than the work. One with a contextual encoder runs off the
loop on one worker thread, and requests that arrive within a few milliseconds of each other are encoded
together (micro-batching), so throughput holds under load.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import numpy as np

from gateway.core.batching import MicroBatcher
from gateway.core.config import ConfigError, GatewayConfig, RouterConfig
from gateway.core.errors import InvalidRequestError
from gateway.core.metrics import GatewayMetrics
from gateway.wire.audio import SpeechRequest, TranscriptionRequest
from gateway.wire.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Preference
from gateway.wire.rerank import RerankRequest
from routers.base import LearnedRouter
from routers.decision import CandidateSet, NoEligibleCandidate, RouteDecision, rank

ROUTED_MODEL_HEADER = "x-gateway-routed-model"
ROUTE_SCORES_HEADER = "x-gateway-route-scores"


def route_scores_header(decision: RouteDecision, top: int) -> str:
    """``x-gateway-route-scores``: the top candidates as compact JSON."""
    return json.dumps(decision.top(top), separators=(",", ":"))


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

    The checkpoint scores the query; the decision itself (preference, prices, eligibility, ``max_cost_usd``) is
    ``routers.decision.rank``, shared with the offline tools.
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
        allowed = set(config.candidates or self.models)
        self.candidates = CandidateSet(self.models, static / static.max() if static.max() > 0 else static,
                                       allowed=np.array([m in allowed for m in self.models]),
                                       vision=np.array([bool(e and e.vision) for e in entries]),
                                       audio=np.array([bool(e and e.audio) for e in entries]))
        self.learnt_cost = router.cost_per_query
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
        """``routers.decision.rank`` over this model's candidates; a request none can serve is a 400."""
        try:
            return rank(self.candidates, scores, alpha, costs, preference_aware=self.router.preference_aware,
                        needs_vision=needs_vision, prefer_audio=prefer_audio, max_cost_usd=max_cost_usd,
                        quality=quality)
        except NoEligibleCandidate as exc:
            if exc.kind == "vision":
                raise InvalidRequestError(f"the request carries images, but none of the models '{self.name}' "
                                          "routes to accepts images", param="messages") from None
            raise InvalidRequestError(str(exc), param="routing.max_cost_usd", code="no_model_within_budget") from None

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
