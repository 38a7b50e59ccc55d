"""The OpenAI endpoints: chat completions, completions, embeddings and the Responses API as plain ASGI apps (the
hot path, see ``OpenAIEndpoint``), and ``/v1/models``."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Literal

from fastapi import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.core.errors import GatewayError, ModelNotFoundError, error_response
from gateway.engine.accounting import CLIENT_CLOSED_REQUEST
from gateway.engine.answers import Answer, StreamAnswer
from gateway.engine.runtime import Gateway
from gateway.http.deps import (
    ERROR_RESPONSES,
    ClientDisconnected,
    EventStreamResponse,
    FastJSONResponse,
    GatewayDep,
    authenticate,
    body_schema,
    cancel_on_disconnect,
    read_json_request,
    request_context,
    v1_router,
)
from gateway.http.sse import sse_lines
from gateway.wire.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Endpoint
from gateway.wire.responses import ResponsesRequest

v1 = v1_router()


async def _respond(request: Request, gateway: Gateway, endpoint: Endpoint | Literal["responses"],
                   parsed: ChatCompletionRequest | CompletionRequest | EmbeddingRequest | ResponsesRequest) -> Response:
    request.state.log.update(model=parsed.model, stream=parsed.stream)
    ctx = request_context(request)
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
        return EventStreamResponse(sse_lines(answer, parsed.include_usage),
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
            await authenticate(request, gateway)
            parsed = await read_json_request(request, self.model)
            response = await _respond(request, gateway, self.endpoint, parsed)
        except GatewayError as exc:
            response = error_response(exc)
        await response(scope, receive, send)

    def openapi_operation(self) -> dict[str, Any]:
        responses: dict[int | str, Any] = {200: {"description": "The completion (JSON, or SSE with stream)",
                                                 "content": {"application/json": {"schema": {"type": "object"}},
                                                             "text/event-stream": {"schema": {"type": "string"}}}}}
        return {"summary": self.summary, "operationId": f"create_{self.endpoint}", **body_schema(self.model),
                "responses": {str(status): value for status, value in {**responses, **ERROR_RESPONSES}.items()}}


OPENAI_ENDPOINTS = {
    "/v1/chat/completions": OpenAIEndpoint("chat", ChatCompletionRequest, "OpenAI chat completions (stream for SSE)"),
    "/v1/completions": OpenAIEndpoint("completions", CompletionRequest, "OpenAI legacy completions"),
    "/v1/embeddings": OpenAIEndpoint("embeddings", EmbeddingRequest, "OpenAI embeddings (task: embed models)"),
    "/v1/responses": OpenAIEndpoint("responses", ResponsesRequest, "OpenAI Responses API, stateless subset "
                                                                   "(stream for Responses events)"),
}


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
