"""``llm-gateway router collect --from-store``: routed requests with feedback become RouterBench data with partial
labels, and a router trained on them learns which model the deployment's users were happy with."""

from __future__ import annotations

import math
import subprocess

import numpy as np
import pytest
import yaml

from gateway.engine.usage import UsageStore, store_url
from gateway.engine.usage.store import row_id, utc_now
from routers.data import load_routerbench_csv, load_routing_files
from tests.support.servers import VENV_BIN
from training.pareto import ParetoTrainingConfig, train_pareto_router

SUBJECTS = ["the integral of x squared", "the derivative of sin x", "the sum of the first 100 integers",
            "the roots of x^2 - 5x + 6", "the limit of 1/x at infinity", "the determinant of a 2x2 matrix",
            "the probability of two heads", "the area of a circle of radius 3", "the square root of 144",
            "the value of 17 times 23", "the gcd of 84 and 36", "the slope of y = 3x + 2"]
THEMES = ["the sea at night", "an old oak tree", "a city in the rain", "the first snow", "a lost letter",
          "autumn leaves", "a lighthouse keeper", "the desert wind", "a quiet library", "spring mornings",
          "a train leaving", "the moon over water"]


def _row(question: str, model: str, request_id: str, **fields) -> dict:
    return {"id": row_id(), "request_id": request_id, "created_at": utc_now(),
            "key_name": "team-a", "endpoint": "chat", "model_asked": "auto", "model": model, "replica": None,
            "status": 200, "error_code": None, "prompt_tokens": 10, "completion_tokens": 20, "cached_tokens": None,
            "reasoning_tokens": None, "cost_usd": 0.01 if model == "strong" else 0.001, "latency_ms": 5.0,
            "ttft_ms": None, "stages": None, "route": [{"model": model, "score": 0.5}], "query": question,
            **fields}


@pytest.fixture
def traffic_store(tmp_path):
    """A store where users liked 'strong' on maths and 'cheap' on poems (each question answered by one model)."""
    store = UsageStore(store_url(f"sqlite:///{tmp_path / 'usage.db'}", tmp_path)).start()
    feedback = []
    for i, (subject, theme) in enumerate(zip(SUBJECTS, THEMES, strict=True)):
        for question, good, bad in ((f"Compute {subject}.", "strong", "cheap"),
                                    (f"Write a short poem about {theme}.", "cheap", "strong")):
            model = good if i % 2 == 0 else bad
            request_id = f"req-{len(feedback)}"
            store.record(_row(question, model, request_id))
            feedback.append((request_id, 1.0 if model == good else 0.1))
    store.record(_row("Compute the cube of 3.", "strong", "req-unscored"))  # no feedback: left out
    store.record(_row("Compute 2 + 2.", "strong", "req-failed", status=502))  # failed: left out
    store.record(_row("not routed", "strong", "req-named", query=None))  # a named model: not routing data
    feedback += [("req-failed", 1.0), ("req-named", 1.0)]
    assert store.flush(10)
    for request_id, score in feedback:
        store.add_feedback(request_id, "team-a", score, None)
    store.add_feedback("req-0", "team-a", 0.8, "second opinion")  # averaged with the first
    yield store
    store.close()


def test_collect_writes_partial_labels_named_as_the_checkpoint_llms(traffic_store, tmp_path):
    config = tmp_path / "gw.yaml"
    config.write_text(yaml.safe_dump({"models": [{"name": "strong", "backend": "openai", "base_url": "http://x/v1"},
                                                 {"name": "cheap", "backend": "openai", "base_url": "http://y/v1"}],
                                      "router": {"checkpoint": str(tmp_path / "ckpt"),
                                                 "model_map": {"org/strong-70b": "strong", "org/cheap-8b": "cheap"}}}))
    out = tmp_path / "traffic.csv"
    done = subprocess.run([str(VENV_BIN / "llm-gateway"), "router", "collect", "--from-store", traffic_store.url,
                           "--config", str(config), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "24 scored answers to 24 questions" in done.stdout
    data = load_routerbench_csv(out)
    assert sorted(data.llm_names) == ["org/cheap-8b", "org/strong-70b"] and len(data) == 24
    assert (data.scored.sum(axis=1) == 1).all()  # one scored model per question, the other unknown (NaN)
    strong = data.llm_names.index("org/strong-70b")
    first = data.questions.index(f"Compute {SUBJECTS[0]}.")
    assert data.scores[first, strong] == 1.0 and data.costs[first, strong] == pytest.approx(0.01)
    assert math.isnan(data.scores[first, 1 - strong]) and math.isnan(data.costs[first, 1 - strong])
    assert "Compute the cube of 3." not in data.questions and "not routed" not in data.questions
    # It mixes with benchmark data of the same LLMs.
    assert len(load_routing_files([str(out), str(out)])) == 2


def test_a_router_trained_on_feedback_prefers_the_model_users_liked(traffic_store, tmp_path, embedding_cache):
    out = tmp_path / "traffic.csv"
    subprocess.run([str(VENV_BIN / "llm-gateway"), "router", "collect", "--from-store", traffic_store.url,
                    "--out", str(out)], check=True, capture_output=True, timeout=120)
    data = load_routerbench_csv(out)
    result = train_pareto_router([data], ParetoTrainingConfig(steps=300, eval_every=300, val_fraction=0.1, seed=0),
                                 cache_dir=embedding_cache, progress=False)
    router = result.router
    quality_only = np.array([1.0, 0.0], dtype=np.float32)
    held_out = {"Compute the volume of a cube of side 4.": "strong", "Compute the median of 3, 9 and 4.": "strong",
                "Write a short poem about a mountain lake.": "cheap", "Write a short poem about an empty harbour.":
                "cheap"}
    encoded = router.encoder.encode(list(held_out))
    picks = [router.llm_names[int(i)] for i in router.score_encoded(encoded, quality_only).argmax(axis=1)]
    assert picks == list(held_out.values())
