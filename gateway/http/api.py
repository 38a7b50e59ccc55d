"""Endpoints: thin glue between HTTP and ``CompletionService``."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable
from typing import Annotated, Any, Literal, TypeVar

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.auth import ApiKey
from gateway.errors import GatewayError, HTTPStatusError, InvalidRequestError, ModelNotFoundError, error_response
from gateway.http.sse import sse_lines
from gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Endpoint
from gateway.responses import ResponsesRequest, to_chat
from gateway.runtime import Gateway
from gateway.serving import StreamAnswer

RequestModel = TypeVar("RequestModel", bound=BaseModel)
CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away first"

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


async def cancel_on_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """Await ``work`` unless the client disconnects first; then cancel it (which stops the upstream call
    or the local generation) and raise ``ClientDisconnected``. The work runs in this task: only the watcher
    is a task of its own (one task per request, not two, on the hot path)."""
    this_task = asyncio.current_task()
    assert this_task is not None
    disconnected = False

    async def watch() -> None:
        nonlocal disconnected
        while (await request.receive())["type"] != "http.disconnect":
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


class FastJSONResponse(JSONResponse):
    """JSON rendered by orjson (compact UTF-8, as Starlette's, at a fraction of the CPU)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def _respond(request: Request, gateway: Gateway, endpoint: Endpoint | Literal["responses"],
                   parsed: ChatCompletionRequest | CompletionRequest | EmbeddingRequest | ResponsesRequest) -> Response:
    request.state.log.update(model=parsed.model, stream=parsed.stream)
    # A Responses request is admitted, checked and routed as the chat request that answers it.
    chat = to_chat(parsed) if isinstance(parsed, ResponsesRequest) else parsed
    if isinstance(chat, ChatCompletionRequest) and len(chat.messages) > gateway.config.limits.max_messages:
        raise InvalidRequestError(f"{len(chat.messages)} messages; the limit is "
                                  f"{gateway.config.limits.max_messages}", param="messages")
    key: ApiKey | None = request.state.api_key
    reservation = await gateway.admit(key, chat)
    record = gateway.new_record(endpoint, parsed.model, request.state.log, key, reservation)
    if isinstance(parsed, ResponsesRequest):
        assert isinstance(chat, ChatCompletionRequest)
        work = gateway.service.serve_responses(parsed, chat, record)
    elif isinstance(parsed, EmbeddingRequest):
        work = gateway.service.embed(parsed, record)
    else:
        work = gateway.service.serve(endpoint, parsed, record)  # type: ignore[arg-type]
    try:
        answer = await cancel_on_disconnect(request, work)
    except ClientDisconnected:
        record.finish(CLIENT_CLOSED_REQUEST, "client_closed_request")
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except GatewayError as exc:
        record.finish(exc.status_code, exc.code)
        raise
    except BaseException:
        record.finish(500, "internal_error")
        raise
    if isinstance(answer, StreamAnswer):
        return StreamingResponse(sse_lines(answer, record, parsed.include_usage,
                                           responses=isinstance(parsed, ResponsesRequest)),
                                 media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no",
                                          **answer.headers})
    record.finish(200)
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
