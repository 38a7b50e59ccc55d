"""Anthropic's Messages API, ``POST /v1/messages``, for the clients that speak it (Claude Code, Anthropic's SDKs):
a plain ASGI app like the OpenAI endpoints (``routes/openai.py``), whose every error leaves in Anthropic's shape
(``{"type": "error", "error": {"type", "message"}}``), an unexpected one included."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from gateway.core.errors import GatewayError, InternalError
from gateway.engine.accounting import CLIENT_CLOSED_REQUEST
from gateway.engine.answers import StreamAnswer
from gateway.engine.runtime import Gateway
from gateway.http.deps import (
    ClientDisconnected,
    EventStreamResponse,
    FastJSONResponse,
    authenticate,
    body_schema,
    cancel_on_disconnect,
    read_json_request,
    request_context,
)
from gateway.http.middleware import REQUEST_ID_HEADER
from gateway.http.sse import sse_lines
from gateway.wire.anthropic import ERROR_TYPES, MessagesRequest, error_body

logger = logging.getLogger(__name__)

_ERROR_SCHEMA = {"type": "object", "required": ["type", "error"], "properties": {
    "type": {"const": "error"}, "error": {"type": "object", "required": ["type", "message"], "properties": {
        "type": {"type": "string"}, "message": {"type": "string"}}}}}


def anthropic_error(exc: GatewayError) -> JSONResponse:
    return JSONResponse(error_body(exc), status_code=exc.status_code, headers=exc.headers)


class MessagesEndpoint:
    """``POST /v1/messages``: authenticate (``x-api-key`` or ``Authorization: Bearer``), parse, answer."""

    summary = "Anthropic Messages API (stream for Anthropic's events)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        gateway: Gateway = request.app.state.gateway
        try:
            await authenticate(request, gateway)
            parsed = await read_json_request(request, MessagesRequest)
            response = await self._answer(request, gateway, parsed)
        except GatewayError as exc:
            response = anthropic_error(exc)
        except Exception as exc:  # never a stack trace, and never the OpenAI shape, to an Anthropic client
            request_id = scope.get("state", {}).get("request_id")
            logger.error("unhandled error", exc_info=exc, extra={"fields": {"request_id": request_id}})
            response = anthropic_error(InternalError(f"the gateway hit an internal error; the request id is in the "
                                                     f"{REQUEST_ID_HEADER} header"))
        await response(scope, receive, send)

    async def _answer(self, request: Request, gateway: Gateway, parsed: MessagesRequest) -> Response:
        request.state.log.update(model=parsed.model, stream=parsed.stream)
        try:
            answer = await cancel_on_disconnect(request.receive, gateway.messages(request_context(request), parsed))
        except ClientDisconnected:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        if isinstance(answer, StreamAnswer):
            return EventStreamResponse(sse_lines(answer, include_usage=False),
                                       headers={"cache-control": "no-cache", "x-accel-buffering": "no",
                                                **answer.headers})
        return FastJSONResponse(answer.body, headers=answer.headers)

    def openapi_operation(self) -> dict[str, Any]:
        errors = {str(status): {"description": kind, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
                  for status, kind in ERROR_TYPES.items()}
        ok = {"description": "The Message (JSON, or Anthropic's SSE events with stream)",
              "content": {"application/json": {"schema": {"type": "object"}},
                          "text/event-stream": {"schema": {"type": "string"}}}}
        return {"summary": self.summary, "operationId": "create_message", **body_schema(MessagesRequest),
                "responses": {"200": ok, **errors}}


ANTHROPIC_ENDPOINTS = {"/v1/messages": MessagesEndpoint()}
