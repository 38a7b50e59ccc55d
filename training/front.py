"""Quality–cost fronts: route a labelled set at every preference of a sweep, summarise (accuracy %, total
price), compare fronts by hypervolume, plot them beside every single LLM and the oracle.

Hypervolume here: the mean, over every budget from $0 to the reference cost (the most expensive LLM answering
everything), of the best accuracy a front reaches within that budget (0 to 1; higher is better).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Cost weights swept for a front (the preference is {"quality": 1 - c, "cost": c}): every 0.02.
FRONT_PREFERENCES = tuple(round(0.02 * i, 2) for i in range(51))


@dataclass(frozen=True)
class FrontPoint:
    knob: float  # the cost weight (or threshold, λ, ...) that produced it
    accuracy: float  # percent over the questions
    cost_usd: float  # total over the questions


def summarise(choices: np.ndarray, outcomes: np.ndarray, costs: np.ndarray, knob: float) -> FrontPoint:
    rows = np.arange(len(choices))
    return FrontPoint(knob, 100 * float(outcomes[rows, choices].mean()), float(np.nansum(costs[rows, choices])))


def route_front(router: Any, encoded: np.ndarray, outcomes: np.ndarray, costs: np.ndarray,
                cost_weights: Sequence[float] = FRONT_PREFERENCES) -> list[FrontPoint]:
    """A preference-conditioned router (``score_encoded(encoded, alpha)``) routed at every cost weight."""
    points = []
    for weight in cost_weights:
        scores = router.score_encoded(encoded, np.array([1 - weight, weight], dtype=np.float32))
        points.append(summarise(scores.argmax(axis=1), outcomes, costs, weight))
    return points


def knob_front(score: Callable[[float], np.ndarray], outcomes: np.ndarray, costs: np.ndarray,
               knobs: Sequence[float]) -> list[FrontPoint]:
    """Any router with one knob: ``score(knob)`` gives [n, n_llms] scores."""
    return [summarise(score(knob).argmax(axis=1), outcomes, costs, knob) for knob in knobs]


def pareto_filter(points: Sequence[FrontPoint]) -> list[FrontPoint]:
    """The points no other point beats on both accuracy and cost, cheapest first."""
    kept: list[FrontPoint] = []
    for point in sorted(points, key=lambda p: (p.cost_usd, -p.accuracy)):
        if not kept or point.accuracy > kept[-1].accuracy:
            kept.append(point)
    return kept


def hypervolume(points: Sequence[FrontPoint], reference_cost: float) -> float:
    """Mean best accuracy (0-1) over budgets uniform in [0, reference_cost]."""
    front = pareto_filter(points)
    volume = 0.0
    for i, point in enumerate(front):
        start = min(point.cost_usd, reference_cost)
        end = min(front[i + 1].cost_usd, reference_cost) if i + 1 < len(front) else reference_cost
        volume += max(0.0, end - start) * point.accuracy / 100
    return volume / reference_cost


def cheapest_at(points: Sequence[FrontPoint], accuracy: float) -> FrontPoint | None:
    """The cheapest point reaching ``accuracy`` percent, if any."""
    reaching = [p for p in points if p.accuracy >= accuracy - 1e-9]
    return min(reaching, key=lambda p: p.cost_usd) if reaching else None


def single_models(llm_names: Sequence[str], outcomes: np.ndarray, costs: np.ndarray) -> dict[str, dict[str, float]]:
    return {name: {"accuracy": 100 * float(outcomes[:, i].mean()), "cost_usd": float(np.nansum(costs[:, i]))}
            for i, name in enumerate(llm_names)}


def oracle(outcomes: np.ndarray, costs: np.ndarray) -> dict[str, float]:
    """The cheapest of the best LLMs per question (RouterBench's oracle)."""
    filled = np.nan_to_num(costs, nan=0.0)
    best = outcomes.max(axis=1, keepdims=True)
    price = np.where(outcomes == best, filled, np.inf)
    choices = price.argmin(axis=1)
    point = summarise(choices, outcomes, costs, 0.0)
    return {"accuracy": point.accuracy, "cost_usd": point.cost_usd}


def front_report(points: Sequence[FrontPoint], llm_names: Sequence[str], outcomes: np.ndarray, costs: np.ndarray,
                 baselines: dict[str, list[FrontPoint]] | None = None) -> dict[str, Any]:
    """The ``router front`` JSON: points by preference, every single LLM, the oracle, the baselines' fronts."""
    models = single_models(llm_names, outcomes, costs)
    reference = max(m["cost_usd"] for m in models.values())
    report: dict[str, Any] = {
        "points": [{"preference": {"quality": round(1 - p.knob, 6), "cost": round(p.knob, 6)},
                    "accuracy": p.accuracy, "cost_usd": p.cost_usd} for p in points],
        "models": models, "oracle": oracle(outcomes, costs),
        "hypervolume": hypervolume(points, reference), "reference_cost_usd": reference}
    if baselines:
        report["baselines"] = {name: {"points": [asdict(p) for p in front],
                                      "hypervolume": hypervolume(front, reference)}
                               for name, front in baselines.items()}
    return report


def format_front(report: dict[str, Any]) -> str:
    lines = [f"{'preference (quality/cost)':<28}{'accuracy %':>12}{'cost $':>12}"]
    for point in report["points"]:
        preference = f"{point['preference']['quality']:.2f} / {point['preference']['cost']:.2f}"
        lines.append(f"{preference:<28}{point['accuracy']:>12.2f}{point['cost_usd']:>12.4f}")
    lines.append(f"hypervolume {report['hypervolume']:.4f} (mean best accuracy over budgets $0-"
                 f"{report['reference_cost_usd']:.2f})")
    lines.append(f"{'single LLM':<40}{'accuracy %':>12}{'cost $':>12}")
    for name, model in sorted(report["models"].items(), key=lambda kv: -kv[1]["accuracy"]):
        lines.append(f"{name:<40}{model['accuracy']:>12.2f}{model['cost_usd']:>12.4f}")
    lines.append(f"{'oracle':<40}{report['oracle']['accuracy']:>12.2f}{report['oracle']['cost_usd']:>12.4f}")
    for name, baseline in report.get("baselines", {}).items():
        lines.append(f"baseline {name}: hypervolume {baseline['hypervolume']:.4f}")
    return "\n".join(lines)


def write_front(report: dict[str, Any], json_path: Path) -> Path:
    """The JSON report and, next to it, the PNG plot."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2))
    png = json_path.with_suffix(".png")
    plot_front(report, png)
    return png


def plot_front(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    for name, baseline in report.get("baselines", {}).items():
        front = pareto_filter([FrontPoint(**p) for p in baseline["points"]])
        ax.step([p.cost_usd for p in front], [p.accuracy for p in front], where="post", alpha=0.7,
                label=f"{name} (HV {baseline['hypervolume']:.3f})")
    ours = pareto_filter([FrontPoint(p["preference"]["cost"], p["accuracy"], p["cost_usd"]) for p in report["points"]])
    ax.step([p.cost_usd for p in ours], [p.accuracy for p in ours], where="post", color="black", linewidth=2.2,
            label=f"LORPMAN, one checkpoint (HV {report['hypervolume']:.3f})")
    ax.scatter([p.cost_usd for p in ours], [p.accuracy for p in ours], color="black", s=14, zorder=3)
    for name, model in report["models"].items():
        ax.scatter(model["cost_usd"], model["accuracy"], marker="s", s=22, color="tab:gray", zorder=2)
        ax.annotate(name.split("/")[-1], (model["cost_usd"], model["accuracy"]), fontsize=6, xytext=(3, 2),
                    textcoords="offset points")
    ax.scatter(report["oracle"]["cost_usd"], report["oracle"]["accuracy"], marker="*", s=90, color="tab:red",
               label="oracle", zorder=3)
    ax.set_xscale("symlog", linthresh=0.05)
    ax.set_xlabel("total cost over the test questions (US$, symlog)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Routing: quality–cost front")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
