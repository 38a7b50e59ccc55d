"""Gateway overhead on loopback: the same requests sent straight to a fast scripted upstream and through
the gateway; prints p50/p99 latency, the gateway's added latency and requests/s, streaming and not.

    .venv/bin/python benchmarks/gateway_overhead.py [--requests 2000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import percentile, upstream_and_gateway  # noqa: E402


async def run_load(base_url: str, model: str, stream: bool, requests: int,
                   concurrency: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    payload = {"model": model, "stream": stream, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                started = time.perf_counter()
                if stream:
                    async with client.stream("POST", "/chat/completions", json=payload) as response:
                        async for line in response.aiter_lines():
                            if line == "data: [DONE]":
                                break
                    assert response.status_code == 200
                else:
                    response = await client.post("/chat/completions", json=payload)
                    assert response.status_code == 200, response.text
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, requests / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--chunks", type=int, default=16, help="streamed chunks per answer")
    args = parser.parse_args()

    with upstream_and_gateway(args.chunks) as stack:
        print(f"{args.requests} requests per row, concurrency {args.concurrency}, {args.chunks} chunks per stream, "
              "loopback, 2 processes + client on this machine")
        print(f"{'mode':<10}{'target':<10}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}")
        for stream in (False, True):
            results = {}
            for target, url, model in (("direct", stack.upstream_url, "fake"), ("gateway", stack.gateway_url, "bench")):
                asyncio.run(run_load(url, model, stream, min(200, args.requests), args.concurrency))  # warm-up
                latencies, rate = asyncio.run(run_load(url, model, stream, args.requests, args.concurrency))
                results[target] = latencies
                print(f"{'stream' if stream else 'json':<10}{target:<10}{percentile(latencies, .5) * 1000:>9.2f}"
                      f"{percentile(latencies, .99) * 1000:>9.2f}{rate:>9.0f}")
            added_p50 = (percentile(results["gateway"], .5) - percentile(results["direct"], .5)) * 1000
            added_p99 = (percentile(results["gateway"], .99) - percentile(results["direct"], .99)) * 1000
            added_mean = (statistics.mean(results["gateway"]) - statistics.mean(results["direct"])) * 1000
            print(f"{'':<10}{'added':<10}{added_p50:>9.2f}{added_p99:>9.2f}   (mean added {added_mean:.2f} ms)")


if __name__ == "__main__":
    main()
