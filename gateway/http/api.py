"""Endpoints: parse the request, call the engine's entry point for its family (``engine/runtime.py``), render the
answer. Admission, accounting and the request's record are the engine's."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Awaitable
from typing import Annotated, Any, Literal, TypeVar

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.core.errors import GatewayError, HTTPStatusError, InvalidRequestError, ModelNotFoundError, error_response
from gateway.engine.accounting import CLIENT_CLOSED_REQUEST, RequestContext
from gateway.engine.answers import Answer, StreamAnswer
from gateway.engine.auth import ApiKey
from gateway.engine.runtime import Gateway
from gateway.http.sse import sse_lines
from gateway.wire.audio import (
    MAX_AUDIO_BYTES,
    TRANSCRIPT_FORMATS,
    SpeechRequest,
    TranscriptionRequest,
    UpstreamAudioReply,
    check_size,
)
from gateway.wire.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Endpoint
from gateway.wire.rerank import RerankRequest
from gateway.wire.responses import ResponsesRequest

RequestModel = TypeVar("RequestModel", bound=BaseModel)

ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    for status, description in [(400, "Invalid request"), (401, "Missing or wrong API key"),
                                (404, "Unknown model"), (413, "Body too large"), (429, "Rate limited"),
                                (502, "Upstream error"), (503, "Upstream unavailable or busy"),
                                (504, "Upstream timeout")]}


# Dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in a worker thread, a thread hop per
# request on the hot path.
async def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


GatewayDep = Annotated[Gateway, Depends(_gateway)]


async def _authenticate(request: Request, gateway: GatewayDep) -> ApiKey | None:
    """Every /v1 request: the caller's API key (401 when keys are configured and it is missing or wrong)."""
    key = gateway.keys.authenticate(request.headers.get("authorization"))
    request.state.api_key = key
    if key is not None:
        request.state.log["key"] = key.name
    return key


KeyDep = Annotated[ApiKey | None, Depends(_authenticate)]
router = APIRouter()
v1 = APIRouter(prefix="/v1", dependencies=[Depends(_authenticate)])


# Schemas of the bodies the endpoints parse themselves; ``openapi_components`` adds them to the document.
BODY_SCHEMAS: dict[str, Any] = {}


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI request body for endpoints that parse their body themselves (for exact error control)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    BODY_SCHEMAS.update(schema.pop("$defs", {}))
    BODY_SCHEMAS[model.__name__] = schema
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


