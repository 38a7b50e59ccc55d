"""Replicas of one model (``endpoints:``) against scripted vLLM stand-ins on 127.0.0.1: the spread of each balance
policy, conversations kept on one replica, failover inside the model with per-replica circuits, the load read
from vLLM's /metrics, and the config's refusals."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from gateway.backends import replicas
from gateway.core.config import ConfigError, parse_config
from tests.support.upstream import Reply, ScriptedUpstream


def _config(upstreams: list[ScriptedUpstream], balance: str, **extra: Any) -> dict[str, Any]:
    return {"models": [{"name": "smol", "backend": "openai", "timeout_s": 5, "balance": balance,
                        "endpoints": [{"base_url": u.base_url} for u in upstreams], **extra}]}


def _chat(gateway: Any, *turns: str, stream: bool = False) -> httpx.Response:
    messages = [{"role": "system", "content": "be brief"}]
    for i, text in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return httpx.post(f"{gateway.base_url}/chat/completions", timeout=10,
                      json={"model": "smol", "messages": messages, "stream": stream})


def test_round_robin_spreads_requests_and_says_which_replica_answered(make_upstream, make_gateway) -> None:
    upstreams = [make_upstream("a"), make_upstream("b")]
    gateway = make_gateway(_config(upstreams, "round-robin"))
    answers = [_chat(gateway, f"question {n}") for n in range(6)]
    assert all(a.status_code == 200 and a.headers["x-gateway-routed-model"] == "smol" for a in answers)
    assert sorted(a.headers["x-gateway-endpoint"] for a in answers) == ["0", "0", "0", "1", "1", "1"]
    assert [len(u.calls) for u in upstreams] == [3, 3]
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'gateway_endpoint_requests_total{endpoint="1",model="smol"} 3.0' in metrics
    ready = httpx.get(f"{gateway.url}/ready").json()
    assert ready["models"]["smol"]["ready"] and ready["models"]["smol"]["detail"].startswith("2/2 endpoints ready")


def test_prefix_affinity_keeps_each_conversation_on_one_replica(make_upstream, make_gateway) -> None:
    upstreams = [make_upstream(name) for name in ("a", "b", "c")]
    gateway = make_gateway(_config(upstreams, "prefix-affinity", metrics_scrape_s=None))
    for conversation in range(12):
        turns: list[str] = []
        for turn in range(3):
            turns += [f"conversation {conversation} turn {turn}"]
            assert _chat(gateway, *turns).status_code == 200
            turns += ["an answer"]
    holders = {u.name: {c.body["messages"][1]["content"].split(" turn")[0] for c in u.calls} for u in upstreams}
    conversations = [c for held in holders.values() for c in held]
    assert len(conversations) == len(set(conversations)) == 12  # no conversation was split between replicas
    assert sum(1 for held in holders.values() if held) >= 2  # and the conversations spread


def test_a_failing_replica_is_skipped_by_its_circuit_and_probed_back(make_upstream, make_gateway, monkeypatch
                                                                     ) -> None:
    monkeypatch.setattr(replicas, "OPEN_SECONDS", 0.3)
    broken, healthy = make_upstream("broken"), make_upstream("healthy")
    broken.responder = lambda body: Reply(status=503, error_message="engine dead")
    broken.healthy = False
    gateway = make_gateway(_config([broken, healthy], "round-robin"), wait_ready=True)
    answers = [_chat(gateway, f"question {n}") for n in range(8)]
    assert all(a.status_code == 200 and a.headers["x-gateway-endpoint"] == "1" for a in answers)
    assert len(broken.calls) == replicas.FAILURE_THRESHOLD  # then its circuit opened: not tried again
    broken.responder, broken.healthy = broken.echo, True
    deadline = time.monotonic() + 5
    while not broken.calls[replicas.FAILURE_THRESHOLD:] and time.monotonic() < deadline:
        assert _chat(gateway, "are you back?").status_code == 200
        time.sleep(0.05)
    assert len(broken.calls) > replicas.FAILURE_THRESHOLD  # probed healthy, tried, closed again


def test_a_stream_fails_over_to_the_next_replica_before_its_first_byte(make_upstream, make_gateway) -> None:
    refusing, serving = make_upstream("refusing"), make_upstream("serving")
    refusing.responder = lambda body: Reply(status=500, error_message="CUDA error")
    gateway = make_gateway(_config([refusing, serving], "round-robin"))
    for _ in range(2):  # whichever replica the rotation starts with
        answer = _chat(gateway, "tell me a story", stream=True)
        assert answer.status_code == 200 and answer.headers["x-gateway-endpoint"] == "1"
        assert "serving:" in answer.text and "refusing" not in answer.text
        assert answer.text.rstrip().endswith("data: [DONE]")


def test_least_loaded_reads_vllm_metrics_and_counts_an_unreadable_replica_as_busy(make_upstream, make_gateway
                                                                                    ) -> None:
    unknown, light, heavy = make_upstream("unknown"), make_upstream("light"), make_upstream("heavy")
    light.set_vllm_load(running=1, waiting=0)
    heavy.set_vllm_load(running=3, waiting=0)
    unknown.set_vllm_load(running=0, waiting=0)
    unknown.metrics_delay_s = 5  # its scrape times out: unknown, not idle
    gateway = make_gateway(_config([unknown, light, heavy], "least-loaded", metrics_scrape_s=0.2))
    time.sleep(0.6)  # a scrape or two
    answers = [_chat(gateway, f"short question {n}") for n in range(4)]
    # light (1) < heavy (3) = unknown (the busiest known, 3; after a known one); an idle-looking unknown would win
    assert [a.headers["x-gateway-endpoint"] for a in answers] == ["1"] * 4
    light.set_vllm_load(running=9, waiting=4)  # light fills up: the next scrape sends work elsewhere
    time.sleep(replicas.SCRAPE_TIMEOUT_S + 0.6)  # a round of scrapes waits for the slow one's timeout
    assert _chat(gateway, "another").headers["x-gateway-endpoint"] == "2"  # heavy (3) < light (13) = unknown


@pytest.mark.parametrize(("model", "message"), [
    ({"base_url": "http://127.0.0.1:1/v1", "endpoints": [{"base_url": "http://127.0.0.1:2/v1"}]},
     "give either 'base_url' or 'endpoints', not both"),
    ({"endpoints": []}, "'endpoints' is empty; list at least one replica"),
    ({"endpoints": [{"base_url": "http://127.0.0.1:2/v1"}, {"base_url": "http://127.0.0.1:2/v1/"}]},
     "an endpoint is listed twice"),
    ({"backend": "local", "endpoints": [{"base_url": "http://127.0.0.1:2/v1"}]},
     "'endpoints' is only for backend 'openai'"),
    ({"endpoints": [{"base_url": "http://127.0.0.1:2/v1", "weight": 0}]}, "weight"),
])
def test_endpoint_config_errors_say_what_is_wrong(model: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"models": [{"name": "smol", "backend": "openai", **model}]})
