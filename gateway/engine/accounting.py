"""Accounting of one request from admission to its last byte: the engine's job, so HTTP only parses and renders.

Every family's entry point on ``Gateway`` (``complete``, ``embed``, ``respond``, ``transcribe``, ``speak``,
``rerank``) goes through the same three steps here:

1. **Admit** (``Accounting.admit``): refuse new work while the gateway stops (503 ``shutting_down``); reserve the
   request's worst-case cost against the key's dollar budget (429 ``budget_exceeded``, ``engine/budgets.py``);
   check the key's request and token rates (429 with ``Retry-After``), reserving the tokens the request may use
   (``engine/limits.py``). A counter store that cannot be reached admits or refuses as
   ``limits.on_limiter_error`` says.
2. **Record**: a ``RequestRecord`` counts the request in flight under the model that answers it, and its latency,
   time to first chunk, tokens and the access-log fields.
3. **Finish**, exactly once, with the status the client saw: 200; a ``GatewayError``'s own status; 499 when the
   work was cancelled (the client left); 500 for anything else (``accounted``). A stream's record finishes when its
   last chunk has been read, and its usage is counted once, from the final usage chunk (``accounted_stream``):
   a client that asked vLLM for ``continuous_usage_stats`` gets cumulative usage on every chunk, which must not be
   summed. The key's reservations are then settled with the real usage and cost, off the response's path, and the
   request's row is queued for the usage store (``engine/usage/``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.backends import RelayedChunks
from gateway.core.config import GatewayConfig, ModelConfig
from gateway.core.errors import (
    BudgetExceededError,
    GatewayError,
    RateLimitError,
    UpstreamError,
    UpstreamUnavailableError,
)
from gateway.core.metrics import GatewayMetrics
from gateway.engine.answers import KEEPALIVE, PrimedStream, StreamAnswer, StreamDialect
from gateway.engine.auth import ApiKey
from gateway.engine.budgets import BudgetHold, BudgetLedger
from gateway.engine.limits import LimiterUnavailable, RateLimiter, Reservation, limiter_unavailable_error
from gateway.engine.pipeline import STAGES_HEADER
from gateway.engine.routing import CHARACTERS_PER_TOKEN, prompt_characters
from gateway.engine.usage import UsageCounts, UsageStore, request_cost
from gateway.engine.usage.store import row_id, utc_now
from gateway.wire.anthropic import chat_usage as messages_chat_usage
from gateway.wire.audio import SpeechRequest, TranscriptionRequest
from gateway.wire.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, is_usage_chunk
from gateway.wire.rerank import RerankRequest
from gateway.wire.responses import chat_usage as responses_chat_usage

# What per-key limits admit: every request the API takes (the estimate reads its text and completion limit).
AdmittedRequest = ChatCompletionRequest | CompletionRequest | EmbeddingRequest | SpeechRequest | TranscriptionRequest \
    | RerankRequest
Result = TypeVar("Result")
CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away first"
FINAL_RESPONSE_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})

logger = logging.getLogger(__name__)


@dataclass
class RequestContext:
    """What the engine needs to know about a request besides its body: the caller's key (``None`` without keys),
    the request's id (``x-request-id``) and the access-log fields the engine adds to (the HTTP layer writes the
    line)."""

    key: ApiKey | None = None
    log: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None


class RequestRecord:
    """Accounting of one request from arrival to its last byte: what its usage row and metrics are made of."""

    def __init__(self, metrics: GatewayMetrics, endpoint: str, model: str,
                 log_fields: dict[str, Any] | None = None) -> None:
        self._metrics, self.endpoint, self.model = metrics, endpoint, model
        self.model_asked = model
        self.log_fields = log_fields if log_fields is not None else {}
        self.started = time.monotonic()
        self.created_at = utc_now()
        self.prompt_tokens = self.completion_tokens = 0
        self.cached_tokens: int | None = None
        self.reasoning_tokens: int | None = None
        self.ttft_s: float | None = None
        self.latency_s = 0.0
        self.status: int | None = None
        self.error_code: str | None = None
        self.route: list[dict[str, Any]] | None = None  # routed: the top candidates and scores
        self.query: str | None = None  # routed: the text the router read
        self.stages: dict[str, str] | None = None  # stage -> verdict
        self._finished = False
        self._in_flight_model: str | None = None
        self.on_finish: Callable[[RequestRecord], None] | None = None  # settlement, usage row (Accounting)
        self.key: ApiKey | None = None
        self.request_id: str | None = None

    @property
    def key_name(self) -> str | None:
        return self.key.name if self.key is not None else None

    def answered_by(self, model: str) -> None:
        """The model serving this request is known: count it in flight under that name."""
        if self._in_flight_model is not None:
            self._metrics.in_flight.labels(self._in_flight_model).dec()
        self.model = self._in_flight_model = model
        self._metrics.in_flight.labels(model).inc()

    def add_usage(self, usage: dict[str, Any] | None) -> None:
        if usage:
            self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.completion_tokens += int(usage.get("completion_tokens") or 0)
            prompt_details, completion_details = usage.get("prompt_tokens_details"), \
                usage.get("completion_tokens_details")
            if prompt_details and prompt_details.get("cached_tokens") is not None:
                self.cached_tokens = (self.cached_tokens or 0) + int(prompt_details["cached_tokens"])
            if completion_details and completion_details.get("reasoning_tokens") is not None:
                self.reasoning_tokens = (self.reasoning_tokens or 0) + int(completion_details["reasoning_tokens"])

    def note_stages(self, headers: dict[str, str]) -> None:
        """The safety stages that ran and their verdicts, from the answer's ``x-gateway-*`` headers."""
        applied = headers.get(STAGES_HEADER)
        if applied:
            self.stages = {stage: headers.get(f"x-gateway-{stage}", "applied") for stage in applied.split(",")}

    def first_chunk(self) -> None:
        self.ttft_s = time.monotonic() - self.started
        self._metrics.time_to_first_chunk.labels(self.model).observe(self.ttft_s)

    def usage(self) -> UsageCounts:
        return UsageCounts(self.prompt_tokens, self.completion_tokens, self.cached_tokens, self.reasoning_tokens)

    def finish(self, status: int, error_code: str | None = None) -> None:
        if self._finished:
            return
        self._finished = True
        self.status, self.error_code = status, error_code
        self.latency_s = time.monotonic() - self.started
        self.log_fields.update(answered_by=self.model, prompt_tokens=self.prompt_tokens,
                               completion_tokens=self.completion_tokens)
        m = self._metrics
        if self._in_flight_model is not None:
            m.in_flight.labels(self._in_flight_model).dec()
        m.requests.labels(self.endpoint, self.model, str(status)).inc()
        m.latency.labels(self.endpoint, self.model).observe(self.latency_s)
        if error_code is not None:
            m.errors.labels(self.endpoint, self.model, error_code).inc()
        if self.prompt_tokens:
            m.tokens.labels(self.model, "prompt").inc(self.prompt_tokens)
        if self.completion_tokens:
            m.tokens.labels(self.model, "completion").inc(self.completion_tokens)
        if self.key is not None:
            m.key_requests.labels(self.key.name).inc()
            if self.prompt_tokens or self.completion_tokens:
                m.key_tokens.labels(self.key.name).inc(self.prompt_tokens + self.completion_tokens)
        if self.on_finish is not None:
            self.on_finish(self)


