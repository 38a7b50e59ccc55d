#!/usr/bin/env bash
# MEHL-Soup on SmolLM2-135M (CPU): the members are the twelve LoRA runs of benchmarks/sr_dpo_benchmark.sh (DPO,
# Sr-DPO, IPO, Sr-IPO x three seeds, 120 steps each, trained on records the soup never sees); they differ in
# loss and in data order. Three soups, every baseline in the same report each time, on pairs of their own (the
# first 400 HH-RLHF records: 64 to fit the coefficients, 64 held out for the test figures):
#   1. N = 3, b = 2: the time target (<= 10 minutes for the whole command on two cores);
#   2. N = 6 and 3. N = 12, b = 2: peak RSS (the method's claim: memory follows b, not N).
# The objective is DPO against the base, the members' own, and the test figures are DPO loss and preference
# accuracy as well as the NLL of the chosen replies.
#   benchmarks/soup_benchmark.sh          (PREF=/tmp/pref-bench: run benchmarks/sr_dpo_benchmark.sh first;
#                                          OUT=/tmp/soup-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
PREF=${PREF:-/tmp/pref-bench}
OUT=${OUT:-/tmp/soup-bench}
DATA=${DATA:-../shared/datasets/hh-rlhf/harmless-base-test.jsonl.gz}
BIN=.venv/bin
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"

$BIN/python - "$DATA" "$OUT" <<'EOF'
import gzip, sys
from pathlib import Path
lines = gzip.open(sys.argv[1], "rt").read().splitlines()
(Path(sys.argv[2]) / "soup.jsonl").write_text("\n".join(lines[:400]) + "\n")
EOF

MEMBERS=()
for seed in 0 1 2; do for loss in dpo sr-dpo ipo sr-ipo; do
  adapter="$PREF/runs/$loss-s$seed/adapter"
  [ -f "$adapter/adapter_config.json" ] || { echo "missing $adapter: run benchmarks/sr_dpo_benchmark.sh" >&2; exit 1; }
  MEMBERS+=("$adapter")
done; done

soup() {  # N OUT_NAME
  local started=$SECONDS
  /usr/bin/time -v $BIN/llm-gateway train soup --base smollm2-135m --members "${MEMBERS[@]:0:$1}" \
    --data "$OUT/soup.jsonl" --out "$OUT/$2" --objective dpo --model-batch 2 --max-examples 64 --test-examples 64 \
    --max-length 192 --epochs 2 --lr 0.05 > "$OUT/$2.log" 2> "$OUT/$2.err"
  cat "$OUT/$2.log"
  echo "soup of $1 members: $((SECONDS - started)) s for the whole command;" \
       "$(grep 'Maximum resident set size' "$OUT/$2.err" | awk '{printf "peak RSS %.0f MiB", $6 / 1024}')"
}
soup 3 soup-n3
soup 6 soup-n6
soup 12 soup-n12
