"""Shared pieces of the loopback benchmarks: a fake upstream and a gateway in front of it, as subprocesses."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Stack:
    upstream_url: str  # .../v1 of the fake upstream (model "fake")
    gateway_url: str  # .../v1 of the gateway (model "bench")
    gateway_pid: int


@contextmanager
def upstream_and_gateway(chunks: int, delay_ms: float = 0.0, router_checkpoint: Path | None = None) -> Iterator[Stack]:
    """A fake upstream and a gateway in front of it (model ``bench``); with ``router_checkpoint``, every LLM of
    the checkpoint is configured on the same upstream and ``auto`` routes among them."""
    upstream_port, gateway_port = free_port(), free_port()
    upstream = {"backend": "openai", "base_url": f"http://127.0.0.1:{upstream_port}/v1", "upstream_model": "fake"}
    config: dict = {"models": [{"name": "bench", **upstream}], "server": {"log_level": "warning"}}
    if router_checkpoint is not None:
        import json

        names = json.loads((router_checkpoint / "router.json").read_text())["llm_names"]
        config["models"] += [{"name": name, **upstream} for name in names]
        config["router"] = {"checkpoint": str(router_checkpoint)}
    config_file = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    yaml.safe_dump(config, config_file)
    config_file.close()
    upstream = subprocess.Popen([sys.executable, str(HERE / "fake_upstream.py"), "--port", str(upstream_port),
                                 "--chunks", str(chunks), "--delay-ms", str(delay_ms)])
    gateway = subprocess.Popen([str(BIN / "llm-gateway"), "serve", "--config", config_file.name, "--port",
                                str(gateway_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{upstream_port}/v1/models")
        wait_ready(f"http://127.0.0.1:{gateway_port}/ready")
        yield Stack(f"http://127.0.0.1:{upstream_port}/v1", f"http://127.0.0.1:{gateway_port}/v1", gateway.pid)
    finally:
        for process in (gateway, upstream):
            process.terminate()
            process.wait(15)
        Path(config_file.name).unlink(missing_ok=True)


@contextmanager
def embedded_gateway() -> Iterator[str]:
    """``llm-gateway serve`` with no config (the embedded models), as a user starts it; yields its /v1 URL."""
    port = free_port()
    server = subprocess.Popen([str(BIN / "llm-gateway"), "serve", "--port", str(port)],
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{port}/ready", timeout_s=300)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        server.wait(timeout=30)


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
