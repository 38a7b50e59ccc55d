"""Routers by name, each built from training data: ``build_router("knn", train_sets, RouterOptions())``.

Here, not in ``routers``, because building most of them trains something; a checkpoint loads without it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from routers.base import Router
from routers.baselines import (
    FixedRouter,
    KNNRouter,
    RandomRouter,
    TaskBestRouter,
    TaskClassifierRouter,
    best_single_llm,
)
from routers.data import RoutingDataset
from routers.encoders import DEFAULT_ENCODER, TextEncoder, build_encoder, with_cache
from training.routerdc import RouterTrainingConfig, train_router


@dataclass(kw_only=True)
class RouterOptions:
    seed: int = 0
    model: str | None = None  # fixed: the LLM to always pick
    k: int = 10  # knn: neighbours
    encoder: str = DEFAULT_ENCODER
    steps: int | None = None  # trained routers: optimiser steps
    cache_dir: Path | None = None  # embeddings cache

    def make_encoder(self) -> TextEncoder:
        encoder = build_encoder(self.encoder)
        return with_cache(encoder, self.cache_dir / "embeddings") if self.cache_dir else encoder


RouterBuilder = Callable[[Sequence[RoutingDataset], RouterOptions], Router]


def _random(train: Sequence[RoutingDataset], options: RouterOptions) -> Router:
    return RandomRouter(train[0].llm_names, options.seed)


def _fixed(train: Sequence[RoutingDataset], options: RouterOptions) -> Router:
    if not options.model:
        raise ValueError("the 'fixed' router needs the model to pick (--model NAME)")
    return FixedRouter(train[0].llm_names, options.model)


def _best_single(train: Sequence[RoutingDataset], options: RouterOptions) -> Router:
    return FixedRouter(train[0].llm_names, best_single_llm(train))


def _knn(train: Sequence[RoutingDataset], options: RouterOptions) -> Router:
    import numpy as np

    encoder = options.make_encoder()
    embeddings = np.concatenate([encoder.encode(d.questions) for d in train])
    outcomes = np.concatenate([d.outcome() for d in train])
    return KNNRouter(encoder, embeddings, outcomes, train[0].llm_names, k=options.k)


def _task_best(train: Sequence[RoutingDataset], options: RouterOptions) -> Router:
    return TaskBestRouter(train)


def _task_classifier(train: Sequence[RoutingDataset], options: RouterOptions) -> Router:
    return TaskClassifierRouter(options.make_encoder(), train, seed=options.seed)


def _trained(**overrides: object) -> RouterBuilder:
    def build(train: Sequence[RoutingDataset], options: RouterOptions) -> Router:

        fields = {"encoder": options.encoder, "seed": options.seed, **overrides}
        if options.steps:
            fields["steps"] = options.steps
        if fields.get("last_k") == "all-others":
            fields["last_k"] = len(train[0].llm_names) - 1
        return train_router(train, RouterTrainingConfig(**fields), cache_dir=options.cache_dir).router  # type: ignore[arg-type]

    return build


ROUTERS: dict[str, RouterBuilder] = {
    "random": _random,
    "fixed": _fixed,
    "best-single": _best_single,
    "knn": _knn,
    # Routing by task alone: the task known (an oracle on task identity), or predicted from the query.
    "task-best": _task_best,
    "task-classifier": _task_classifier,
    # The paper's CosineClassifier baseline: RouterDC with top-k = 1, last-k = all others, no sample-sample loss.
    "cosine-classifier": _trained(top_k=1, last_k="all-others", lam=0.0, cluster_prior=False),
    # The paper's router alone (heads only), and ours (cluster prior, heads' weight chosen on validation,
    # calibrated fallback).
    "routerdc-paper": _trained(cluster_prior=False),
    "routerdc": _trained(),
}


def build_router(name: str, train: Sequence[RoutingDataset], options: RouterOptions | None = None) -> Router:
    if name not in ROUTERS:
        raise ValueError(f"unknown router '{name}'; known routers: {', '.join(ROUTERS)}")
    return ROUTERS[name](train, options or RouterOptions())
