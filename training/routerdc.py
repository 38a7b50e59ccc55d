"""RouterDC trainer: sample-LLM + λ·sample-sample contrastive losses, checkpoint chosen on a validation split.

Two modes:
- ``frozen``: the encoder is frozen and its embeddings are computed once (and cached on disk); a residual
  MLP head and the LLM embeddings train in seconds on a CPU.
- ``finetune``: the encoder trains too, as in the paper (a GPU job: ~15 s per 64-query step on 2 CPU cores).

Around the paper's heads: multi-mix (K interpolations of each pair of training queries, Shen et al. 2024),
a mixture of cluster-conditional experts (MoCE), seed ensembles, and the cluster prior with a prior
fallback calibrated on held-out training tasks (``training.cluster_prior``).

The paper's code keeps the checkpoint with the best accuracy on its training files
(``best_training_model.pth``); here the best step is chosen on a validation split carved from the training
files, by the task-averaged accuracy, and the test files are never read.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from routers.baselines import best_single_llm
from routers.checkpoint import save_router
from routers.data import RoutingDataset
from routers.encoders import DEFAULT_ENCODER, SentenceTransformerEncoder, TextEncoder, build_encoder, with_cache
from routers.routerdc import Decision, RouterDCModel, RouterDCRouter, decide_scores, fit_cluster_gate
from training.cluster_prior import (
    REFINE_GRID,
    REFINE_MARGIN,
    Group,
    calibrate_min_gain,
    familiarity_threshold,
    fit_cluster_prior,
    kmeans_groups,
    task_averaged_prior,
)
from training.loop import fit
from training.routerdc_losses import sample_llm_loss, sample_sample_loss

logger = logging.getLogger(__name__)


@dataclass
class RouterTrainingConfig:
    # --- what is trained
    mode: Literal["frozen", "finetune"] = field(default="frozen", metadata={"help": "frozen or finetune encoder"})
    encoder: str | None = field(default=None, metadata={
        "help": "encoder spec (routers.encoders); default static:minilm frozen, minilm finetune"})
    hidden_dim: int | None = field(default=None, metadata={
        "help": "width of the residual MLP head; 0 = none (the paper); default 1024 frozen, 0 finetune"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the head's input"})
    # --- the losses (paper defaults)
    top_k: int = field(default=3, metadata={"help": "positives per query: its top-k LLMs"})
    last_k: int = field(default=3, metadata={"help": "negatives per query: its last-k LLMs"})
    negatives_per_sample: int = field(default=3, metadata={"help": "H: out-of-cluster queries per query"})
    temperature: float = field(default=1.0, metadata={"help": "t in cos(E(q), k_m) / t"})
    lam: float = field(default=1.0, metadata={"help": "weight λ of the sample-sample loss (0 = off)"})
    negative_mask_above: float = field(default=0.5, metadata={"help": "negatives scoring above are masked"})
    train_on: Literal["outcome", "scores"] = field(default="outcome", metadata={
        "help": "outcome: what the task's scoring rule pays (probability tasks: 1 if correct), ties broken at "
                "random; scores: the raw per-LLM scores (the paper's code)"})
    n_clusters: int = field(default=5, metadata={"help": "k-means clusters when the files carry no cluster_id"})
    # --- around the heads
    mix_k: int = field(default=0, metadata={
        "help": "multi-mix: K interpolations λ~Beta(α,α) of each pair of queries (and of their outcomes) per "
                "step, loss averaged over the K (0 = off; the paper's best K is about 5)"})
    mix_alpha: float = field(default=0.4, metadata={"help": "multi-mix: α of Beta(α, α)"})
    experts: int = field(default=1, metadata={
        "help": "MoCE: expert heads; a query goes to the expert of its nearest training cluster (clusters grouped "
                "by their outcome profiles), so each expert trains on its clusters only (1 = one head)"})
    ensemble: int = field(default=1, metadata={"help": "heads trained with seeds seed..seed+N-1, logits averaged"})
    cluster_prior: bool = field(default=True, metadata={
        "help": "route by the cluster prior (tasks' outcome profiles mixed by a linear gate), the heads' logits "
                "added with a weight chosen on validation (0 when they do not help)"})
    fallback: Literal["calibrated", "off"] = field(default="calibrated", metadata={
        "help": "calibrated: rank the best single LLM first unless the top choice's expected gain clears a "
                "threshold chosen on held-out training tasks; off: never"})
    # --- optimisation
    steps: int = field(default=1000, metadata={"help": "optimiser steps"})
    batch_size: int = field(default=64, metadata={"help": "queries per step"})
    learning_rate: float | None = field(default=None, metadata={"help": "default 5e-5 finetune, 1e-3 frozen"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    samples_per_task: int = field(default=1000, metadata={
        "help": "each task's training set is repeated or cut to this size, so tasks weigh equally (paper)"})
    # --- selection and reproducibility
    val_fraction: float = field(default=0.1, metadata={"help": "share of each training file held out"})
    eval_every: int = field(default=20, metadata={"help": "validate every N steps"})
    seed: int = field(default=0, metadata={"help": "seeds splits, sampling and initialisation"})

    def __post_init__(self) -> None:
        if self.mode not in ("frozen", "finetune"):
            raise ValueError(f"mode must be 'frozen' or 'finetune', not {self.mode!r}")
        if self.encoder is None:
            self.encoder = DEFAULT_ENCODER if self.mode == "frozen" else "minilm"
        if self.hidden_dim is None:
            self.hidden_dim = 1024 if self.mode == "frozen" else 0
        if self.learning_rate is None:
            self.learning_rate = 1e-3 if self.mode == "frozen" else 5e-5
        if self.mode == "finetune" and (self.encoder.startswith(("static", "onnx")) or "+" in self.encoder
                                        or self.encoder == "e5-small"):
            raise ValueError(f"encoder '{self.encoder}' cannot be fine-tuned; use a sentence-transformers model "
                             "such as minilm")
        if self.mode == "finetune" and self.ensemble > 1:
            raise ValueError("an ensemble of heads needs mode 'frozen' (each member would fine-tune the encoder)")
        for name in ("steps", "batch_size", "top_k", "last_k", "samples_per_task", "eval_every", "experts",
                     "ensemble"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.experts > 1 and not self.hidden_dim:
            raise ValueError("experts > 1 needs a head (hidden_dim > 0)")
        if self.mix_k < 0 or self.mix_alpha <= 0:
            raise ValueError("mix_k must be >= 0 and mix_alpha > 0")
        if self.train_on not in ("outcome", "scores"):
            raise ValueError(f"train_on must be 'outcome' or 'scores', not {self.train_on!r}")
        if self.fallback not in ("calibrated", "off"):
            raise ValueError(f"fallback must be 'calibrated' or 'off', not {self.fallback!r}")
        if not 0 < self.val_fraction < 0.5:
            raise ValueError("val_fraction must be in (0, 0.5)")


@dataclass
class TrainingResult:
    router: RouterDCRouter
    best_step: int  # the first head's
    validation: dict[str, Any]  # of the whole router (heads, prior and decision together)
    history: list[dict[str, float]]  # the first head's
    seconds: float
    calibration: dict[str, Any] = field(default_factory=dict)


def split_validation(sizes: Sequence[int], fraction: float, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per file, (train rows, validation rows): a seeded random ``fraction`` (at least one row) held out."""
    rng = np.random.default_rng(seed)
    splits = []
    for size in sizes:
        order = rng.permutation(size)
        held = max(1, int(round(fraction * size))) if size > 1 else 0
        splits.append((np.sort(order[held:]), np.sort(order[:held])))
    return splits


