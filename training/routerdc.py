"""RouterDC trainer: sample-LLM + λ·sample-sample contrastive losses, checkpoint chosen on a validation split.

Two modes:
- ``frozen``: the encoder is frozen and its embeddings are computed once (and cached on disk); a residual
  MLP head and the LLM embeddings train in seconds on a CPU.
- ``finetune``: the encoder trains too, as in the paper (a GPU job: ~15 s per 64-query step on 2 CPU cores).

Unlike the paper's code, which picks its checkpoint by test accuracy, the best step is chosen on a
validation split carved from the training files, by the task-averaged accuracy.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from routers.baselines import best_single_llm
from routers.data import RoutingDataset
from routers.encoders import SentenceTransformerEncoder, build_encoder, with_cache
from routers.routerdc import RouterDCModel, RouterDCRouter, save_checkpoint
from training.routerdc_losses import sample_llm_loss, sample_sample_loss

logger = logging.getLogger(__name__)


@dataclass
class RouterTrainingConfig:
    # --- what is trained
    mode: Literal["frozen", "finetune"] = field(default="frozen", metadata={"help": "frozen or finetune encoder"})
    encoder: str = field(default="minilm", metadata={"help": "encoder spec (routers.encoders)"})
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
        if self.hidden_dim is None:
            self.hidden_dim = 1024 if self.mode == "frozen" else 0
        if self.learning_rate is None:
            self.learning_rate = 1e-3 if self.mode == "frozen" else 5e-5
        if self.mode == "finetune" and ("+" in self.encoder or self.encoder == "e5-small"):
            raise ValueError(f"encoder '{self.encoder}' cannot be fine-tuned; use a sentence-transformers model")
        for name in ("steps", "batch_size", "top_k", "last_k", "samples_per_task", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.train_on not in ("outcome", "scores"):
            raise ValueError(f"train_on must be 'outcome' or 'scores', not {self.train_on!r}")
        if not 0 < self.val_fraction < 0.5:
            raise ValueError("val_fraction must be in (0, 0.5)")


@dataclass
class TrainingResult:
    router: RouterDCRouter
    best_step: int
    validation: dict[str, Any]
    history: list[dict[str, float]]
    seconds: float


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
    """Train on ``datasets`` (one per task) and return the router at its best validation step."""
    started = time.monotonic()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    llm_names = datasets[0].llm_names
    splits = split_validation([len(d) for d in datasets], config.val_fraction, config.seed)
    train = [d.subset(rows) for d, (rows, _) in zip(datasets, splits, strict=True)]
    val = [d.subset(rows) for d, (_, rows) in zip(datasets, splits, strict=True) if len(rows)]
    validator = _Validator(val)

    base_encoder = build_encoder(config.encoder)
    encoder = with_cache(base_encoder, cache_dir / "embeddings") if cache_dir else base_encoder
    # Whole files are encoded (and cached) once; the splits index into them.
    encoded = [encoder.encode(d.questions) for d in datasets]
    questions = [q for d in train for q in d.questions]
    targets = [d.outcome() if config.train_on == "outcome" else d.scores for d in train]
    scores = torch.tensor(np.concatenate(targets), dtype=torch.float32)
    train_encoded = np.concatenate([x[rows] for x, (rows, _) in zip(encoded, splits, strict=True)])
    clusters = torch.tensor(cluster_labels(train, train_encoded, config.n_clusters, config.seed))
    val_encoded = [x[rows] for x, (_, rows) in zip(encoded, splits, strict=True) if len(rows)]

    model = RouterDCModel(base_encoder.dim, len(llm_names), hidden_dim=config.hidden_dim or 0,
                          temperature=config.temperature, dropout=config.dropout)
    finetune = config.mode == "finetune"
    st_model = base_encoder.model if isinstance(base_encoder, SentenceTransformerEncoder) and finetune else None
    parameters = list(model.parameters()) + (list(st_model.parameters()) if st_model is not None else [])
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    sizes = [len(d) for d in train]
    train_x = torch.from_numpy(train_encoded)

    def encode_batch(rows: np.ndarray) -> torch.Tensor:
        if st_model is None:
            return train_x[rows]
        features = st_model.tokenize([questions[i] for i in rows])
        return torch.nn.functional.normalize(st_model(features)["sentence_embedding"], dim=-1)

    def validate() -> dict[str, Any]:
        model.eval()
        with torch.inference_mode():
            if st_model is not None:
                st_model.eval()
                encoded_sets = [base_encoder.encode(d.questions) for d in val]
                st_model.train()
            else:
                encoded_sets = val_encoded
            logits = [model(torch.from_numpy(x))[0].numpy() for x in encoded_sets]
        model.train()
        return validator(logits)

    best = {"average": -1.0}
    best_step, best_state, history = 0, None, []
    # Re-balanced every pass: tasks weigh equally and, over passes, every question of a large task is seen.
    order = rng.permutation(balanced_indices(sizes, config.samples_per_task, rng))
    cursor = 0
    bar = tqdm(range(1, config.steps + 1), desc=f"router {config.mode}", disable=not progress, unit="step")
    model.train()
    if st_model is not None:
        st_model.train()
    for step in bar:
        if cursor + config.batch_size > len(order):
            order, cursor = rng.permutation(balanced_indices(sizes, config.samples_per_task, rng)), 0
        rows = order[cursor:cursor + config.batch_size]
        cursor += config.batch_size
        logits, hidden = model(encode_batch(rows))
        tie_break = torch.rand(len(rows), len(llm_names), generator=generator) * 1e-6
        llm_loss = sample_llm_loss(logits, scores[rows], config.top_k, config.last_k, config.negative_mask_above,
                                   tie_break)
        loss = llm_loss
        if config.lam:
            loss = loss + config.lam * sample_sample_loss(hidden, clusters[rows], config.negatives_per_sample,
                                                          generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % config.eval_every == 0 or step == config.steps:
            result = validate()
            history.append({"step": step, "loss": loss.item(), "val_average": result["average"]})
            if result["average"] > best["average"]:
                best, best_step = result, step
                best_state = (copy.deepcopy(model.state_dict()),
                              copy.deepcopy(st_model.state_dict()) if st_model is not None else None)
            bar.set_postfix(loss=f"{loss.item():.3f}", val=f"{result['average']:.2f}", best=f"{best['average']:.2f}")
    assert best_state is not None
    model.load_state_dict(best_state[0])
    if st_model is not None and best_state[1] is not None:
        st_model.load_state_dict(best_state[1])
    model.eval()
    metadata = {"router": "routerdc", "best_single": best_single_llm(train), "training": asdict(config),
                "validation": {**best, "step": best_step}, "training_seconds": round(time.monotonic() - started, 1),
                "train_files": [d.path for d in datasets]}
    router = RouterDCRouter(base_encoder, model, llm_names, metadata)
    return TrainingResult(router, best_step, best, history, time.monotonic() - started)


def save_trained_router(result: TrainingResult, directory: Path | str) -> Path:
    """Write the checkpoint; a fine-tuned encoder goes into ``encoder/`` inside it."""
    directory = Path(directory)
    router = result.router
    encoder_spec = router.encoder.spec
    if router.metadata["training"]["mode"] == "finetune" and isinstance(router.encoder, SentenceTransformerEncoder):
        router.encoder.model.save(str(directory / "encoder"))
        encoder_spec = "encoder"
    return save_checkpoint(directory, router.model, router.llm_names, encoder_spec,
                           {**router.metadata, "history": result.history})
