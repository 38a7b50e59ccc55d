"""The request pipeline: pick the model(s), call the backend, account for it. No HTTP in here.

``CompletionService.serve`` returns either a whole ``Answer`` or a ``StreamAnswer`` whose first chunk has
already arrived: a request that fails before producing anything raises, so the HTTP layer can still
answer with a proper error status (and routing can still fail over to the next candidate).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from gateway.backends import Backend, Request
from gateway.errors import GatewayError, ModelNotFoundError, UpstreamError, sse_error_event
from gateway.metrics import GatewayMetrics, RequestRecord
from gateway.pool import ModelPool
from gateway.protocol import Endpoint

_COMPACT = (",", ":")


@dataclass
class Answer:
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamAnswer:
    chunks: AsyncIterator[dict[str, Any]]
    headers: dict[str, str] = field(default_factory=dict)


class CompletionService:
    def __init__(self, pool: ModelPool, metrics: GatewayMetrics) -> None:
        self.pool = pool
        self.metrics = metrics

    def public_model_names(self) -> list[str]:
        return list(self.pool.backends)

    def _backend_for(self, name: str) -> Backend:
        backend = self.pool.get(name)
        if backend is None:
            known = ", ".join(self.public_model_names())
            raise ModelNotFoundError(f"The model '{name}' does not exist; available models: {known}",
                                     param="model")
        return backend

    async def serve(self, endpoint: Endpoint, request: Request, record: RequestRecord) -> Answer | StreamAnswer:
        backend = self._backend_for(request.model)
        record.answered_by(backend.name)
        if request.stream:
            return StreamAnswer(await _primed(backend.stream(endpoint, request)))
        body = await backend.complete(endpoint, request)
        record.add_usage(body.get("usage"))
        return Answer(body)


async def _primed(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """Wait for the first chunk (so start-up failures raise here), then replay the whole stream."""
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await chunks.aclose()  # type: ignore[attr-defined]
        raise
    return _replay(first, chunks)


async def _replay(first: dict[str, Any] | None, rest: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    try:
        if first is not None:
            yield first
            async for chunk in rest:
                yield chunk
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


async def sse_lines(answer: StreamAnswer, record: RequestRecord, include_usage: bool) -> AsyncIterator[str]:
    """The SSE body of a stream: chunks, an error event if it broke, always ``data: [DONE]``.

    Counts usage from the backend's usage chunk and drops that chunk when the client did not ask for it.
    """
    status, code, first = 200, None, True
    try:
        async for chunk in answer.chunks:
            if first:
                record.first_chunk()
                first = False
            if chunk.get("usage"):
                record.add_usage(chunk["usage"])
                if not chunk.get("choices"):
                    if not include_usage:
                        continue
                elif not include_usage:
                    chunk = {**chunk, "usage": None}
            yield f"data: {json.dumps(chunk, ensure_ascii=False, separators=_COMPACT)}\n\n"
    except GatewayError as exc:
        status, code = exc.status_code, exc.code
        yield sse_error_event(exc)
    except Exception as exc:  # a stream never raises to the client: it reports and ends
        error = UpstreamError(f"stream failed: {type(exc).__name__}")
        status, code = error.status_code, error.code
        yield sse_error_event(error)
    except BaseException:
        status, code = 499, "client_closed_request"  # client went away (cancelled)
        raise
    finally:
        record.finish(status, code)
        await answer.chunks.aclose()  # type: ignore[attr-defined]
    yield "data: [DONE]\n\n"
