"""Server-sent events: a ``StreamAnswer`` as the SSE body the client reads."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from gateway.errors import GatewayError, UpstreamError, sse_error_event
from gateway.metrics import RequestRecord
from gateway.serving import KEEPALIVE, StreamAnswer


async def sse_lines(answer: StreamAnswer, record: RequestRecord, include_usage: bool) -> AsyncIterator[str | bytes]:
    """The SSE body of a stream: chunks, an error event if it broke, always ``data: [DONE]``.

    Usage is counted once, from the final usage chunk (``choices: []``): a client that asked vLLM for
    ``continuous_usage_stats`` gets cumulative usage on every chunk, which must not be summed. The final usage
    chunk is dropped when the client did not ask for usage.
    """
    status, code, first = 200, None, True
    try:
        async for chunk in answer.chunks:
            if chunk is KEEPALIVE:
                yield ": keep-alive\n\n"
                continue
            if first:
                record.first_chunk()
                first = False
            if chunk.get("usage") and not chunk.get("choices"):
                record.add_usage(chunk["usage"])
                if not include_usage:
                    continue
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
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
