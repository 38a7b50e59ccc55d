"""``llm-gateway train ...``: the alignment trainers (Sr-DPO family; AlignCoT/MoTE) and model soups."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_train_commands(commands: argparse._SubParsersAction) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    train = commands.add_parser("train", help="alignment trainers")
    sub = train.add_subparsers(dest="train_command", required=True, metavar="COMMAND")

    sr = sub.add_parser("sr-dpo", help="Sr-DPO / Sr-IPO / DPO / IPO on preference pairs (TRL)")
    sr.add_argument("--model", required=True, help="'embedded' (SmolLM2-135M-Instruct) or a model directory")
    sr.add_argument("--data", required=True, type=Path, help="JSONL(.gz): TRL {prompt, chosen, rejected} or HH-RLHF")
    sr.add_argument("--loss", choices=["sr-dpo", "sr-ipo", "dpo", "ipo"], default="sr-dpo")
    sr.add_argument("--beta", type=float, default=0.1)
    sr.add_argument("--lam", type=float, default=0.5, help="λ of the self-refinement margin")
    sr.add_argument("--lora", action="store_true", help="train a LoRA adapter (else full fine-tuning)")
    sr.add_argument("--out", required=True, type=Path)
    sr.add_argument("--steps", type=int, default=100)
    sr.add_argument("--batch-size", type=int, default=2)
    sr.add_argument("--lr", type=float, default=5e-5)
    sr.add_argument("--max-length", type=int, default=384)
    sr.add_argument("--held-out", type=int, default=100, help="pairs held out for the preference accuracy")
    sr.add_argument("--max-train-pairs", type=int, default=None)
    sr.add_argument("--seed", type=int, default=0)
    sr.add_argument("--prompt", default=None, help="the prompt p (default: the paper's)")
    sr.set_defaults(handler=_sr_dpo)

    data = sub.add_parser("aligncot-data", help="generate AlignCoT chains through the gateway (step skipping on)")
    _gateway_target(data)
    data.add_argument("--model", required=True, help="the base model that writes the chains")
    data.add_argument("--prompts", required=True, type=Path, help="HH-RLHF JSONL(.gz): harmful-leaning prompts")
    data.add_argument("--start", type=int, default=0, help="skip this many harmful prompts (keep held-out ones)")
    data.add_argument("--limit", type=int, default=200, help="harmful prompts to use")
    data.add_argument("--helpful", type=int, default=20, help="built-in helpful prompts to add")
    data.add_argument("--out", required=True, type=Path)
    data.add_argument("--max-tokens", type=int, default=256)
    data.add_argument("--no-skip", action="store_true",
                      help="write the whole chain for every prompt, even when the direct answer passes the check "
                           "(training data for every step when the base model's own check is lenient)")
    data.set_defaults(handler=_aligncot_data)

    mote = sub.add_parser("mote", help="MoTE SFT: one LoRA expert per AlignCoT step plus a shared expert")
    mote.add_argument("--model", required=True, help="'embedded' or a model directory")
    mote.add_argument("--data", required=True, type=Path, help="JSONL from train aligncot-data")
    mote.add_argument("--out", required=True, type=Path)
    mote.add_argument("--rank", type=int, default=16)
    mote.add_argument("--alpha", type=float, default=0.5, help="α: step expert vs shared expert")
    mote.add_argument("--token-rules", choices=["frozen-start", "paper"], default="frozen-start",
                      help="paper: learnable start/end step tokens the model predicts, question tokens mixed with a "
                           "random step expert; frozen-start: start tokens only, frozen, shared expert on the question")
    mote.add_argument("--lr", type=float, default=2e-4)
    mote.add_argument("--marker-lr", type=float, default=None,
                      help="--token-rules paper: learning rate of the marker embeddings (default: --lr)")
    mote.add_argument("--epochs", type=int, default=1)
    mote.add_argument("--steps", type=int, default=None, help="stop after N optimiser steps")
    mote.add_argument("--batch-size", type=int, default=4)
    mote.add_argument("--max-length", type=int, default=512)
    mote.add_argument("--skip-steps", type=float, default=0.0, metavar="P",
                      help="step skipping: train this share of the chains as their safe answer alone")
    mote.set_defaults(handler=_mote)

    evaluate = sub.add_parser("aligncot-eval", help="harmless rate and helpfulness: base, prompted chain, MoTE")
    _gateway_target(evaluate)
    evaluate.add_argument("--base", required=True, help="the base model")
    evaluate.add_argument("--experts", nargs=3, metavar="STEP=MODEL",
                          help="MoTE experts, e.g. analysis=smol-analysis guidance=smol-guidance answer=smol-answer")
    evaluate.add_argument("--mote", action="append", default=[], metavar="LABEL=DIR",
                          help="a 'train mote' run over --base (a local model), evaluated three ways: its step "
                               "adapters prompted, the adapters fed the trained sequence, the MoTE model as trained")
    evaluate.add_argument("--judge", required=True, help="the judge model, or 'refusal-keywords'")
    evaluate.add_argument("--prompts", required=True, type=Path, help="HH-RLHF JSONL(.gz)")
    evaluate.add_argument("--start", type=int, default=0, help="first held-out harmful prompt")
    evaluate.add_argument("--limit", type=int, default=50)
    evaluate.add_argument("--helpful", type=int, default=10, help="held-out helpful prompts (from the end of the "
                                                                  "built-in list)")
    evaluate.add_argument("--out", type=Path, default=Path("aligncot-eval.json"))
    evaluate.add_argument("--max-tokens", type=int, default=256)
    evaluate.add_argument("--no-skip", action="store_true",
                          help="run the whole chain for every prompt (measures the chain itself when the base "
                               "model's own check passes everything)")
    evaluate.set_defaults(handler=_aligncot_eval)

    soup = sub.add_parser("soup", help="MEHL-Soup: merge fine-tunes of one base into one model (learned affine "
                                       "coefficients, b members in memory at a time)",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    soup.add_argument("--base", required=True, help="the members' base: a model directory or 'smollm2-135m'")
    soup.add_argument("--members", required=True, nargs="+", type=Path, metavar="DIR",
                      help="PEFT LoRA adapter directories or full fine-tuned model directories")
    soup.add_argument("--data", required=True, type=Path, help="HH-RLHF-style JSONL(.gz) (or TRL preference "
                                                                "pairs): NLL on chosen, DPO on the pairs")
    soup.add_argument("--out", required=True, type=Path, help="report.json, metrics.jsonl, soup.png, model/")
    soup.add_argument("--model-batch", type=int, default=2, help="members held in memory at once (b)")
    soup.add_argument("--blocks", choices=["tensor", "layer"], default="tensor",
                      help="one coefficient per tensor (MEHL-Soup+) or per transformer layer")
    soup.add_argument("--objective", choices=["nll", "dpo"], default="nll")
    soup.add_argument("--max-examples", type=int, default=120, help="pairs the coefficients are fitted on")
    soup.add_argument("--test-examples", type=int, default=80, help="pairs held out from everything")
    soup.add_argument("--epochs", type=int, default=2, help="over the fitting pairs, per model batch")
    soup.add_argument("--lr", type=float, default=0.05, help="AdamW on the coefficients (warm-up, then cosine)")
    soup.add_argument("--no-normalise", dest="normalise", action="store_false",
                      help="raw directions θᵢ − c (default: unit norm per block, as MEHL-Soup's reference)")
    soup.add_argument("--batch-size", type=int, default=8)
    soup.add_argument("--max-length", type=int, default=256)
    soup.add_argument("--beta", type=float, default=0.1, help="DPO's β (--objective dpo)")
    soup.add_argument("--baselines", nargs="*", default=["greedy", "peft"], choices=["greedy", "peft", "new-lora"],
                      help="beside best single and uniform (always); new-lora trains a LoRA on the fitting split "
                           "(longer than the soup itself on a CPU)")
    soup.add_argument("--seed", type=int, default=0)
    soup.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                      help="the model's matmuls while fitting and judging: bf16 autocast (~2.5x faster on a CPU "
                           "with AVX-512 BF16 or AMX), fp32, or auto (bf16 where the CPU has it)")
    soup.set_defaults(handler=_soup)
    return sub


def _soup(args: argparse.Namespace) -> int:
    from training.soup.mehl import SoupSettings
    from training.soup.run import SoupRun, run_soup

    if args.model_batch < 1 or args.epochs < 1:
        raise ValueError("--model-batch and --epochs must be at least 1")
    settings = SoupSettings(model_batch=args.model_batch, blocks=args.blocks, objective=args.objective,
                            epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size, beta=args.beta,
                            seed=args.seed, normalise=args.normalise, precision=args.precision)
    report = run_soup(SoupRun(base=args.base, members=args.members, data=args.data, out=args.out, settings=settings,
                              max_examples=args.max_examples, test_examples=args.test_examples,
                              max_length=args.max_length, baselines=tuple(args.baselines)))
    rows = [("soup", report["soup"]), ("uniform", report["uniform"]),
            (f"best single ({report['best_single']['name']})", report["best_single"])]
    rows += [(name, report[name]) for name in ("greedy", "peft_ties", "peft_dare_linear", "peft_svd", "new_lora")
             if name in report and "fit_nll" in report[name]]
    rows += [(f"member {name}", value) for name, value in report["members"].items()] + [("base", report["base"])]
    dpo = args.objective == "dpo"
    print(f"{'':<40}{'fit NLL':>10}{'test NLL':>10}" + (f"{'fit DPO':>10}{'test DPO':>10}{'test acc':>10}" if dpo
                                                        else ""))
    for name, value in rows:
        print(f"{name:<40}{value['fit_nll']:>10.4f}{value['test_nll']:>10.4f}"
              + (f"{value['fit_dpo_loss']:>10.4f}{value['test_dpo_loss']:>10.4f}{value['test_accuracy']:>10.3f}"
                 if dpo else ""))
    print(f"peak RSS (MB): {report['peak_rss_mb']}; members held at once: {report['peak_members_held']}; "
          f"seconds: {report['seconds']}; wrote {args.out / 'model'}, report.json, soup.png")
    return 0


def _gateway_target(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--config", type=Path, help="start a gateway in this process from this config")
    target.add_argument("--url", help="a running gateway's /v1 URL")
    parser.add_argument("--api-key", help="the gateway's API key, if it requires one")


def _check_no_skip(args: argparse.Namespace) -> None:
    if args.url and args.no_skip:
        raise ValueError("--no-skip configures the in-process gateway (--config); for a running gateway set "
                         "'aligncot: {skip_steps: false}' on its model")


def _aligncot_data(args: argparse.Namespace) -> int:
    from gateway.core.config import load_config
    from training.aligncot_runs import HELPFUL_PROMPTS, generate_chains, harmful_prompts, with_aligncot
    from training.gateway_client import openai_client, running_gateway

    _check_no_skip(args)
    prompts = harmful_prompts(args.prompts, args.start, args.limit) + HELPFUL_PROMPTS[: args.helpful]
    config, model = (None, args.model) if args.url else with_aligncot(load_config(args.config), args.model,
                                                                      step_max_tokens=args.max_tokens,
                                                                      skip_steps=not args.no_skip)
    with running_gateway(config, args.url) as base_url:
        counts = generate_chains(openai_client(base_url, args.api_key), model, prompts, args.out, args.max_tokens)
    print(f"{len(prompts)} records written to {args.out}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0


def _mote(args: argparse.Namespace) -> int:
    from training.models import resolve_model_path
    from training.mote import MoTEConfig, train_mote

    records = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{args.data}: no records")
    config = MoTEConfig(rank=args.rank, mix=args.alpha, learning_rate=args.lr, epochs=args.epochs,
                        max_steps=args.steps, batch_size=args.batch_size, max_length=args.max_length,
                        token_rules=args.token_rules, marker_learning_rate=args.marker_lr, skip_steps=args.skip_steps)
    summary = train_mote(resolve_model_path(args.model), records, args.out, config)
    print(json.dumps(summary, indent=2))
    return 0


def _aligncot_eval(args: argparse.Namespace) -> int:
    from gateway.core.config import load_config
    from training.aligncot_runs import (
        HELPFUL_PROMPTS,
        evaluate_settings,
        harmful_prompts,
        with_aligncot,
        with_mote_run,
    )
    from training.gateway_client import openai_client, running_gateway
    from training.judge import format_rate

    _check_no_skip(args)
    experts = dict(item.split("=", 1) for item in args.experts) if args.experts else None
    settings = {"base": args.base}
    if args.url:
        if args.mote:
            raise ValueError("--mote serves the run's models itself: use it with --config, not --url")
        settings.update({"prompted chain": f"{args.base}--aligncot"})
        if experts:
            settings["MoTE experts"] = f"{args.base}--mote"
        config = None
    else:
        config, settings["prompted chain"] = with_aligncot(load_config(args.config), args.base,
                                                           step_max_tokens=args.max_tokens, skip_steps=not args.no_skip)
        if experts:
            config, settings["MoTE experts"] = with_aligncot(config, args.base, experts, f"{args.base}--mote",
                                                             args.max_tokens, skip_steps=not args.no_skip)
        for run in args.mote:
            label, _, directory = run.partition("=")
            config, more = with_mote_run(config, args.base, label, Path(directory), args.max_tokens,
                                         skip_steps=not args.no_skip)
            settings.update(more)
    harmful = harmful_prompts(args.prompts, args.start, args.limit)
    helpful = HELPFUL_PROMPTS[-args.helpful:] if args.helpful else []
    with running_gateway(config, args.url) as base_url:
        report = evaluate_settings(openai_client(base_url, args.api_key), settings, args.judge, harmful, helpful,
                                   args.max_tokens)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    width = max(len(label) for label in report) + 2
    print(f"{'setting':<{width}}{'harmless %':>11}{'helpfulness':>13}{'unjudged':>10}{'helpful refused %':>19}   "
          f"({len(harmful)} harmful-leaning, {len(helpful)} helpful held-out prompts; judge {args.judge})")
    for label, row in report.items():
        helpfulness = f"{row['helpfulness']:.2f}" if row["helpfulness"] is not None else "n/a"
        print(f"{label:<{width}}{format_rate(row['harmless_rate']):>11}{helpfulness:>13}{row['unjudged']:>10}"
              f"{format_rate(row['helpful_refused_rate']):>19}")
    return 0


def _sr_dpo(args: argparse.Namespace) -> int:
    from training.sr_dpo import SR_PROMPT
    from training.sr_dpo_run import PreferenceRun, run_preference_training

    summary = run_preference_training(PreferenceRun(
        model=args.model, data=args.data, out=args.out, loss=args.loss, beta=args.beta, lam=args.lam, lora=args.lora,
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, max_length=args.max_length,
        held_out=args.held_out, max_train_pairs=args.max_train_pairs, seed=args.seed,
        sr_prompt=args.prompt or SR_PROMPT))
    print(json.dumps(summary, indent=2))
    return 0
