"""The RouterDC benchmark on this machine, every variant side by side in one run:

- ID: train on the five *_train files, test on the five test files (mean of seeds 0..N-1);
- leave-one-task-out (LOTO): train on four tasks, test on the fifth, against the best single LLM of the four
  (the honest stand-in for a kind of question never seen); seed 0;
- training time.

Variants: the paper's router (RouterDC heads alone) and each addition to it (multi-mix, MoCE experts, a seed
ensemble, no sample-sample loss, a lower temperature), the cluster prior without and with the calibrated
fallback (the default), and the baselines. Writes ``summary.json`` and one JSON + PNG report per variant.

    .venv/bin/python benchmarks/routerdc_benchmark.py --data-dir ../shared/datasets/routerdc --out reports/routerdc
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gateway.core.config import Settings
from routers.baselines import best_single_llm
from routers.data import RoutingDataset, load_routing_files
from routers.encoders import with_cache
from routers.evaluation import EvaluationReport, evaluate, write_report
from training.router_registry import RouterOptions, build_router
from training.routerdc import RouterTrainingConfig, train_router

TESTS = [("mmlu_test.json", "probability"), ("gsm8k-test.json", "multi_attempt"), ("cmmlu_test.json", "probability"),
         ("arc_challenge_test.json", "probability"), ("humaneval_test.json", "multi_attempt")]
TRAINS = ["mmlu_train.json", "gsm8k-train.json", "cmmlu_train.json", "arc_challenge_train.json",
          "humaneval_train.json"]
PAPER = {"cluster_prior": False}
VARIANTS: dict[str, dict[str, Any]] = {
    "routerdc-paper (heads only)": PAPER,
    "  + multi-mix K=5": {**PAPER, "mix_k": 5},
    "  + single mixup K=1": {**PAPER, "mix_k": 1},
    "  + MoCE 4 experts (cluster-conditional)": {**PAPER, "experts": 4},
    "  + ensemble of 3 seeds": {**PAPER, "ensemble": 3},
    "  λ=0 (no sample-sample loss)": {**PAPER, "lam": 0.0},
    "  temperature 0.2": {**PAPER, "temperature": 0.2},
    "task prior (soft task classifier), no fallback": {"fallback": "off"},
    "task prior + calibrated fallback (default)": {},
}


@dataclass
class Row:
    name: str
    seeds: list[float] = field(default_factory=list)  # ID task-averaged accuracy per seed
    tasks: dict[str, list[float]] = field(default_factory=dict)  # ID accuracy per task, per seed
    unseen: dict[str, tuple[float, float]] = field(default_factory=dict)  # task -> (router, best single of 4)
    seconds: list[float] = field(default_factory=list)

    def add(self, report: EvaluationReport) -> None:
        self.seeds.append(report.average.router)
        for task, accuracy in report.tasks.items():
            self.tasks.setdefault(task, []).append(accuracy.router)

    def to_dict(self) -> dict[str, Any]:
        return {"id_average": float(np.mean(self.seeds)), "id_seeds": self.seeds,
                "id_tasks": {t: float(np.mean(v)) for t, v in self.tasks.items()},
                "unseen": {t: {"router": r, "best_single_of_seen": b} for t, (r, b) in self.unseen.items()},
                "training_seconds": self.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("reports/routerdc"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--encoder", default="static:minilm")
    parser.add_argument("--variants", nargs="+", help="substrings of the variant names to run (default: all)")
    parser.add_argument("--extra-encoders", nargs="*", default=[],
                        help="also run the default variant on these encoders (e.g. minilm: slow to encode once)")
    args = parser.parse_args()

    cache_dir = Settings().cache_dir
    train = load_routing_files([args.data_dir / name for name in TRAINS])
    tests = load_routing_files([f"{args.data_dir / name}:{scoring}" for name, scoring in TESTS])
    rows: list[Row] = []
    variants = {name: {**overrides, "encoder": args.encoder} for name, overrides in VARIANTS.items()
                if not args.variants or any(v in name for v in args.variants)}
    for encoder in args.extra_encoders:
        variants[f"default, encoder {encoder}"] = {"encoder": encoder}
    for name, overrides in variants.items():
        row = Row(name.strip())
        for seed in range(args.seeds):
            trained = train_router(train, RouterTrainingConfig(seed=seed, **overrides), cache_dir=cache_dir,
                                   progress=False)
            row.seconds.append(round(trained.seconds, 1))
            trained.router.encoder = with_cache(trained.router.encoder, cache_dir / "embeddings")
            report = evaluate(trained.router, tests, best_single_llm(train), row.name)
            row.add(report)
            write_report(report, args.out / f"{_slug(row.name)}-seed{seed}.json")
        row.unseen = unseen_tasks(train, tests, overrides, cache_dir)
        rows.append(row)
        print(format_row(row), flush=True)
    rows += baselines(train, tests, cache_dir, args.encoder)
    print("\n" + format_table(rows, tests))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps({r.name: r.to_dict() for r in rows}, indent=2))


def unseen_tasks(train: list[RoutingDataset], tests: list[RoutingDataset], overrides: dict[str, Any],
                 cache_dir: Path) -> dict[str, tuple[float, float]]:
    """Per task: trained on the other four (seed 0), tested on it, beside the best single LLM of the four."""
    results = {}
    for held_out in tests:
        seen = [t for t in train if t.task != held_out.task]
        trained = train_router(seen, RouterTrainingConfig(seed=0, **overrides), cache_dir=cache_dir, progress=False)
        trained.router.encoder = with_cache(trained.router.encoder, cache_dir / "embeddings")
        accuracy = evaluate(trained.router, [held_out], best_single_llm(seen), "unseen").tasks[held_out.task]
        results[held_out.task] = (accuracy.router, accuracy.best_single)
    return results


def baselines(train: list[RoutingDataset], tests: list[RoutingDataset], cache_dir: Path, encoder: str) -> list[Row]:
    rows = []
    for name in ("best-single", "task-best", "task-classifier", "random", "knn"):
        row = Row(f"baseline: {name}")
        started = time.monotonic()
        row.add(evaluate(build_router(name, train, RouterOptions(cache_dir=cache_dir, encoder=encoder)), tests,
                         best_single_llm(train), name))
        row.seconds.append(round(time.monotonic() - started, 1))
        for held_out in tests:
            seen = [t for t in train if t.task != held_out.task]
            router = build_router(name, seen, RouterOptions(cache_dir=cache_dir, encoder=encoder))
            accuracy = evaluate(router, [held_out], best_single_llm(seen), name).tasks[held_out.task]
            row.unseen[held_out.task] = (accuracy.router, accuracy.best_single)
        rows.append(row)
    oracle = Row("oracle (best LLM per question)")
    report = evaluate(build_router("best-single", train, RouterOptions()), tests, best_single_llm(train), "oracle")
    oracle.seeds.append(report.average.oracle)
    oracle.tasks = {t: [a.oracle] for t, a in report.tasks.items()}
    rows.append(oracle)
    return rows


def format_row(row: Row) -> str:
    tasks = "  ".join(f"{t} {np.mean(v):.2f}" for t, v in row.tasks.items())
    unseen = "  ".join(f"{t} {r - b:+.2f}" for t, (r, b) in row.unseen.items())
    return (f"{row.name}: ID {np.mean(row.seeds):.2f} (seeds {', '.join(f'{s:.2f}' for s in row.seeds)}; {tasks}) | "
            f"unseen vs best single of the four: {unseen} | training {row.seconds} s")


def format_table(rows: list[Row], tests: list[RoutingDataset]) -> str:
    tasks = [t.task for t in tests]
    short = {"arc_challenge": "arc-c", "humaneval": "humanev"}
    header = (f"{'router':<48}" + "".join(f"{short.get(t, t):>8}" for t in tasks) + f"{'ID avg':>8}{'seeds':>20}"
              + "  | unseen task: router − best single of the four" + "".join(f"{short.get(t, t):>8}" for t in tasks)
              + f"{'train s':>9}")
    lines = [header]
    for row in rows:
        seeds = "/".join(f"{s:.1f}" for s in row.seeds) if len(row.seeds) > 1 else ""
        unseen = "".join(f"{row.unseen[t][0] - row.unseen[t][1]:>+8.2f}" if t in row.unseen else f"{'':>8}"
                         for t in tasks)
        lines.append(f"{row.name:<48}" + "".join(f"{np.mean(row.tasks[t]):>8.2f}" for t in tasks)
                     + f"{np.mean(row.seeds):>8.2f}{seeds:>20}" + f"  | {'':<45}" + unseen
                     + f"{np.mean(row.seconds) if row.seconds else 0:>9.1f}")
    return "\n".join(lines)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


if __name__ == "__main__":
    main()