async def read_json_request(request: Request, model: type[RequestModel]) -> RequestModel:
    """Parse and validate the body; every failure is a 400 naming the offending parameter."""
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequestError("the request body is empty; expected a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
    except RecursionError:
        raise InvalidRequestError("the request body is nested too deeply") from None


def validation_error(exc: ValidationError) -> InvalidRequestError:
    first = exc.errors(include_url=False)[0]
    param = ".".join(str(part) for part in first["loc"] if part != "body") or None
    message = first["msg"]
    if first["type"] == "missing":
        message = f"'{param}' is a required property"
    elif param:
        message = f"invalid value for '{param}': {message}"
    more = len(exc.errors()) - 1
    if more:
        message += f" (and {more} more error{'s' if more > 1 else ''})"
    return InvalidRequestError(message, param=param)


async def cancel_on_disconnect(receive: Receive, work: Awaitable[Any]) -> Any:
    """Await ``work`` unless the client disconnects first; then cancel it (which stops the upstream call
    or the local generation) and raise ``ClientDisconnected``. The work runs in this task: only the watcher
    is a task of its own (one task per request, not two, on the hot path)."""
    this_task = asyncio.current_task()
    assert this_task is not None
    disconnected = False

    async def watch() -> None:
        nonlocal disconnected
        while (await receive())["type"] != "http.disconnect":
            pass
        disconnected = True
        this_task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not disconnected:
            raise
        this_task.uncancel()  # the cancellation was ours: not a cancellation of the request's task
        raise ClientDisconnected() from None
    finally:
        watcher.cancel()


class ClientDisconnected(Exception):
    pass


class EventStreamResponse(StreamingResponse):
    """A server-sent-events body, sent from the request's own task while one watcher task waits for the client
    to leave (then the body is cancelled, which stops the upstream call or the generation). Starlette's own
    runs a task group of two per stream under ASGI < 2.4, which uvicorn speaks."""

    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with contextlib.suppress(ClientDisconnected):
            await cancel_on_disconnect(receive, self.stream_response(send))


class FastJSONResponse(JSONResponse):
    """JSON rendered by orjson (compact UTF-8, as Starlette's, at a fraction of the CPU)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _context(request: Request) -> RequestContext:
    """The caller's key (set by ``_authenticate``) and the access-log fields the engine adds to."""
    return RequestContext(request.state.api_key, request.state.log)


async def _respond(request: Request, gateway: Gateway, endpoint: Endpoint | Literal["responses"],
                   parsed: ChatCompletionRequest | CompletionRequest | EmbeddingRequest | ResponsesRequest) -> Response:
    request.state.log.update(model=parsed.model, stream=parsed.stream)
    ctx = _context(request)
    work: Awaitable[Answer | StreamAnswer]
    if isinstance(parsed, ResponsesRequest):
        work = gateway.respond(ctx, parsed)
    elif isinstance(parsed, EmbeddingRequest):
        work = gateway.embed(ctx, parsed)
    else:
        work = gateway.complete(ctx, endpoint, parsed, relay=True)  # type: ignore[arg-type]
    try:
        answer = await cancel_on_disconnect(request.receive, work)
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    if isinstance(answer, StreamAnswer):
        return EventStreamResponse(sse_lines(answer, parsed.include_usage,
                                             responses=isinstance(parsed, ResponsesRequest)),
                                   headers={"cache-control": "no-cache", "x-accel-buffering": "no", **answer.headers})
    return FastJSONResponse(answer.body, headers=answer.headers)


class OpenAIEndpoint:
    """A POST endpoint of the OpenAI API (chat completions, completions) as a plain ASGI app.

    The gateway's hot path, so it skips FastAPI's per-request machinery (dependency solving, exit stacks,
    route wrappers: measured at ~30% of a proxied request's CPU): it authenticates, parses and answers itself.
    Errors leave as OpenAI error objects; anything unexpected rises to the app's error handler (a logged 500).
    Its OpenAPI operation is ``openapi_operation``.
    """

    def __init__(self, endpoint: Endpoint | Literal["responses"],
                 model: type[ChatCompletionRequest] | type[CompletionRequest] | type[EmbeddingRequest]
                 | type[ResponsesRequest], summary: str) -> None:
        self.endpoint, self.model, self.summary = endpoint, model, summary

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        gateway: Gateway = request.app.state.gateway
        try:
            await _authenticate(request, gateway)
            parsed = await read_json_request(request, self.model)
            response = await _respond(request, gateway, self.endpoint, parsed)
        except GatewayError as exc:
            response = error_response(exc)
        await response(scope, receive, send)

    def openapi_operation(self) -> dict[str, Any]:
        responses: dict[int | str, Any] = {200: {"description": "The completion (JSON, or SSE with stream)",
                                                 "content": {"application/json": {"schema": {"type": "object"}},
                                                             "text/event-stream": {"schema": {"type": "string"}}}}}
        return {"summary": self.summary, "operationId": f"create_{self.endpoint}", **_body_schema(self.model),
                "responses": {str(status): value for status, value in {**responses, **ERROR_RESPONSES}.items()}}


OPENAI_ENDPOINTS = {
    "/v1/chat/completions": OpenAIEndpoint("chat", ChatCompletionRequest, "OpenAI chat completions (stream for SSE)"),
    "/v1/completions": OpenAIEndpoint("completions", CompletionRequest, "OpenAI legacy completions"),
    "/v1/embeddings": OpenAIEndpoint("embeddings", EmbeddingRequest, "OpenAI embeddings (task: embed models)"),
    "/v1/responses": OpenAIEndpoint("responses", ResponsesRequest, "OpenAI Responses API, stateless subset "
                                                                   "(stream for Responses events)"),
}
openai_routes = [Route(path, endpoint, methods=["POST"]) for path, endpoint in OPENAI_ENDPOINTS.items()]


# ---- audio ---------------------------------------------------------------------------------------------

_TRANSCRIPTION_FORM = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "model"],
    "properties": {"file": {"type": "string", "format": "binary"}, "model": {"type": "string"},
                   "language": {"type": "string"}, "prompt": {"type": "string"},
                   "response_format": {"type": "string", "enum": list(TRANSCRIPT_FORMATS)},
                   "temperature": {"type": "number"},
                   "timestamp_granularities[]": {"type": "array", "items": {"type": "string",
                                                                            "enum": ["word", "segment"]}}}}}}}}
