"""Baselines for the quality–cost front, each with its own knob swept on the same test questions:

- ``static-price``: today's router (quality only: ``training.routerdc`` with its cluster prior) re-ranked by
  ``score − w · normalised price`` (the ``cost_weight`` knob);
- ``knn`` / ``logistic``: per-LLM probability of being correct (k nearest training questions / one logistic
  regression per LLM) and the choice ``argmax p − λ · normalised price``;
- ``kind prior``: no per-query model at all: each LLM's accuracy on the kind of question (the cluster prior the
  checkpoints carry: a gate over the training tasks) and the choice ``argmax accuracy − λ · normalised price``;
- ``routellm``: RouteLLM's two-model threshold router: a classifier of "the strong model is needed" (GPT-4
  right where Mixtral is wrong), strong model above the threshold;
- ``scalarised``: one LORPMAN-shaped router trained per preference (what one LORPMAN checkpoint replaces).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from routers.data import RoutingDataset
from routers.encoders import TextEncoder
from training.front import FrontPoint, knob_front, route_front, summarise

LAMBDAS = (0.0, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.07, 0.1, 0.13, 0.16, 0.2, 0.25, 0.3, 0.4, 0.5,
           0.7, 1.0, 2.0)
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(21))
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


def normalised_prices(train: Sequence[RoutingDataset]) -> np.ndarray:
    """Mean price per question of each LLM over the training data, the most expensive = 1."""
    mean = np.nanmean(np.concatenate([d.costs for d in train if d.costs is not None]), axis=0)
    return mean / mean.max()  # type: ignore[no-any-return]


def _training_arrays(train: Sequence[RoutingDataset], encoder: TextEncoder
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.concatenate([encoder.encode(d.questions) for d in train]),
            np.concatenate([d.outcome() for d in train]), np.concatenate([d.scored for d in train]))


def static_price_front(train: Sequence[RoutingDataset], test: TestSet, cache_dir: Path | None) -> list[FrontPoint]:
    from training.routerdc import RouterTrainingConfig, train_router

    router = train_router([d.fully_scored() for d in train], RouterTrainingConfig(encoder=test.encoder_spec),
                          cache_dir=cache_dir, progress=False).router
    scores = router.score_encoded(test.encoded)
    prices = normalised_prices(train)
    return knob_front(lambda w: scores - w * prices, test.outcomes, test.costs, LAMBDAS)


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
    prices = normalised_prices(train)
    return knob_front(lambda lam: probability - lam * prices, test.outcomes, test.costs, LAMBDAS)


def kind_prior_front(train: Sequence[RoutingDataset], test: TestSet, encoder: TextEncoder) -> list[FrontPoint]:
    from training.cluster_prior import Group, fit_cluster_prior

    prior = fit_cluster_prior([Group(d.task, encoder.encode(d.questions), d.outcome(), d.scored) for d in train])
    accuracy = prior.expected(test.encoded)
    prices = normalised_prices(train)
    return knob_front(lambda lam: accuracy - lam * prices, test.outcomes, test.costs, LAMBDAS)


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
    return [summarise(np.where(probability >= t, s, w), test.outcomes, test.costs, t) for t in THRESHOLDS]


def scalarised_front(train: Sequence[RoutingDataset], test: TestSet, cache_dir: Path | None,
                     cost_weights: Sequence[float], seed: int = 0) -> tuple[list[FrontPoint], float]:
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
    "kNN p(correct) − λ·price": lambda train, test, encoder, cache_dir: correctness_front("knn", train, test,
                                                                                          encoder),
    "logistic p(correct) − λ·price": lambda train, test, encoder, cache_dir: correctness_front("logistic", train,
                                                                                               test, encoder),
    "kind prior: accuracy per task − λ·price": lambda train, test, encoder, cache_dir: kind_prior_front(
        train, test, encoder),
    "RouteLLM threshold (GPT-4 vs Mixtral)": lambda train, test, encoder, cache_dir: routellm_front(train, test,
                                                                                                    encoder),
}
