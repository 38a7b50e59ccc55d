"""Routing accuracy per task, beside best-single, random and oracle; as a table, JSON and a PNG chart."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from routers.base import Router
from routers.data import RoutingDataset

COLUMNS = ("router", "best_single", "oracle", "random")


@dataclass(frozen=True)
class TaskAccuracy:
    """Accuracies in percent under the task's scoring rule."""

    router: float
    best_single: float
    oracle: float
    random: float


@dataclass
class EvaluationReport:
    router_name: str
    best_single_llm: str
    tasks: dict[str, TaskAccuracy]
    # task -> LLM -> share of the task's questions routed to it (what each model is picked for)
    shares: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def average(self) -> TaskAccuracy:
        return TaskAccuracy(*(float(np.mean([getattr(t, c) for t in self.tasks.values()])) for c in COLUMNS))

    def to_dict(self) -> dict[str, object]:
        return {"tasks": {name: asdict(acc) for name, acc in self.tasks.items()}, "average": asdict(self.average),
                "router": self.router_name, "best_single_llm": self.best_single_llm, "shares": self.shares}


def task_accuracy(choices: np.ndarray, dataset: RoutingDataset, best_single: str) -> TaskAccuracy:
    """``choices``: the LLM index chosen per question."""
    outcome = dataset.outcome()
    rows = np.arange(len(dataset))
    return TaskAccuracy(router=100 * float(outcome[rows, choices].mean()),
                        best_single=100 * float(outcome[:, dataset.llm_names.index(best_single)].mean()),
                        oracle=100 * float(outcome.max(axis=1).mean()),
                        random=100 * float(outcome.mean()))  # the expectation of a uniform choice


def evaluate(router: Router, datasets: Sequence[RoutingDataset], best_single: str, router_name: str
             ) -> EvaluationReport:
    tasks: dict[str, TaskAccuracy] = {}
    shares: dict[str, dict[str, float]] = {}
    for dataset in datasets:
        if set(dataset.llm_names) != set(router.llm_names):
            raise ValueError(f"{dataset.path}: its LLMs ({', '.join(dataset.llm_names)}) are not the router's "
                             f"({', '.join(router.llm_names)})")
        columns = [router.llm_names.index(name) for name in dataset.llm_names]  # the file's column order
        scores = np.asarray(router.score_known_task(dataset.questions, dataset.task))
        choices = np.argmax(scores[:, columns], axis=1)
        tasks[dataset.task] = task_accuracy(choices, dataset, best_single)
        counts = np.bincount(choices, minlength=len(dataset.llm_names)) / max(len(choices), 1)
        shares[dataset.task] = {name: round(float(share), 4) for name, share in zip(dataset.llm_names, counts,
                                                                                   strict=True) if share}
    return EvaluationReport(router_name, best_single, tasks, shares)


def within_task_auc(scores: np.ndarray, dataset: RoutingDataset) -> float:
    """How well per-query scores [Q, L] tell, inside one task, the questions an LLM gets right from those it gets
    wrong: per LLM the ROC AUC of its score against its outcome (an LLM right or wrong on every question is left
    out), averaged over the LLMs. 0.5: the scores know nothing per question beyond the task."""
    from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]

    outcome = dataset.outcome() > 0.5
    values = [roc_auc_score(outcome[:, column], scores[:, column]) for column in range(outcome.shape[1])
              if 0 < outcome[:, column].sum() < len(outcome)]
    return float(np.mean(values)) if values else float("nan")


def format_table(report: EvaluationReport) -> str:
    width = max(12, *(len(name) for name in report.tasks)) + 2
    lines = [f"router: {report.router_name}    best single LLM: {report.best_single_llm}",
             f"{'task':<{width}}" + "".join(f"{c:>13}" for c in COLUMNS)]
    for name, acc in [*report.tasks.items(), ("AVERAGE", report.average)]:
        lines.append(f"{name:<{width}}" + "".join(f"{getattr(acc, c):>13.2f}" for c in COLUMNS))
    return "\n".join(lines)


def write_report(report: EvaluationReport, json_path: Path | str) -> tuple[Path, Path]:
    """The JSON report and, next to it, a PNG bar chart of the same table."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report.to_dict(), indent=2))
    png_path = json_path.with_suffix(".png")
    plot_report(report, png_path)
    return json_path, png_path


def plot_report(report: EvaluationReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*report.tasks, "AVERAGE"]
    rows = [*report.tasks.values(), report.average]
    x = np.arange(len(names))
    width = 0.2
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(names)), 4.2))
    for i, column in enumerate(COLUMNS):
        values = [getattr(row, column) for row in rows]
        bars = ax.bar(x + (i - 1.5) * width, values, width, label=column.replace("_", " "))
        if column == "router":
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, names, rotation=15)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{report.router_name}: routing accuracy per task")
    ax.legend(ncols=4, fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
