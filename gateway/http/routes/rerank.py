"""``/v1/rerank`` (and ``/rerank``, ``/v2/rerank``, vLLM's and Cohere's paths)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from gateway.engine.accounting import CLIENT_CLOSED_REQUEST
from gateway.http.deps import (
    ERROR_RESPONSES,
    ClientDisconnected,
    FastJSONResponse,
    GatewayDep,
    authenticate,
    body_schema,
    cancel_on_disconnect,
    read_json_request,
    request_context,
    v1_router,
)
from gateway.wire.rerank import RerankRequest

v1 = v1_router()
router = APIRouter()


_RERANK_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES, 200: {"description": "The documents' indices and relevance scores, best first",
                             "content": {"application/json": {"schema": {"type": "object"}}}}}


@v1.post("/rerank", responses=_RERANK_RESPONSES, openapi_extra=body_schema(RerankRequest))
async def create_rerank(request: Request, gateway: GatewayDep) -> Response:
    """Re-rank ``documents`` against ``query`` (Cohere / Jina / vLLM shape): by a re-ranker model, an
    embedding model (cosine), or a chat model or ``auto`` (listwise, KICGPT's conversation)."""
    parsed = await read_json_request(request, RerankRequest)
    request.state.log.update(model=parsed.model)
    try:
        reranked = await cancel_on_disconnect(request.receive, gateway.rerank(request_context(request), parsed))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return FastJSONResponse(reranked.body, headers=reranked.headers)


# vLLM serves the same endpoint at /rerank and /v2/rerank (the path Cohere's v2 SDK calls).
for _path in ("/rerank", "/v2/rerank"):
    router.add_api_route(_path, create_rerank, methods=["POST"], dependencies=[Depends(authenticate)],
                         include_in_schema=False)
