"""Price-aware routing on RouterBench, side by side in one run: one LORPMAN checkpoint per seed (and with
multi-mix), the baselines (static-price re-rank, kNN and logistic p(correct) − λ·price, RouteLLM's GPT-4 vs
Mixtral threshold router, one scalarised router trained per preference), every single LLM and the oracle, on
the three test files pooled; then leave-one-task-out (train on two tasks, test on the third).

Prints, per router: hypervolume, the cheapest cost (as % of GPT-4's) reaching 95% of GPT-4's accuracy
(83.0%) and GPT-4's own accuracy (87.4%), and training time. Writes JSON + PNG fronts into --out.

    .venv/bin/python benchmarks/pareto_benchmark.py --data-dir ../shared/datasets/routerbench --out reports/pareto
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from gateway.core.config import Settings
from routers.data import RoutingDataset, load_routing_files
from routers.encoders import build_encoder, with_cache
from training.front import (
    FRONT_PREFERENCES,
    FrontPoint,
    cheapest_at,
    front_report,
    hypervolume,
    route_front,
    single_models,
    write_front,
)
from training.pareto import ParetoTrainingConfig, train_pareto_router
from training.pareto_baselines import QUICK_BASELINES, TestSet, scalarised_front

GPT4 = "gpt-4-1106-preview"
SCALARISED = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


def describe(name: str, points: list[FrontPoint], test: TestSet, seconds: float | None) -> dict[str, Any]:
    models = single_models(test.llm_names, test.outcomes, test.costs)
    gpt4, reference = models[GPT4], max(m["cost_usd"] for m in models.values())
    row: dict[str, Any] = {"hypervolume": hypervolume(points, reference), "training_seconds": seconds}
    for label, target in (("at_95pct_gpt4_accuracy", 0.95 * gpt4["accuracy"]), ("at_gpt4_accuracy", gpt4["accuracy"])):
        point = cheapest_at(points, target)
        row[label] = None if point is None else {"accuracy": point.accuracy, "cost_usd": point.cost_usd,
                                                 "pct_of_gpt4_cost": 100 * point.cost_usd / gpt4["cost_usd"]}
    print(f"{name:<48} HV {row['hypervolume']:.4f}   "
          + "   ".join(f"{label.replace('_', ' ')}: " + ("not reached" if row[label] is None else
                                                          f"{row[label]['pct_of_gpt4_cost']:.1f}% of GPT-4's cost "
                                                          f"({row[label]['accuracy']:.2f}%)")
                     for label in ("at_95pct_gpt4_accuracy", "at_gpt4_accuracy"))
          + (f"   trained in {seconds:.1f} s" if seconds is not None else ""), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("reports/pareto"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--encoder", default="static:minilm")
    parser.add_argument("--skip-scalarised", action="store_true")
    args = parser.parse_args()

    cache_dir = Settings().cache_dir
    train = load_routing_files(sorted(str(p) for p in args.data_dir.glob("*_train.csv.gz")))
    tests = load_routing_files(sorted(str(p) for p in args.data_dir.glob("*_test.csv.gz")))
    encoder = with_cache(build_encoder(args.encoder), cache_dir / "embeddings")
    test = TestSet(tests, encoder)
    print(f"{sum(len(d) for d in train)} training and {len(test.outcomes)} test questions; unscored cells: "
          f"{int(sum((~d.scored).sum() for d in train))} train, {int(sum((~d.scored).sum() for d in tests))} test")
    rows: dict[str, Any] = {}
    fronts: dict[str, list[FrontPoint]] = {}
    first = None
    for label, extra in [(f"LORPMAN seed {seed}", {"seed": seed}) for seed in range(args.seeds)] + [
            ("LORPMAN + multi-mix K=3, seed 0", {"seed": 0, "mix_k": 3})]:
        result = train_pareto_router(train, ParetoTrainingConfig(encoder=args.encoder, **extra), cache_dir=cache_dir,
                                     progress=False)
        points = route_front(result.router, test.encoded, test.outcomes, test.costs, FRONT_PREFERENCES)
        rows[label] = describe(label, points, test, result.seconds)
        fronts[label] = points
        first = first or points
    for name, build in QUICK_BASELINES.items():
        started = time.monotonic()
        points = build(train, test, encoder, cache_dir)
        rows[name] = describe(name, points, test, time.monotonic() - started)
        fronts[name] = points
    if not args.skip_scalarised:
        points, seconds = scalarised_front(train, test, cache_dir, SCALARISED)
        name = f"scalarised, {len(SCALARISED)} routers (one per preference)"
        rows[name] = describe(name, points, test, seconds)
        fronts[name] = points
    assert first is not None
    baselines = {name: points for name, points in fronts.items() if not name.startswith("LORPMAN seed 0")}
    report = front_report(first, test.llm_names, test.outcomes, test.costs, baselines)
    report["summary"] = rows
    report["leave_one_task_out"] = leave_one_task_out(train, tests, encoder, cache_dir, args.encoder)
    args.out.mkdir(parents=True, exist_ok=True)
    png = write_front(report, args.out / "front.json")
    print(f"wrote {args.out / 'front.json'} and {png}")


def leave_one_task_out(train: list[RoutingDataset], tests: list[RoutingDataset], encoder: Any, cache_dir: Path,
                       encoder_spec: str) -> dict[str, Any]:
    """Train on two tasks, test on the third: LORPMAN at quality-first, balanced and cost-first preferences
    beside the best single LLM of the two seen tasks (by accuracy) and GPT-4."""
    results = {}
    for held_out in tests:
        seen = [d for d in train if d.task != held_out.task]
        result = train_pareto_router(seen, ParetoTrainingConfig(encoder=encoder_spec), cache_dir=cache_dir,
                                     progress=False)
        test = TestSet([held_out], encoder)
        points = route_front(result.router, test.encoded, test.outcomes, test.costs, [0.0, 0.5, 1.0])
        seen_accuracy = np.mean([d.outcome().mean(axis=0) for d in seen], axis=0)
        best = int(np.argmax(seen_accuracy))
        models = single_models(test.llm_names, test.outcomes, test.costs)
        results[held_out.task] = {
            "router": {f"cost {p.knob:g}": {"accuracy": p.accuracy, "cost_usd": p.cost_usd} for p in points},
            "best_single_of_seen": {"model": test.llm_names[best], **models[test.llm_names[best]]},
            "gpt4": models[GPT4]}
        print(f"unseen {held_out.task}: " + "   ".join(f"cost {p.knob:g}: {p.accuracy:.2f}% ${p.cost_usd:.3f}"
                                                         for p in points)
              + f"   | best single of the two seen ({test.llm_names[best]}): "
                f"{models[test.llm_names[best]]['accuracy']:.2f}% ${models[test.llm_names[best]]['cost_usd']:.3f}"
              + f"   | GPT-4 {models[GPT4]['accuracy']:.2f}% ${models[GPT4]['cost_usd']:.3f}", flush=True)
    return results


if __name__ == "__main__":
    main()