def balanced_indices(sizes: Sequence[int], per_task: int, rng: np.random.Generator) -> np.ndarray:
    """Global row indices with every task repeated or cut to ``per_task`` rows (the paper's balancing)."""
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    chosen = []
    for offset, size in zip(offsets, sizes, strict=True):
        repeats = np.concatenate([rng.permutation(size) for _ in range(-(-per_task // size))])[:per_task]
        chosen.append(offset + repeats)
    return np.concatenate(chosen)


def cluster_labels(train: Sequence[RoutingDataset], encoded: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """The files' cluster_id when every file has them, else k-means over the training queries' embeddings."""
    if all(d.cluster_ids is not None for d in train):
        return np.concatenate([d.cluster_ids for d in train if d.cluster_ids is not None])
    from sklearn.cluster import KMeans

    n_clusters = min(n_clusters, len(encoded))
    return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(encoded)


class _Validator:
    """Task-averaged validation accuracy of a model under each task's scoring rule."""

    def __init__(self, val: Sequence[RoutingDataset]) -> None:
        self.tasks = [d.task for d in val]
        self.outcomes = [d.outcome() for d in val]

    def __call__(self, logits_per_task: Sequence[np.ndarray]) -> dict[str, Any]:
        per_task = {task: 100 * float(outcome[np.arange(len(outcome)), logits.argmax(axis=1)].mean())
                    for task, outcome, logits in zip(self.tasks, self.outcomes, logits_per_task, strict=True)}
        return {"average": float(np.mean(list(per_task.values()))), "tasks": per_task}


def train_router(datasets: Sequence[RoutingDataset], config: RouterTrainingConfig, *,
                 cache_dir: Path | None = None, progress: bool = True) -> TrainingResult:
    """Train on ``datasets`` (one per task) and return the router at its best validation step.
    ``cache_dir`` holds the embeddings cache (``cache_dir/embeddings``)."""
    started = time.monotonic()
    llm_names = datasets[0].llm_names
    splits = split_validation([len(d) for d in datasets], config.val_fraction, config.seed)
    train = [d.subset(rows) for d, (rows, _) in zip(datasets, splits, strict=True)]
    val = [d.subset(rows) for d, (_, rows) in zip(datasets, splits, strict=True) if len(rows)]
    validator = _Validator(val)

    assert config.encoder is not None  # resolved by __post_init__
    base_encoder = build_encoder(config.encoder)
    encoder = with_cache(base_encoder, cache_dir / "embeddings") if cache_dir else base_encoder
    # Whole files are encoded (and cached) once; the splits index into them.
    encoded = [encoder.encode(d.questions) for d in datasets]
    data = _TrainingData(train, val, encoded, splits, config)

    heads, first = [], None
    for member in range(config.ensemble):
        trained = _train_head(data, base_encoder, validator, config, config.seed + member, progress)
        heads.append(trained.model)
        first = first or trained
    assert first is not None
    best_single = best_single_llm(train)
    metadata = {"router": "routerdc", "best_single": best_single, "training": asdict(config),
                "train_files": [d.path for d in datasets]}
    router = RouterDCRouter(base_encoder, heads, llm_names, metadata)
    # Fine-tuning moved the encoder: what follows reads what the trained encoder gives.
    frozen = config.mode == "frozen"
    final_train = data.train_encoded_by_task if frozen else [base_encoder.encode(d.questions) for d in train]
    final_val = data.val_encoded if frozen else [base_encoder.encode(d.questions) for d in val]
    calibration: dict[str, Any] = {}
    if config.cluster_prior:
        calibration = _add_cluster_prior(router, train, final_train, final_val, validator, config)
    validation = validator([router.score_encoded(x) for x in final_val])
    seconds = time.monotonic() - started
    router.metadata.update(validation={**validation, "step": first.best_step}, training_seconds=round(seconds, 1),
                           calibration=calibration)
    return TrainingResult(router, first.best_step, validation, first.history, seconds, calibration)


class _TrainingData:
    """The split training data, encoded once, and what the losses need of it."""

    def __init__(self, train: Sequence[RoutingDataset], val: Sequence[RoutingDataset], encoded: list[np.ndarray],
                 splits: list[tuple[np.ndarray, np.ndarray]], config: RouterTrainingConfig) -> None:
        self.train, self.val = train, val
        self.questions = [q for d in train for q in d.questions]
        targets = [d.outcome() if config.train_on == "outcome" else d.scores for d in train]
        self.scores = torch.tensor(np.concatenate(targets), dtype=torch.float32)
        self.train_encoded_by_task = [x[rows] for x, (rows, _) in zip(encoded, splits, strict=True)]
        train_encoded = np.concatenate(self.train_encoded_by_task)
        self.train_x = torch.from_numpy(train_encoded)
        self.clusters = torch.tensor(cluster_labels(train, train_encoded, config.n_clusters, config.seed))
        self.val_encoded = [x[rows] for x, (_, rows) in zip(encoded, splits, strict=True) if len(rows)]
        self.sizes = [len(d) for d in train]

    def cluster_profiles(self) -> np.ndarray:
        """[C, L]: the mean outcome of every LLM on each cluster of ``clusters`` (what the MoCE gate groups by)."""
        labels = self.clusters.numpy()
        scores = self.scores.numpy()
        return np.stack([scores[labels == c].mean(axis=0) for c in np.unique(labels)])

    def centroids(self) -> np.ndarray:
        """Unit-norm mean vector of every cluster of ``clusters`` (the MoCE gate's inputs)."""
        x = self.train_x.numpy()
        labels = self.clusters.numpy()
        means = np.stack([x[labels == c].mean(axis=0) for c in np.unique(labels)])
        return means / np.linalg.norm(means, axis=1, keepdims=True).clip(1e-12)

@dataclass
class _TrainedHead:
    model: RouterDCModel
    best_step: int
    validation: dict[str, Any]
    history: list[dict[str, float]]


def _train_head(data: _TrainingData, base_encoder: TextEncoder, validator: _Validator, config: RouterTrainingConfig,
                seed: int, progress: bool) -> _TrainedHead:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    n_llms = data.scores.shape[1]
    moce = config.experts > 1
    model = RouterDCModel(base_encoder.dim, n_llms, hidden_dim=config.hidden_dim or 0,
                          temperature=config.temperature, dropout=config.dropout, experts=config.experts,
                          centroids=data.centroids() if moce else None,
                          cluster_expert=fit_cluster_gate(data.cluster_profiles(), config.experts, seed) if moce
                          else None)
    finetune = config.mode == "finetune"
    st_model = base_encoder.model if isinstance(base_encoder, SentenceTransformerEncoder) and finetune else None
    parameters = list(model.parameters()) + (list(st_model.parameters()) if st_model is not None else [])
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    beta = torch.distributions.Beta(config.mix_alpha, config.mix_alpha)

    def encode_batch(rows: np.ndarray) -> torch.Tensor:
        if st_model is None:
            return data.train_x[rows]
        features = st_model.tokenize([data.questions[i] for i in rows])
        return torch.nn.functional.normalize(st_model(features)["sentence_embedding"], dim=-1)

    def validate() -> dict[str, Any]:
        model.eval()
        with torch.inference_mode():
            if st_model is not None:
                st_model.eval()
                encoded_sets = [base_encoder.encode(d.questions) for d in data.val]
                st_model.train()
            else:
                encoded_sets = data.val_encoded
            logits = [model(torch.from_numpy(x))[0].numpy() for x in encoded_sets]
        model.train()
        return validator(logits)

    # Re-balanced every pass: tasks weigh equally and, over passes, every question of a large task is seen.
    order = rng.permutation(balanced_indices(data.sizes, config.samples_per_task, rng))
    cursor = 0
    model.train()
    if st_model is not None:
        st_model.train()

    def step(_: int) -> float:
        nonlocal order, cursor
        if cursor + config.batch_size > len(order):
            order, cursor = rng.permutation(balanced_indices(data.sizes, config.samples_per_task, rng)), 0
        rows = order[cursor:cursor + config.batch_size]
        cursor += config.batch_size
        inputs, scores = encode_batch(rows), data.scores[rows]
        logits, hidden = model(inputs)
        tie_break = torch.rand(len(rows), n_llms, generator=generator) * 1e-6
        loss = sample_llm_loss(logits, scores, config.top_k, config.last_k, config.negative_mask_above, tie_break)
        if config.mix_k:
            loss = loss + _multi_mix_loss(model, inputs, scores, tie_break, config, beta, generator)
        if config.lam:
            loss = loss + config.lam * sample_sample_loss(hidden, data.clusters[rows], config.negatives_per_sample,
                                                          generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.item())

    def snapshot() -> tuple[dict[str, Any], dict[str, Any] | None]:
        return (copy.deepcopy(model.state_dict()),
                copy.deepcopy(st_model.state_dict()) if st_model is not None else None)

    def restore(state: tuple[dict[str, Any], dict[str, Any] | None]) -> None:
        model.load_state_dict(state[0])
        if st_model is not None and state[1] is not None:
            st_model.load_state_dict(state[1])
            st_model.eval()
        model.eval()

    def scored_validation() -> tuple[float, dict[str, Any]]:
        result = validate()
        return float(result["average"]), result

    fitted = fit(config.steps, config.eval_every, step=step, validate=scored_validation, snapshot=snapshot,
                 restore=restore, score_name="val_average", description=f"router {config.mode}", progress=progress)
    return _TrainedHead(model, fitted.best_step, fitted.best_validation, fitted.history)


def _multi_mix_loss(model: RouterDCModel, inputs: torch.Tensor, scores: torch.Tensor, tie_break: torch.Tensor,
                    config: RouterTrainingConfig, beta: torch.distributions.Beta,
                    generator: torch.Generator) -> torch.Tensor:
    """Multi-mix (Shen, Yu, Yang, Kwok 2024): each query is paired with another of the batch and K mixing
    weights λ_k ~ Beta(α, α) give K interpolations of the two embeddings and of their outcome vectors; the
    sample-LLM loss is averaged over the K points. The K batches run as one forward pass."""
    k, batch = config.mix_k, inputs.shape[0]
    partner = torch.randperm(batch, generator=generator)
    lam = beta.sample((k, batch, 1))
    mixed_inputs = (lam * inputs + (1 - lam) * inputs[partner]).reshape(k * batch, -1)
    mixed_scores = (lam * scores + (1 - lam) * scores[partner]).reshape(k * batch, -1)
    logits, _ = model(mixed_inputs)
    # sample_llm_loss averages over its batch, so over the K x B points: the mean of the K losses.
    return sample_llm_loss(logits, mixed_scores, config.top_k, config.last_k, config.negative_mask_above,
                           tie_break.repeat(k, 1))


def _add_cluster_prior(router: RouterDCRouter, train: Sequence[RoutingDataset], train_encoded: list[np.ndarray],
                       val_encoded: list[np.ndarray], validator: _Validator,
                       config: RouterTrainingConfig) -> dict[str, Any]:
    """Fit the prior on the training split, choose the heads' weight on validation, calibrate the fallback on
    held-out training tasks; returns the calibration figures for the checkpoint."""
    if len(train) >= 2:
        groups = [Group(d.task, x, d.outcome()) for d, x in zip(train, train_encoded, strict=True)]
    else:
        groups = kmeans_groups(train_encoded[0], train[0].outcome(), config.n_clusters, config.seed)
    prior = fit_cluster_prior(groups, seed=config.seed)
    router.cluster_prior = prior
    calibrated = config.fallback == "calibrated"
    calibration = calibrate_min_gain(groups, seed=config.seed) if calibrated else None
    fallback = Decision(prior=task_averaged_prior(groups), min_gain=calibration.min_gain if calibration else 0.0,
                        min_familiarity=familiarity_threshold(prior, val_encoded, len(groups)))
    if not calibrated:
        fallback = Decision()
    logits = [router.head_logits(x) for x in val_encoded]
    membership = [prior.membership(x) for x in val_encoded]
    familiarity = [prior.familiarity(x) for x in val_encoded]

    def validate(weight: float) -> float:
        decision = replace(fallback, refine_weight=weight)
        return validator([decide_scores(m, prior.profiles, g, decision, f)
                          for m, g, f in zip(membership, logits, familiarity, strict=True)])["average"]

    scored = {w: validate(w) for w in REFINE_GRID}
    # The heads must earn their place: a weight above 0 only for a clear validation gain (per-query scores fit
    # noise inside a task, and what they add was measured to cost accuracy on tasks never seen).
    refine = max(REFINE_GRID, key=lambda w: scored[w] - (REFINE_MARGIN if w else 0.0))
    router.decision = replace(fallback, refine_weight=refine)
    return {**router.decision.to_dict(), "validation_by_refine_weight": scored,
            "held_out_task_gains": calibration.held_out_gains if calibration else {}}


def save_trained_router(result: TrainingResult, directory: Path | str) -> Path:
    """Write the checkpoint; a fine-tuned encoder goes into ``encoder/`` inside it."""
    directory = Path(directory)
    router = result.router
    encoder_spec = router.encoder.spec
    if router.metadata["training"]["mode"] == "finetune" and isinstance(router.encoder, SentenceTransformerEncoder):
        router.encoder.model.save(str(directory / "encoder"))
        encoder_spec = "encoder"
    return save_router(directory, router, encoder_spec, {"history": result.history})
