"""A model with replicas in front of a real vLLM: its /metrics read as load, and a replica whose scrape times out
counted as unknown. (Two real replicas side by side are the replica benchmark's, not this tier's.)"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.backends.replicas import ReplicaSet
from gateway.core.config import parse_config
from tests.support.upstream import Reply, ScriptedUpstream
from tests.vllm.conftest import live_gateway

pytestmark = pytest.mark.vllm


def test_the_replica_set_reads_vllms_load_and_marks_a_slow_scrape_unknown(smollm2) -> None:
    with ScriptedUpstream("slow-metrics") as slow:
        slow.set_vllm_load(running=0, waiting=0)
        slow.metrics_delay_s = 5
        config = parse_config({"models": [{"name": "smol", "backend": "openai", "upstream_model": smollm2.name,
                                           "balance": "least-loaded", "metrics_scrape_s": 0.5,
                                           "endpoints": [{"base_url": smollm2.base_url, "name": "vllm"},
                                                         {"base_url": slow.base_url, "name": "slow"}]}]})

        async def scrape() -> tuple[float | None, float | None, float | None]:
            replica_set = ReplicaSet(config.models[0])
            await replica_set.start()
            try:
                await replica_set.scrape()
                vllm, slow_load = replica_set.loads
                return vllm.scraped, vllm.kv_cache, slow_load.scraped
            finally:
                await replica_set.aclose()

        running_and_waiting, kv_cache, slow_scraped = asyncio.run(scrape())
    assert running_and_waiting == 0.0 and kv_cache is not None and 0.0 <= kv_cache <= 1.0  # an idle vLLM, read
    assert slow_scraped is None  # timed out: unknown, not idle


def test_a_real_vllm_answers_through_a_replica_set_and_is_named(smollm2) -> None:
    with ScriptedUpstream("down") as down:
        down.healthy = False
        down.responder = lambda body: Reply(status=503, error_message="engine dead")
        config = {"models": [{"name": "smol", "backend": "openai", "upstream_model": smollm2.name,
                              "timeout_s": 120, "balance": "round-robin",
                              "endpoints": [{"base_url": down.base_url, "name": "down"},
                                            {"base_url": smollm2.base_url, "name": "vllm"}]}]}
        with live_gateway(config) as gateway:
            for _ in range(2):  # whichever replica the rotation starts with: the dead one fails over
                answer = httpx.post(f"{gateway.base_url}/chat/completions", timeout=120, json={
                    "model": "smol", "max_tokens": 8, "temperature": 0,
                    "messages": [{"role": "user", "content": "Say hello."}]})
                assert answer.status_code == 200 and answer.headers["x-gateway-endpoint"] == "vllm"
                assert answer.json()["choices"][0]["message"]["content"]
