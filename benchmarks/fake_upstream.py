"""A minimal, fast OpenAI-compatible upstream for benchmarks (pure Starlette, fixed answers).

    python benchmarks/fake_upstream.py --port 9001 [--chunks 16] [--delay-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def build_app(chunks: int, delay_ms: float) -> Starlette:
    words = [f"w{i} " for i in range(chunks)]

    async def chat(request: Request) -> Response:
        body = json.loads(await request.body())
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        if not body.get("stream"):
            return JSONResponse({"id": "x", "object": "chat.completion", "created": int(time.time()),
                                 "model": body["model"], "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "".join(words)}}],
                                 "usage": {"prompt_tokens": 10, "completion_tokens": chunks,
                                           "total_tokens": 10 + chunks}})

        async def events():
            for word in words:
                yield "data: " + json.dumps({"id": "x", "object": "chat.completion.chunk", "model": body["model"],
                                             "choices": [{"index": 0, "delta": {"content": word},
                                                          "finish_reason": None}]}) + "\n\n"
            yield "data: " + json.dumps({"id": "x", "object": "chat.completion.chunk", "model": body["model"],
                                         "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": chunks,
                                                                  "total_tokens": 10 + chunks}}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/v1/models", models)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    uvicorn.run(build_app(args.chunks, args.delay_ms), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)
