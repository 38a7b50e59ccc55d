#!/usr/bin/env bash
# Sr-DPO benchmark on this CPU: SmolLM2-135M + LoRA, the same HH-RLHF train/held-out split and steps for
# dpo, sr-dpo, ipo and sr-ipo. Prints each run's summary and a side-by-side table.
#   benchmarks/sr_dpo_benchmark.sh [DATA] [STEPS] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/datasets/hh-rlhf/harmless-base-test.jsonl.gz}
steps=${2:-40}
out=${3:-reports/sr-dpo}
for loss in dpo sr-dpo ipo sr-ipo; do
  .venv/bin/llm-gateway train sr-dpo --model embedded --data "$data" --loss "$loss" --lora --out "$out/$loss" \
    --steps "$steps" --batch-size 2 --lr 5e-4 --max-length 256 --held-out 60 --seed 0 > "$out-$loss.log" 2>&1
done
.venv/bin/python - "$out" <<'PY'
import json, sys
from pathlib import Path
print(f"{'loss':<8}{'held-out acc':>14}{'margin':>10}{'train s':>9}{'s/step':>8}{'first loss':>11}{'last loss':>10}")
for loss in ("dpo", "sr-dpo", "ipo", "sr-ipo"):
    s = json.loads((Path(sys.argv[1]) / loss / "summary.json").read_text())
    print(f"{loss:<8}{100 * s['held_out_accuracy']:>13.1f}%{s['held_out_margin']:>10.4f}{s['train_seconds']:>9.1f}"
          f"{s['seconds_per_step']:>8.2f}{s['first_loss']:>11.4f}{s['last_loss']:>10.4f}")
PY
