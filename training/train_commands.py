"""``llm-gateway train ...``: the alignment trainers (Sr-DPO family; AlignCoT/MoTE)."""

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
    return sub


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