_AUDIO_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES, 200: {"description": "The transcript (JSON, or text in the requested format)",
                             "content": {"application/json": {"schema": {"type": "object"}},
                                         "text/plain": {"schema": {"type": "string"}}}}}
_FORM_FIELDS = {"file", "model", "language", "prompt", "response_format", "temperature", "timestamp_granularities[]",
                "timestamp_granularities"}


@v1.post("/audio/transcriptions", responses=_AUDIO_RESPONSES, openapi_extra=_TRANSCRIPTION_FORM)
async def create_transcription(request: Request, gateway: GatewayDep) -> Response:
    """Speech to text (multipart: ``file``, ``model``, ``language``, ``prompt``, ``response_format``, ...)."""
    return await _transcription(request, gateway, "transcribe")


@v1.post("/audio/translations", responses=_AUDIO_RESPONSES, openapi_extra=_TRANSCRIPTION_FORM)
async def create_translation(request: Request, gateway: GatewayDep) -> Response:
    """Speech to English text."""
    return await _transcription(request, gateway, "translate")


async def _transcription(request: Request, gateway: Gateway, task: str) -> Response:
    parsed = await read_transcription_form(request)
    request.state.log.update(model=parsed.model)
    try:
        result = await cancel_on_disconnect(request.receive, gateway.transcribe(_context(request), parsed, task))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    if isinstance(result, UpstreamAudioReply):
        return Response(result.content, media_type=result.media_type)
    body, media_type = result.render(parsed.response_format, "transcribe" if task == "transcribe" else "translate")
    return FastJSONResponse(body) if isinstance(body, dict) else Response(body, media_type=media_type)


