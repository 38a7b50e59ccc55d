"""Faults on real engines: a client that goes away aborts the generation inside vLLM; a vLLM SIGKILLed during a
stream ends it with an error event, then routed requests fail over before their first byte, the circuit opens,
``/ready`` follows vLLM's ``/health``, and everything closes again once vLLM is back.

These run last in the session (tests/vllm/conftest.py): they kill and restart the SmolLM2 server."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveGateway
from tests.support.servers import VENV_BIN
from tests.support.vllm import VLLMServer
from tests.vllm.conftest import live_gateway, upstream_model

pytestmark = pytest.mark.vllm

LONG = {"messages": [{"role": "user", "content": "Write a very long story about a dragon."}], "max_tokens": 1500,
        "temperature": 0.8, "ignore_eos": True, "stream": True}


def eventually(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until ``check()`` holds."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, f"{what} within {timeout_s} s"
        time.sleep(0.05)
    return time.monotonic() - started


def circuit_of(gateway: LiveGateway, model: str) -> float:
    for line in httpx.get(f"{gateway.url}/metrics", timeout=5).text.splitlines():
        if line.startswith("gateway_circuit_open{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def prefers_smollm2(tmp_path_factory) -> Path:
    """A router checkpoint that ranks smollm2 first for every query (trained on data where only it is right),
    so a request to ``auto`` meets the server these tests kill."""
    folder = tmp_path_factory.mktemp("prefers-smollm2")
    records = [{"question": f"Question number {i}: {topic}?", "task": "chat",
                "scores": {"smollm2": 1.0, "gemma-3-270m": 0.0}}
               for i, topic in enumerate(["weather", "history", "maths", "poems", "cooking", "travel"] * 8)]
    (folder / "data.json").write_text(json.dumps(records))
    subprocess.run([str(VENV_BIN / "llm-gateway"), "router", "train", "--data", str(folder / "data.json"), "--out",
                    str(folder / "router"), "--steps", "30", "--batch-size", "16", "--fallback", "off"],
                   check=True, capture_output=True, timeout=600)
    return folder / "router"


def test_client_disconnect_aborts_the_generation_inside_vllm(smollm2: VLLMServer) -> None:
    with live_gateway({"models": [upstream_model("smollm2", smollm2)]}) as gateway:
        with httpx.stream("POST", f"{gateway.base_url}/chat/completions", json={"model": "smollm2", **LONG},
                          timeout=60) as response:
            lines = response.iter_lines()
            while not next(lines).startswith("data: {"):
                pass
            eventually(lambda: smollm2.metric("vllm:num_requests_running") == 1, 5, "vLLM counts the request")
        # The client hung up: the gateway closes its upstream connection and vLLM aborts the request.
        eventually(lambda: smollm2.metric("vllm:num_requests_running") == 0, 5, "vLLM stopped generating")
        assert smollm2.metric("vllm:num_requests_waiting") == 0


def test_vllm_killed_mid_stream_then_failover_circuit_and_ready_follow_it(
        smollm2: VLLMServer, gemma: VLLMServer, prefers_smollm2: Path) -> None:
    config = {"models": [upstream_model("smollm2", smollm2), upstream_model("gemma-3-270m", gemma)],
              "router": {"model_name": "auto", "checkpoint": str(prefers_smollm2), "failure_threshold": 1,
                         "open_seconds": 2, "max_attempts": 2}}
    with live_gateway(config) as gateway:
        client = gateway.client()
        ask = {"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 4, "temperature": 0}
        routed = client.chat.completions.with_raw_response.create(model="auto", **ask)
        assert routed.headers["x-gateway-routed-model"] == "smollm2"

        # SIGKILL during a stream: the client gets the chunks so far, one error event, then [DONE].
        with httpx.stream("POST", f"{gateway.base_url}/chat/completions", json={"model": "auto", **LONG},
                          timeout=60) as response:
            assert response.headers["x-gateway-routed-model"] == "smollm2"
            events = []
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[len("data: "):])
                if len(events) == 3:
                    smollm2.kill()
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] in ("upstream_error", "upstream_unavailable")
        assert str(smollm2.port) not in error["message"] and "127.0.0.1" not in error["message"]
        assert all("choices" in json.loads(event) for event in events[:-2])

        # Before the first byte, routed requests fail over to Gemma; the circuit of smollm2 opens.
        answer = client.chat.completions.with_raw_response.create(model="auto", **ask)
        assert answer.headers["x-gateway-routed-model"] == "gemma-3-270m"
        assert answer.parse().choices[0].message.content is not None
        stream = client.chat.completions.with_raw_response.create(model="auto", stream=True, **ask)
        assert stream.headers["x-gateway-routed-model"] == "gemma-3-270m"
        assert list(stream.parse())
        assert circuit_of(gateway, "smollm2") == 1.0

        # Asked by name, the dead model is a 503 that names the model and not its address.
        named = httpx.post(f"{gateway.base_url}/chat/completions", json={"model": "smollm2", **ask}, timeout=30)
        assert named.status_code == 503 and "127.0.0.1" not in named.json()["error"]["message"]
        ready = httpx.get(f"{gateway.url}/ready", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["models"]["smollm2"]["ready"] is False
        assert ready.json()["models"]["gemma-3-270m"]["ready"] is True

        # vLLM comes back: /ready follows its /health, and the next routed request closes the circuit.
        smollm2.start()
        smollm2.wait_ready()
        print(f"vLLM smollm2 restarted in {smollm2.started_in_s:.0f} s")
        eventually(lambda: httpx.get(f"{gateway.url}/ready", timeout=10).status_code == 200, 30,
                   "/ready back to 200")
        time.sleep(2.1)  # open_seconds: the breaker lets a probe through
        back = client.chat.completions.with_raw_response.create(model="auto", **ask)
        assert back.headers["x-gateway-routed-model"] == "smollm2"
        assert circuit_of(gateway, "smollm2") == 0.0
