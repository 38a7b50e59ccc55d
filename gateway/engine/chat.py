"""The request pipeline: pick the model(s), call the backend, account for it. No HTTP in here.

``CompletionService.serve`` returns either a whole ``Answer`` or a ``StreamAnswer`` whose first chunk has
already arrived: a request that fails before producing anything raises, so the HTTP layer can still
answer with a proper error status (and routing can still fail over to the next candidate).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

from gateway.backends import Backend, Request
from gateway.backends.base import ANSWERED_BY_ENDPOINT
from gateway.core.circuit import FAILOVER_ERRORS, STATE_GAUGE, CircuitBreaker, State, is_backend_fault
from gateway.core.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    UpstreamTimeoutError,
)
from gateway.core.metrics import GatewayMetrics
from gateway.engine.accounting import RequestRecord
from gateway.engine.answers import KEEPALIVE, KEEPALIVE_S, Answer, StreamAnswer, primed, with_keepalive
from gateway.engine.audio_chat import AudioChat, AudioPlan
from gateway.engine.pipeline import STAGES_HEADER, Pipeline, PoolCaller, build_stages, stage_headers
from gateway.engine.pool import ModelPool
from gateway.engine.routing import (
    ROUTE_SCORES_HEADER,
    ROUTED_MODEL_HEADER,
    RouteDecision,
    RoutedModel,
    query_text,
    route_scores_header,
)
from gateway.wire.anthropic import MessagesRequest, message_events, message_from_chat
from gateway.wire.anthropic import chat_usage as messages_chat_usage
from gateway.wire.audio import SpeechRequest, Transcript, TranscriptionRequest, UpstreamAudioReply
from gateway.wire.openai import ChatCompletionRequest, EmbeddingRequest, Endpoint
from gateway.wire.responses import ResponsesRequest, response_events, response_from_chat
from gateway.wire.responses import chat_usage as responses_chat_usage

UNKNOWN_MODEL_LABEL = "unknown"


ENDPOINT_HEADER = "x-gateway-endpoint"  # which replica of the model answered (models with endpoints:)


class CompletionService:
    """Resolves the requested model (or routes ``auto``), fails over down the ranking, accounts for usage."""

    def __init__(self, pool: ModelPool, metrics: GatewayMetrics, routed: RoutedModel | None = None) -> None:
        self.pool = pool
        self.metrics = metrics
        self.routed = routed
        self.audio_chat = AudioChat(pool)
        caller = PoolCaller(pool)
        self.pipelines = {name: Pipeline(backend, stages, caller, metrics) for name, backend in pool.backends.items()
                          if (stages := build_stages(backend.config, pool.config))}
        # Circuits decide which candidates routing skips, so they exist where there is routing.
        self.breakers = {} if routed is None else {
            name: CircuitBreaker(name, threshold=routed.config.failure_threshold,
                                 open_seconds=routed.config.open_seconds, probe=backend.check_ready,
                                 on_change=self._circuit_changed)
            for name, backend in pool.backends.items()}

    def _circuit_changed(self, model: str, state: State) -> None:
        self.metrics.circuit_open.labels(model).set(STATE_GAUGE[state])

    def public_model_names(self) -> list[str]:
        return list(self.pool.backends) + ([self.routed.name] if self.routed else [])

    def metric_label(self, model: str) -> str:
        """The configured name a requested model is counted under; any other string is ``unknown`` (a client
        must not be able to create metric series at will)."""
        if self.routed is not None and model == self.routed.name:
            return model
        backend = self.pool.get(model)
        return backend.name if backend is not None else UNKNOWN_MODEL_LABEL

    async def _plan(self, request: Request, prefer_audio: bool = False) -> tuple[list[Backend], RouteDecision | None]:
        """The backends to try, in order, and the routing decision when the request was routed."""
        if self.routed is not None and request.model == self.routed.name:
            decision = await self.routed.decide(request, prefer_audio)
            ranked = [self.pool.backends[name] for name in decision.models]
            # A candidate whose max_tokens_cap the request exceeds is passed over, not the end of routing.
            fitting = [b for b in ranked if _within_cap(b, request)]
            if not fitting:
                _check_cap(ranked[0], request)
            ranked = fitting
            healthy = [b for b in ranked if not self.breakers[b.name].is_open]
            # With every circuit open, still try in rank order: a success closes the circuit again.
            return (healthy or ranked)[: self.routed.config.max_attempts], decision
        backend = self.pool.get(request.model)
        if backend is None:
            known = ", ".join(self.public_model_names())
            raise ModelNotFoundError(f"The model '{request.model}' does not exist; available models: {known}",
                                     param="model")
        return [backend], None

    async def embed(self, request: EmbeddingRequest, record: RequestRecord) -> Answer:
        """``/v1/embeddings`` on the named model (never routed: an embedding space is the model's own)."""
        backend = self.pool.get(request.model)
        if backend is None:
            if self.routed is not None and request.model == self.routed.name:
                raise InvalidRequestError(f"'{request.model}' routes chat and completions; name an embedding "
                                          "model", param="model")
            known = ", ".join(name for name in self.pool.backends if self.pool.backends[name].config.task == "embed")
            raise ModelNotFoundError(f"The model '{request.model}' does not exist; embedding models: "
                                     f"{known or 'none configured'}", param="model")
        record.answered_by(backend.name)
        body = await backend.embed(request)
        record.add_usage(body.get("usage"))
        return Answer(body)

    async def serve_responses(self, request: ResponsesRequest, chat: ChatCompletionRequest,
                              record: RequestRecord) -> Answer | StreamAnswer:
        """``/v1/responses``: passed as sent to a named upstream that serves it (``responses_api: native``),
        otherwise served as ``chat`` (routing, stages and failover included) and answered in Responses shapes."""
        backend = self.pool.get(request.model)
        if backend is not None and backend.config.responses_api == "native":
            record.answered_by(backend.name)
            headers = {ROUTED_MODEL_HEADER: backend.name}
            if request.stream:
                return StreamAnswer(await primed(backend.stream_responses(request)), headers, "responses")
            body = await backend.respond(request)
            record.add_usage(responses_chat_usage(body.get("usage")))
            return Answer(body, headers)
        answer = await self.serve("chat", chat, record)
        if isinstance(answer, StreamAnswer):
            return StreamAnswer(response_events(request, _not_relayed(answer), KEEPALIVE), answer.headers, "responses")
        return Answer(response_from_chat(request, answer.body), answer.headers)

    async def serve_messages(self, request: MessagesRequest, chat: ChatCompletionRequest,
                             record: RequestRecord) -> Answer | StreamAnswer:
        """``/v1/messages`` (Anthropic): passed as sent to a named upstream that serves it (``messages_api:
        native``), otherwise served as ``chat`` (routing, stages and failover included) and answered in
        Anthropic's shapes."""
        backend = self.pool.get(request.model)
        if backend is not None and backend.config.messages_api == "native":
            record.answered_by(backend.name)
            headers = {ROUTED_MODEL_HEADER: backend.name}
            if request.stream:
                return StreamAnswer(await primed(backend.stream_messages(request)), headers, "messages")
            body = await backend.messages(request)
            record.add_usage(messages_chat_usage(body.get("usage")))
            return Answer(body, headers)
        answer = await self.serve("chat", chat, record)
        if isinstance(answer, StreamAnswer):
            return StreamAnswer(message_events(request, _not_relayed(answer), KEEPALIVE), answer.headers, "messages")
        return Answer(message_from_chat(request, answer.body), answer.headers)

    async def transcribe(self, request: TranscriptionRequest, task: str, record: RequestRecord
                         ) -> Transcript | UpstreamAudioReply:
        """``/v1/audio/transcriptions`` (``task`` transcribe) and ``/translations`` (translate), named model."""
        backend = self._named(request.model, "transcribe")
        record.answered_by(backend.name)
        return await backend.transcribe(request, task)

    async def speak(self, request: SpeechRequest, record: RequestRecord) -> tuple[AsyncIterator[bytes], str]:
        """``/v1/audio/speech`` on the named model."""
        backend = self._named(request.model, "speech")
        record.answered_by(backend.name)
        return await backend.speak(request)

    def _named(self, model: str, task: str) -> Backend:
        backend = self.pool.get(model)
        if backend is None:
            known = ", ".join(name for name, b in self.pool.backends.items() if b.config.task == task)
            raise ModelNotFoundError(f"The model '{model}' does not exist; {task} models: "
                                     f"{known or 'none configured'}", param="model")
        return backend

    async def serve(self, endpoint: Endpoint, request: Request, record: RequestRecord,
                    relay: bool = False) -> Answer | StreamAnswer:
        """The answer to a chat or completions request. ``relay``: the caller sends a stream's chunks to the
        client unchanged, so a backend may hand them over as ``RelayedChunks`` (bytes)."""
        audio = None
        if isinstance(request, ChatCompletionRequest) and self.audio_chat.involved(request):
            named = self.pool.get(request.model)
            audio = await self.audio_chat.plan(request, all_native=named is not None and named.config.audio)
            request = audio.cascaded  # what routing reads: the transcript
        backends, decision = await self._plan(request, prefer_audio=audio is not None and audio.has_audio_input)
        deadline_s = self.routed.config.deadline_s if decision is not None and self.routed is not None else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s if deadline_s is not None else None
        failures: list[str] = []
        for attempt, backend in enumerate(backends):
            record.answered_by(backend.name)
            ANSWERED_BY_ENDPOINT.set(None)  # a replica set names the replica that answers
            try:
                # The deadline bounds the whole failover (up to the first chunk of a stream), not each try.
                async with asyncio.timeout_at(deadline):
                    answer = await self._attempt(backend, endpoint,
                                                 request if audio is None else audio.request_for(backend), record,
                                                 relay=relay and audio is None)
                    if audio is not None and audio.output is not None and not backend.config.audio:
                        answer = await self._spoken(answer, audio, backend)
            except TimeoutError:
                error = UpstreamTimeoutError(f"no candidate of '{request.model}' answered within router.deadline_s "
                                             f"= {deadline_s:g} s" + (f" (tried: {'; '.join(failures)}; then "
                                                                      f"{backend.name})" if failures else ""))
                raise error from None
            except FAILOVER_ERRORS as exc:
                if backend.name in self.breakers and is_backend_fault(exc, bool(request.stream)):
                    self.breakers[backend.name].record_failure()
                if attempt + 1 == len(backends) or (deadline is not None and loop.time() >= deadline):
                    if failures:
                        exc.message = f"{exc.message} (after failing over from: {'; '.join(failures)})"
                    raise
                failures.append(f"{backend.name}: {exc.code}")
                self.metrics.failovers.labels(backend.name, exc.code or "error").inc()
                continue
            if backend.name in self.breakers:
                self.breakers[backend.name].record_success()
            answer.headers[ROUTED_MODEL_HEADER] = backend.name
            replica = ANSWERED_BY_ENDPOINT.get()
            if replica is not None:
                answer.headers[ENDPOINT_HEADER] = replica
                self.metrics.endpoint_requests.labels(backend.name, replica).inc()
                record.log_fields["endpoint"] = replica
            if decision is not None and self.routed is not None:
                top = self.routed.config.top_scores_in_header
                answer.headers[ROUTE_SCORES_HEADER] = route_scores_header(decision, top)
                self.metrics.routed.labels(self.routed.name, backend.name).inc()
                record.log_fields["route"] = decision.models[:top]
                record.route = decision.top(top)
                record.query = query_text(request, self.routed.config.query_turns)
            return answer
        raise AssertionError("unreachable: a plan has at least one backend")

    async def _spoken(self, answer: Answer | StreamAnswer, audio: AudioPlan, backend: Backend) -> Answer | StreamAnswer:
        """The answer spoken, in the style the answering model chooses meanwhile (EMOVA's emotion and pitch)."""
        assert audio.output is not None
        chosen = asyncio.ensure_future(self.audio_chat.choose_style(backend, audio))
        if isinstance(answer, StreamAnswer):
            return StreamAnswer(self.audio_chat.speak_stream(_not_relayed(answer), audio.output, KEEPALIVE, chosen),
                                answer.headers)
        return Answer(await self.audio_chat.speak_answer(answer.body, audio.output, chosen), answer.headers)

    async def _attempt(self, backend: Backend, endpoint: Endpoint, request: Request,
                       record: RequestRecord, relay: bool) -> Answer | StreamAnswer:
        _check_cap(backend, request)
        pipeline = self.pipelines.get(backend.name)
        if pipeline is not None and isinstance(request, ChatCompletionRequest):
            pipeline.check(request)
            ctx = pipeline.context()
            if request.stream:
                # A stage may hold the answer for a while (ECSO checks it whole first): the response starts
                # at once, keep-alive comments flow while it works, and the verdict travels in the chunks.
                applying = [stage.name for stage in pipeline.stages if stage.applies(request)]
                headers = {STAGES_HEADER: ",".join(applying)} if applying else {}
                return StreamAnswer(with_keepalive(pipeline.stream(ctx, request), KEEPALIVE_S), headers)
            body = await pipeline.complete(ctx, request)
            record.add_usage(body.get("usage"))
            return Answer(body, stage_headers(ctx))
        if request.stream:
            return StreamAnswer(await primed(backend.relay(endpoint, request) if relay
                                              else backend.stream(endpoint, request)))
        body = await backend.complete(endpoint, request)
        record.add_usage(body.get("usage"))
        return Answer(body)

    def close(self) -> None:
        for breaker in self.breakers.values():
            breaker.close()
        if self.routed is not None:
            self.routed.close()


def _not_relayed(answer: StreamAnswer) -> AsyncIterator[dict[str, Any]]:
    """The chunks of a stream served without ``relay``: chunk objects only, never ``RelayedChunks``."""
    return cast(AsyncIterator[dict[str, Any]], answer.chunks)


def _within_cap(backend: Backend, request: Request) -> bool:
    cap, wanted = backend.config.max_tokens_cap, request.completion_token_limit
    return cap is None or wanted is None or wanted <= cap


def _check_cap(backend: Backend, request: Request) -> None:
    if not _within_cap(backend, request):
        raise InvalidRequestError(f"max_tokens {request.completion_token_limit} is above the limit of "
                                  f"{backend.config.max_tokens_cap} for model '{backend.name}'", param="max_tokens")
