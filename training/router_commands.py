"""``llm-gateway router ...`` commands: train, eval (checkpoint or baseline)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gateway.core.config import Settings


def add_router_commands(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    router = commands.add_parser("router", help="train and evaluate routers")
    sub = router.add_subparsers(dest="router_command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a router: RouterDC (quality) or LORPMAN (quality and cost)")
    train.add_argument("--data", nargs="+", required=True, metavar="FILE",
                       help="training files: RouterDC JSON list or JSONL (FILE:SCORING sets the scoring rule), or "
                            "RouterBench CSV (.csv / .csv.gz, with prices)")
    train.add_argument("--objective", choices=["quality", "pareto"], default="quality",
                       help="quality: RouterDC (default); pareto: one LORPMAN router for every quality/cost "
                            "preference (needs prices per question)")
    train.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    train.add_argument("--mode", choices=["frozen", "finetune"], default="frozen")
    train.add_argument("--steps", type=int, default=None, help="optimiser steps (default 1000)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--encoder", default=None, help="static:minilm (default), minilm, onnx:minilm, "
                       "onnx-int8:minilm, e5-small, a+b, static:DIR, onnx:DIR or a local model dir; "
                       "tail:SPEC reads the end of long prompts (tail:onnx-int8:minilm)")
    train.add_argument("--batch-size", type=int, default=None)
    train.add_argument("--lr", type=float, default=None, help="default 1e-3 frozen, 5e-5 finetune")
    train.add_argument("--lam", type=float, default=None, help="weight of the sample-sample loss (default 1)")
    train.add_argument("--top-k", type=int, default=None)
    train.add_argument("--last-k", type=int, default=None)
    train.add_argument("--val-fraction", type=float, default=None)
    train.add_argument("--samples-per-task", type=int, default=None)
    train.add_argument("--mix-k", type=int, default=None, help="multi-mix: interpolations per pair (0 = off)")
    train.add_argument("--experts", type=int, default=None, help="MoCE: cluster-conditional expert heads")
    train.add_argument("--ensemble", type=int, default=None, help="heads trained with consecutive seeds")
    train.add_argument("--no-cluster-prior", dest="cluster_prior", action="store_false", default=None,
                       help="rank by the RouterDC heads alone (the paper's router)")
    train.add_argument("--fallback", choices=["calibrated", "off"], default=None,
                       help="prior fallback: calibrated on held-out training tasks (default) or off")
    train.set_defaults(handler=_train)

    front = sub.add_parser("front", help="the quality-cost front of a pareto checkpoint over a preference sweep")
    front.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint from --objective pareto")
    front.add_argument("--test", nargs="+", required=True, metavar="FILE", help="test files with prices")
    front.add_argument("--json", type=Path, help="write the front here, and a PNG plot next to it")
    front.add_argument("--baselines", choices=["quick", "all", "none"], default="quick",
                       help="baselines on the same test set, built from the checkpoint's training files: quick "
                            "(static-price re-rank, kNN, logistic, kind prior, RouteLLM threshold); all adds the "
                            "quality-only head and one scalarised router per grid preference (tens of minutes)")
    front.set_defaults(handler=_front)

    evaluate = sub.add_parser("eval", help="evaluate a checkpoint or a baseline on test files")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a router checkpoint directory")
    source.add_argument("--baseline", help="a registered router name (random, fixed, best-single, knn, task-best, "
                                           "task-classifier, cosine-classifier, routerdc-paper, routerdc), built "
                                           "from --data")
    evaluate.add_argument("--data", nargs="+", metavar="FILE", help="training files for --baseline")
    evaluate.add_argument("--test", nargs="+", required=True, metavar="FILE:SCORING",
                          help="test files, SCORING = probability or multi_attempt (inferred when left out)")
    evaluate.add_argument("--json", type=Path, help="write the report here, and a PNG chart next to it")
    evaluate.add_argument("--model", help="fixed: the LLM to always pick")
    evaluate.add_argument("--k", type=int, default=10, help="knn: neighbours")
    evaluate.add_argument("--encoder", default=None, help="knn / task-classifier / trained baselines: encoder spec "
                          "(default: static:minilm)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--steps", type=int, default=None, help="trained baselines: optimiser steps")
    evaluate.set_defaults(handler=_eval)

    calibrate = sub.add_parser("calibrate", help="share of calls per model and expected accuracy per cost weight")
    calibrate.add_argument("--config", required=True, type=Path, help="the gateway config (models, costs, router)")
    calibrate.add_argument("--data", nargs="+", required=True, metavar="FILE:SCORING", help="labelled files")
    calibrate.add_argument("--weights", nargs="+", type=float, default=[0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0])
    calibrate.add_argument("--json", type=Path, help="also write the rows as JSON")
    calibrate.set_defaults(handler=_calibrate)

    collect = sub.add_parser("collect", help="build routing data from your own models (ask, grade, write) or from "
                                             "the feedback on routed traffic (--from-store)")
    collect.add_argument("--config", type=Path, help="the gateway config with the models (with --from-store: its "
                                                     "router.model_map names the columns as the checkpoint's LLMs)")
    collect.add_argument("--questions", type=Path,
                         help='JSONL of {"question", "answer", "grader": exact|number|choice|python-tests, "task"?}')
    collect.add_argument("--models", nargs="+", help="configured models to ask (with --from-store: the columns to "
                                                     "write; default every model that answered)")
    collect.add_argument("--from-store", metavar="URL", help="the usage store (sqlite:///PATH, postgresql://...): "
                         "routed requests with feedback become a RouterBench CSV with partial labels (--out .csv)")
    collect.add_argument("--out", required=True, type=Path, help="RouterDC-format JSON to write (--from-store: a "
                                                                 "RouterBench .csv or .csv.gz)")
    collect.add_argument("--samples", type=int, default=1, help="answers per pair (N > 1: sampled, score = share "
                                                                "correct, like multi_attempt)")
    collect.add_argument("--concurrency", type=int, default=4)
    collect.add_argument("--temperature", type=float, default=0.7, help="sampling temperature when --samples > 1")
    collect.add_argument("--max-tokens", type=int, default=512)
    collect.set_defaults(handler=_collect)
    return router


def _train(args: argparse.Namespace) -> int:
    from routers.data import load_routing_files

    if args.objective == "pareto":
        return _train_pareto(args, load_routing_files(args.data))
    from training.routerdc import RouterTrainingConfig, save_trained_router, train_router

    overrides = {name: value for name, value in {
        "mode": args.mode, "steps": args.steps, "seed": args.seed, "encoder": args.encoder,
        "batch_size": args.batch_size, "learning_rate": args.lr, "lam": args.lam, "top_k": args.top_k,
        "last_k": args.last_k, "val_fraction": args.val_fraction, "samples_per_task": args.samples_per_task,
        "mix_k": args.mix_k, "experts": args.experts, "ensemble": args.ensemble, "cluster_prior": args.cluster_prior,
        "fallback": args.fallback,
    }.items() if value is not None}
    config = RouterTrainingConfig(**overrides)
    datasets = load_routing_files(args.data)
    print(f"training RouterDC ({config.mode}, encoder {config.encoder}) on "
          + ", ".join(f"{d.task} ({len(d)}, {d.scoring})" for d in datasets), file=sys.stderr)
    result = train_router(datasets, config, cache_dir=Settings().cache_dir)
    save_trained_router(result, args.out)
    validation = result.validation
    decision = result.router.decision
    print(f"best validation step {result.best_step}; validation, task-averaged accuracy {validation['average']:.2f} ("
          + ", ".join(f"{t} {a:.2f}" for t, a in validation["tasks"].items()) + ")")
    if result.router.cluster_prior is not None:
        print(f"cluster prior over {len(result.router.cluster_prior.names)} clusters; heads' weight "
              f"{decision.refine_weight:g}; fallback to {result.router.llm_names[decision.prior or 0]} unless the "
              f"expected gain is at least {decision.min_gain:g}")
    print(f"trained in {result.seconds:.1f} s; checkpoint written to {args.out}")
    return 0


def _train_pareto(args: argparse.Namespace, datasets: list) -> int:  # type: ignore[type-arg]
    from routers.checkpoint import save_router
    from training.pareto import MissingCostsError, ParetoTrainingConfig, check_costs, train_pareto_router

    try:
        check_costs(datasets)
    except MissingCostsError as exc:
        print(f"llm-gateway router train: {exc}", file=sys.stderr)
        return 2
    overrides = {name: value for name, value in {
        "steps": args.steps, "seed": args.seed, "encoder": args.encoder, "batch_size": args.batch_size,
        "learning_rate": args.lr, "mix_k": args.mix_k}.items() if value is not None}
    config = ParetoTrainingConfig(**overrides)
    print(f"training LORPMAN (encoder {config.encoder}) on "
          + ", ".join(f"{d.task} ({len(d)}, {int((~d.scored).sum())} unscored cells)" for d in datasets),
          file=sys.stderr)
    result = train_pareto_router(datasets, config, cache_dir=Settings().cache_dir)
    save_router(args.out, result.router, metadata={"history": result.history})
    print(f"best validation step {result.best_step}: hypervolume {result.validation_hypervolume:.4f}; trained in "
          f"{result.seconds:.1f} s; checkpoint written to {args.out}")
    return 0


def _front(args: argparse.Namespace) -> int:
    from routers.checkpoint import load_router, read_metadata
    from routers.data import load_routing_files
    from routers.encoders import with_cache
    from routers.pareto import ParetoRouter
    from training.front import FRONT_PREFERENCES, format_front, front_report, route_front, write_front
    from training.pareto import MissingCostsError, check_costs
    from training.pareto_baselines import QUICK_BASELINES, TestSet, quality_head_front, scalarised_front

    cache_dir = Settings().cache_dir
    router = load_router(args.checkpoint)
    if not isinstance(router, ParetoRouter):
        print(f"llm-gateway router front: {args.checkpoint} is a quality-only router; train one with "
              "--objective pareto", file=sys.stderr)
        return 2
    tests = load_routing_files(args.test)
    try:
        check_costs(tests)
    except MissingCostsError as exc:
        print(f"llm-gateway router front: {exc}", file=sys.stderr)
        return 2
    encoder = with_cache(router.encoder, cache_dir / "embeddings")
    test = TestSet(tests, encoder)
    points = route_front(router, test.encoded, test.outcomes, test.costs, FRONT_PREFERENCES)
    baselines = {}
    if args.baselines != "none":
        train = load_routing_files(read_metadata(args.checkpoint).get("train_files", []))
        for name, build in QUICK_BASELINES.items():
            baselines[name] = build(train, test, encoder, cache_dir)
        if args.baselines == "all":
            baselines["quality-only head + price"] = quality_head_front(train, test, cache_dir)
            baselines["scalarised, one router per grid preference"] = scalarised_front(train, test, cache_dir)[0]
    report = front_report(points, router.llm_names, test.outcomes, test.costs, baselines)
    print(format_front(report))
    if args.json:
        png = write_front(report, args.json)
        print(f"wrote {args.json} and {png}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from routers.baselines import best_single_llm
    from routers.checkpoint import load_router, read_metadata
    from routers.data import load_routing_files
    from routers.encoders import with_cache
    from routers.evaluation import evaluate, format_table, write_report
    from training.router_registry import RouterOptions, build_router

    cache_dir = Settings().cache_dir
    tests = load_routing_files(args.test)
    if args.checkpoint:
        metadata = read_metadata(args.checkpoint)
        router = load_router(args.checkpoint)
        router.encoder = with_cache(router.encoder, cache_dir / "embeddings")
        best_single = metadata.get("best_single") or tests[0].llm_names[0]
        name = f"routerdc ({args.checkpoint})"
    else:
        if not args.data:
            raise SystemExit("llm-gateway router eval: --baseline needs --data TRAIN_FILES")
        train = load_routing_files(args.data)
        options = RouterOptions(seed=args.seed, model=args.model, k=args.k, steps=args.steps, cache_dir=cache_dir,
                                **({"encoder": args.encoder} if args.encoder else {}))
        router = build_router(args.baseline, train, options)
        best_single = best_single_llm(train)
        name = args.baseline
    started = time.monotonic()
    report = evaluate(router, tests, best_single, name)
    print(format_table(report))
    print(f"({sum(len(t) for t in tests)} test questions routed in {time.monotonic() - started:.1f} s)")
    if args.json:
        json_path, png_path = write_report(report, args.json)
        print(f"wrote {json_path} and {png_path}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from gateway.core.config import ConfigError, load_config
    from gateway.core.metrics import GatewayMetrics
    from gateway.engine.routing import RoutedModel
    from routers.checkpoint import load_router
    from routers.data import load_routing_files
    from training.calibration import calibrate, format_calibration

    config = load_config(args.config)
    if config.router is None:
        raise ConfigError(f"{args.config}: calibrate needs a 'router:' section")
    routed = RoutedModel(config.router, config, load_router(config.router.checkpoint), GatewayMetrics())
    costs = {m.name: m.cost_per_1k_tokens or 0.0 for m in config.models}
    rows = calibrate(routed, load_routing_files(args.data), args.weights, costs)
    print(format_calibration(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=2))
    routed.close()
    return 0


def _collect_from_store(args: argparse.Namespace) -> int:
    from gateway.core.config import load_config
    from gateway.engine.usage import UsageStore, store_url
    from training.traffic import scored_answers, write_routerbench_csv

    if not args.out.name.endswith((".csv", ".csv.gz")):
        raise ValueError(f"--out {args.out}: --from-store writes a RouterBench CSV (.csv or .csv.gz)")
    names: dict[str, str] = {}
    if args.config is not None:
        config = load_config(args.config)
        if config.router is not None:  # configured model -> the checkpoint LLM it stands for
            names = {model: llm for llm, model in config.router.model_map.items()}
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.engine.usage.store import EmptyStore, StoreUnavailable

    try:
        store = UsageStore(store_url(args.from_store, Settings().cache_dir), read_only=True)
    except SQLAlchemyError as exc:
        raise ValueError(f"--from-store: {str(exc).splitlines()[0][:300]}") from None
    try:
        answers = scored_answers(store)
    except EmptyStore:
        answers = []
    except (StoreUnavailable, SQLAlchemyError) as exc:
        raise ValueError(f"cannot read the usage store: {str(exc).splitlines()[0][:300]}") from None
    finally:
        store.close()
    if not answers:
        print(f"llm-gateway: no routed request with feedback in {args.from_store}", file=sys.stderr)
        return 1
    counts = write_routerbench_csv(answers, args.out, models=args.models, names=names)
    print(f"{counts['answers']} scored answers to {counts['questions']} questions written to {args.out}"
          + (f" ({counts['skipped_models']} by models left out)" if counts["skipped_models"] else "")
          + "; train on it with: llm-gateway router train --objective pareto --data ... " + str(args.out))
    return 0


def _collect(args: argparse.Namespace) -> int:
    import asyncio

    if args.from_store:
        return _collect_from_store(args)
    missing = [flag for flag, value in (("--config", args.config), ("--questions", args.questions),
                                        ("--models", args.models)) if not value]
    if missing:
        raise ValueError(f"router collect needs {', '.join(missing)} (or --from-store URL)")

    from gateway.core.config import load_config
    from gateway.core.logs import configure_logging
    from training.collect import CollectOptions, IncompleteCollection, collect, format_summary, load_questions

    configure_logging("warning")
    config = load_config(args.config)
    questions = load_questions(args.questions)
    options = CollectOptions(models=args.models, samples=args.samples, concurrency=args.concurrency,
                             temperature=args.temperature, max_tokens=args.max_tokens)
    started = time.monotonic()
    try:
        summary = asyncio.run(collect(config, questions, options, args.out, Settings().cache_dir))
    except IncompleteCollection as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    print(f"{summary['questions']} questions x {len(args.models)} models x {args.samples} samples; "
          f"{time.monotonic() - started:.1f} s; written to {args.out}")
    return 0
