"""MEHL-Soup (Li et al., ECCV 2024): learn a soup in the affine hull of the members, a batch of b at a time.

Per batch of members: a centre c (the first batch's mean, then the soup so far) and directions Pᵢ = θᵢ − c,
each scaled to unit norm within every block (as the reference code does: a coefficient is then a distance in
weight space, the same for every member and block, so one learning rate suits them all); coefficients X
(members × blocks) start at 0 and the soup is θ = c + Σᵢ Xᵢ·Pᵢ per block, so coefficients may be negative
(extrapolation). Only X is trained (AdamW; a cosine schedule after a linear warm-up over the first 20% of the
steps, as the reference; on the fitting split); then the next batch is merged in around the new soup
(block-coordinate descent). Blocks are single tensors (MEHL-Soup+) or whole transformer layers. Everything
happens in weight-delta space (θ − θ_base), and only b members are ever held at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from training.soup.members import Delta, MemberStore
from training.soup.objective import Example, Weights, batches, loss

_LAYER = re.compile(r"\blayers?\.(\d+)\.")


@dataclass
class SoupSettings:
    model_batch: int = 2
    blocks: str = "tensor"  # or "layer"
    objective: str = "nll"  # or "dpo"
    epochs: int = 2
    learning_rate: float = 0.05
    batch_size: int = 8
    beta: float = 0.1
    seed: int = 0
    normalise: bool = True  # unit-norm directions per block (the reference); False: raw θᵢ − c
    warmup: float = 0.2  # share of the steps the learning rate rises over
    precision: str = "auto"  # the model's matmuls: "bf16" (autocast), "fp32", or "auto" (bf16 where the CPU has it)


def uses_bf16(precision: str) -> bool:
    """Whether ``precision`` means bfloat16 autocast here ("auto": when the CPU runs bf16 matmuls natively)."""
    if precision == "auto":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return precision == "bf16"


def block_of(name: str, blocks: str) -> str:
    if blocks == "tensor":
        return name
    match = _LAYER.search(name)
    return f"layer {int(match.group(1)):03d}" if match else "other"


def affine_soup(centre: Delta, directions: list[Delta], coefficients: torch.Tensor, block_index: dict[str, int]
                ) -> Delta:
    """c + Σᵢ Xᵢ·Pᵢ, per tensor with the coefficient of the tensor's block."""
    soup = {}
    for name, tensor in centre.items():
        column = block_index[name]
        soup[name] = tensor + sum((coefficients[i, column] * p[name] for i, p in enumerate(directions)
                                   if name in p), torch.zeros((), dtype=tensor.dtype))
    return soup


def with_base(base: Weights, delta: Delta) -> Weights:
    return {name: base[name] + tensor for name, tensor in delta.items()}


@dataclass
class BatchRecord:
    members: list[str]
    blocks: list[str]
    coefficients: list[list[float]]  # members × blocks, as trained (in units of the directions' norms)
    losses: list[float]  # per step
    direction_norms: list[list[float]]  # members × blocks: ‖θᵢ − c‖ per block, before normalising


def train_soup(model: torch.nn.Module, base: Weights, store: MemberStore, examples: list[Example],
               settings: SoupSettings, progress: Callable[[int], Any] | None = None
               ) -> tuple[Delta, list[BatchRecord]]:
    """The soup's delta from the base and what each batch learnt."""
    soup: Delta | None = None
    records: list[BatchRecord] = []
    for start in range(0, len(store.members), settings.model_batch):
        indices = list(range(start, min(start + settings.model_batch, len(store.members))))
        soup, record = _fit_batch(model, base, store, indices, soup, examples, settings, progress)
        records.append(record)
    assert soup is not None
    return soup, records


def _fit_batch(model: torch.nn.Module, base: Weights, store: MemberStore, indices: list[int], soup: Delta | None,
               examples: list[Example], settings: SoupSettings, progress: Callable[[int], Any] | None
               ) -> tuple[Delta, BatchRecord]:
    """One block-coordinate step: these members around the centre; their deltas are freed on return."""
    directions = [store.load(i) for i in indices]
    names = sorted(set().union(*directions, soup or {}))
    if soup is None:  # the first batch: its own mean
        centre = {n: sum((d[n] for d in directions if n in d), torch.zeros_like(base[n])) / len(directions)
                  for n in names}
    else:
        centre = {n: soup.get(n, torch.zeros_like(base[n])) for n in names}
    for direction in directions:  # in place: a direction takes the memory its member did
        for name in names:
            if name in direction:
                direction[name].sub_(centre[name])
            else:
                direction[name] = -centre[name]
    block_names = sorted({block_of(n, settings.blocks) for n in names})
    block_index = {n: block_names.index(block_of(n, settings.blocks)) for n in names}
    norms = block_norms(directions, block_index, len(block_names))
    if settings.normalise:
        for direction, member_norms in zip(directions, norms, strict=True):
            for name, tensor in direction.items():
                norm = member_norms[block_index[name]]
                if norm > 0:
                    tensor.div_(norm)
    coefficients = torch.zeros(len(directions), len(block_names), requires_grad=True)
    optimiser = torch.optim.AdamW([coefficients], lr=settings.learning_rate, weight_decay=0.0)
    schedule = warmup_cosine(optimiser, steps_per_batch(len(examples), settings), settings.warmup)
    losses = []
    for epoch in range(settings.epochs):
        for batch in batches(examples, settings.batch_size, shuffle_seed=settings.seed * 1000 + indices[0] + epoch):
            weights = with_base(base, affine_soup(centre, directions, coefficients, block_index))
            value = loss(model, weights, batch, settings.objective, settings.beta)
            optimiser.zero_grad()
            value.backward()
            optimiser.step()
            schedule.step()
            losses.append(round(float(value.detach()), 5))
            if progress:
                progress(1)
    with torch.no_grad():
        merged = affine_soup(centre, directions, coefficients.detach(), block_index)
    return merged, BatchRecord([store.members[i].name for i in indices], block_names,
                               coefficients.detach().tolist(), losses, norms.tolist())


def block_norms(directions: list[Delta], block_index: dict[str, int], blocks: int) -> torch.Tensor:
    """‖Pᵢ‖ within each block: members × blocks."""
    squares = torch.zeros(len(directions), blocks, dtype=torch.float64)
    for i, direction in enumerate(directions):
        for name, tensor in direction.items():
            squares[i, block_index[name]] += float(tensor.double().square().sum())
    return squares.sqrt().float()


def warmup_cosine(optimiser: torch.optim.Optimizer, steps: int, warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A linear rise over the first ``warmup`` share of the steps, then a cosine decay to 0 (the reference's)."""
    rise = max(1, round(steps * warmup))
    total = max(steps, rise + 1)

    def factor(step: int) -> float:
        if step < rise:
            return (step + 1) / rise
        return 0.5 * (1 + math.cos(math.pi * (step - rise) / (total - rise)))

    return torch.optim.lr_scheduler.LambdaLR(optimiser, factor)


def steps_per_batch(examples: int, settings: SoupSettings) -> int:
    return settings.epochs * math.ceil(examples / settings.batch_size)
