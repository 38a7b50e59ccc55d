"""Bounded soak test on loopback: many requests through the gateway to a fast scripted upstream, half of them
streaming, some clients disconnecting mid-stream on purpose. Prints lost/truncated responses (must be 0),
errors, added latency (vs. the upstream called directly) and the gateway's RSS as the load goes on.

    .venv/bin/python benchmarks/soak.py [--requests 20000] [--concurrency 64] [--disconnect-every 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import percentile, run_load, upstream_and_gateway  # noqa: E402

CHUNKS = 16
EXPECTED = "".join(f"w{i} " for i in range(CHUNKS))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Tally:
    def __init__(self) -> None:
        self.ok = self.truncated = self.errors = self.disconnected = 0
        self.latencies: list[float] = []
        self.error_samples: list[str] = []


async def one(client: httpx.AsyncClient, number: int, tally: Tally, disconnect_every: int) -> None:
    stream = number % 2 == 1
    payload = {"model": "bench", "stream": stream, "messages": [{"role": "user", "content": f"q{number}"}]}
    started = time.perf_counter()
    try:
        if not stream:
            response = await client.post("/chat/completions", json=payload)
            if response.status_code != 200:
                tally.errors += 1
                tally.error_samples.append(response.text[:200])
                return
            if response.json()["choices"][0]["message"]["content"] != EXPECTED:
                tally.truncated += 1
                return
        else:
            leave_early = disconnect_every and number % disconnect_every == 1
            text, done = "", False
            async with client.stream("POST", "/chat/completions", json=payload) as response:
                if response.status_code != 200:
                    tally.errors += 1
                    tally.error_samples.append((await response.aread()).decode()[:200])
                    return
                async for line in response.aiter_lines():
                    if line == "data: [DONE]":
                        done = True
                        break
                    if line.startswith("data: "):
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            tally.errors += 1
                            tally.error_samples.append(line[:200])
                        elif chunk.get("choices"):
                            text += chunk["choices"][0]["delta"].get("content") or ""
                        if leave_early and len(text) > 8:
                            tally.disconnected += 1
                            return  # closing the stream here disconnects mid-answer
            if not done or text != EXPECTED:
                tally.truncated += 1
                return
    except httpx.HTTPError as exc:
        tally.errors += 1
        tally.error_samples.append(f"{type(exc).__name__}: {exc}")
        return
    tally.ok += 1
    tally.latencies.append(time.perf_counter() - started)


async def soak(url: str, start: int, count: int, concurrency: int, disconnect_every: int, tally: Tally) -> None:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        numbers = iter(range(start, start + count))

        async def worker() -> None:
            for number in numbers:
                await one(client, number, tally, disconnect_every)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--disconnect-every", type=int, default=20, help="every Nth request leaves mid-stream")
    parser.add_argument("--delay-ms", type=float, default=2.0, help="upstream think time per request")
    args = parser.parse_args()

    with upstream_and_gateway(CHUNKS, args.delay_ms) as stack:
        gateway_url, direct_url, pid = stack.gateway_url, stack.upstream_url, stack.gateway_pid
        tally = Tally()
        asyncio.run(soak(gateway_url, 0, 500, args.concurrency, 0, Tally()))  # warm-up, not counted
        rss = [("start (after 500 warm-up requests)", rss_mb(pid))]
        started = time.monotonic()
        half = args.requests // 2
        asyncio.run(soak(gateway_url, 0, half, args.concurrency, args.disconnect_every, tally))
        rss.append((f"after {half}", rss_mb(pid)))
        asyncio.run(soak(gateway_url, half, args.requests - half, args.concurrency, args.disconnect_every, tally))
        elapsed = time.monotonic() - started
        rss.append((f"after {args.requests}", rss_mb(pid)))

        asyncio.run(run_load(direct_url, "fake", False, 500, args.concurrency))  # warm-up, like the gateway's
        direct_json, _ = asyncio.run(run_load(direct_url, "fake", False, 2000, args.concurrency))
        direct_stream, _ = asyncio.run(run_load(direct_url, "fake", True, 2000, args.concurrency))
        direct = direct_json + direct_stream

        print(f"{args.requests} requests, concurrency {args.concurrency}, half streaming, every "
              f"{args.disconnect_every}th leaves mid-stream; {elapsed:.1f} s ({args.requests / elapsed:.0f} req/s)")
        print(f"completed intact: {tally.ok}   left mid-stream on purpose: {tally.disconnected}")
        print(f"lost or truncated: {tally.truncated}   errors: {tally.errors}")
        for sample in tally.error_samples[:5]:
            print(f"  error sample: {sample}")
        p50, p99 = percentile(tally.latencies, .5), percentile(tally.latencies, .99)
        d50, d99 = percentile(direct, .5), percentile(direct, .99)
        print(f"latency through the gateway p50 {p50 * 1000:.1f} ms p99 {p99 * 1000:.1f} ms; direct p50 "
              f"{d50 * 1000:.1f} ms p99 {d99 * 1000:.1f} ms; added p50 {(p50 - d50) * 1000:.1f} ms, p99 "
              + (f"{(p99 - d99) * 1000:.1f} ms" if p99 >= d99 else "none (the direct tail is longer)"))
        for label, value in rss:
            print(f"gateway RSS {label}: {value:.1f} MiB")


if __name__ == "__main__":
    main()
