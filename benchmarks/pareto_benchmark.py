"""Price-aware routing on RouterBench, side by side in one run, every method read on the same preference grid
(cost weight 0 to 1 in steps of 0.02, 51 points) and every trained one with ``--seeds`` seeds: LORPMAN (one
checkpoint per seed; and with multi-mix), the same network trained on quality alone plus a price term, one
scalarised router trained per grid preference, today's router re-ranked by price, kNN / logistic p(correct) and
the kind prior plus a price term, RouteLLM's GPT-4 vs Mixtral threshold router; every single LLM and the oracle,
on the three test files pooled; then leave-one-task-out (train on two tasks, test on the third).

Prints, per run and per method over its seeds (mean ± standard deviation): the hypervolume, the cheapest cost
(as % of GPT-4's) reaching 95% of GPT-4's accuracy (83.0%) and GPT-4's own accuracy (87.4%), and training time.
Writes JSON + PNG fronts into --out.

    .venv/bin/python benchmarks/pareto_benchmark.py --data-dir ../shared/datasets/routerbench --out reports/pareto
"""

from __future__ import annotations

import argparse
import statistics
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
from training.pareto_baselines import (
    TestSet,
    correctness_front,
    kind_prior_front,
    quality_head_front,
    routellm_front,
    scalarised_front,
    static_price_front,
)

GPT4 = "gpt-4-1106-preview"


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
    parser.add_argument("--scalarised-seeds", type=int, default=None, help="default: --seeds (51 routers a seed)")
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
    seeds = range(args.seeds)
    runs: dict[str, list[tuple[int | None, Any]]] = {  # method -> (seed, build) per run
        "LORPMAN, one checkpoint": [(seed, lambda seed=seed: lorpman(train, test, args.encoder, cache_dir, seed))
                                    for seed in seeds],
        "LORPMAN + multi-mix K=3": [(seed, lambda seed=seed: lorpman(train, test, args.encoder, cache_dir, seed,
                                                                      mix_k=3)) for seed in seeds],
        "quality-only head + price (no conditioning)": [
            (seed, lambda seed=seed: quality_head_front(train, test, cache_dir, seed)) for seed in seeds],
        "static-price re-rank (today's router)": [
            (seed, lambda seed=seed: static_price_front(train, test, cache_dir, seed)) for seed in seeds],
        "kind prior: accuracy per task + price": [(None, lambda: kind_prior_front(train, test, encoder))],
        "logistic p(correct) + price": [(None, lambda: correctness_front("logistic", train, test, encoder))],
        "kNN p(correct) + price": [(None, lambda: correctness_front("knn", train, test, encoder))],
        "RouteLLM threshold (GPT-4 vs Mixtral)": [(None, lambda: routellm_front(train, test, encoder))],
    }
    if not args.skip_scalarised:
        runs["scalarised: 51 routers, one per grid preference"] = [
            (seed, lambda seed=seed: scalarised_front(train, test, cache_dir, seed=seed)[0])
            for seed in range(args.scalarised_seeds if args.scalarised_seeds is not None else args.seeds)]
    rows: dict[str, Any] = {}
    fronts: dict[str, list[FrontPoint]] = {}
    for method, builds in runs.items():
        measured = []
        for seed, build in builds:
            started = time.monotonic()
            points = build()
            name = method if seed is None else f"{method}, seed {seed}"
            measured.append(describe(name, points, test, time.monotonic() - started))
            fronts[name] = points
        rows[method] = {"runs": measured, **spread(measured)}
    print("\nper method, mean ± standard deviation over its seeds (cost as % of GPT-4's; 'reached n/N': seeds that "
          "reach the accuracy at all)")
    for method, row in rows.items():
        print(f"{method:<48} HV {row['hypervolume']}   95% of GPT-4's accuracy: {row['at_95pct_gpt4_accuracy']}   "
              f"GPT-4's accuracy: {row['at_gpt4_accuracy']}", flush=True)
    first = fronts["LORPMAN, one checkpoint, seed 0"]
    baselines = {name: points for name, points in fronts.items() if name != "LORPMAN, one checkpoint, seed 0"}
    report = front_report(first, test.llm_names, test.outcomes, test.costs, baselines)
    report["summary"] = rows
    report["leave_one_task_out"] = leave_one_task_out(train, tests, encoder, cache_dir, args.encoder)
    args.out.mkdir(parents=True, exist_ok=True)
    png = write_front(report, args.out / "front.json")
    print(f"wrote {args.out / 'front.json'} and {png}")


def lorpman(train: list[RoutingDataset], test: TestSet, encoder_spec: str, cache_dir: Path, seed: int,
            mix_k: int = 0) -> list[FrontPoint]:
    result = train_pareto_router(train, ParetoTrainingConfig(encoder=encoder_spec, seed=seed, mix_k=mix_k),
                                 cache_dir=cache_dir, progress=False)
    return route_front(result.router, test.encoded, test.outcomes, test.costs, FRONT_PREFERENCES)


def spread(runs: list[dict[str, Any]]) -> dict[str, str]:
    """Mean ± standard deviation of each figure over the runs (a cost point over the runs that reach it)."""
    def summary(values: list[float], reached: int) -> str:
        if not values:
            return f"not reached (0/{len(runs)})"
        deviation = statistics.stdev(values) if len(values) > 1 else 0.0
        text = f"{statistics.fmean(values):.1f}% ± {deviation:.1f}"
        return text if reached == len(runs) else f"{text} (reached {reached}/{len(runs)})"

    volumes = [run["hypervolume"] for run in runs]
    out = {"hypervolume": f"{statistics.fmean(volumes):.3f} ± "
                          f"{statistics.stdev(volumes) if len(volumes) > 1 else 0.0:.3f}"}
    for label in ("at_95pct_gpt4_accuracy", "at_gpt4_accuracy"):
        values = [run[label]["pct_of_gpt4_cost"] for run in runs if run[label] is not None]
        out[label] = summary(values, len(values))
    return out


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
