"""CPU per request of the gateway's own code on the chat path, without sockets: the ASGI app is called directly
(fast path, middleware, parsing, accounting, rendering) with the backend answering at once. Prints microseconds
of CPU per request, whole answers and 20-chunk relayed streams, median of ``--repeats`` runs.

    .venv/bin/python benchmarks/request_cost.py [--requests 5000] [--repeats 3] [--endpoints 2 --balance B]
    PYTHONPATH=/tmp/before .venv/bin/python benchmarks/request_cost.py   # another source tree (git worktree)

Steadier than a wrk run on a shared machine (no scheduler, no network), so it is the one to compare two trees
with; ``hot_path.py`` remains the figure users see.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

from gateway.backends import RelayedChunks
from gateway.http import create_app

try:
    from gateway.core.config import parse_config
except ImportError:  # a source tree from before the rooms (PYTHONPATH=... for a before/after figure)
    from gateway.config import parse_config  # type: ignore[no-redef]

ANSWER = {"id": "bench", "object": "chat.completion", "created": 1, "model": "bench",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}}
FRAME = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'
STREAM_CHUNKS = 20


async def _complete(endpoint: str, request: Any) -> dict[str, Any]:
    return ANSWER


async def _relay(endpoint: str, request: Any) -> AsyncIterator[RelayedChunks]:
    for _ in range(STREAM_CHUNKS):
        yield RelayedChunks(FRAME, None)
    usage = {"prompt_tokens": 4, "completion_tokens": STREAM_CHUNKS}
    yield RelayedChunks(b'data: {"choices":[],"usage":' + json.dumps(usage).encode() + b"}\n\n", usage)


def _app(endpoints: int, balance: str) -> Any:
    """The app with one model ``bench``; with ``endpoints`` > 1 it is a replica set (``balance``) whose replicas
    answer at once, so the figure includes the replica choice."""
    model: dict[str, Any] = {"name": "bench", "backend": "openai"}
    if endpoints > 1:
        model |= {"endpoints": [{"base_url": f"http://127.0.0.{i + 1}:9/v1"} for i in range(endpoints)],
                  "balance": balance, "metrics_scrape_s": None}
    else:
        model["base_url"] = "http://127.0.0.1:9/v1"
    app = create_app(parse_config({"models": [model]}))
    backend = app.state.gateway.pool.backends["bench"]
    for answering in getattr(backend, "replicas", [backend]):
        answering.complete, answering.relay = _complete, _relay
    return app


async def _request(stack: Any, app: Any, body: bytes) -> None:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"application/json"),
                                          (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000), "state": {}, "app": app}
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # the client stays
        raise AssertionError("unreachable")

    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await stack(scope, receive, send)
    assert statuses == [200], statuses


async def _cpu_us(stack: Any, app: Any, stream: bool, requests: int) -> float:
    body = json.dumps({"model": "bench", "stream": stream, "max_tokens": 4,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    for _ in range(200):  # warm-up
        await _request(stack, app, body)
    gc.collect()
    started = time.process_time()
    for _ in range(requests):
        await _request(stack, app, body)
    return (time.process_time() - started) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--endpoints", type=int, default=1, help="replicas of the model (endpoints:)")
    parser.add_argument("--balance", default="prefix-affinity", choices=["prefix-affinity", "least-loaded",
                                                                          "round-robin"])
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the access log is written by a background thread: not this path's CPU
    app = _app(args.endpoints, args.balance)
    stack = app.build_middleware_stack()

    async def measure() -> tuple[list[float], list[float]]:
        whole = [await _cpu_us(stack, app, False, args.requests) for _ in range(args.repeats)]
        streamed = [await _cpu_us(stack, app, True, args.requests // 2) for _ in range(args.repeats)]
        return whole, streamed

    whole, streamed = asyncio.run(measure())
    setup = f"{args.endpoints} endpoints, {args.balance}" if args.endpoints > 1 else "one endpoint"
    print(f"CPU per request ({setup}), median of {args.repeats}: whole answer {statistics.median(whole):.1f} us, "
          f"{STREAM_CHUNKS}-chunk relayed stream {statistics.median(streamed):.1f} us")


if __name__ == "__main__":
    main()
