"""LORPMAN trainer: one preference-conditioned router for the whole quality–cost front (``routers.pareto``).

Each step samples a preference α ~ Dirichlet(p) per query and minimises Σ_i α_i L_i(W(α)), where the head's
output v(x, α) is one value per LLM and
- quality L_q = mean over the LLMs scored on that query of (v − correct)² (a Brier score: an unscored cell is
  left out, never counted as wrong);
- cost L_c = mean over the LLMs of (v + price in cost units)²;
so the minimiser is v = α_q·E[correct | x] − α_c·price: the head learns each LLM's expected scalarised value at
every preference (linear in α, the structure W(α) has), and a request goes to the argmax;
- the paper's orthogonality penalty on the low-rank updates of every layer, Σ_{i≠j} cos²(B_iA_i, B_jA_j);
- optionally its ordering ("multi-forward") penalty: for two preferences of one query, the one that weighs
  quality more must not have the larger quality loss (likewise cost);
- the main weights frozen for the last ``freeze_fraction`` of the steps (only the low-rank pairs train).
The step kept is the one with the best validation hypervolume of the front (``training.front``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from routers.baselines import best_single_llm
from routers.data import RoutingDataset
from routers.encoders import DEFAULT_ENCODER, build_encoder, with_cache
from routers.pareto import GRID, OBJECTIVES, ParetoHead, ParetoRouter
from training.cluster_prior import Group, familiarity_threshold, fit_cluster_prior
from training.front import FRONT_PREFERENCES, hypervolume, route_front
from training.loop import fit


class MissingCostsError(ValueError):
    """``--objective pareto`` on data without prices."""


@dataclass
class ParetoTrainingConfig:
    # --- the network
    encoder: str = field(default=DEFAULT_ENCODER, metadata={"help": "encoder spec (routers.encoders)"})
    hidden_dim: int = field(default=256, metadata={"help": "width of the head's hidden layer"})
    rank: int = field(default=16, metadata={"help": "rank r of each objective's low-rank pair"})
    scale: float = field(default=1.0, metadata={"help": "s in W0 + s Σ α_i B_i A_i (paper: stable in [0.1, 1])"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the head's input"})
    # --- the objectives and penalties
    dirichlet: tuple[float, float] = field(default=(1.0, 1.0), metadata={"help": "p of α ~ Dirichlet(p)"})
    orthogonality: float = field(default=1.0, metadata={"help": "weight of the orthogonality penalty"})
    ordering: float = field(default=0.0, metadata={"help": "weight of the ordering penalty (0 = off)"})
    freeze_fraction: float = field(default=0.2, metadata={"help": "last share of steps with the main net frozen"})
    mix_k: int = field(default=0, metadata={"help": "multi-mix interpolations per pair of queries (0 = off)"})
    mix_alpha: float = field(default=0.4, metadata={"help": "multi-mix: α of Beta(α, α)"})
    # --- optimisation
    steps: int = field(default=3000, metadata={"help": "optimiser steps"})
    batch_size: int = field(default=64, metadata={"help": "queries per step"})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    val_fraction: float = field(default=0.15, metadata={"help": "share of each training file held out"})
    eval_every: int = field(default=100, metadata={"help": "validate every N steps"})
    seed: int = field(default=0, metadata={"help": "seeds splits, sampling and initialisation"})
    default_preference: tuple[float, float] = field(default=(1.0, 0.0), metadata={
        "help": "the preference a request without one gets (router.preference in the config overrides it)"})
    fixed_preference: tuple[float, float] | None = field(default=None, metadata={
        "help": "train for this one preference only (the scalarised baseline LORPMAN replaces)"})

    def __post_init__(self) -> None:
        self.dirichlet = tuple(self.dirichlet)  # type: ignore[assignment]
        if len(self.dirichlet) != len(OBJECTIVES) or min(self.dirichlet) <= 0:
            raise ValueError(f"dirichlet needs {len(OBJECTIVES)} positive concentrations")
        if not 0 <= self.freeze_fraction < 1:
            raise ValueError("freeze_fraction must be in [0, 1)")
        for name in ("steps", "batch_size", "rank", "hidden_dim", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("default_preference", "fixed_preference"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, tuple(value))
                if len(value) != len(OBJECTIVES) or abs(sum(value) - 1) > 1e-6 or min(value) < 0:
                    raise ValueError(f"{name} must be {len(OBJECTIVES)} weights >= 0 that sum to 1")


@dataclass
class ParetoTrainingResult:
    router: ParetoRouter
    best_step: int
    validation_hypervolume: float
    history: list[dict[str, float]]
    seconds: float


def check_costs(datasets: Sequence[RoutingDataset]) -> None:
    without = [d.path for d in datasets if d.costs is None]
    if without:
        raise MissingCostsError("--objective pareto needs what each LLM charged per question (RouterBench's "
                                f"<llm>|total_cost columns); these files have no prices: {', '.join(without)}")


@dataclass
class _Split:
    encoded: np.ndarray  # [n, dim]
    outcomes: np.ndarray  # [n, L], 0 where unscored
    scored: np.ndarray  # [n, L] bool
    costs: np.ndarray  # [n, L] US dollars, unknown cells filled with the LLM's mean
    task_sizes: list[int]


def train_pareto_router(datasets: Sequence[RoutingDataset], config: ParetoTrainingConfig, *,
                        cache_dir: Path | None = None, progress: bool = True) -> ParetoTrainingResult:
    check_costs(datasets)
    started = time.monotonic()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    llm_names = datasets[0].llm_names
    base_encoder = build_encoder(config.encoder)
    encoder = with_cache(base_encoder, cache_dir / "embeddings") if cache_dir else base_encoder
    train, val = _split(datasets, encoder, config.val_fraction, rng)
    mean_cost = np.nanmean(np.concatenate([d.costs for d in datasets if d.costs is not None]), axis=0)
    reference = float(mean_cost.max())  # the most expensive LLM's mean price per question
    cost_scale = cost_unit(datasets, mean_cost)

    head = ParetoHead(base_encoder.dim, len(llm_names), hidden_dim=config.hidden_dim, rank=config.rank,
                      scale=config.scale, dropout=config.dropout)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    dirichlet = torch.distributions.Dirichlet(torch.tensor(config.dirichlet, dtype=torch.float32))
    beta = torch.distributions.Beta(config.mix_alpha, config.mix_alpha)
    x = torch.from_numpy(train.encoded)
    y = torch.from_numpy(train.outcomes.astype(np.float32))
    cost = torch.from_numpy((train.costs * cost_scale).astype(np.float32))
    allowed = torch.from_numpy(train.scored)
    freeze_at = int(round(config.steps * (1 - config.freeze_fraction)))
    weights = _balanced_weights(train.task_sizes)
    fixed = None if config.fixed_preference is None else torch.tensor(config.fixed_preference, dtype=torch.float32)
    sweep = FRONT_PREFERENCES if fixed is None else (float(config.fixed_preference[1]),)  # type: ignore[index]

    head.train()

    def step(index: int) -> float:
        if index == freeze_at + 1:
            for layer in head.layers():
                layer.main.requires_grad_(False)
        rows = torch.from_numpy(rng.choice(len(x), size=config.batch_size, p=weights))
        batch = (x[rows], y[rows], cost[rows], allowed[rows])
        if config.mix_k:
            batch = _multi_mix(batch, config.mix_k, beta, generator)
        alpha = dirichlet.sample((len(batch[0]),)) if fixed is None else fixed.expand(len(batch[0]), -1)
        quality_loss, cost_loss = _objective_losses(head, *batch, alpha)
        loss = (alpha[:, 0] * quality_loss + alpha[:, 1] * cost_loss).mean()
        if config.orthogonality:
            loss = loss + config.orthogonality * orthogonality_penalty(head)
        if config.ordering and fixed is None:
            loss = loss + config.ordering * _ordering_penalty(head, batch, dirichlet)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.item())

    def validate() -> tuple[float, float]:
        router = _router(base_encoder, head, llm_names, mean_cost, config)
        volume = hypervolume(route_front(router, val.encoded, val.outcomes, val.costs, sweep),
                             reference_cost=reference * len(val.encoded))
        head.train()
        return volume, volume

    def restore(state: dict[str, Any]) -> None:
        head.load_state_dict(state)
        head.eval()

    fitted = fit(config.steps, config.eval_every, step=step, validate=validate,
                 snapshot=lambda: copy.deepcopy(head.state_dict()), restore=restore, score_name="val_hypervolume",
                 description="router pareto", progress=progress)
    best, best_step, history = fitted.best_score, fitted.best_step, fitted.history
    groups = [Group(d.task, encoder.encode(d.questions), d.outcome(), d.scored) for d in datasets]
    quality = fit_cluster_prior(groups, seed=config.seed)
    router = _router(base_encoder, head, llm_names, mean_cost, config, quality)
    router.single_best = single_best_per_preference(groups, mean_cost * cost_scale)
    router.min_familiarity = familiarity_threshold(quality, [val.encoded], len(groups))
    seconds = time.monotonic() - started
    router.metadata.update(best_single=best_single_llm(datasets), training=asdict(config),
                           validation={"hypervolume": best, "step": best_step}, training_seconds=round(seconds, 1),
                           train_files=[d.path for d in datasets], cost_reference_usd=reference,
                           cost_scale_per_usd=cost_scale)
    return ParetoTrainingResult(router, best_step, best, history, seconds)


def single_best_per_preference(groups: Sequence[Group], cost: np.ndarray) -> np.ndarray:
    """[len(GRID)] for each grid preference (1 − c, c), the LLM with the best (1 − c)·accuracy − c·cost over the
    training tasks (each task weighing the same); its price never rises as c grows."""
    accuracy = np.mean([g.mean_outcome() for g in groups], axis=0)
    return np.array([int(np.argmax((1 - c) * accuracy - c * cost)) for c in GRID])


def cost_unit(datasets: Sequence[RoutingDataset], mean_cost: np.ndarray) -> float:
    """What one US dollar per question weighs against accuracy in the cost loss, chosen so that the single
    LLMs' trade-off spans the preferences: the accuracy gap between the best LLM and the cheapest one equals
    their price gap. Preferences then mean the same on any price list (cost 0.5 ~ the knee of the single-LLM
    front) instead of crowding every useful trade-off near cost = 0 when prices differ 100x."""
    accuracy = np.mean([(d.outcome() * d.scored).sum(axis=0) / d.scored.sum(axis=0).clip(1) for d in datasets],
                       axis=0)
    best, cheapest = int(np.argmax(accuracy)), int(np.argmin(mean_cost))
    gap_accuracy = max(float(accuracy[best] - accuracy[cheapest]), 0.01)
    gap_price = max(float(mean_cost[best] - mean_cost[cheapest]), float(mean_cost.max()) * 0.01)
    return gap_accuracy / gap_price


def _router(encoder, head: ParetoHead, llm_names, mean_cost, config, quality=None) -> ParetoRouter:  # type: ignore[no-untyped-def]
    head.eval()
    return ParetoRouter(encoder, head, llm_names, cost_per_query=mean_cost, quality=quality,
                        default_preference=config.default_preference, metadata={"router": "pareto"})


def _split(datasets: Sequence[RoutingDataset], encoder, fraction: float,  # type: ignore[no-untyped-def]
           rng: np.random.Generator) -> tuple[_Split, _Split]:
    parts: dict[str, list[Any]] = {"train": [], "val": []}
    for dataset in datasets:
        encoded = encoder.encode(dataset.questions)
        order = rng.permutation(len(dataset))
        held = max(1, int(round(fraction * len(dataset))))
        assert dataset.costs is not None
        costs = np.where(np.isnan(dataset.costs), np.nanmean(dataset.costs, axis=0), dataset.costs)
        # A question no LLM was scored on teaches nothing about quality (RouterBench has a few).
        order = order[dataset.scored[order].any(axis=1)]
        held = min(held, len(order) - 1)
        for name, rows in (("val", order[:held]), ("train", order[held:])):
            parts[name].append((encoded[rows], dataset.outcome()[rows], dataset.scored[rows], costs[rows]))

    def join(items: list[Any]) -> _Split:
        return _Split(*(np.concatenate([item[i] for item in items]) for i in range(4)),  # type: ignore[arg-type]
                      task_sizes=[len(item[0]) for item in items])

    return join(parts["train"]), join(parts["val"])


def _balanced_weights(sizes: Sequence[int]) -> np.ndarray:
    """Sampling weights per row so that every task weighs the same."""
    weights = np.concatenate([np.full(size, 1.0 / size) for size in sizes])
    return weights / weights.sum()  # type: ignore[no-any-return]


def _objective_losses(head: ParetoHead, x: torch.Tensor, y: torch.Tensor, cost: torch.Tensor,
                      allowed: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query: the quality loss, mean squared error of the head's values against correctness over the LLMs
    scored on it, and the cost loss, mean squared error against minus the price (cost units).

    Regression, not a policy: a squared error's minimiser is the conditional mean, so the values estimate
    expected accuracy from outcomes that are mostly noise within a kind of question. Measured on RouterBench
    (seed 0), a softmax policy trained on −log P(correct) fitted that noise (the validation hypervolume kept
    the step with 0.799 on the test files, against 0.830 for these values) and −E_π[correct] collapsed every
    preference onto one LLM."""
    values = head(x, alpha)
    scored = allowed.float()
    quality = ((values - y) ** 2 * scored).sum(dim=-1) / scored.sum(dim=-1).clamp(min=1)
    return quality, ((values + cost) ** 2).mean(dim=-1)


