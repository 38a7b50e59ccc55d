"""Held-out reward accuracy of preference-trained LoRA adapters on pairs none of them trained on.

`train sr-dpo` scores each run on its own held-out split, which the length limit of a CPU run cuts to a few
dozen pairs (24 of 100 at --max-length 192 with the self-refinement prompt). This reads every run of
benchmarks/sr_dpo_benchmark.sh on the first 400 HH-RLHF records of the file (the runs never see them: the
benchmark trains on the rest), at a longer limit, the same pairs for every run:

- reward accuracy: the share of pairs whose implicit reward margin log π/π_ref(chosen) − log π/π_ref(rejected)
  is positive (π_ref: the base model), with its binomial standard error;
- the mean margin (β = 0.1) and the per-token NLL of the chosen replies.

    .venv/bin/python benchmarks/preference_eval.py --runs /tmp/pref-bench/runs [--max-length 384]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.preference_split import records  # noqa: E402
from training.models import resolve_model_path  # noqa: E402
from training.preference_data import parse_preference_lines  # noqa: E402
from training.soup.mehl import uses_bf16, with_base  # noqa: E402
from training.soup.members import lora_delta  # noqa: E402
from training.soup.objective import attach_reference, batches, pair_margins, tokenize_pairs  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


@torch.no_grad()
def margins(model: torch.nn.Module, weights: dict[str, torch.Tensor], examples: list, batch_size: int = 8
            ) -> tuple[list[float], float]:
    """Per pair the log-ratio margin against the base, and the token-weighted NLL of the chosen replies."""
    values, nll, tokens = [], 0.0, 0
    for batch in batches(examples, batch_size):
        chosen, counts, margin = pair_margins(model, weights, batch)
        values += margin.tolist()
        nll, tokens = nll - float(chosen.sum()), tokens + int(counts.sum())
    return values, nll / max(tokens, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="a directory of runs, each with adapter/")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--beta", type=float, default=0.1)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    pairs, report = parse_preference_lines(records(args.data, "soup"))
    model_path = resolve_model_path("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    examples = tokenize_pairs(pairs, tokenizer, args.max_length)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval().requires_grad_(False)
    base = dict(model.named_parameters())
    runs = sorted(p for p in args.runs.iterdir() if (p / "adapter" / "adapter_config.json").exists())
    print(f"{len(examples)} pairs ({report}; {len(pairs) - len(examples)} longer than {args.max_length} tokens "
          f"left out), {len(runs)} runs", flush=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=uses_bf16("auto")):
        attach_reference(model, base, examples)
        results = {}
        for run in runs:
            started = time.monotonic()
            values, nll = margins(model, with_base(base, lora_delta(run / "adapter", base)), examples)
            accuracy = sum(v > 0 for v in values) / len(values)
            results[run.name] = {"accuracy": accuracy, "stderr": math.sqrt(accuracy * (1 - accuracy) / len(values)),
                                 "margin": args.beta * sum(values) / len(values), "chosen_nll": nll,
                                 "pairs": len(values), "seconds": round(time.monotonic() - started, 1)}
            print(f"{run.name:<14} reward accuracy {100 * accuracy:.1f}% ± {100 * results[run.name]['stderr']:.1f}"
                  f"   margin {results[run.name]['margin']:+.4f}   chosen NLL {nll:.4f}", flush=True)
    (args.runs.parent / "preference_eval.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
