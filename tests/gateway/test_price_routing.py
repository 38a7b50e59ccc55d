"""`model: auto` with a LORPMAN checkpoint: the request's quality/cost preference and price cap move the choice
between real scripted upstreams; the route header says what each top candidate is expected to score and cost."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from routers.checkpoint import save_router
from routers.data import load_routing_files
from training.pareto import ParetoTrainingConfig, train_pareto_router

pytestmark = pytest.mark.slow

SLICE = Path(__file__).resolve().parents[1] / "data" / "routerbench_slice"


@pytest.fixture(scope="module")
def pareto_checkpoint(tmp_path_factory, embedding_cache) -> Path:
    data = load_routing_files(sorted(str(p) for p in SLICE.glob("*_train.csv.gz")))
    # Validated once, at the end: the slice holds out ~9 questions a task, too few for the validation
    # hypervolume to pick a step (it kept step 50, before the values learnt the preference).
    result = train_pareto_router(data, ParetoTrainingConfig(steps=400, eval_every=400), cache_dir=embedding_cache,
                                 progress=False)
    return save_router(tmp_path_factory.mktemp("pareto") / "router", result.router)


@pytest.fixture
def priced_gateway(make_upstream, make_gateway, pareto_checkpoint):
    names = json.loads((pareto_checkpoint / "router.json").read_text())["llm_names"]
    upstream = make_upstream("pool")
    models = [{"name": name, "backend": "openai", "base_url": upstream.base_url, "timeout_s": 5} for name in names]
    # One price from the config (USD per 1M tokens); the others' prices come from the checkpoint.
    models[names.index("gpt-4-1106-preview")]["price"] = {"input_per_1m": 10.0, "output_per_1m": 30.0}
    return make_gateway({"models": models, "router": {"checkpoint": str(pareto_checkpoint)}}), upstream


def _questions() -> list[str]:
    return [q for d in load_routing_files(sorted(str(p) for p in SLICE.glob("*_test.csv.gz"))) for q in d.questions]


def _route(client: openai.OpenAI, question: str, routing: dict) -> tuple[str, list[dict]]:
    response = client.chat.completions.with_raw_response.create(
        model="auto", max_tokens=16, messages=[{"role": "user", "content": question}], extra_body={"routing": routing})
    return response.headers["x-gateway-routed-model"], json.loads(response.headers["x-gateway-route-scores"])


def test_the_preference_moves_requests_to_cheaper_upstreams(priced_gateway, pareto_checkpoint):
    gateway, upstream = priced_gateway
    client = gateway.client()
    prices = dict(zip(json.loads((pareto_checkpoint / "router.json").read_text())["llm_names"],
                      _learnt_prices(pareto_checkpoint), strict=True))
    spent = {}
    for cost in (0.0, 0.5, 1.0):
        chosen = [_route(client, q, {"preference": {"quality": 1 - cost, "cost": cost}})[0] for q in _questions()[:30]]
        spent[cost] = float(np.mean([prices[m] for m in chosen]))
    assert spent[0.0] > spent[0.5] >= spent[1.0], spent
    assert spent[0.0] > 3 * spent[1.0]
    # The upstreams really received the requests, each under its own model name.
    assert {call.body["model"] for call in upstream.calls} >= {"gpt-4-1106-preview"}
    # cost_weight stays as the shorthand: w = 1 is the preference {0.5, 0.5}.
    question = _questions()[3]
    assert _route(client, question, {"cost_weight": 1.0})[0] == _route(
        client, question, {"preference": {"quality": 0.5, "cost": 0.5}})[0]


def _learnt_prices(checkpoint: Path) -> np.ndarray:
    from routers import load_router

    return load_router(checkpoint).cost_per_query  # type: ignore[union-attr,return-value]


def test_the_route_header_shows_expected_quality_and_cost(priced_gateway):
    gateway, _ = priced_gateway
    question = _questions()[0]
    routed, candidates = _route(gateway.client(), question, {"preference": {"quality": 1.0, "cost": 0.0}})
    assert candidates[0]["model"] == routed and len(candidates) == 3
    for candidate in candidates:
        assert 0 <= candidate["quality"] <= 1 and candidate["cost_usd"] > 0
    _, cheap_first = _route(gateway.client(), question, {"preference": {"quality": 0.0, "cost": 1.0}})
    gpt4 = next((c for c in candidates + cheap_first if c["model"] == "gpt-4-1106-preview"), None)
    if gpt4 is not None:  # priced from the config: (chars / 4) prompt tokens * $10/1M + 16 completion tokens * $30/1M
        assert gpt4["cost_usd"] == pytest.approx((len(question) / 4 * 10 + 16 * 30) / 1e6, rel=0.02)


def test_max_cost_usd_is_a_hard_cap_or_a_clear_400(priced_gateway):
    gateway, _ = priced_gateway
    client = gateway.client()
    question = _questions()[1]
    _, candidates = _route(client, question, {"preference": {"quality": 1.0, "cost": 0.0}})
    top_cost = candidates[0]["cost_usd"]
    cap = top_cost * 0.5
    routed, capped = _route(client, question, {"preference": {"quality": 1.0, "cost": 0.0}, "max_cost_usd": cap})
    assert routed != candidates[0]["model"] and all(c["cost_usd"] <= cap for c in capped)
    with pytest.raises(openai.BadRequestError) as refused:
        _route(client, question, {"max_cost_usd": 1e-12})
    error = refused.value.body
    assert error["param"] == "routing.max_cost_usd" and error["code"] == "no_model_within_budget"
    assert "cheapest candidate" in error["message"]


@pytest.mark.parametrize("routing, fragment", [
    ({"preference": {"quality": 0.7, "cost": 0.7}}, "must sum to 1"),
    ({"preference": {"quality": 0.5, "cost": 0.5}, "cost_weight": 1.0}, "not both"),
    ({"max_cost_usd": -1}, "greater than 0"),
])
def test_bad_routing_options_are_400s_naming_them(priced_gateway, routing, fragment):
    gateway, _ = priced_gateway
    response = httpx.post(f"{gateway.base_url}/chat/completions", json={
        "model": "auto", "messages": [{"role": "user", "content": "hi"}], "routing": routing})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"].startswith("routing") and fragment in error["message"]
