"""Server-sent events: a ``StreamAnswer`` as the SSE body the client reads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.backends import RelayedChunks
from gateway.core.errors import GatewayError, sse_error_event
from gateway.engine.answers import KEEPALIVE, StreamAnswer
from gateway.wire.anthropic import error_body as anthropic_error_body
from gateway.wire.openai import is_usage_chunk


async def sse_lines(answer: StreamAnswer, include_usage: bool) -> AsyncIterator[str | bytes]:
    """The SSE body of a stream: chunks, an error event if it broke, always ``data: [DONE]``.

    Relayed chunks (``RelayedChunks``) are sent as they come. The final usage chunk (``choices: []``) is dropped
    when the client did not ask for usage. The engine has already accounted for the stream
    (``engine/accounting.py``: its chunks finish the request's record).

    Responses API and Anthropic Messages streams (``answer.dialect``) are events, each sent under its ``event:``
    name, with their own error event and no ``[DONE]`` (those APIs have none).
    """
    chunks: AsyncIterator[Any] = answer.chunks  # chunk dicts, or RelayedChunks (checked by type: the hot path)
    named = answer.dialect != "chat"
    try:
        async for chunk in chunks:
            if chunk is KEEPALIVE:
                yield ": keep-alive\n\n"
            elif type(chunk) is RelayedChunks:
                if chunk.frames:
                    yield chunk.frames
            elif named:
                yield f"event: {chunk.get('type')}\n".encode() + b"data: " + orjson.dumps(chunk) + b"\n\n"
            elif include_usage or not is_usage_chunk(chunk):
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
    except GatewayError as exc:  # a stream never raises to the client: it reports and ends
        if answer.dialect == "responses":
            yield responses_error_event(exc)
        elif answer.dialect == "messages":
            yield b"event: error\ndata: " + orjson.dumps(anthropic_error_body(exc)) + b"\n\n"
        else:
            yield sse_error_event(exc)
    finally:
        await answer.chunks.aclose()  # type: ignore[attr-defined]
    if not named:
        yield "data: [DONE]\n\n"


def responses_error_event(exc: GatewayError) -> bytes:
    """The Responses stream's ``error`` event."""
    event = {"type": "error", "code": exc.code or exc.error_type, "message": exc.message, "param": exc.param,
             "sequence_number": 0}
    return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"
