"""The fit / validate / keep-best loop every router trainer shares (RouterDC's heads, LORPMAN's Pareto head).

Each trainer supplies one optimiser step, a validation that returns a score where higher is better (RouterDC: the
task-averaged validation accuracy; LORPMAN: the hypervolume of the validation front) and how to copy and restore
its weights. The loop validates every ``eval_every`` steps and after the last, keeps a copy of the weights at the
best validation score (the first best on ties), and restores them at the end: the paper's "best training model"
choice, made on a held-out split instead of the training files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tqdm.auto import tqdm

Weights = TypeVar("Weights")
Validation = TypeVar("Validation")


@dataclass
class FitResult(Generic[Validation]):
    best_step: int
    best_score: float
    best_validation: Validation  # what ``validate`` returned at the best step
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per validation: step, loss, score


def fit(steps: int, eval_every: int, *, step: Callable[[int], float],
        validate: Callable[[], tuple[float, Validation]], snapshot: Callable[[], Weights],
        restore: Callable[[Weights], None], score_name: str = "val", description: str = "train",
        progress: bool = True) -> FitResult[Validation]:
    """Run ``step(i)`` (returns the batch loss) for i = 1..``steps``; validate, keep and restore the best weights.

    ``validate`` returns ``(score, details)``; ``score_name`` names the score in ``history`` and the progress bar.
    """
    best: FitResult[Validation] | None = None
    best_weights: Weights | None = None
    history: list[dict[str, Any]] = []
    bar = tqdm(range(1, steps + 1), desc=description, disable=not progress, unit="step")
    for index in bar:
        loss = step(index)
        if index % eval_every == 0 or index == steps:
            score, details = validate()
            history.append({"step": index, "loss": loss, score_name: score})
            if best is None or score > best.best_score:
                best, best_weights = FitResult(index, score, details), snapshot()
            bar.set_postfix(loss=f"{loss:.3f}", val=f"{score:.4g}", best=f"{best.best_score:.4g}")
    assert best is not None and best_weights is not None, "steps >= 1 validates at least once"
    restore(best_weights)
    best.history = history
    return best
