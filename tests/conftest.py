"""Shared fixtures: scripted upstreams, in-process gateways on a free port, the embedded-model gateway."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from gateway.core.config import parse_config  # noqa: E402
from gateway.http import create_app  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402
from tests.support.servers import GatewayProcess, ServerThread, free_port, wait_for  # noqa: E402
from tests.support.upstream import ScriptedUpstream  # noqa: E402


@dataclass
class LiveGateway:
    url: str
    app: Any
    server: ServerThread | GatewayProcess

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def client(self, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=kwargs.pop("api_key", "unused"), max_retries=0,
                             **kwargs)

    def anthropic_client(self, **kwargs: Any) -> anthropic.Anthropic:
        """Anthropic's SDK pointed at the gateway (it adds /v1/messages itself)."""
        return anthropic.Anthropic(base_url=self.url, api_key=kwargs.pop("api_key", "unused"), max_retries=0,
                                   **kwargs)

    def async_client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=kwargs.pop("api_key", "unused"), max_retries=0,
                                  **kwargs)


@pytest.fixture
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream("alpha") as server:
        yield server


@pytest.fixture
def make_upstream() -> Iterator[Callable[[str], ScriptedUpstream]]:
    started: list[ScriptedUpstream] = []

    def make(name: str) -> ScriptedUpstream:
        server = ScriptedUpstream(name).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def make_gateway() -> Iterator[Callable[..., LiveGateway]]:
    """Start the gateway app in this process (uvicorn in a thread) from a config dict."""
    started: list[ServerThread] = []

    def make(config: dict[str, Any], *, wait_ready: bool = True) -> LiveGateway:
        app = create_app(parse_config(config))
        server = ServerThread(app).start()
        started.append(server)
        if wait_ready:
            wait_for(f"{server.url}/ready")
        return LiveGateway(server.url, app, server)

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def embedded_gateway() -> Iterator[LiveGateway]:
    """`llm-gateway serve` with no config: the embedded SmolLM2 on CPU, as a user starts it."""
    process = GatewayProcess().start(timeout_s=300)
    try:
        yield LiveGateway(process.url, None, process)
    finally:
        process.stop()


@dataclass
class RedisServer:
    url: str
    process: subprocess.Popen  # type: ignore[type-arg]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free port (scripts/setup.sh --dev installs it)."""
    import redis

    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (scripts/setup.sh --dev installs it)"
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis(port=port).ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield RedisServer(f"redis://127.0.0.1:{port}/0", process)
    process.kill()
    process.wait(10)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server on 127.0.0.1 for the session (scripts/setup.sh --dev installs it); tests get
    their own database from ``postgres_url``."""
    server = PostgresServer().start()
    yield server
    server.stop()
    server.remove()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database()


@pytest.fixture(scope="session")
def embedding_cache(tmp_path_factory) -> Path:
    """One embeddings cache for the whole run: the slice is encoded once, however many routers train on it."""
    return tmp_path_factory.mktemp("embedding-cache")


@pytest.fixture(scope="session")
def router_checkpoint(tmp_path_factory, embedding_cache) -> Path:
    """A RouterDC checkpoint trained (frozen MiniLM) on the committed slice of the RouterDC benchmark."""
    from routers.data import load_routing_files
    from tests.routers.conftest import TRAIN_FILES
    from training.routerdc import RouterTrainingConfig, save_trained_router, train_router

    config = RouterTrainingConfig(steps=200, eval_every=10, samples_per_task=200, batch_size=32, seed=0)
    result = train_router(load_routing_files(TRAIN_FILES), config, cache_dir=embedding_cache, progress=False)
    return save_trained_router(result, tmp_path_factory.mktemp("router") / "checkpoint")
