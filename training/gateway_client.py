"""Running a gateway for offline tools (safety eval, data generation, routing-data collection): either a
gateway that is already serving (``--url``) or one started in this process from a config on a free port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import openai

from gateway.core.config import GatewayConfig


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_gateway(config: GatewayConfig | None = None, url: str | None = None,
                    ready_timeout_s: float = 600.0) -> Iterator[str]:
    """The base URL (``.../v1``) of a gateway: ``url`` as given, or one started from ``config``."""
    if url is not None:
        yield url.rstrip("/")
        return
    import uvicorn

    from gateway.http import create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        _wait_ready(f"http://127.0.0.1:{port}/ready", thread, ready_timeout_s)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _wait_ready(ready_url: str, thread: threading.Thread, timeout_s: float) -> None:
    """Until /ready says 200; a local model that failed to load ends the wait at once with its error."""
    deadline = time.monotonic() + timeout_s
    detail = "no answer"
    while True:
        try:
            response = httpx.get(ready_url, timeout=5)
            if response.status_code == 200:
                return
            models = response.json().get("models", {})
            failed = {name: m["detail"] for name, m in models.items() if str(m.get("detail", "")).startswith("failed")}
            if failed:
                raise RuntimeError("the in-process gateway cannot serve: " +
                                   "; ".join(f"model '{name}' {why}" for name, why in failed.items()))
            detail = response.text
        except httpx.HTTPError as exc:
            detail = str(exc)
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the in-process gateway did not become ready within {timeout_s:.0f} s: {detail}")
        time.sleep(0.2)


def openai_client(base_url: str, api_key: str | None = None, timeout_s: float = 600.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=api_key or "unused", timeout=timeout_s, max_retries=2)
