"""Baselines for the quality–cost front, every one read on the same preference grid as LORPMAN (``GRID``: cost
weight c from 0 to 1 in steps of 0.02, 51 points), so no method gets more chances to land near a target than
another. A baseline that estimates each LLM's quality q chooses ``argmax (1 − c)·q − c·price`` with prices in
LORPMAN's own cost unit (``training.pareto.cost_unit``), so a preference means the same trade-off for all:

- ``static-price``: today's router (quality only: ``training.routerdc`` with its cluster prior), its scores as q;
- ``knn`` / ``logistic``: per-LLM probability of being correct (k nearest training questions / one logistic
  regression per LLM) as q;
- ``kind prior``: no per-query model at all: each LLM's accuracy on the kind of question (the cluster prior the
  checkpoints carry: a gate over the training tasks) as q;
- ``quality-only head``: LORPMAN's own network trained on the quality objective alone (no preference
  conditioning), its values as q: what the conditioning adds;
- ``routellm``: RouteLLM's two-model threshold router: a classifier of "the strong model is needed" (GPT-4
  right where Mixtral is wrong), strong model where it says so with probability ≥ c;
- ``scalarised``: one LORPMAN-shaped router trained per grid preference (what one LORPMAN checkpoint replaces).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from routers.data import RoutingDataset
from routers.encoders import TextEncoder
from training.front import FRONT_PREFERENCES as GRID
from training.front import FrontPoint, knob_front, route_front, summarise

STRONG, WEAK = "gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat"


class TestSet:
    """The pooled test questions, encoded once, with correctness (unscored = 0) and prices. Baselines that train
    a router train it on the same encoder (``encoder_spec``), so their scores read these vectors."""

    def __init__(self, tests: Sequence[RoutingDataset], encoder: TextEncoder) -> None:
        self.llm_names = tests[0].llm_names
        self.encoder_spec = encoder.spec
        self.encoded = np.concatenate([encoder.encode(d.questions) for d in tests])
        self.outcomes = np.concatenate([d.outcome() for d in tests])
        self.costs = np.concatenate([d.costs if d.costs is not None else np.zeros(d.scores.shape) for d in tests])


def unit_prices(train: Sequence[RoutingDataset]) -> np.ndarray:
    """Mean price per question of each LLM over the training data, in LORPMAN's cost unit."""
    from training.pareto import cost_unit

    mean = np.nanmean(np.concatenate([d.costs for d in train if d.costs is not None]), axis=0)
    return mean * cost_unit(train, mean)  # type: ignore[no-any-return]


def preference_front(quality: np.ndarray, train: Sequence[RoutingDataset], test: TestSet) -> list[FrontPoint]:
    """A quality estimate [n, n_llms] read on the preference grid: ``argmax (1 − c)·quality − c·price``."""
    prices = unit_prices(train)
    return knob_front(lambda c: (1 - c) * quality - c * prices, test.outcomes, test.costs, GRID)


def _training_arrays(train: Sequence[RoutingDataset], encoder: TextEncoder
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.concatenate([encoder.encode(d.questions) for d in train]),
            np.concatenate([d.outcome() for d in train]), np.concatenate([d.scored for d in train]))


def static_price_front(train: Sequence[RoutingDataset], test: TestSet, cache_dir: Path | None,
                       seed: int = 0) -> list[FrontPoint]:
    from training.routerdc import RouterTrainingConfig, train_router

    router = train_router([d.fully_scored() for d in train], RouterTrainingConfig(encoder=test.encoder_spec,
                                                                                 seed=seed),
                          cache_dir=cache_dir, progress=False).router
    return preference_front(router.score_encoded(test.encoded), train, test)


