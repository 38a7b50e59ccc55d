"""Routing speed of a RouterDC checkpoint: scoring latency per query (batch of 1) and per 64-query batch,
and the gateway's routing-decision latency (micro-batched, off the event loop) at concurrency 1 and 64.

    .venv/bin/python benchmarks/routing_latency.py --checkpoint DIR --questions FILE [--requests 640]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import numpy as np

from gateway.config import GatewayConfig, ModelConfig, RouterConfig
from gateway.metrics import GatewayMetrics
from gateway.protocol import ChatCompletionRequest
from gateway.routing import RoutedModel
from routers.checkpoint import load_router
from routers.data import load_routing_file


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q * 100))


async def decisions(routed: RoutedModel, questions: list[str], concurrency: int, total: int) -> list[float]:
    latencies: list[float] = []
    queue = list(range(total))

    async def worker() -> None:
        while queue:
            i = queue.pop()
            request = ChatCompletionRequest(model="auto", messages=[{"role": "user",
                                                                     "content": questions[i % len(questions)]}])
            started = time.perf_counter()
            await routed.decide(request)
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--questions", required=True, help="a RouterDC-format file to take queries from")
    parser.add_argument("--requests", type=int, default=640)
    parser.add_argument("--window-ms", type=float, default=3.0)
    args = parser.parse_args()

    router = load_router(args.checkpoint)
    questions = load_routing_file(args.questions).questions
    router.score(questions[:8])  # warm-up
    singles = []
    for question in questions[:100]:
        started = time.perf_counter()
        router.score([question])
        singles.append(time.perf_counter() - started)
    batches = []
    for start in range(0, min(len(questions), 640), 64):
        started = time.perf_counter()
        router.score(questions[start:start + 64])
        batches.append(time.perf_counter() - started)
    print(f"router.score, batch of 1:   p50 {percentile(singles, .5) * 1000:.1f} ms   "
          f"p99 {percentile(singles, .99) * 1000:.1f} ms   ({len(singles)} queries)")
    print(f"router.score, batch of 64:  p50 {percentile(batches, .5) * 1000:.1f} ms per batch   "
          f"({statistics.mean(batches) / 64 * 1000:.2f} ms per query, {len(batches)} batches)")

    names = list(dict.fromkeys(router.llm_names))
    config = GatewayConfig(models=[ModelConfig(name=n, backend="openai", base_url="http://unused/v1") for n in names],
                           router=RouterConfig(checkpoint=args.checkpoint, batch_window_ms=args.window_ms))
    assert config.router is not None
    routed = RoutedModel(config.router, config, router, GatewayMetrics())
    for concurrency in (1, 64):
        total = args.requests if concurrency > 1 else min(args.requests, 200)
        started = time.perf_counter()
        latencies = asyncio.run(decisions(routed, questions, concurrency, total))
        elapsed = time.perf_counter() - started
        print(f"routing decision, concurrency {concurrency:>2}: p50 {percentile(latencies, .5) * 1000:.1f} ms   "
              f"p99 {percentile(latencies, .99) * 1000:.1f} ms   {total / elapsed:.0f} decisions/s "
              f"(micro-batch window {args.window_ms} ms)")
    routed.close()


if __name__ == "__main__":
    main()
