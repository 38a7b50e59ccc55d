"""LORPMAN: the low-rank layer and its penalty by hand, the RouterBench reader on a slice with empty cells, a
router trained on the slice (monotone in the preference), the CLI contract, and the gateway routing by
preference and price cap to real scripted upstreams."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from routers import load_router
from routers.data import RoutingDataError, load_routing_files
from routers.encoders import build_encoder
from routers.pareto import LowRankLinear, ParetoHead, ParetoRouter
from tests.support.servers import VENV_BIN
from training.front import FRONT_PREFERENCES, route_front
from training.pareto import ParetoTrainingConfig, orthogonality_penalty, train_pareto_router

SLICE = Path(__file__).resolve().parents[1] / "data" / "routerbench_slice"
TRAIN = sorted(str(p) for p in SLICE.glob("*_train.csv.gz"))
TEST = sorted(str(p) for p in SLICE.glob("*_test.csv.gz"))


def test_a_one_hot_preference_is_that_objectives_low_rank_model():
    torch.manual_seed(0)
    layer = LowRankLinear(6, 4, objectives=2, rank=2, scale=0.5)
    with torch.no_grad():
        layer.low_b.normal_()
    x = torch.randn(3, 6)
    for i in range(2):
        alpha = torch.nn.functional.one_hot(torch.tensor([i] * 3), 2).float()
        weight = layer.main.weight + 0.5 * layer.low_b[i] @ layer.low_a[i]
        assert torch.allclose(layer(x, alpha), x @ weight.T + layer.main.bias, atol=1e-5)
    # In between, the weights mix linearly: W(α) = W0 + s Σ α_i B_i A_i.
    half = torch.full((3, 2), 0.5)
    mixed = layer.main.weight + 0.5 * 0.5 * (layer.low_b[0] @ layer.low_a[0] + layer.low_b[1] @ layer.low_a[1])
    assert torch.allclose(layer(x, half), x @ mixed.T + layer.main.bias, atol=1e-5)


def test_the_orthogonality_penalty_on_hand_made_matrices():
    head = ParetoHead(4, 3, hidden_dim=4, rank=1)
    with torch.no_grad():
        for layer in head.layers():
            layer.low_a.zero_()
            layer.low_b.zero_()
            layer.low_a[0, 0, 0] = layer.low_a[1, 0, 1] = 1.0  # B_0 A_0 and B_1 A_1 touch different inputs
            layer.low_b[:, 0, 0] = 1.0
    assert orthogonality_penalty(head).item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for layer in head.layers():
            layer.low_a[1] = layer.low_a[0]  # identical updates: cosine 1 for (0, 1) and (1, 0)
    assert orthogonality_penalty(head).item() == pytest.approx(2.0 * len(head.layers()), rel=1e-5)


def test_the_routerbench_reader_keeps_unscored_cells_apart():
    datasets = load_routing_files(TRAIN)
    arc = next(d for d in datasets if d.task == "arc-challenge")
    assert {d.task for d in datasets} == {"arc-challenge", "mbpp", "winogrande"}
    assert len(arc.llm_names) == 11 and arc.costs is not None and arc.costs.shape == arc.scores.shape
    unscored = ~arc.scored
    assert unscored.any() and np.isnan(arc.scores[unscored]).all()
    assert (arc.outcome()[unscored] == 0).all()  # RouterBench's own convention when counting accuracy
    assert len(arc.fully_scored()) == int(arc.scored.all(axis=1).sum()) < len(arc)
    assert arc.questions[0].rstrip().endswith("Answer:") and not arc.questions[0].startswith("[")
    mbpp = next(d for d in datasets if d.task == "mbpp")
    assert np.nanmax(mbpp.costs[:, mbpp.llm_names.index("gpt-4-1106-preview")]) > 10 * np.nanmax(
        mbpp.costs[:, mbpp.llm_names.index("mistralai/mistral-7b-chat")])


def test_the_reader_names_the_file_and_line_of_a_bad_cell(tmp_path):
    good = gzip.decompress((SLICE / "mbpp_test.csv.gz").read_bytes()).decode()
    header, first, *rest = good.splitlines(keepends=True)
    bad = tmp_path / "bad.csv"
    bad.write_text(header + first.replace(",1.0,", ",yes,", 1) + "".join(rest))
    with pytest.raises(RoutingDataError, match=r"bad\.csv, line 2: .* is 'yes'"):
        load_routing_files([bad])
    (tmp_path / "other.csv").write_text("question,answer\nq,a\n")
    with pytest.raises(RoutingDataError, match="not a RouterBench CSV"):
        load_routing_files([tmp_path / "other.csv"])


@pytest.fixture(scope="module")
def pareto(embedding_cache):
    config = ParetoTrainingConfig(steps=400, eval_every=50, seed=0)
    return train_pareto_router(load_routing_files(TRAIN), config, cache_dir=embedding_cache, progress=False)


@pytest.mark.slow
def test_moving_the_preference_towards_cost_never_raises_the_cost(pareto):
    router = pareto.router
    tests = load_routing_files(TEST)
    encoded = np.concatenate([router.encoder.encode(d.questions) for d in tests])
    expected = []
    for weight in FRONT_PREFERENCES:
        choices = router.score_encoded(encoded, np.array([1 - weight, weight])).argmax(axis=1)
        expected.append(router.cost_per_query[choices])  # what the router expects each choice to cost
    for before, after in zip(expected, expected[1:], strict=False):
        assert (after <= before + 1e-12).all()  # per query, so on any set of them too
    assert expected[0].sum() > 3 * expected[-1].sum()  # the two ends of the front really differ
    outcomes = np.concatenate([d.outcome() for d in tests])
    costs = np.concatenate([d.costs for d in tests])
    points = route_front(router, encoded, outcomes, costs, FRONT_PREFERENCES)
    assert points[0].accuracy > points[-1].accuracy and points[0].cost_usd > points[-1].cost_usd


@pytest.mark.slow
def test_a_pareto_checkpoint_round_trips(pareto, tmp_path):
    from routers.checkpoint import save_router

    directory = save_router(tmp_path / "pareto", pareto.router)
    loaded = load_router(directory)
    assert isinstance(loaded, ParetoRouter) and loaded.preference_aware
    queries = [d.questions[0] for d in load_routing_files(TEST)]
    encoded = loaded.encoder.encode(queries)
    for weight in (0.0, 0.3, 1.0):
        alpha = np.array([1 - weight, weight], dtype=np.float32)
        assert np.allclose(loaded.score_encoded(encoded, alpha), pareto.router.score_encoded(encoded, alpha),
                           atol=1e-5)
    assert np.allclose(loaded.cost_per_query, pareto.router.cost_per_query)
    assert loaded.expected_quality(encoded).shape == (len(queries), 11)


@pytest.mark.slow
@pytest.mark.parametrize("encoder", [[], ["--encoder", "tail:onnx-int8:minilm"]], ids=["default", "tail-onnx"])
def test_cli_pareto_train_and_front_write_the_contract_json_and_png(tmp_path, encoder):
    """Also with a checkpoint on another encoder: the baselines that train a router train it on that encoder."""
    out = tmp_path / "ckpt"
    cli = str(VENV_BIN / "llm-gateway")
    train = subprocess.run([cli, "router", "train", "--data", *TRAIN, "--objective", "pareto", "--out", str(out),
                            "--steps", "100", *encoder], capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr
    report = tmp_path / "front" / "front.json"
    front = subprocess.run([cli, "router", "front", "--checkpoint", str(out), "--test", *TEST, "--json", str(report)],
                           capture_output=True, text=True, timeout=600)
    assert front.returncode == 0, front.stderr
    data = json.loads(report.read_text())
    point = data["points"][0]
    assert set(point) >= {"preference", "accuracy", "cost_usd"} and set(point["preference"]) == {"quality", "cost"}
    assert point["preference"] == {"quality": 1.0, "cost": 0.0} and data["points"][-1]["preference"]["cost"] == 1.0
    assert set(data["models"]) == set(load_routing_files(TEST)[0].llm_names)
    assert set(data["models"]["gpt-4-1106-preview"]) == {"accuracy", "cost_usd"}
    assert set(data["oracle"]) == {"accuracy", "cost_usd"} and 0 < data["oracle"]["accuracy"] <= 100
    assert {"static-price re-rank", "RouteLLM threshold (GPT-4 vs Mixtral)"} <= set(data["baselines"])
    assert report.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "hypervolume" in front.stdout


def test_pareto_on_data_without_prices_is_a_clear_error(tmp_path):
    from tests.routers.conftest import TRAIN_FILES

    result = subprocess.run([str(VENV_BIN / "llm-gateway"), "router", "train", "--data", *TRAIN_FILES,
                             "--objective", "pareto", "--out", str(tmp_path / "x")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and "needs what each LLM charged" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_static_encoder_reads_the_question_at_the_end_of_a_few_shot_prompt():
    """The gateway routes on the whole user message; a static encoder keeps the question's tokens however
    long the shared few-shot prefix is (a contextual encoder truncated at 256 tokens would not)."""
    arc = next(d for d in load_routing_files(TEST) if d.task == "arc-challenge")
    encoder = build_encoder("static:minilm")
    vectors = encoder.encode(arc.questions[:6])
    similarity = vectors @ vectors.T
    assert similarity[np.triu_indices(6, 1)].max() < 0.9999  # the prompts differ only in their last question