def correctness_front(kind: str, train: Sequence[RoutingDataset], test: TestSet, encoder: TextEncoder,
                      k: int = 25) -> list[FrontPoint]:
    """``kind`` = "knn" or "logistic": p(correct) per LLM, then argmax p − λ · normalised price."""
    features, outcomes, scored = _training_arrays(train, encoder)
    if kind == "knn":
        unit = features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-12)
        query = test.encoded / np.linalg.norm(test.encoded, axis=1, keepdims=True).clip(1e-12)
        nearest = np.argpartition(-(query @ unit.T), k, axis=1)[:, :k]
        hits, seen = (outcomes * scored)[nearest].sum(axis=1), scored[nearest].sum(axis=1)
        probability = (hits + 0.5) / (seen + 1.0)  # a little towards 1/2 where few neighbours were scored
    else:
        from sklearn.linear_model import LogisticRegression

        probability = np.zeros_like(test.outcomes)
        for m in range(outcomes.shape[1]):
            rows = scored[:, m]
            model = LogisticRegression(C=1.0, max_iter=3000).fit(features[rows], outcomes[rows, m])
            probability[:, m] = model.predict_proba(test.encoded)[:, 1]
    return preference_front(probability, train, test)


def kind_prior_front(train: Sequence[RoutingDataset], test: TestSet, encoder: TextEncoder) -> list[FrontPoint]:
    from training.cluster_prior import Group, fit_cluster_prior

    prior = fit_cluster_prior([Group(d.task, encoder.encode(d.questions), d.outcome(), d.scored) for d in train])
    return preference_front(prior.expected(test.encoded), train, test)


def quality_head_front(train: Sequence[RoutingDataset], test: TestSet, cache_dir: Path | None,
                       seed: int = 0) -> list[FrontPoint]:
    """LORPMAN's network trained on quality alone (the preference fixed at (1, 0)), its values as the quality."""
    from training.pareto import ParetoTrainingConfig, train_pareto_router

    config = ParetoTrainingConfig(encoder=test.encoder_spec, fixed_preference=(1.0, 0.0), seed=seed)
    router = train_pareto_router(train, config, cache_dir=cache_dir, progress=False).router
    quality = router.head_scores(test.encoded, np.array([0.0]))[0]
    return preference_front(quality, train, test)


def routellm_front(train: Sequence[RoutingDataset], test: TestSet, encoder: TextEncoder,
                   strong: str = STRONG, weak: str = WEAK) -> list[FrontPoint]:
    """Strong model where P(strong needed) >= threshold, weak model elsewhere."""
    from sklearn.linear_model import LogisticRegression

    names = test.llm_names
    if strong not in names or weak not in names:
        return []
    s, w = names.index(strong), names.index(weak)
    features, outcomes, scored = _training_arrays(train, encoder)
    rows = scored[:, s] & scored[:, w]
    needed = (outcomes[rows, s] > outcomes[rows, w]).astype(int)
    model = LogisticRegression(C=1.0, max_iter=3000).fit(features[rows], needed)
    probability = model.predict_proba(test.encoded)[:, 1]
    return [summarise(np.where(probability >= c, s, w), test.outcomes, test.costs, c) for c in GRID]


def scalarised_front(train: Sequence[RoutingDataset], test: TestSet, cache_dir: Path | None,
                     cost_weights: Sequence[float] = GRID, seed: int = 0) -> tuple[list[FrontPoint], float]:
    """One router trained per preference; returns the points and the total training time (s)."""
    from training.pareto import ParetoTrainingConfig, train_pareto_router

    points, started = [], time.monotonic()
    for weight in cost_weights:
        config = ParetoTrainingConfig(encoder=test.encoder_spec, fixed_preference=(1 - weight, weight), seed=seed)
        router = train_pareto_router(train, config, cache_dir=cache_dir, progress=False).router
        points += route_front(router, test.encoded, test.outcomes, test.costs, [weight])
    return points, time.monotonic() - started


QUICK_BASELINES: dict[str, Callable[..., list[FrontPoint]]] = {
    "static-price re-rank": lambda train, test, encoder, cache_dir: static_price_front(train, test, cache_dir),
    "kNN p(correct) + price": lambda train, test, encoder, cache_dir: correctness_front("knn", train, test,
                                                                                          encoder),
    "logistic p(correct) + price": lambda train, test, encoder, cache_dir: correctness_front("logistic", train,
                                                                                               test, encoder),
    "kind prior: accuracy per task + price": lambda train, test, encoder, cache_dir: kind_prior_front(
        train, test, encoder),
    "RouteLLM threshold (GPT-4 vs Mixtral)": lambda train, test, encoder, cache_dir: routellm_front(train, test,
                                                                                                    encoder),
}
