#!/usr/bin/env bash
# MEHL-Soup on SmolLM2-135M (small-model run, CPU): train 12 LoRA members of the Sr-DPO family (different
# losses, β, λ, seeds and so data subsets) on one part of HH-RLHF, then soup N = 6 and N = 12 of them at b = 2
# on another part, every baseline in the same report; peak RSS after the soup is in each report. Sizes are cut
# for 2 CPU cores (a SmolLM2 forward pass over 8 x 128 tokens takes seconds): 32 fitting and 32 test pairs.
#   benchmarks/soup_benchmark.sh            (OUT=/tmp/soup-bench, STEPS=12 per member)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/soup-bench}
STEPS=${STEPS:-12}
DATA=${DATA:-../shared/datasets/hh-rlhf/harmless-base-test.jsonl.gz}
BIN=.venv/bin
export HF_HUB_OFFLINE=1
mkdir -p "$OUT/members"

# The members never see the soup's data: the first 400 records are the soup's (fitting + test), the rest the
# members'.
$BIN/python - "$DATA" "$OUT" <<'EOF'
import gzip, sys
from pathlib import Path
lines = gzip.open(sys.argv[1], "rt").read().splitlines()
out = Path(sys.argv[2])
(out / "soup.jsonl").write_text("\n".join(lines[:400]) + "\n")
(out / "members.jsonl").write_text("\n".join(lines[400:]) + "\n")
print(f"soup data: 400 records; member data: {len(lines) - 400}")
EOF

# name loss beta lambda seed
MEMBERS="m00 dpo 0.1 0 0
m01 ipo 0.1 0 1
m02 sr-dpo 0.1 0.5 2
m03 sr-ipo 0.1 0.5 3
m04 dpo 0.5 0 4
m05 sr-dpo 0.5 1.0 5
m06 ipo 0.5 0 6
m07 sr-ipo 0.5 1.0 7
m08 dpo 0.1 0 8
m09 sr-dpo 0.1 1.0 9
m10 ipo 0.1 0 10
m11 sr-ipo 0.1 0.5 11"
start=$(date +%s)
while read -r name loss beta lam seed; do
  [ -f "$OUT/members/$name/adapter/adapter_config.json" ] && continue
  $BIN/llm-gateway train sr-dpo --model embedded --data "$OUT/members.jsonl" --lora --loss "$loss" --beta "$beta" \
    --lam "$lam" --seed "$seed" --steps "$STEPS" --lr 5e-4 --batch-size 2 --max-length 192 --held-out 20 \
    --max-train-pairs 200 --out "$OUT/members/$name" > "$OUT/members/$name.log" 2>&1
  echo "member $name ($loss, beta $beta, lambda $lam, seed $seed): $(python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(f\"held-out accuracy {s['held_out_accuracy']}, {s['train_seconds']} s\")" "$OUT/members/$name/summary.json")"
done <<< "$MEMBERS"
echo "members trained in $(( $(date +%s) - start )) s"

soup() {  # N OUT_NAME
  local members=()
  for i in $(seq 0 $(( $1 - 1 ))); do members+=("$OUT/members/$(printf 'm%02d' "$i")/adapter"); done
  $BIN/llm-gateway train soup --base smollm2-135m --members "${members[@]}" --data "$OUT/soup.jsonl" \
    --out "$OUT/$2" --model-batch 2 --max-examples 32 --test-examples 32 --max-length 128 --epochs 2 --lr 0.1 \
    > "$OUT/$2.log" 2> "$OUT/$2.err"
  cat "$OUT/$2.log"
}
soup 6 soup-n6
soup 12 soup-n12
