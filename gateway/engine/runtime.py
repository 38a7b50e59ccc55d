"""The running gateway, the engine's composition root: configuration, model pool, services, accounting and metrics,
with their life cycle, and one entry point per endpoint family (``complete``, ``respond``, ``embed``,
``transcribe``, ``speak``, ``rerank``) that admits, records, answers and finishes the request's record
(``engine/accounting.py``). HTTP parses, calls one of them, and renders what it returns."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from gateway.backends import Request
from gateway.core.config import ConfigError, GatewayConfig
from gateway.core.errors import InvalidRequestError, NotFoundError, UpstreamUnavailableError
from gateway.core.metrics import GatewayMetrics
from gateway.engine.accounting import (
    Accounting,
    RequestContext,
    RequestRecord,
    accounted,
    accounted_answer,
    accounted_audio,
)
from gateway.engine.answers import Answer, StreamAnswer
from gateway.engine.auth import ApiKeyStore
from gateway.engine.budgets import build_budgets
from gateway.engine.chat import CompletionService
from gateway.engine.limits import build_rate_limiter
from gateway.engine.pool import ModelPool
from gateway.engine.rerank import Reranked, Reranker
from gateway.engine.routing import RoutedModel
from gateway.engine.usage import UsageStore, store_url
from gateway.engine.usage.store import StoreUnavailable
from gateway.wire.anthropic import MessagesRequest, admission_view
from gateway.wire.anthropic import to_chat as messages_to_chat
from gateway.wire.audio import SpeechRequest, Transcript, TranscriptionRequest, UpstreamAudioReply
from gateway.wire.feedback import FeedbackRequest
from gateway.wire.openai import ChatCompletionRequest, EmbeddingRequest, Endpoint
from gateway.wire.rerank import RerankRequest
from gateway.wire.responses import ResponsesRequest, to_chat

logger = logging.getLogger(__name__)


class Gateway:
    def __init__(self, config: GatewayConfig, cache_dir: Path) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        self.pool = ModelPool(config, cache_dir)
        self.service = CompletionService(self.pool, self.metrics, self._load_router())
        self.reranker = Reranker(self.service, config.rerank)
        self.started_at = int(time.time())
        self.keys = ApiKeyStore(config.auth)
        self.store = _usage_store(config, cache_dir, self.metrics)
        budgets = build_budgets(self.store, config.limits.redis_url, config.limits.redis_timeout_s) \
            if self.store is not None and any(k.budget_usd is not None for k in config.auth.api_keys) else None
        routed = self.service.routed
        routed_models = {} if routed is None or config.router is None else \
            {routed.name: list(config.router.candidates or routed.models)}
        self.accounting = Accounting(config, self.metrics, build_rate_limiter(config.limits.redis_url,
                                                                              config.limits.redis_timeout_s),
                                     self.service.metric_label, self.store, budgets, routed_models)
        self.draining = False  # SIGTERM received: /ready says 503, requests are still served

    def _load_router(self) -> RoutedModel | None:
        """The routed model, loaded now so a bad checkpoint or mapping stops the start with a clear message."""
        if self.config.router is None:
            return None
        from routers.checkpoint import load_router

        try:
            router = load_router(self.config.router.checkpoint)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"router.checkpoint: {exc}") from None
        return RoutedModel(self.config.router, self.config, router, self.metrics)

    def begin_drain(self) -> None:
        """SIGTERM: /ready goes 503 at once; requests are still served (for ``drain_delay_s``, until the server
        stops accepting, see ``begin_stop``)."""
        if not self.draining:
            self.draining = True
            logger.info("draining: /ready reports 503", extra={"fields": {
                "delay_s": self.config.server.drain_delay_s}})

    def begin_stop(self) -> None:
        """The server stops accepting: refuse new work; after ``shutdown_grace_s`` less a second, end whatever
        is still running with an error (upstream connections closed, generations stopped) so no response is cut
        off silently when the server stops."""
        self.begin_drain()
        if self.accounting.stopping:
            return
        self.accounting.stopping = True  # new work refused, in-flight work given its grace
        grace = self.config.server.shutdown_grace_s
        logger.info("draining", extra={"fields": {"grace_s": grace}})
        loop = asyncio.get_running_loop()
        loop.call_later(max(0.0, grace - 1.0), lambda: self.accounting.keep(loop.create_task(self.pool.abort())))

    # ---- the engine's entry points: each admits, records, answers and finishes its own record -------------

    async def complete(self, ctx: RequestContext, endpoint: Endpoint, request: Request, relay: bool = False
                       ) -> Answer | StreamAnswer:
        """``/v1/chat/completions`` and ``/v1/completions``: a finished answer or an accounted stream. ``relay``:
        the caller sends a stream's chunks to the client unchanged (a backend may hand over ``RelayedChunks``)."""
        self._check_messages(request)
        record = await self.accounting.admit(ctx, endpoint, request.model, request)
        return _finished(record, await accounted(record, self.service.serve(endpoint, request, record, relay=relay)))

    async def respond(self, ctx: RequestContext, request: ResponsesRequest) -> Answer | StreamAnswer:
        """``/v1/responses``: admitted, checked and routed as the chat request that answers it."""
        chat = to_chat(request)
        self._check_messages(chat)
        record = await self.accounting.admit(ctx, "responses", request.model, chat)
        answer = await accounted(record, self.service.serve_responses(request, chat, record))
        return _finished(record, answer)

    async def messages(self, ctx: RequestContext, request: MessagesRequest) -> Answer | StreamAnswer:
        """``/v1/messages`` (Anthropic): admitted, checked and routed as the chat request that answers it (a
        model with ``messages_api: native`` gets the body as sent, so it is not translated)."""
        backend = self.service.pool.get(request.model)
        chat = admission_view(request) if backend is not None and backend.config.messages_api == "native" \
            else messages_to_chat(request)
        self._check_messages(chat)
        record = await self.accounting.admit(ctx, "messages", request.model, chat)
        answer = await accounted(record, self.service.serve_messages(request, chat, record))
        return _finished(record, answer)

    async def embed(self, ctx: RequestContext, request: EmbeddingRequest) -> Answer:
        record = await self.accounting.admit(ctx, "embeddings", request.model, request)
        answer = await accounted(record, self.service.embed(request, record))
        record.finish(200)
        return answer

    async def transcribe(self, ctx: RequestContext, request: TranscriptionRequest, task: str
                         ) -> Transcript | UpstreamAudioReply:
        """``task``: ``transcribe`` (``/v1/audio/transcriptions``) or ``translate`` (``/translations``)."""
        endpoint = "transcriptions" if task == "transcribe" else "translations"
        record = await self.accounting.admit(ctx, endpoint, request.model, request)
        result = await accounted(record, self.service.transcribe(request, task, record))
        record.finish(200)
        return result

    async def speak(self, ctx: RequestContext, request: SpeechRequest) -> tuple[AsyncIterator[bytes], str]:
        """The audio's pieces (the record finishes with the last one) and its media type."""
        record = await self.accounting.admit(ctx, "speech", request.model, request)
        pieces, media_type = await accounted(record, self.service.speak(request, record))
        return accounted_audio(record, pieces), media_type

    async def rerank(self, ctx: RequestContext, request: RerankRequest) -> Reranked:
        record = await self.accounting.admit(ctx, "rerank", request.model, request)
        reranked = await accounted(record, self.reranker.rerank(request, record))
        record.finish(200)
        return reranked

    def _check_messages(self, request: Request) -> None:
        if isinstance(request, ChatCompletionRequest) and len(request.messages) > self.config.limits.max_messages:
            raise InvalidRequestError(f"{len(request.messages)} messages; the limit is "
                                      f"{self.config.limits.max_messages}", param="messages")

    async def start(self) -> None:
        if self.store is not None:
            self.store.start()
        await self.pool.start()

    async def feedback(self, ctx: RequestContext, request: FeedbackRequest) -> dict[str, Any]:
        """``/v1/feedback``: a score for an earlier request of the same key, kept with its row in the store."""
        if self.store is None:
            raise InvalidRequestError("feedback needs the usage store, and this gateway runs with 'usage_store: "
                                      "false'", param="request_id", code="usage_store_disabled")
        store = self.store
        try:
            row = await asyncio.to_thread(store.request, request.request_id)
            if row is None and store.backlog:  # it may have ended a moment ago: its row waits to be written
                await asyncio.to_thread(store.flush, 5.0)
                row = await asyncio.to_thread(store.request, request.request_id)
            # Another key's request is "not found" too: ids do not tell whether they exist.
            if row is None or (ctx.key is not None and row["key_name"] != ctx.key.name):
                raise NotFoundError(f"no request '{request.request_id}' of this API key in the usage store",
                                    param="request_id", code="request_not_found")
            feedback_id = await asyncio.to_thread(store.add_feedback, request.request_id,
                                                  ctx.key.name if ctx.key else None, request.score, request.comment)
        except StoreUnavailable as exc:
            raise UpstreamUnavailableError(f"the usage store is unavailable ({exc}); retry shortly",
                                           code="usage_store_unavailable", retry_after_s=1.0) from None
        return {"id": f"fb-{feedback_id}", "object": "feedback", "request_id": request.request_id,
                "score": request.score, "comment": request.comment}

    async def aclose(self) -> None:
        self.service.close()
        await self.accounting.aclose()
        await self.pool.aclose()
        self.metrics.close()


