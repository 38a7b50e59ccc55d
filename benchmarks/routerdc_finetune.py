"""Do the RouterDC heads earn their place once the encoder is fine-tuned with the paper's two contrastive losses?

    .venv/bin/python benchmarks/routerdc_finetune.py --data-dir ../shared/datasets/routerdc --out reports/finetune \
        [--steps 300] [--seeds 1] [--loto] [--variants frozen finetune finetune-scores]

Per configuration, side by side in one run:
- **within-task AUC** of the RouterDC heads' scores on the test files (per task and LLM: does the score tell the
  questions the LLM gets right from those it gets wrong; 0.5 = no per-question signal), before (frozen static
  encoder) and after fine-tuning;
- **ID**: trained on the five training files, the heads alone (the paper's router) and the default router (task
  prior, the heads added with the weight validation picks, calibrated fallback) on the five test files;
- **LOTO** (``--loto``): the default router trained on four tasks, tested on the fifth, against the best single LLM
  of the four;
- training time, and the decision latency of one query through the encoder (p50 over 200 test questions).

Fine-tuning is MiniLM-L6 (22M parameters) with every weight trained, batch 32, on 2 CPU cores: ~3.5 s a step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from gateway.core.config import Settings
from routers.baselines import best_single_llm
from routers.data import RoutingDataset, load_routing_files
from routers.encoders import with_cache
from routers.evaluation import evaluate, within_task_auc
from training.routerdc import RouterTrainingConfig, train_router

TESTS = [("mmlu_test.json", "probability"), ("gsm8k-test.json", "multi_attempt"), ("cmmlu_test.json", "probability"),
         ("arc_challenge_test.json", "probability"), ("humaneval_test.json", "multi_attempt")]
TRAINS = ["mmlu_train.json", "gsm8k-train.json", "cmmlu_train.json", "arc_challenge_train.json",
          "humaneval_train.json"]


def configurations(steps: int) -> dict[str, dict[str, Any]]:
    finetune = {"mode": "finetune", "encoder": "minilm", "steps": steps, "batch_size": 32, "eval_every": 50,
                "learning_rate": 5e-5}
    return {
        "frozen": {},  # the default: static:minilm, frozen, heads trained in seconds
        "finetune": finetune,  # the paper: the encoder trains with both losses, outcomes as targets
        "finetune-scores": {**finetune, "train_on": "scores"},  # the paper's code: raw per-LLM scores as targets
        "finetune-negatives": {**finetune, "last_k": 4, "negatives_per_sample": 6},  # more negatives
    }


def heads_only(router: Any) -> Any:
    """The same trained router without its prior: the heads' logits rank (the paper's router)."""
    import copy

    bare = copy.copy(router)
    bare.cluster_prior = None
    return bare


def auc_by_task(router: Any, tests: list[RoutingDataset]) -> dict[str, float]:
    return {d.task: within_task_auc(router.head_logits(router.encoder.encode(d.questions)), d) for d in tests}


def latency_ms(router: Any, questions: list[str]) -> float:
    timings = []
    for question in questions:
        started = time.perf_counter()
        router.score([question])
        timings.append(1000 * (time.perf_counter() - started))
    return float(np.percentile(timings, 50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("reports/finetune"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--loto", action="store_true", help="also train on four tasks and test on the fifth")
    parser.add_argument("--variants", nargs="+", default=["frozen", "finetune"])
    args = parser.parse_args()

    cache_dir = Settings().cache_dir
    train = load_routing_files([args.data_dir / name for name in TRAINS])
    tests = load_routing_files([f"{args.data_dir / name}:{scoring}" for name, scoring in TESTS])
    best = best_single_llm(train)
    probe = [q for d in tests for q in d.questions[:40]]
    summary: dict[str, Any] = {}
    for name in args.variants:
        overrides = configurations(args.steps)[name]
        runs = []
        for seed in range(args.seeds):
            trained = train_router(train, RouterTrainingConfig(seed=seed, **overrides), cache_dir=cache_dir,
                                   progress=False)
            router = trained.router
            if overrides.get("mode") != "finetune":
                router.encoder = with_cache(router.encoder, cache_dir / "embeddings")
            default = evaluate(router, tests, best, name)
            alone = evaluate(heads_only(router), tests, best, f"{name} heads")
            run = {"seed": seed, "training_seconds": round(trained.seconds, 1), "best_step": trained.best_step,
                   "refine_weight": router.decision.refine_weight,
                   "id_default": default.average.router, "id_heads": alone.average.router,
                   "tasks_default": {t: a.router for t, a in default.tasks.items()},
                   "tasks_heads": {t: a.router for t, a in alone.tasks.items()},
                   "auc": auc_by_task(router, tests), "decision_ms_p50": latency_ms(router, probe)}
            run["auc_mean"] = float(np.mean(list(run["auc"].values())))
            runs.append(run)
            print(f"{name} seed {seed}: ID default {run['id_default']:.2f} (heads weight {run['refine_weight']}), "
                  f"heads alone {run['id_heads']:.2f}; within-task AUC {run['auc_mean']:.3f} "
                  f"({', '.join(f'{t} {a:.3f}' for t, a in run['auc'].items())}); trained in "
                  f"{run['training_seconds']} s (best step {run['best_step']}); decision p50 "
                  f"{run['decision_ms_p50']:.2f} ms", flush=True)
        entry: dict[str, Any] = {"runs": runs}
        for key in ("id_default", "id_heads", "auc_mean"):
            values = [r[key] for r in runs]
            entry[key] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        if args.loto:
            entry["loto"] = leave_one_task_out(train, tests, overrides, cache_dir)
            print(f"{name} LOTO (router − best single of the four): "
                  + ", ".join(f"{t} {r - b:+.2f} ({r:.2f})" for t, (r, b) in entry["loto"].items()), flush=True)
        summary[name] = entry
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{'configuration':<22}{'ID default':>14}{'ID heads alone':>18}{'within-task AUC':>18}")
    for name, entry in summary.items():
        print(f"{name:<22}{entry['id_default'][0]:>9.2f} ±{entry['id_default'][1]:>4.2f}"
              f"{entry['id_heads'][0]:>12.2f} ±{entry['id_heads'][1]:>4.2f}"
              f"{entry['auc_mean'][0]:>12.3f} ±{entry['auc_mean'][1]:>5.3f}")


def leave_one_task_out(train: list[RoutingDataset], tests: list[RoutingDataset], overrides: dict[str, Any],
                       cache_dir: Path) -> dict[str, tuple[float, float]]:
    results = {}
    for held_out in tests:
        seen = [t for t in train if t.task != held_out.task]
        router = train_router(seen, RouterTrainingConfig(seed=0, **overrides), cache_dir=cache_dir,
                              progress=False).router
        if overrides.get("mode") != "finetune":
            router.encoder = with_cache(router.encoder, cache_dir / "embeddings")
        accuracy = evaluate(router, [held_out], best_single_llm(seen), "loto").tasks[held_out.task]
        results[held_out.task] = (accuracy.router, accuracy.best_single)
    return results


if __name__ == "__main__":
    main()
