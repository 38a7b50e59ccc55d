"""Routing speed, three ways, in one run:

1. encoders: one query at a time on one CPU thread, p50/p99 per encoder (static, ONNX fp32/int8, torch);
2. the gateway's routing decision (``RoutedModel.decide``) at concurrency 1 and 64: p50/p99, decisions/s;
3. over HTTP: a gateway in front of a fast fake upstream, ``model: auto`` against naming the model directly
   (same upstream, same run): the p50 that routing adds.

    .venv/bin/python benchmarks/routing_latency.py --data-dir ../shared/datasets/routerdc [--checkpoint DIR]

Without ``--checkpoint`` a router is trained first (default settings, the five *_train files).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import percentile, upstream_and_gateway  # noqa: E402

from gateway.core.config import GatewayConfig, ModelConfig, RouterConfig  # noqa: E402
from gateway.core.metrics import GatewayMetrics  # noqa: E402
from gateway.engine.routing import RoutedModel  # noqa: E402
from gateway.wire.openai import ChatCompletionRequest  # noqa: E402
from routers.checkpoint import load_router  # noqa: E402
from routers.data import load_routing_file, load_routing_files  # noqa: E402
from routers.encoders import build_encoder  # noqa: E402

TRAINS = ["mmlu_train.json", "gsm8k-train.json", "cmmlu_train.json", "arc_challenge_train.json",
          "humaneval_train.json"]


def questions_from(data_dir: Path) -> list[str]:
    """200 test questions, MMLU and GSM8K alternating."""
    mmlu = load_routing_file(data_dir / "mmlu_test.json").questions[:100]
    gsm8k = load_routing_file(data_dir / "gsm8k-test.json").questions[:100]
    return [q for pair in zip(mmlu, gsm8k, strict=True) for q in pair]


def one_at_a_time(encode, questions: list[str]) -> list[float]:  # type: ignore[no-untyped-def]
    encode(questions[:4])  # warm-up
    latencies = []
    for question in questions:
        started = time.perf_counter()
        encode([question])
        latencies.append(time.perf_counter() - started)
    return latencies


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.2f}"


async def decisions(routed: RoutedModel, questions: list[str], concurrency: int, total: int) -> list[float]:
    latencies: list[float] = []
    queue = list(range(total))
    requests = [ChatCompletionRequest(model="auto", messages=[{"role": "user", "content": q}]) for q in questions]

    async def worker() -> None:
        while queue:
            i = queue.pop()
            started = time.perf_counter()
            await routed.decide(requests[i % len(requests)])
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def http_latencies(base_url: str, model: str, questions: list[str], count: int) -> list[float]:
    latencies = []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for i in range(count):
            body = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": questions[i % 200]}]}
            started = time.perf_counter()
            response = client.post("/chat/completions", json=body)
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, help="a router checkpoint (default: train one first)")
    parser.add_argument("--encoders", nargs="+", default=["static:minilm", "onnx-int8:minilm", "onnx:minilm",
                                                          "minilm"])
    parser.add_argument("--requests", type=int, default=2000, help="decisions at concurrency 64")
    parser.add_argument("--http-requests", type=int, default=1000, help="HTTP requests per model name")
    args = parser.parse_args()
    questions = questions_from(args.data_dir)

    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"1. encoders, one query at a time, one thread, {len(questions)} MMLU/GSM8K test questions")
    for spec in args.encoders:
        encoder = build_encoder(spec)
        latencies = one_at_a_time(encoder.encode, questions)
        print(f"   {spec:<20} p50 {ms(latencies, .5):>7} ms   p99 {ms(latencies, .99):>7} ms")

    checkpoint = args.checkpoint
    if checkpoint is None:
        from training.routerdc import RouterTrainingConfig, save_trained_router, train_router

        started = time.perf_counter()
        result = train_router(load_routing_files([args.data_dir / name for name in TRAINS]), RouterTrainingConfig(),
                              progress=False)
        checkpoint = Path(tempfile.mkdtemp()) / "router"
        save_trained_router(result, checkpoint)
        print(f"   (router trained with default settings in {time.perf_counter() - started:.1f} s)")
    router = load_router(checkpoint)
    names = list(dict.fromkeys(router.llm_names))
    config = GatewayConfig(models=[ModelConfig(name=n, backend="openai", base_url="http://unused/v1") for n in names],
                           router=RouterConfig(checkpoint=checkpoint))
    assert config.router is not None
    routed = RoutedModel(config.router, config, router, GatewayMetrics())
    print(f"2. routing decisions in the gateway ({router.metadata.get('encoder')}; "
          f"{'micro-batched off the loop' if router.batches_help else 'inline, no batch window'})")
    for concurrency in (1, 64):
        total = args.requests if concurrency > 1 else 1000
        asyncio.run(decisions(routed, questions, concurrency, 100))  # warm-up
        started = time.perf_counter()
        latencies = asyncio.run(decisions(routed, questions, concurrency, total))
        elapsed = time.perf_counter() - started
        print(f"   concurrency {concurrency:>2}: p50 {ms(latencies, .5)} ms   p99 {ms(latencies, .99)} ms   "
              f"{total / elapsed:,.0f} decisions/s")
    routed.close()

    print("3. over HTTP, one request at a time, fake upstream on loopback (gateway, upstream and client share the "
          "machine)")
    with upstream_and_gateway(1, router_checkpoint=checkpoint) as stack:
        http_latencies(stack.gateway_url, "auto", questions, 200)  # warm-up
        http_latencies(stack.gateway_url, "bench", questions, 200)
        direct = http_latencies(stack.gateway_url, "bench", questions, args.http_requests)
        routed_latencies = http_latencies(stack.gateway_url, "auto", questions, args.http_requests)
    print(f"   model named: p50 {ms(direct, .5)} ms   p99 {ms(direct, .99)} ms")
    print(f"   model auto:  p50 {ms(routed_latencies, .5)} ms   p99 {ms(routed_latencies, .99)} ms")
    added = (np.percentile(routed_latencies, 50) - np.percentile(direct, 50)) * 1000
    print(f"   auto adds {added:.2f} ms at p50")


if __name__ == "__main__":
    main()
