"""What every route shares: the gateway of the app, authentication, body parsing with exact 400s, the error
responses of the OpenAPI document, disconnect-cancelled work, and the JSON / SSE response classes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Annotated, Any, Protocol, TypeVar

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.core.errors import InvalidRequestError
from gateway.engine.accounting import RequestContext
from gateway.engine.auth import ApiKey
from gateway.engine.runtime import Gateway

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


async def authenticate(request: Request, gateway: GatewayDep) -> ApiKey | None:
    """Every /v1 request: the caller's API key (401 when keys are configured and it is missing or wrong), from
    ``Authorization: Bearer`` (OpenAI's clients) or ``x-api-key`` (Anthropic's)."""
    authorization = request.headers.get("authorization")
    if authorization is None and (api_key := request.headers.get("x-api-key")):
        authorization = f"Bearer {api_key}"
    key = gateway.keys.authenticate(authorization)
    request.state.api_key = key
    if key is not None:
        request.state.log["key"] = key.name
    return key


class PostEndpoint(Protocol):
    """A POST endpoint served as a plain ASGI app (the hot path: ``GatewayApp``), with its OpenAPI operation."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...

    def openapi_operation(self) -> dict[str, Any]: ...


def v1_router() -> APIRouter:
    """An ``/v1`` router whose every route authenticates first (401 when keys are configured and it is missing)."""
    return APIRouter(prefix="/v1", dependencies=[Depends(authenticate)])


# Schemas of the bodies the endpoints parse themselves; ``openapi_components`` adds them to the document.
BODY_SCHEMAS: dict[str, Any] = {}


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
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


def request_context(request: Request) -> RequestContext:
    """The caller's key (set by ``authenticate``), the access-log fields the engine adds to, and the request id."""
    return RequestContext(request.state.api_key, request.state.log, getattr(request.state, "request_id", None))
