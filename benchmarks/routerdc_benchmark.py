"""The RouterDC benchmark on this machine: train on the five *_train files, evaluate on the five test files,
for RouterDC (frozen encoders; optionally a short fine-tune run) and every baseline. Prints one table per
router, the training times and a summary; writes JSON + PNG reports into --out.

    .venv/bin/python benchmarks/routerdc_benchmark.py --data-dir ../shared/datasets/routerdc --out reports/routerdc
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gateway.config import Settings
from routers.baselines import best_single_llm
from routers.data import load_routing_files
from routers.encoders import with_cache
from routers.evaluation import evaluate, format_table, write_report
from training.router_registry import RouterOptions, build_router
from training.routerdc import RouterTrainingConfig, save_trained_router, train_router

TESTS = [("mmlu_test.json", "probability"), ("gsm8k-test.json", "multi_attempt"), ("cmmlu_test.json", "probability"),
         ("arc_challenge_test.json", "probability"), ("humaneval_test.json", "multi_attempt")]
TRAINS = ["mmlu_train.json", "gsm8k-train.json", "cmmlu_train.json", "arc_challenge_train.json",
          "humaneval_train.json"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("reports/routerdc"))
    parser.add_argument("--encoders", nargs="+", default=["minilm", "e5-small", "minilm+e5-small"])
    parser.add_argument("--seeds", type=int, default=3, help="RouterDC runs per encoder (seeds 0..N-1)")
    parser.add_argument("--finetune-steps", type=int, default=0, help="also fine-tune MiniLM this many steps")
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument("--leave-one-task-out", action="store_true",
                        help="also train on four tasks and test on the fifth (a task the router never saw)")
    args = parser.parse_args()

    cache_dir = Settings().cache_dir
    train = load_routing_files([args.data_dir / name for name in TRAINS])
    tests = load_routing_files([f"{args.data_dir / name}:{scoring}" for name, scoring in TESTS])
    best_single = best_single_llm(train)
    summary: dict[str, dict[str, float]] = {}

    def report(name: str, router, extra: str = "") -> None:  # type: ignore[no-untyped-def]
        started = time.monotonic()
        result = evaluate(router, tests, best_single, name)
        print(f"\n{format_table(result)}\n{extra}(routing {sum(len(t) for t in tests)} test questions took "
              f"{time.monotonic() - started:.1f} s)")
        write_report(result, args.out / f"{name}.json")
        summary[name] = {"average": result.average.router, **{t: a.router for t, a in result.tasks.items()}}

    for encoder in args.encoders:
        for seed in range(args.seeds):
            config = RouterTrainingConfig(encoder=encoder, seed=seed)
            trained = train_router(train, config, cache_dir=cache_dir, progress=False)
            save_trained_router(trained, args.out / f"checkpoint-{encoder}-seed{seed}")
            trained.router.encoder = with_cache(trained.router.encoder, cache_dir / "embeddings")
            report(f"routerdc-frozen-{encoder}-seed{seed}", trained.router,
                   f"trained in {trained.seconds:.1f} s (embeddings cached), best validation step "
                   f"{trained.best_step}, validation {trained.validation['average']:.2f}\n")
    if args.finetune_steps:
        config = RouterTrainingConfig(mode="finetune", steps=args.finetune_steps,
                                      eval_every=max(1, args.finetune_steps // 4))
        trained = train_router(train, config, cache_dir=cache_dir, progress=True)
        report("routerdc-finetune-minilm", trained.router,
               f"fine-tuned {args.finetune_steps} steps in {trained.seconds:.1f} s "
               f"({trained.seconds / args.finetune_steps:.1f} s per 64-query step incl. validation)\n")
    if not args.skip_baselines:
        options = RouterOptions(cache_dir=cache_dir)
        for name in ("random", "best-single", "knn", "cosine-classifier"):
            started = time.monotonic()
            router = build_router(name, train, options)
            report(name, router, f"built in {time.monotonic() - started:.1f} s\n")
    if args.leave_one_task_out:
        unseen_task_runs(train, tests, args.encoders[0], cache_dir, args.out / "unseen", summary)
    print("\nsummary (test accuracy, %):")
    for name, row in summary.items():
        print(f"  {name:<40} " + "  ".join(f"{column} {value:.2f}" for column, value in row.items()))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))


def unseen_task_runs(train, tests, encoder: str, cache_dir: Path, out: Path,  # type: ignore[no-untyped-def]
                     summary: dict[str, dict[str, float]]) -> None:
    """For each task: train RouterDC (seed 0) on the other four tasks' training files, test on its test file;
    best-single is also chosen from the other four tasks, so both face the task unseen."""
    for held_out in tests:
        seen = [t for t in train if t.task != held_out.task]
        trained = train_router(seen, RouterTrainingConfig(encoder=encoder, seed=0), cache_dir=cache_dir,
                               progress=False)
        trained.router.encoder = with_cache(trained.router.encoder, cache_dir / "embeddings")
        result = evaluate(trained.router, [held_out], best_single_llm(seen), f"routerdc-unseen-{held_out.task}")
        print(f"\n{format_table(result)}\n(trained on {', '.join(t.task for t in seen)})")
        write_report(result, out / f"unseen-{held_out.task}.json")
        row = result.tasks[held_out.task]
        summary[f"unseen-{held_out.task}"] = {"router": row.router, "best_single": row.best_single,
                                              "random": row.random, "oracle": row.oracle}


if __name__ == "__main__":
    main()
