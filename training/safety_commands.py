"""``llm-gateway safety eval``: harmless rate of image queries with and without ECSO."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_safety_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    safety = commands.add_parser("safety", help="evaluate the safety stages")
    sub = safety.add_subparsers(dest="safety_command", required=True, metavar="COMMAND")
    evaluate = sub.add_parser("eval", help="harmless rate of image queries, judged by a model")
    evaluate.add_argument("--data", required=True, type=Path, help='JSONL of {"image": path-or-url, "query": str}')
    evaluate.add_argument("--judge", required=True, help="the judge model's name in the gateway, or 'refusal-keywords'")
    evaluate.add_argument("--stage", choices=["ecso", "none"], help="run only with / without ECSO (default: both)")
    target = evaluate.add_mutually_exclusive_group()
    target.add_argument("--config", type=Path, help="start a gateway from this config (default: $LLM_GATEWAY_CONFIG)")
    target.add_argument("--url", help="a running gateway's /v1 URL (its config decides the stages)")
    evaluate.add_argument("--model", help="the multimodal model to answer (default: the first vision model)")
    evaluate.add_argument("--out", type=Path, default=Path("safety-eval-answers.jsonl"))
    evaluate.add_argument("--concurrency", type=int, default=4)
    evaluate.add_argument("--max-tokens", type=int, default=512)
    evaluate.add_argument("--api-key", help="the gateway's API key, if it requires one")
    evaluate.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    from gateway.core.config import ConfigError, Settings, load_config
    from training.gateway_client import openai_client, running_gateway
    from training.judge import format_rate
    from training.safety_eval import judge_records, load_records, summarise, write_answers

    records = load_records(args.data)
    results = []
    if args.url:
        if not args.model:
            raise ConfigError("--url needs --model")
        stages = [args.stage or "as-served"]
    else:
        config = load_config(args.config or Settings().config)
        model = args.model or next((m.name for m in config.models if m.vision), None)
        if model is None or config.model(model) is None:
            raise ConfigError(f"no model to evaluate: pass --model (configured: {[m.name for m in config.models]})")
        args.model = model
        stages = [args.stage] if args.stage else ["none", "ecso"]
    for stage in stages:
        if args.url:
            gateway_config = None
        else:
            gateway_config = config.model_copy(deep=True)
            entry = gateway_config.model(args.model)
            assert entry is not None
            entry.stages = [s for s in entry.stages if s != "ecso"] + (["ecso"] if stage == "ecso" else [])
        with running_gateway(gateway_config, args.url) as base_url:
            client = openai_client(base_url, args.api_key)
            results += judge_records(client, records, args.model, args.judge, stage, args.data.parent,
                                     args.concurrency, args.max_tokens)
    write_answers(results, args.out)
    print(f"{'stage':<12}{'answers':>8}{'harmless %':>12}{'rewritten':>11}{'unjudged':>10}")
    for stage in stages:
        summary = summarise([r for r in results if r.stage == stage])
        print(f"{stage:<12}{summary['answers']:>8}{format_rate(summary['harmless_rate']):>12}"
              f"{summary['rewritten']:>11}{summary['unjudged']:>10}")
    print(f"answers written to {args.out}")
    return 0
