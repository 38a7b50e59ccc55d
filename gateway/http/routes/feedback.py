"""``POST /v1/feedback``: how good an earlier answer was, kept with its request in the usage store."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.responses import Response

from gateway.http.deps import (
    ERROR_RESPONSES,
    FastJSONResponse,
    GatewayDep,
    body_schema,
    read_json_request,
    request_context,
    v1_router,
)
from gateway.wire.feedback import FeedbackRequest

v1 = v1_router()

_FEEDBACK_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES, 200: {"description": "The feedback as stored", "content": {"application/json": {"schema": {
        "type": "object", "required": ["id", "object", "request_id", "score"],
        "properties": {"id": {"type": "string"}, "object": {"const": "feedback"}, "request_id": {"type": "string"},
                       "score": {"type": "number"}, "comment": {"type": ["string", "null"]}}}}}}}


@v1.post("/feedback", responses=_FEEDBACK_RESPONSES, openapi_extra=body_schema(FeedbackRequest))
async def create_feedback(request: Request, gateway: GatewayDep) -> Response:
    """Score an earlier answer of the same API key from 0 (bad) to 1 (good), by the ``x-request-id`` it came with;
    routed requests with feedback become routing data (``llm-gateway router collect --from-store``)."""
    parsed = await read_json_request(request, FeedbackRequest)
    return FastJSONResponse(await gateway.feedback(request_context(request), parsed))