async def read_transcription_form(request: Request) -> TranscriptionRequest:
    """The multipart form of a transcription; every problem is a 400 naming the field."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequestError("expected a multipart/form-data body with 'file' and 'model'", param="file")
    try:
        form = await request.form(max_files=1, max_fields=64)
    except (MultiPartException, ValueError, KeyError) as exc:
        raise InvalidRequestError(f"the multipart body cannot be read: {exc}", param="file") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidRequestError("'file' is a required property (an audio file)", param="file")
    raw = await upload.read(MAX_AUDIO_BYTES + 1)
    check_size(raw, "file")

    def text(name: str) -> str | None:
        value = form.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidRequestError(f"'{name}' must be a text field", param=name)
        return value

    model = text("model")
    if not model:
        raise InvalidRequestError("'model' is a required property", param="model")
    response_format = text("response_format") or "json"
    if response_format not in TRANSCRIPT_FORMATS:
        raise InvalidRequestError(f"response_format must be one of {', '.join(TRANSCRIPT_FORMATS)}",
                                  param="response_format")
    try:
        temperature = float(text("temperature") or 0)
    except ValueError:
        temperature = -1
    if not 0 <= temperature <= 1:
        raise InvalidRequestError("temperature must be a number from 0 to 1", param="temperature")
    granularities = [g for name in ("timestamp_granularities[]", "timestamp_granularities") for g in form.getlist(name)]
    if any(g not in ("word", "segment") for g in granularities):
        raise InvalidRequestError("timestamp_granularities must be 'word' and/or 'segment'",
                                  param="timestamp_granularities")
    if granularities and response_format != "verbose_json":
        raise InvalidRequestError("timestamp_granularities needs response_format 'verbose_json'",
                                  param="timestamp_granularities")
    others = {name: value for name, value in form.multi_items() if name not in _FORM_FIELDS}
    if any(not isinstance(value, str) for value in others.values()):
        raise InvalidRequestError("only one file may be sent, as 'file'", param="file")
    return TranscriptionRequest(model=model, audio=raw, filename=upload.filename or "audio",
                                language=text("language"), prompt=text("prompt"), response_format=response_format,
                                temperature=temperature, timestamp_granularities=[str(g) for g in granularities],
                                other_fields=others)  # type: ignore[arg-type]


@v1.post("/audio/speech", responses={**ERROR_RESPONSES, 200: {"description": "The audio file, streamed",
                                                              "content": {"audio/mpeg": {}}}},
         openapi_extra=_body_schema(SpeechRequest))
async def create_speech(request: Request, gateway: GatewayDep) -> Response:
    """Text to speech: the audio file (``response_format``: mp3, opus, aac, flac, wav, pcm), streamed."""
    parsed = await read_json_request(request, SpeechRequest)
    request.state.log.update(model=parsed.model)
    try:
        pieces, media_type = await cancel_on_disconnect(request.receive, gateway.speak(_context(request), parsed))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return StreamingResponse(pieces, media_type=media_type)


# ---- re-ranking ---------------------------------------------------------------------------------------------

_RERANK_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES, 200: {"description": "The documents' indices and relevance scores, best first",
                             "content": {"application/json": {"schema": {"type": "object"}}}}}


@v1.post("/rerank", responses=_RERANK_RESPONSES, openapi_extra=_body_schema(RerankRequest))
async def create_rerank(request: Request, gateway: GatewayDep) -> Response:
    """Re-rank ``documents`` against ``query`` (Cohere / Jina / vLLM shape): by a re-ranker model, an
    embedding model (cosine), or a chat model or ``auto`` (listwise, KICGPT's conversation)."""
    parsed = await read_json_request(request, RerankRequest)
    request.state.log.update(model=parsed.model)
    try:
        reranked = await cancel_on_disconnect(request.receive, gateway.rerank(_context(request), parsed))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return FastJSONResponse(reranked.body, headers=reranked.headers)


# vLLM serves the same endpoint at /rerank and /v2/rerank (the path Cohere's v2 SDK calls).
for _path in ("/rerank", "/v2/rerank"):
    router.add_api_route(_path, create_rerank, methods=["POST"], dependencies=[Depends(_authenticate)],
                         include_in_schema=False)


def _model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "llm-gateway"}


@v1.get("/models", responses=ERROR_RESPONSES)
async def list_models(gateway: GatewayDep) -> dict[str, Any]:
    """The public model names (``auto`` included when a router is configured)."""
    names = gateway.service.public_model_names()
    return {"object": "list", "data": [_model_card(name, gateway.started_at) for name in names]}


@v1.get("/models/{model_id:path}", responses=ERROR_RESPONSES)
async def retrieve_model(model_id: str, gateway: GatewayDep) -> dict[str, Any]:
    if model_id not in gateway.service.public_model_names():
        raise ModelNotFoundError(f"The model '{model_id}' does not exist", param="model")
    return _model_card(model_id, gateway.started_at)


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "Not ready yet"}})
async def ready(gateway: GatewayDep) -> JSONResponse:
    """Readiness: every local model loaded and every upstream reachable; not ready while draining (SIGTERM
    received), so load balancers stop sending new requests before the process goes."""
    models = await gateway.pool.readiness()
    is_ready = all(entry["ready"] for entry in models.values()) and not gateway.draining
    status = "draining" if gateway.draining else "ready" if is_ready else "not_ready"
    return JSONResponse({"status": status, "models": models, "uptime_s": round(time.time() - gateway.started_at, 1)},
                        status_code=200 if is_ready else 503)


@router.get("/metrics", responses={403: {"description": "Not from loopback"}})
async def metrics(request: Request, gateway: GatewayDep) -> Response:
    """Prometheus text format; only to loopback clients unless ``server.metrics_allow_remote``."""
    client = request.client.host if request.client else ""
    if not gateway.config.server.metrics_allow_remote and not _is_loopback(client):
        raise HTTPStatusError("/metrics is served to loopback clients only (server.metrics_allow_remote)",
                              status_code=403)
    return Response(gateway.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
