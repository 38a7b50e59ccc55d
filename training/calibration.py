"""Cost calibration: for each cost weight w, the share of calls each model would get and the expected
accuracy, computed with the gateway's own ranking code on a labelled file, so an operator can pick w."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gateway.engine.routing import RoutedModel
from routers.data import RoutingDataset


@dataclass(frozen=True)
class CalibrationRow:
    cost_weight: float
    share: dict[str, float]  # configured model -> percent of calls
    accuracy: float  # task-averaged, percent
    mean_cost_per_1k: float  # average declared cost of the chosen models


def calibrate(routed: RoutedModel, datasets: Sequence[RoutingDataset], weights: Sequence[float],
              costs: dict[str, float]) -> list[CalibrationRow]:
    llm_names = routed.router.llm_names
    scored = [np.asarray(routed.router.score(d.questions), dtype=np.float64) for d in datasets]
    unknown = np.full(len(routed.models), np.nan)
    rows = []
    for weight in weights:
        alpha = np.array([1.0, weight]) / (1.0 + weight)
        counts = dict.fromkeys(routed.models, 0)
        accuracies, chosen_costs = [], []
        for dataset, scores in zip(datasets, scored, strict=True):
            outcome = dataset.outcome()
            earned = []
            for row, query_scores in enumerate(scores):
                model = routed.rank(query_scores, alpha, unknown, needs_vision=False, max_cost_usd=None).models[0]
                llm = llm_names[routed.models.index(model)]
                earned.append(outcome[row, dataset.llm_names.index(llm)])
                counts[model] += 1
                chosen_costs.append(costs.get(model, 0.0))
            accuracies.append(100 * float(np.mean(earned)))
        total = sum(counts.values())
        rows.append(CalibrationRow(weight, {m: 100 * c / total for m, c in counts.items()},
                                   float(np.mean(accuracies)), float(np.mean(chosen_costs))))
    return rows


def format_calibration(rows: Sequence[CalibrationRow]) -> str:
    models = list(rows[0].share)
    width = max(8, *(len(m) for m in models)) + 2
    lines = [f"{'w':>6}{'accuracy':>10}{'cost/1k':>9}  " + "".join(f"{m[-width + 2:]:>{width}}" for m in models)]
    for row in rows:
        lines.append(f"{row.cost_weight:>6.2f}{row.accuracy:>10.2f}{row.mean_cost_per_1k:>9.3f}  "
                     + "".join(f"{row.share[m]:>{width - 1}.1f}%" for m in models))
    return "\n".join(lines)
