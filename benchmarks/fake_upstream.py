"""A minimal, fast OpenAI-compatible upstream for benchmarks: raw ASGI, fixed answers, so that on one core it
serves tens of thousands of requests a second and is never what a gateway benchmark measures.

    python benchmarks/fake_upstream.py --port 9001 [--chunks 16] [--delay-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import uvicorn

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def build_app(chunks: int, delay_ms: float) -> Any:
    """An ASGI app answering ``POST /v1/chat/completions`` (streamed or not) and ``GET /v1/models``."""
    words = [f"w{i} " for i in range(chunks)]
    usage = {"prompt_tokens": 10, "completion_tokens": chunks, "total_tokens": 10 + chunks}
    models = json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}).encode()

    def answer(model: str) -> bytes:
        return json.dumps({"id": "x", "object": "chat.completion", "created": int(time.time()), "model": model,
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": "".join(words)}}],
                           "usage": usage}).encode()

    def events(model: str) -> list[bytes]:
        chunk = {"id": "x", "object": "chat.completion.chunk", "model": model}
        deltas = [{**chunk, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]} for w in words]
        lines = [f"data: {json.dumps(delta)}\n\n" for delta in deltas]
        lines.append(f"data: {json.dumps({**chunk, 'choices': [], 'usage': usage})}\n\n")
        lines.append("data: [DONE]\n\n")
        return [line.encode() for line in lines]

    answers: dict[str, bytes] = {}
    streams: dict[str, list[bytes]] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["method"] == "GET":
            await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
            await send({"type": "http.response.body", "body": models})
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        body = json.loads(raw)
        model = body.get("model", "fake")
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        if not body.get("stream"):
            if model not in answers:
                answers[model] = answer(model)
            await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
            await send({"type": "http.response.body", "body": answers[model]})
            return
        if model not in streams:
            streams[model] = events(model)
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        for line in streams[model]:
            await send({"type": "http.response.body", "body": line, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    uvicorn.run(build_app(args.chunks, args.delay_ms), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False, http="httptools", loop="uvloop", backlog=4096)
