"""RouterDC trained on a slice of the real benchmark: it learns, it routes, its checkpoint round-trips."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from routers import load_router
from routers.baselines import best_single_llm
from routers.encoders import build_encoder
from routers.evaluation import evaluate
from tests.routers.conftest import TEST_FILES, TRAIN_FILES
from tests.support.servers import VENV_BIN
from training.router_registry import ROUTERS, RouterOptions, build_router
from training.routerdc import RouterTrainingConfig, save_trained_router, train_router

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(train_sets, embedding_cache):
    config = RouterTrainingConfig(steps=150, eval_every=10, samples_per_task=200, batch_size=32, seed=3)
    return train_router(train_sets, config, cache_dir=embedding_cache, progress=False)


def test_training_lowers_the_loss_and_beats_random_on_held_out_questions(trained, train_sets, test_sets):
    losses = [h["loss"] for h in trained.history]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:2])
    report = evaluate(trained.router, test_sets, best_single_llm(train_sets), "routerdc")
    assert report.average.router > report.average.random + 3
    assert 0 < trained.best_step <= 150
    assert trained.router.metadata["validation"]["average"] == trained.validation["average"]


def test_training_is_reproducible(train_sets, trained, embedding_cache):
    config = RouterTrainingConfig(steps=150, eval_every=10, samples_per_task=200, batch_size=32, seed=3)
    again = train_router(train_sets, config, cache_dir=embedding_cache, progress=False)
    queries = [train_sets[0].questions[0], train_sets[1].questions[0]]
    assert np.allclose(again.router.score(queries), trained.router.score(queries), atol=1e-5)


def test_checkpoint_round_trip_gives_the_same_scores(trained, test_sets, tmp_path):
    directory = save_trained_router(trained, tmp_path / "ckpt")
    metadata = json.loads((directory / "router.json").read_text())
    assert metadata["llm_names"] == trained.router.llm_names
    assert metadata["encoder"] == "static:minilm" and metadata["head"]["temperature"] == 1.0
    assert len(metadata["encoder_probe"]) == 4 and metadata["decision"]["prior"] is not None
    assert metadata["training"]["mode"] == "frozen" and "validation" in metadata and metadata["best_single"]
    loaded = load_router(directory)
    queries = [q for d in test_sets for q in d.questions[:5]]
    assert np.allclose(loaded.score(queries), trained.router.score(queries), atol=1e-6)
    assert np.array_equal(loaded.score(queries).argmax(axis=1), trained.router.score(queries).argmax(axis=1))
    ranking = loaded.rank(queries[:1])[0]
    assert [c.model for c in ranking][0] == trained.router.llm_names[int(np.argmax(loaded.score(queries[:1])))]
    assert len(ranking) == 7 and ranking[0].score >= ranking[-1].score


def test_loss_pair_defaults_follow_the_paper():
    config = RouterTrainingConfig()
    paper = (3, 3, 3, 1.0, 1.0)
    assert (config.top_k, config.last_k, config.negatives_per_sample, config.temperature, config.lam) == paper
    assert RouterTrainingConfig(mode="finetune").learning_rate == 5e-5
    with pytest.raises(ValueError, match="cannot be fine-tuned"):
        RouterTrainingConfig(mode="finetune", encoder="e5-small")


@pytest.mark.parametrize("name", ["random", "best-single", "knn"])
def test_baselines_route_through_the_same_interface(name, train_sets, test_sets, embedding_cache):
    router = build_router(name, train_sets, RouterOptions(cache_dir=embedding_cache))
    report = evaluate(router, test_sets, best_single_llm(train_sets), name)
    assert set(report.tasks) == {d.task for d in test_sets}
    if name == "best-single":
        assert report.average.router == pytest.approx(report.average.best_single)
    if name == "knn":
        assert report.average.router > report.average.random


def test_unknown_router_names_list_the_known_ones(train_sets):
    known = ("known routers: random, fixed, best-single, knn, task-best, task-classifier, cosine-classifier, "
             "routerdc-paper, routerdc")
    with pytest.raises(ValueError, match=known):
        build_router("magic", train_sets)
    assert set(ROUTERS) == {"random", "fixed", "best-single", "knn", "task-best", "task-classifier",
                            "cosine-classifier", "routerdc-paper", "routerdc"}


def test_cli_train_and_eval_write_checkpoint_table_json_and_png(tmp_path):
    out = tmp_path / "router"
    env_bin = str(VENV_BIN / "llm-gateway")
    train = subprocess.run([env_bin, "router", "train", "--data", *TRAIN_FILES, "--out", str(out), "--steps", "40",
                            "--seed", "1", "--samples-per-task", "100"], capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr
    assert (out / "router.safetensors").exists() and "best validation step" in train.stdout
    report_path = tmp_path / "eval" / "report.json"
    evaluation = subprocess.run([env_bin, "router", "eval", "--checkpoint", str(out), "--test", *TEST_FILES,
                                 "--json", str(report_path)], capture_output=True, text=True, timeout=600)
    assert evaluation.returncode == 0, evaluation.stderr
    assert "AVERAGE" in evaluation.stdout and "mmlu" in evaluation.stdout
    report = json.loads(report_path.read_text())
    assert set(report["tasks"]) == {"mmlu", "gsm8k", "cmmlu", "arc_challenge", "humaneval"}
    assert set(report["tasks"]["mmlu"]) == {"router", "best_single", "oracle", "random"}
    assert set(report["average"]) >= {"router", "best_single", "oracle", "random"}
    assert report_path.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    baseline = subprocess.run([env_bin, "router", "eval", "--baseline", "fixed", "--model",
                               "meta-llama/Meta-Llama-3-8B", "--data", *TRAIN_FILES, "--test", *TEST_FILES],
                              capture_output=True, text=True, timeout=600)
    assert baseline.returncode == 0, baseline.stderr
    bad = subprocess.run([env_bin, "router", "eval", "--baseline", "magic", "--data", *TRAIN_FILES, "--test",
                          *TEST_FILES], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "known routers" in bad.stderr and "Traceback" not in bad.stderr


def test_finetune_mode_trains_the_encoder_and_saves_it(train_sets, tmp_path):
    small = [d.subset(range(12)) for d in train_sets]
    config = RouterTrainingConfig(mode="finetune", steps=3, eval_every=3, batch_size=8, samples_per_task=12, seed=0)
    assert config.learning_rate == 5e-5 and config.hidden_dim == 0  # the paper's setting: encoder output as is
    before = {name: p.detach().clone() for name, p in build_encoder("minilm").model.named_parameters()}
    result = train_router(small, config, progress=False)
    after = dict(result.router.encoder.model.named_parameters())
    assert any(not torch.equal(before[name], after[name].detach()) for name in before)  # the encoder moved
    directory = save_trained_router(result, tmp_path / "ckpt")
    assert (directory / "encoder" / "modules.json").exists()
    assert json.loads((directory / "router.json").read_text())["encoder"] == "encoder"
    queries = small[0].questions[:3]
    assert np.allclose(load_router(directory).score(queries), result.router.score(queries), atol=1e-5)


FAR_AWAY = ["ᚠᚢᚦᚨᚱᚲ ᚷᚹᚺᚾᛁᛃ ᛇᛈᛉᛊ", "🙂🙃😉😊😇🥰😍🤩", "", "ꦲꦏ꧀ꦱꦫ ꦗꦮ"]


def test_the_prior_goes_first_for_far_away_queries_and_not_for_familiar_ones(trained, test_sets):
    router = trained.router
    prior = router.decision.prior
    assert prior is not None and router.llm_names[prior] == router.best_single
    assert router.fallbacks(FAR_AWAY) == ["unfamiliar"] * len(FAR_AWAY)
    assert (router.score(FAR_AWAY).argmax(axis=1) == prior).all()
    familiar = [q for d in test_sets for q in d.questions]
    reasons = router.fallbacks(familiar)
    # The familiarity threshold sits at the 1st percentile of validation queries.
    assert reasons.count("unfamiliar") / len(familiar) < 0.05
    routed_away = [i for i, r in enumerate(reasons) if not r]
    assert routed_away, "familiar questions with a clear expected gain leave the prior"
    assert (router.score([familiar[i] for i in routed_away]).argmax(axis=1) != prior).any()


def test_fallback_off_routes_by_the_prior_alone(train_sets, embedding_cache):
    config = RouterTrainingConfig(steps=20, eval_every=10, samples_per_task=50, batch_size=16, fallback="off")
    result = train_router(train_sets, config, cache_dir=embedding_cache, progress=False)
    assert result.router.decision.prior is None
    assert result.router.fallbacks(FAR_AWAY) == [""] * len(FAR_AWAY)


@pytest.mark.parametrize("extra", [{"mix_k": 5}, {"experts": 3}], ids=["multi-mix", "moce"])
def test_multi_mix_and_cluster_experts_lower_the_loss(train_sets, embedding_cache, extra, tmp_path):
    config = RouterTrainingConfig(steps=120, eval_every=10, samples_per_task=200, batch_size=32, seed=1,
                                  cluster_prior=False, **extra)
    result = train_router(train_sets, config, cache_dir=embedding_cache, progress=False)
    losses = [h["loss"] for h in result.history]
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:2])
    queries = [d.questions[0] for d in train_sets]
    loaded = load_router(save_trained_router(result, tmp_path / "router"))
    assert np.allclose(loaded.score(queries), result.router.score(queries), atol=1e-6)


def test_the_cluster_gate_groups_clusters_that_need_the_same_llm():
    """MoCE's gate sends related clusters to one expert and unrelated ones to others: here clusters 0 and 1 are
    won by the first LLM, 2 and 3 by the third. The unfitted assignment (round-robin) mixes them."""
    from routers.routerdc import RouterDCModel, fit_cluster_gate

    profiles = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.1], [0.1, 0.0, 0.9], [0.0, 0.2, 0.8]])
    gate = fit_cluster_gate(profiles, experts=2)
    assert gate[0] == gate[1] and gate[2] == gate[3] and gate[0] != gate[2]
    unfitted = RouterDCModel(4, 3, hidden_dim=8, experts=2, centroids=np.eye(4)).cluster_expert.tolist()
    assert not (unfitted[0] == unfitted[1] and unfitted[2] == unfitted[3] and unfitted[0] != unfitted[2])
    assert fit_cluster_gate(profiles, experts=4).tolist() == [0, 1, 2, 3]  # enough experts: one each


def test_each_cluster_expert_trains_on_its_own_clusters_only():
    """Every query of a cluster goes to its one expert (not a dense mix of all): a step on one cluster's queries
    moves that expert and no other."""
    from routers.routerdc import RouterDCModel

    torch.manual_seed(0)
    centroids = torch.nn.functional.normalize(torch.eye(8)[:4] + 0.01, dim=-1).numpy()
    model = RouterDCModel(8, 3, hidden_dim=16, experts=3, centroids=centroids, cluster_expert=np.array([0, 2, 1, 2]))
    queries = torch.nn.functional.normalize(torch.from_numpy(centroids[1]) + 0.05 * torch.randn(10, 8), dim=-1)
    logits, _ = model(queries)
    logits.sum().backward()
    moved = [index for index, head in enumerate(model.expert_heads)
             if any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())]
    assert moved == [2]


def test_an_ensemble_averages_its_heads(train_sets, embedding_cache, tmp_path):
    config = RouterTrainingConfig(steps=30, eval_every=10, samples_per_task=50, batch_size=16, ensemble=2,
                                  cluster_prior=False)
    result = train_router(train_sets, config, cache_dir=embedding_cache, progress=False)
    router = result.router
    queries = [d.questions[0] for d in train_sets]
    encoded = router.encoder.encode(queries)
    each = [h(torch.from_numpy(encoded))[0].detach().numpy() for h in router.heads]
    assert len(each) == 2 and not np.allclose(each[0], each[1])
    assert np.allclose(router.score(queries), (each[0] + each[1]) / 2, atol=1e-6)
    loaded = load_router(save_trained_router(result, tmp_path / "ensemble"))
    assert np.allclose(loaded.score(queries), router.score(queries), atol=1e-6)