class Accounting:
    """Admission under per-key limits and budgets, the records of admitted requests (steps 1 and 2 above), and
    what their end settles: rate reservations, budget reservations, spend metrics and the usage row."""

    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics, limiter: RateLimiter,
                 metric_label: Callable[[str], str], store: UsageStore | None = None,
                 budgets: BudgetLedger | None = None, routed_models: dict[str, list[str]] | None = None) -> None:
        self.config, self.metrics, self.limiter = config, metrics, limiter
        self.store, self.budgets = store, budgets
        self._metric_label = metric_label
        self._routed_models = routed_models or {}  # routed public name -> the configured models it may reach
        self._prices: dict[str, list[tuple[float, float]]] = {}
        self._models: dict[str, ModelConfig] = {}
        self.stopping = False  # the listener is closed: new work is refused
        self._background: set[asyncio.Task[None]] = set()

    async def admit(self, ctx: RequestContext, endpoint: str, model: str, request: AdmittedRequest
                    ) -> RequestRecord:
        """Admit the request (503 while stopping, 429 over its key's limits or budget) and open its record."""
        if self.stopping:
            raise UpstreamUnavailableError("the gateway is shutting down; retry on another replica",
                                           code="shutting_down")
        key = ctx.key
        hold = await self._hold_budget(key, model, request) if key is not None and key.budget_usd is not None \
            else None
        try:
            reservation = await self._reserve(key, request)
        except BaseException:
            if hold is not None and key is not None:
                self._settle_budget(key, hold, 0.0)
            raise
        record = RequestRecord(self.metrics, endpoint, self._metric_label(model), ctx.log)
        record.key, record.request_id = key, ctx.request_id
        record.on_finish = lambda finished: self._finished(finished, reservation, hold)
        return record

    # ---- admission ------------------------------------------------------------------------------------

    async def _reserve(self, key: ApiKey | None, request: AdmittedRequest) -> Reservation | None:
        if key is None or (key.requests_per_minute is None and key.tokens_per_minute is None):
            return None
        try:
            return await self.limiter.admit(key, self._token_estimate(request))
        except RateLimitError:
            self.metrics.rate_limited.labels(key.name, "minute").inc()
            raise
        except LimiterUnavailable as exc:
            self._unavailable(exc)
            return None

    async def _hold_budget(self, key: ApiKey, model: str, request: AdmittedRequest) -> BudgetHold | None:
        worst_case = self._worst_case_usd(model, request)
        if worst_case is None or self.budgets is None:
            return None  # no configured price: nothing to spend
        try:
            return await self.budgets.reserve(key, worst_case)
        except BudgetExceededError:
            self.metrics.rate_limited.labels(key.name, "budget").inc()
            raise
        except LimiterUnavailable as exc:
            self._unavailable(exc)
            return None

    def _unavailable(self, exc: LimiterUnavailable) -> None:
        """A counter store (Redis, or the usage store a budget starts from) failed: ``on_limiter_error`` decides."""
        self.metrics.limiter_errors.inc()
        logger.warning("rate limiter unavailable", extra={"fields": {"error": str(exc)[:200]}})
        if self.config.limits.on_limiter_error == "closed":
            raise limiter_unavailable_error() from None
        return None

    def _completion_estimate(self, request: AdmittedRequest) -> int:
        limit = request.completion_token_limit
        return self.config.limits.reserve_completion_tokens if limit is None else limit

    def _token_estimate(self, request: AdmittedRequest) -> int:
        return prompt_characters(request) // CHARACTERS_PER_TOKEN + self._completion_estimate(request)

    def _reachable_prices(self, model: str) -> list[tuple[float, float]]:
        """The token prices of every model a request for ``model`` may reach (a routed name: all its candidates),
        looked up once per configured name (unknown names are not kept: clients could grow the cache)."""
        prices = self._prices.get(model)
        if prices is None:
            names = self._routed_models.get(model, [model])
            found = [entry.token_prices for name in names if (entry := self.config.model(name)) is not None]
            prices = [p for p in found if p is not None]
            if model in self._routed_models or self.config.model(model) is not None:
                self._prices[model] = prices
        return prices

    def _model_config(self, name: str) -> ModelConfig | None:
        """``config.model(name)`` for the model that answered (a configured name), looked up once."""
        entry = self._models.get(name)
        if entry is None:
            entry = self.config.model(name)
            if entry is not None:
                self._models[name] = entry
        return entry

    def _worst_case_usd(self, model: str, request: AdmittedRequest) -> float | None:
        """The most the request may cost: its estimated prompt and its completion limit, ``n`` times, at the prices
        of the dearest model it may reach (a routed name reaches all its candidates); None when none has a price.
        A request without ``max_tokens`` reserves ``limits.reserve_completion_tokens`` for its completion, so a
        longer answer is charged in full at settlement and can pass the budget by that much."""
        known = self._reachable_prices(model)
        if not known:
            return None
        prompt_tokens = -(-prompt_characters(request) // CHARACTERS_PER_TOKEN)  # rounded up
        completion_tokens = self._completion_estimate(request) * (getattr(request, "n", None) or 1)
        return max(prompt_tokens * p + completion_tokens * c for p, c in known)

    # ---- the end of a request -------------------------------------------------------------------------

    def _finished(self, record: RequestRecord, reservation: Reservation | None, hold: BudgetHold | None) -> None:
        """Settle the key's reservations with the real usage, count the spend, and queue the usage row (what
        needs I/O runs in the background: the response is not delayed)."""
        key = record.key
        if key is not None and reservation is not None and key.tokens_per_minute is not None:
            pending = self.limiter.settle(key, reservation, record.prompt_tokens + record.completion_tokens)
            if pending is not None:
                self.keep(asyncio.ensure_future(self._settled(pending)))
        cost = request_cost(self._model_config(record.model), record.usage())
        if key is not None and hold is not None:
            self._settle_budget(key, hold, cost or 0.0)
        if cost:
            self.metrics.spend.labels(record.key_name or "-", record.model).inc(cost)
        if self.store is not None:
            self.store.record(self._row(record, cost))

    def _settle_budget(self, key: ApiKey, hold: BudgetHold, cost_usd: float) -> None:
        assert self.budgets is not None
        pending = self.budgets.settle(key, hold, cost_usd)
        if pending is not None:
            self.keep(asyncio.ensure_future(self._settled(pending)))

    def _row(self, record: RequestRecord, cost: float | None) -> dict[str, Any]:
        keep_query = self.config.usage_queries == "routed"
        return {"id": row_id(), "request_id": record.request_id or "-",
                "created_at": record.created_at, "key_name": record.key_name, "endpoint": record.endpoint,
                "model_asked": record.model_asked, "model": record.model,
                "replica": record.log_fields.get("endpoint"), "status": record.status,
                "error_code": record.error_code, "prompt_tokens": record.prompt_tokens,
                "completion_tokens": record.completion_tokens, "cached_tokens": record.cached_tokens,
                "reasoning_tokens": record.reasoning_tokens, "cost_usd": cost,
                "latency_ms": round(record.latency_s * 1000, 2),
                "ttft_ms": None if record.ttft_s is None else round(record.ttft_s * 1000, 2),
                "stages": record.stages, "route": record.route, "query": record.query if keep_query else None}

    async def _settled(self, pending: Awaitable[None]) -> None:
        try:
            await pending
        except LimiterUnavailable as exc:
            self.metrics.limiter_errors.inc()
            logger.warning("rate limiter unavailable at settlement", extra={"fields": {"error": str(exc)[:200]}})

    def keep(self, task: asyncio.Task[None]) -> None:
        """Hold a reference to background work until it is done (the loop keeps only weak ones)."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        if self._background:
            await asyncio.wait(self._background, timeout=5)
        await self.limiter.aclose()
        if self.budgets is not None:
            await self.budgets.aclose()
        if self.store is not None:
            await asyncio.to_thread(self.store.close)


async def accounted(record: RequestRecord, work: Awaitable[Result]) -> Result:
    """``work``'s result; a failure finishes the record with the status the client will see, and rises."""
    try:
        return await work
    except GatewayError as exc:
        record.finish(exc.status_code, exc.code)
        raise
    except asyncio.CancelledError:
        record.finish(CLIENT_CLOSED_REQUEST, "client_closed_request")
        raise
    except BaseException:
        record.finish(500, "internal_error")
        raise


async def accounted_stream(record: RequestRecord, chunks: AsyncIterator[Any], dialect: StreamDialect = "chat"
                           ) -> AsyncIterator[Any]:
    """``chunks`` as they come, counted into ``record``: the first chunk's time, the usage (from relayed frames'
    usage, the final usage chunk, the final Responses event or Anthropic's ``message_delta``: see ``_count``),
    and the status at the end.
    A stream that breaks raises ``GatewayError`` (anything else becomes a 502 ``UpstreamError``) after its
    record is finished; the caller reports it in the stream."""
    status, code = 200, None
    source: AsyncIterator[Any] = chunks
    try:
        if isinstance(chunks, PrimedStream):  # its first chunk, then its source itself: one layer less per chunk
            if chunks.first is None:
                return
            record.first_chunk()
            _count(record, chunks.first, dialect)
            yield chunks.first
            source, first = chunks.rest, False
        else:
            first = True
        async for chunk in source:
            if chunk is KEEPALIVE:
                yield chunk
                continue
            if first:
                record.first_chunk()
                first = False
            if type(chunk) is RelayedChunks:  # the relay's hot path, inline
                if chunk.usage is not None:
                    record.add_usage(chunk.usage)
            else:
                _count(record, chunk, dialect)
            yield chunk
    except GatewayError as exc:
        status, code = exc.status_code, exc.code
        raise
    except Exception as exc:
        error = UpstreamError(f"stream failed: {type(exc).__name__}")
        status, code = error.status_code, error.code
        raise error from exc
    except BaseException:
        status, code = CLIENT_CLOSED_REQUEST, "client_closed_request"  # the client went away (cancelled)
        raise
    finally:
        record.finish(status, code)
        await chunks.aclose()  # type: ignore[attr-defined]


def _count(record: RequestRecord, chunk: Any, dialect: StreamDialect) -> None:
    """The usage a chunk reports, once: a relayed batch's, the final usage chunk's, the final Responses event's, or
    Anthropic's ``message_delta`` (its usage is the whole request's: ``message_start``'s is not counted too)."""
    if type(chunk) is RelayedChunks:
        if chunk.usage is not None:
            record.add_usage(chunk.usage)
    elif dialect == "responses":
        if chunk.get("type") in FINAL_RESPONSE_EVENTS:
            record.add_usage(responses_chat_usage(chunk["response"].get("usage")))
    elif dialect == "messages":
        if chunk.get("type") == "message_delta":
            record.add_usage(messages_chat_usage(chunk.get("usage")))
    elif is_usage_chunk(chunk):
        record.add_usage(chunk["usage"])


def accounted_answer(record: RequestRecord, answer: StreamAnswer) -> StreamAnswer:
    """A stream answer whose chunks finish ``record`` (see ``accounted_stream``)."""
    return StreamAnswer(accounted_stream(record, answer.chunks, answer.dialect), answer.headers, answer.dialect)


async def accounted_audio(record: RequestRecord, pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Streamed audio's pieces, finishing ``record`` with the last one (or with the error that broke it off)."""
    status: tuple[int, str | None] = (CLIENT_CLOSED_REQUEST, "client_closed_request")
    try:
        async for piece in pieces:
            yield piece
        status = (200, None)
    except GatewayError as exc:  # the audio broke off after it started: the client sees a short file
        status = (exc.status_code, exc.code)
    finally:
        record.finish(*status)
