"""`model: auto` routed by a RouterDC checkpoint over seven real HTTP upstreams that answer with their name."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
from collections import Counter

import httpx
import openai
import pytest
import yaml

from gateway.core.config import ConfigError, parse_config
from gateway.http import create_app
from routers import load_router
from routers.data import load_routing_file
from tests.routers.conftest import SLICE
from tests.support.servers import VENV_BIN
from tests.support.upstream import Reply

pytestmark = pytest.mark.slow

SHORT = {
    "mistralai/Mistral-7B-v0.1": "mistral",
    "meta-math/MetaMath-Mistral-7B": "metamath",
    "itpossible/Chinese-Mistral-7B-v0.1": "chinese-mistral",
    "HuggingFaceH4/zephyr-7b-beta": "zephyr",
    "cognitivecomputations/dolphin-2.6-mistral-7b": "dolphin-2.6",
    "meta-llama/Meta-Llama-3-8B": "llama-3",
    "cognitivecomputations/dolphin-2.9-llama3-8b": "dolphin-2.9",
}


@pytest.fixture
def pool(make_upstream):
    return {name: make_upstream(name) for name in SHORT.values()}


def _config(pool, checkpoint, **router_fields):
    return {"models": [{"name": name, "backend": "openai", "base_url": server.base_url, "timeout_s": 2}
                       for name, server in pool.items()],
            "router": {"model_name": "auto", "checkpoint": str(checkpoint), "model_map": SHORT, **router_fields}}


def _route(client, question, **kwargs):
    response = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": question}], **kwargs)
    completion = response.parse()
    return response.headers, completion


def test_math_goes_to_math_models_and_code_to_code_models(pool, router_checkpoint, make_gateway):
    gateway = make_gateway(_config(pool, router_checkpoint))
    client = gateway.client()
    assert "auto" in [m.id for m in client.models.list()]
    routed: dict[str, Counter[str]] = {}
    for task, filename in (("math", "gsm8k-test.json"), ("code", "humaneval_test.json")):
        counts: Counter[str] = Counter()
        for question in load_routing_file(SLICE / filename).questions[:30]:
            headers, completion = _route(client, question)
            answered_by = completion.choices[0].message.content.split(":")[0]
            assert headers["x-gateway-routed-model"] == answered_by == completion.model
            scores = json.loads(headers["x-gateway-route-scores"])
            assert scores[0]["model"] == answered_by and len(scores) == 3
            assert scores[0]["score"] >= scores[1]["score"] >= scores[2]["score"]
            counts[answered_by] += 1
        routed[task] = counts
    math, code = routed["math"], routed["code"]
    assert math["metamath"] + math["dolphin-2.9"] >= 24, math  # the two math-strong models (>= 80 %)
    assert code["dolphin-2.6"] + code["dolphin-2.9"] >= 24, code  # the two code-strong models
    assert math["metamath"] > code["metamath"]
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'gateway_routed_requests_total{model="metamath",router_model="auto"}' in metrics
    assert "gateway_routing_decision_seconds_count 60.0" in metrics
    # A static encoder scores inline on the event loop: no router thread, no batch window.
    assert not any(thread.name.startswith("router") for thread in threading.enumerate())


def test_failover_when_the_top_model_is_down_or_hangs_or_fails(pool, router_checkpoint, make_gateway):
    gateway = make_gateway(_config(pool, router_checkpoint, failure_threshold=100))
    client = gateway.client()
    question = load_routing_file(SLICE / "gsm8k-test.json").questions[0]
    headers, _ = _route(client, question)
    ranking = [entry["model"] for entry in json.loads(headers["x-gateway-route-scores"])]
    first, second = ranking[0], ranking[1]

    pool[first].responder = lambda body: Reply(status=500, error_message="GPU fell off")
    headers, completion = _route(client, question)
    assert completion.model == second and headers["x-gateway-routed-model"] == second

    pool[first].responder = lambda body: Reply(hang=True)  # the model's timeout_s is 2
    started = time.monotonic()
    for stream in (False, True):
        response = httpx.post(f"{gateway.base_url}/chat/completions", timeout=15, json={
            "model": "auto", "stream": stream, "messages": [{"role": "user", "content": question}]})
        assert response.status_code == 200 and response.headers["x-gateway-routed-model"] == second
        assert f"{second}: " in response.text
    assert time.monotonic() - started < 8

    pool[first].stop()  # connection refused
    headers, completion = _route(client, question)
    assert completion.model == second
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert f'gateway_failovers_total{{from_model="{first}",reason="upstream_error"}} 1.0' in metrics
    assert f'gateway_failovers_total{{from_model="{first}",reason="upstream_timeout"}} 2.0' in metrics
    assert f'gateway_failovers_total{{from_model="{first}",reason="upstream_unavailable"}} 1.0' in metrics


def test_all_candidates_failing_gives_the_last_error_naming_the_others(pool, router_checkpoint, make_gateway):
    gateway = make_gateway(_config(pool, router_checkpoint, max_attempts=2, failure_threshold=100))
    for server in pool.values():
        server.responder = lambda body: Reply(status=503, error_message="overloaded")
    with pytest.raises(openai.APIStatusError) as info:
        gateway.client().chat.completions.create(model="auto", messages=[{"role": "user", "content": "2+2?"}])
    assert info.value.status_code == 503
    assert "after failing over from" in info.value.body["message"]
    assert sum(len(server.calls) for server in pool.values()) == 2


def test_circuit_breaker_opens_and_closes(pool, router_checkpoint, make_gateway):
    gateway = make_gateway(_config(pool, router_checkpoint, failure_threshold=2, open_seconds=0.5))
    client = gateway.client()
    question = load_routing_file(SLICE / "gsm8k-test.json").questions[1]
    headers, _ = _route(client, question)
    first = json.loads(headers["x-gateway-route-scores"])[0]["model"]
    pool[first].responder = lambda body: Reply(status=502)
    pool[first].healthy = False
    for _ in range(2):
        _route(client, question)
    assert len(pool[first].calls) == 3
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert f'gateway_circuit_open{{model="{first}"}} 1.0' in metrics
    for _ in range(3):  # while open, the failing model is not even tried
        _, completion = _route(client, question)
        assert completion.model != first
    assert len(pool[first].calls) == 3
    pool[first].responder = pool[first].echo
    pool[first].healthy = True  # the health probe (GET /health) lets it back in on trial
    _wait_for_metric(gateway, f'gateway_circuit_open{{model="{first}"}} 0.5')
    _, completion = _route(client, question)
    assert completion.model == first  # the trial request succeeds: closed
    assert f'gateway_circuit_open{{model="{first}"}} 0.0' in httpx.get(f"{gateway.url}/metrics").text


def _wait_for_metric(gateway, line: str, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while line not in httpx.get(f"{gateway.url}/metrics").text:
        assert time.monotonic() < deadline, f"{line} never appeared"
        time.sleep(0.05)


def test_a_healthy_server_that_cannot_serve_the_model_does_not_flap(pool, router_checkpoint, make_gateway):
    """/health passes but every request gets a 404 (the model is not on that server): a passing probe only lets
    one trial through, and its failure opens the circuit again; it never closes on /health alone."""
    gateway = make_gateway(_config(pool, router_checkpoint, failure_threshold=2, open_seconds=0.3))
    client = gateway.client()
    question = load_routing_file(SLICE / "gsm8k-test.json").questions[1]
    first = json.loads(_route(client, question)[0]["x-gateway-route-scores"])[0]["model"]
    pool[first].responder = lambda body: Reply(status=404, error_message="model not found")
    for _ in range(2):
        assert _route(client, question)[1].model != first  # failed over
    gauge = f'gateway_circuit_open{{model="{first}"}}'
    assert f"{gauge} 1.0" in httpx.get(f"{gateway.url}/metrics").text
    for _ in range(3):  # each time the probe passes, one trial, then open again
        _wait_for_metric(gateway, f"{gauge} 0.5")
        calls = len(pool[first].calls)
        assert _route(client, question)[1].model != first
        assert len(pool[first].calls) == calls + 1
        assert f"{gauge} 1.0" in httpx.get(f"{gateway.url}/metrics").text
    assert f"{gauge} 0.0" not in httpx.get(f"{gateway.url}/metrics").text


def test_client_errors_and_long_generations_do_not_open_circuits(pool, router_checkpoint, make_gateway):
    gateway = make_gateway(_config(pool, router_checkpoint, failure_threshold=1))
    client = gateway.client()
    question = load_routing_file(SLICE / "gsm8k-test.json").questions[1]
    first = json.loads(_route(client, question)[0]["x-gateway-route-scores"])[0]["model"]
    pool[first].responder = lambda body: Reply(status=400, error_message="prompt too long")
    for _ in range(3):
        with pytest.raises(openai.BadRequestError):  # the client's error: no failover, no circuit
            _route(client, question)
    pool[first].responder = lambda body: Reply(text="slow", delay_s=3)  # longer than timeout_s = 2
    assert _route(client, question)[1].model != first  # failed over, but a long generation is no fault
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert f'gateway_circuit_open{{model="{first}"}} 1.0' not in metrics


def test_the_deadline_bounds_the_whole_failover(pool, router_checkpoint, make_gateway):
    gateway = make_gateway(_config(pool, router_checkpoint, deadline_s=1.0, max_attempts=3))
    for server in pool.values():
        server.responder = lambda body: Reply(hang=True)  # each would wait out timeout_s = 2 s
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        _route(gateway.client(), "What is 2 + 2?")
    assert info.value.status_code == 504 and "router.deadline_s" in info.value.body["message"]
    assert time.monotonic() - started < 1.8


def test_a_max_tokens_cap_passes_over_a_candidate(pool, router_checkpoint, make_gateway):
    config = _config(pool, router_checkpoint)
    question = load_routing_file(SLICE / "gsm8k-test.json").questions[1]
    first = json.loads(_route(make_gateway(config).client(), question)[0]["x-gateway-route-scores"])[0]["model"]
    next(m for m in config["models"] if m["name"] == first)["max_tokens_cap"] = 10
    gateway = make_gateway(config)
    assert _route(gateway.client(), question, max_tokens=50)[1].model != first
    assert _route(gateway.client(), question, max_tokens=5)[1].model == first


def test_stream_failing_after_the_first_byte_ends_with_an_error_not_a_failover(pool, router_checkpoint,
                                                                               make_gateway):
    gateway = make_gateway(_config(pool, router_checkpoint))
    question = load_routing_file(SLICE / "gsm8k-test.json").questions[2]
    headers, _ = _route(gateway.client(), question)
    first = json.loads(headers["x-gateway-route-scores"])[0]["model"]
    pool[first].responder = lambda body: Reply(chunks=["a ", "b ", "c "], die_after_chunks=1)
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", timeout=10, json={
            "model": "auto", "stream": True, "messages": [{"role": "user", "content": question}]}) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert response.headers["x-gateway-routed-model"] == first
    assert '"content":"a "' in lines[0] and '"error"' in lines[-2] and lines[-1] == "data: [DONE]"


def test_cost_weight_shifts_the_share_exactly_as_calibrated(pool, router_checkpoint, make_gateway, tmp_path):
    costs = {"mistral": 0.1, "metamath": 0.2, "chinese-mistral": 0.1, "zephyr": 0.1, "dolphin-2.6": 0.4,
             "llama-3": 0.8, "dolphin-2.9": 1.0}
    config = _config(pool, router_checkpoint)
    for model in config["models"]:
        model["cost_per_1k_tokens"] = costs[model["name"]]
    config_path = tmp_path / "gw.yaml"
    config_path.write_text(yaml.safe_dump(config))
    # Scores are expected accuracies: a weight of 0.5 trades 5 accuracy points for a tenth of the price range.
    test_file = SLICE / "mmlu_test.json"
    report = tmp_path / "calibration.json"
    result = subprocess.run([str(VENV_BIN / "llm-gateway"), "router", "calibrate", "--config", str(config_path),
                             "--data", f"{test_file}:probability", "--weights", "0", "0.5", "--json", str(report)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout
    calibrated = {row["cost_weight"]: row for row in json.loads(report.read_text())}
    assert calibrated[0.5]["mean_cost_per_1k"] < calibrated[0.0]["mean_cost_per_1k"]

    gateway = make_gateway(config)
    client = gateway.client()
    questions = load_routing_file(test_file).questions
    for weight in (0.0, 0.5):
        counts = Counter(_route(client, q, extra_body={"routing": {"cost_weight": weight}})[1].model
                         for q in questions)
        observed = {m: 100 * counts[m] / len(questions) for m in calibrated[weight]["share"]}
        assert observed == pytest.approx(calibrated[weight]["share"], abs=1e-6), weight
    assert "routing" not in pool["mistral"].calls[-1].body if pool["mistral"].calls else True


def test_router_reads_earlier_turns_when_configured(pool, router_checkpoint, make_gateway):
    router = load_router(router_checkpoint)
    code = load_routing_file(SLICE / "humaneval_test.json").questions[0]
    conversation = [{"role": "user", "content": code}, {"role": "assistant", "content": "def f(): ..."},
                    {"role": "user", "content": "now do it in Go"}]
    for turns, text in ((1, "now do it in Go"), (2, f"{code}\nnow do it in Go")):
        gateway = make_gateway(_config(pool, router_checkpoint, query_turns=turns))
        response = gateway.client().chat.completions.with_raw_response.create(model="auto", messages=conversation)
        expected = router.score([text])[0]
        top = json.loads(response.headers["x-gateway-route-scores"])[0]
        best = int(expected.argmax())
        assert top["model"] == SHORT[router.llm_names[best]]
        assert top["score"] == pytest.approx(float(expected[best]), abs=1e-3)


def test_image_requests_go_to_a_vision_capable_candidate(pool, router_checkpoint, make_gateway):
    config = _config(pool, router_checkpoint)
    for model in config["models"]:
        model["vision"] = model["name"] == "zephyr"
    gateway = make_gateway(config)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    for question in load_routing_file(SLICE / "gsm8k-test.json").questions[:3]:
        response = gateway.client().chat.completions.create(model="auto", messages=[
            {"role": "user", "content": [{"type": "text", "text": question}, image]}])
        assert response.model == "zephyr"
    assert pool["zephyr"].calls[-1].has_image


@pytest.mark.slow
def test_spoken_requests_route_on_the_transcript_and_prefer_audio_models(pool, router_checkpoint, make_gateway):
    from tests.support.speech import spoken

    config = _config(pool, router_checkpoint)
    config["models"].append({"name": "whisper-tiny.en", "backend": "local", "task": "transcribe"})
    question = "Natalia sold clips to forty of her friends in April, and half as many in May. How many in total?"
    gateway = make_gateway(config)
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(spoken(question)).decode(),
                                                    "format": "wav"}}
    typed = _route(gateway.client(), question)[0]["x-gateway-routed-model"]
    spoken_to = gateway.client().chat.completions.create(model="auto", messages=[{"role": "user", "content": [audio]}])
    assert spoken_to.model == typed  # the transcript routes like the typed question
    assert isinstance(pool[typed].calls[-1].body["messages"][0]["content"][0]["text"], str)
    other = next(name for name in pool if name != typed)
    for model in config["models"]:
        model["audio"] = model["name"] == other
    gateway = make_gateway(config)
    answer = gateway.client().chat.completions.create(model="auto", messages=[{"role": "user", "content": [audio]}])
    assert answer.model == other and pool[other].calls[-1].body["messages"][0]["content"] == [audio]


def test_routing_config_errors_are_clear(pool, router_checkpoint, tmp_path):
    def start(config):
        create_app(parse_config(config))

    base = _config(pool, router_checkpoint)
    unmapped = {**base, "router": {"model_name": "auto", "checkpoint": str(router_checkpoint)}}
    with pytest.raises(ConfigError, match="router checkpoint LLMs with no configured model: mistralai/Mistral-7B"):
        start(unmapped)
    wrong_key = {**base, "router": {**base["router"], "model_map": {**SHORT, "gpt-9": "zephyr"}}}
    with pytest.raises(ConfigError, match="model_map names LLMs the checkpoint does not know: gpt-9"):
        start(wrong_key)
    extra = {**base, "models": [*base["models"], {"name": "extra", "backend": "openai", "base_url": "http://x/v1"}],
             "router": {**base["router"], "candidates": ["extra"]}}
    with pytest.raises(ConfigError, match="model 'extra' is not in the router checkpoint"):
        start(extra)
    missing = {**base, "router": {**base["router"], "checkpoint": str(tmp_path / "nope")}}
    with pytest.raises(ConfigError, match="router.checkpoint: .* is not a router checkpoint"):
        start(missing)
    clash = {**base, "router": {**base["router"], "model_name": "zephyr"}}
    with pytest.raises(ConfigError, match="router.model_name 'zephyr' is also a model's name"):
        start(clash)
