"""Server-sent events: a ``StreamAnswer`` as the SSE body the client reads."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from gateway.backends import RelayedChunks
from gateway.errors import GatewayError, UpstreamError, sse_error_event
from gateway.metrics import RequestRecord
from gateway.protocol import is_usage_chunk
from gateway.responses import chat_usage
from gateway.serving import KEEPALIVE, StreamAnswer


async def sse_lines(answer: StreamAnswer, record: RequestRecord, include_usage: bool,
                    responses: bool = False) -> AsyncIterator[str | bytes]:
    """The SSE body of a stream: chunks, an error event if it broke, always ``data: [DONE]``.

    Relayed chunks (``RelayedChunks``) are sent as they come. Usage is counted once, from the final usage chunk
    (``choices: []``): a client that asked vLLM for ``continuous_usage_stats`` gets cumulative usage on every
    chunk, which must not be summed. The final usage chunk is dropped when the client did not ask for usage.

    ``responses``: the stream is Responses API events, each sent under its ``event:`` name, usage counted from
    the final response, no ``[DONE]`` (that API has none).
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
            if type(chunk) is RelayedChunks:
                if chunk.usage is not None:
                    record.add_usage(chunk.usage)
                if chunk.frames:
                    yield chunk.frames
                continue
            if responses:
                if chunk.get("type") in _FINAL_RESPONSE_EVENTS:
                    record.add_usage(chat_usage(chunk["response"].get("usage")))
                yield f"event: {chunk.get('type')}\n".encode() + b"data: " + orjson.dumps(chunk) + b"\n\n"
                continue
            if is_usage_chunk(chunk):
                record.add_usage(chunk["usage"])
                if not include_usage:
                    continue
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
    except GatewayError as exc:
        status, code = exc.status_code, exc.code
        yield responses_error_event(exc) if responses else sse_error_event(exc)
    except Exception as exc:  # a stream never raises to the client: it reports and ends
        error = UpstreamError(f"stream failed: {type(exc).__name__}")
        status, code = error.status_code, error.code
        yield responses_error_event(error) if responses else sse_error_event(error)
    except BaseException:
        status, code = 499, "client_closed_request"  # client went away (cancelled)
        raise
    finally:
        record.finish(status, code)
        await answer.chunks.aclose()  # type: ignore[attr-defined]
    if not responses:
        yield "data: [DONE]\n\n"


_FINAL_RESPONSE_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def responses_error_event(exc: GatewayError) -> bytes:
    """The Responses stream's ``error`` event."""
    event = {"type": "error", "code": exc.code or exc.error_type, "message": exc.message, "param": exc.param,
             "sequence_number": 0}
    return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"