def _usage_store(config: GatewayConfig, cache_dir: Path, metrics: GatewayMetrics) -> UsageStore | None:
    """The configured store; the default SQLite file only where the cache dir is writable (a read-only container
    without a configured store runs without one, and says so), and never without one when a key has a budget."""
    if config.usage_store is False:
        return None
    if config.usage_store is None and not _writable(cache_dir):
        budgeted = [key.name for key in config.auth.api_keys if key.budget_usd is not None]
        if budgeted:
            raise ConfigError(f"api keys with budget_usd ({', '.join(budgeted)}) need a usage store, and the "
                              f"default one cannot be written: {cache_dir} is not writable; set usage_store "
                              "(postgresql://... or sqlite:///A_WRITABLE_PATH)")
        logger.warning("no usage store: the cache dir is not writable and usage_store is not set", extra={
            "fields": {"cache_dir": str(cache_dir)}})
        return None
    return UsageStore(store_url(config.usage_store, cache_dir), metrics)


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK)


def _finished(record: RequestRecord, answer: Answer | StreamAnswer) -> Answer | StreamAnswer:
    """A whole answer's record finishes now; a stream's when its last chunk has been read."""
    record.note_stages(answer.headers)
    if isinstance(answer, StreamAnswer):
        return accounted_answer(record, answer)
    record.finish(200)
    return answer
