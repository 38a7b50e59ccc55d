#!/usr/bin/env bash
# Sr-DPO / Sr-IPO against DPO / IPO on this CPU: SmolLM2-135M + LoRA, the four losses on the same pairs and seeds
# (seed s: the same shuffle, the same held-out pairs, the same order of batches), long enough for the
# self-refinement margin Δ to move (it is exactly 0 at the first step, when the policy is the reference).
# Prints each run, then per loss the held-out preference accuracy and margin over the seeds, and how far Δ moved.
# The twelve runs are also the members of benchmarks/soup_benchmark.sh.
#   benchmarks/sr_dpo_benchmark.sh        (OUT=/tmp/pref-bench, STEPS=120, SEEDS="0 1 2"; EVAL=0 skips the
#                                          benchmarks/preference_eval.py pass over every run)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/pref-bench}
STEPS=${STEPS:-120}
SEEDS=${SEEDS:-0 1 2}
DATA=${DATA:-../shared/datasets/hh-rlhf/harmless-base-test.jsonl.gz}
BIN=.venv/bin
export HF_HUB_OFFLINE=1
mkdir -p "$OUT/runs"

# The soup benchmark keeps the first 400 records for itself; these runs never see them.
$BIN/python benchmarks/preference_split.py "$DATA" runs "$OUT/runs.jsonl"

for seed in $SEEDS; do
  for loss in dpo sr-dpo ipo sr-ipo; do
    run="$OUT/runs/$loss-s$seed"
    [ -f "$run/summary.json" ] && continue
    $BIN/llm-gateway train sr-dpo --model embedded --data "$OUT/runs.jsonl" --lora --loss "$loss" --beta 0.1 \
      --lam 0.5 --seed "$seed" --steps "$STEPS" --lr 5e-4 --batch-size 2 --max-length 192 --held-out 100 \
      --max-train-pairs 600 --out "$run" > "$run.log" 2>&1
    echo "$loss seed $seed: $($BIN/python -c "import json,sys; s=json.load(open(sys.argv[1])); print(f\"held-out accuracy {s['held_out_accuracy']:.3f}, margin {s['held_out_margin']:.4f}, {s['train_seconds']} s\")" "$run/summary.json")"
  done
done

$BIN/python - "$OUT" "$SEEDS" <<'PY'
import json, statistics, sys
from pathlib import Path
out, seeds = Path(sys.argv[1]), sys.argv[2].split()

def runs(loss):
    for seed in seeds:
        run = out / "runs" / f"{loss}-s{seed}"
        summary = json.loads((run / "summary.json").read_text())
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        deltas = [row["sr/delta"] for row in rows if "sr/delta" in row]
        yield summary, deltas

print(f"\n{len(seeds)} seeds x {sys.argv[2]!r}; 100 held-out pairs per seed (the same for the four losses of a seed)")
print(f"{'loss':<8}{'held-out accuracy':>22}{'margin':>16}{'per seed':>22}{'|Δ| first 10 / last 10 steps':>32}")
for loss in ("dpo", "sr-dpo", "ipo", "sr-ipo"):
    summaries, deltas = zip(*runs(loss))
    accuracy = [100 * s["held_out_accuracy"] for s in summaries]
    margin = [s["held_out_margin"] for s in summaries]
    spread = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0
    moved = ""
    if any(deltas):
        first = statistics.fmean(abs(d) for run in deltas for d in run[:10])
        last = statistics.fmean(abs(d) for run in deltas for d in run[-10:])
        moved = f"{first:.4f} / {last:.4f}"
    print(f"{loss:<8}{statistics.fmean(accuracy):>14.1f}% ± {spread(accuracy):>4.1f}"
          f"{statistics.fmean(margin):>9.4f} ± {spread(margin):.4f}"
          f"{' '.join(f'{a:.0f}' for a in accuracy):>22}{moved:>32}")
PY

# The runs' own held-out splits are small after the length limit; every run again on 400 pairs none trained on.
[ "${EVAL:-1}" = 0 ] || $BIN/python benchmarks/preference_eval.py --runs "$OUT/runs"