def orthogonality_penalty(head: ParetoHead) -> torch.Tensor:
    """Σ over layers and pairs i≠j of the squared cosine between the objectives' low-rank updates B_iA_i."""
    penalty = torch.zeros(())
    for layer in head.layers():
        updates = torch.nn.functional.normalize(layer.low_rank_updates(), dim=-1, eps=1e-8)
        gram = updates @ updates.T
        penalty = penalty + (gram - torch.diag(torch.diag(gram))).pow(2).sum()
    return penalty


def _ordering_penalty(head: ParetoHead, batch: tuple[torch.Tensor, ...], dirichlet: torch.distributions.Dirichlet
                      ) -> torch.Tensor:
    """Multi-forward regularisation: two preferences per query; for each objective, the preference that weighs
    it more must not have the larger loss on it (hinge on the violation)."""
    x, y, cost, allowed = batch
    first, second = dirichlet.sample((len(x),)), dirichlet.sample((len(x),))
    losses_first = torch.stack(_objective_losses(head, x, y, cost, allowed, first), dim=-1)
    losses_second = torch.stack(_objective_losses(head, x, y, cost, allowed, second), dim=-1)
    more = (first > second).float()  # [batch, objectives]: first weighs this objective more
    violation = more * (losses_first - losses_second) + (1 - more) * (losses_second - losses_first)
    return torch.relu(violation).mean()


def _multi_mix(batch: tuple[torch.Tensor, ...], k: int, beta: torch.distributions.Beta,
               generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Multi-mix: K interpolations of each query with a partner, of the vectors, correctness and prices; an LLM
    is allowed only where both were scored."""
    x, y, cost, allowed = batch
    partner = torch.randperm(len(x), generator=generator)
    lam = beta.sample((k, len(x), 1))
    mix = [(lam * t + (1 - lam) * t[partner]).reshape(k * len(x), -1) for t in (x, y, cost)]
    both = allowed & allowed[partner]
    both = torch.where(both.any(dim=-1, keepdim=True), both, allowed).repeat(k, 1)
    return (torch.cat([x, mix[0]]), torch.cat([y, mix[1]]), torch.cat([cost, mix[2]]), torch.cat([allowed, both]))
