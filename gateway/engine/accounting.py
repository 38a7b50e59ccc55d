"""Accounting of one request from admission to its last byte: the engine's job, so HTTP only parses and renders.

Every family's entry point on ``Gateway`` (``complete``, ``embed``, ``respond``, ``transcribe``, ``speak``,
``rerank``) goes through the same three steps here:

1. **Admit** (``Accounting.admit``): refuse new work while the gateway stops (503 ``shutting_down``); check the
   key's request and token rates (429 with ``Retry-After``), reserving the tokens the request may use
   (``engine/limits.py``). A limiter that cannot be reached admits or refuses as ``limits.on_limiter_error`` says.
2. **Record**: a ``RequestRecord`` counts the request in flight under the model that answers it, and its latency,
   time to first chunk, tokens and the access-log fields.
3. **Finish**, exactly once, with the status the client saw: 200; a ``GatewayError``'s own status; 499 when the
   work was cancelled (the client left); 500 for anything else (``accounted``). A stream's record finishes when its
   last chunk has been read, and its usage is counted once, from the final usage chunk (``accounted_stream``):
   a client that asked vLLM for ``continuous_usage_stats`` gets cumulative usage on every chunk, which must not be
   summed. The key's reservation is then settled with the real usage, off the response's path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.backends import RelayedChunks
from gateway.core.config import GatewayConfig
from gateway.core.errors import GatewayError, RateLimitError, UpstreamError, UpstreamUnavailableError
from gateway.core.metrics import GatewayMetrics
from gateway.engine.answers import KEEPALIVE, PrimedStream, StreamAnswer, StreamDialect
from gateway.engine.auth import ApiKey
from gateway.engine.limits import LimiterUnavailable, RateLimiter, Reservation, limiter_unavailable_error
from gateway.engine.routing import CHARACTERS_PER_TOKEN, prompt_characters
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
    """What the engine needs to know about a request besides its body: the caller's key (``None`` without keys)
    and the access-log fields the engine adds to (the HTTP layer writes the line)."""

    key: ApiKey | None = None
    log: dict[str, Any] = field(default_factory=dict)


class RequestRecord:
    """Accounting of one request from arrival to its last byte."""

    def __init__(self, metrics: GatewayMetrics, endpoint: str, model: str,
                 log_fields: dict[str, Any] | None = None) -> None:
        self._metrics, self.endpoint, self.model = metrics, endpoint, model
        self.log_fields = log_fields if log_fields is not None else {}
        self.started = time.monotonic()
        self.prompt_tokens = self.completion_tokens = 0
        self._finished = False
        self._in_flight_model: str | None = None
        self.on_finish: Callable[[int], None] | None = None  # gets the tokens used (per-key limits)
        self.key_name: str | None = None

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

    def first_chunk(self) -> None:
        self._metrics.time_to_first_chunk.labels(self.model).observe(time.monotonic() - self.started)

    def finish(self, status: int, error_code: str | None = None) -> None:
        if self._finished:
            return
        self._finished = True
        self.log_fields.update(answered_by=self.model, prompt_tokens=self.prompt_tokens,
                               completion_tokens=self.completion_tokens)
        m = self._metrics
        if self._in_flight_model is not None:
            m.in_flight.labels(self._in_flight_model).dec()
        m.requests.labels(self.endpoint, self.model, str(status)).inc()
        m.latency.labels(self.endpoint, self.model).observe(time.monotonic() - self.started)
        if error_code is not None:
            m.errors.labels(self.endpoint, self.model, error_code).inc()
        if self.prompt_tokens:
            m.tokens.labels(self.model, "prompt").inc(self.prompt_tokens)
        if self.completion_tokens:
            m.tokens.labels(self.model, "completion").inc(self.completion_tokens)
        if self.key_name is not None:
            m.key_requests.labels(self.key_name).inc()
            if self.prompt_tokens or self.completion_tokens:
                m.key_tokens.labels(self.key_name).inc(self.prompt_tokens + self.completion_tokens)
        if self.on_finish is not None:
            self.on_finish(self.prompt_tokens + self.completion_tokens)


class Accounting:
    """Admission under per-key limits and the records of admitted requests (steps 1 and 2 above)."""

    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics, limiter: RateLimiter,
                 metric_label: Callable[[str], str]) -> None:
        self.config, self.metrics, self.limiter = config, metrics, limiter
        self._metric_label = metric_label
        self.stopping = False  # the listener is closed: new work is refused
        self._background: set[asyncio.Task[None]] = set()

    async def admit(self, ctx: RequestContext, endpoint: str, model: str, request: AdmittedRequest
                    ) -> RequestRecord:
        """Admit the request (503 while stopping, 429 over its key's limits) and open its record."""
        if self.stopping:
            raise UpstreamUnavailableError("the gateway is shutting down; retry on another replica",
                                           code="shutting_down")
        reservation = await self._reserve(ctx.key, request)
        record = RequestRecord(self.metrics, endpoint, self._metric_label(model), ctx.log)
        key = ctx.key
        record.key_name = key.name if key is not None else None
        if key is not None and reservation is not None and key.tokens_per_minute is not None:
            record.on_finish = lambda tokens: self._settle(key, reservation, tokens)
        return record

    async def _reserve(self, key: ApiKey | None, request: AdmittedRequest) -> Reservation | None:
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

    def _settle(self, key: ApiKey, reservation: Reservation, tokens: int) -> None:
        """Charge the request's real usage to its key (what needs I/O runs in the background: the response is
        not delayed)."""
        pending = self.limiter.settle(key, reservation, tokens)
        if pending is not None:
            self.keep(asyncio.ensure_future(self._settled(pending)))

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
