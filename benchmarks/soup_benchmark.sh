#!/usr/bin/env bash
# MEHL-Soup on SmolLM2-135M (CPU): the members are the twelve LoRA runs of benchmarks/sr_dpo_benchmark.sh (DPO,
# Sr-DPO, IPO, Sr-IPO x three seeds, 120 steps each, trained on records the soup never sees); they differ in
# loss and in data order. Three soups, every baseline in the same report each time, on pairs of their own (the
# first 400 HH-RLHF records: 64 to fit the coefficients, 64 held out for the test figures):
#   1. N = 3, b = 2: the figures, and the time target (<= 10 minutes for the whole command on two cores, with
#      the command's default baselines: SOUP_ARGS="--baselines greedy peft"; the benchmark adds new-lora);
#   2. N = 6 and 3. N = 12, b = 2: peak RSS (the method's claim: memory follows b, not N).
# The objective is DPO against the base, the members' own, and the test figures are DPO loss and preference
# accuracy as well as the NLL of the chosen replies.
#   benchmarks/soup_benchmark.sh          (PREF=/tmp/pref-bench: run benchmarks/sr_dpo_benchmark.sh first;
#                                          OUT=/tmp/soup-bench; SEEDS="0 1 2": the member runs' seeds;
#                                          SOUPS="3:2 6:2 12:2": N:b for each soup, N members at b a batch;
#                                          SOUP_ARGS: extra `train soup` flags, the last of a flag wins)
set -euo pipefail
cd "$(dirname "$0")/.."
PREF=${PREF:-/tmp/pref-bench}
OUT=${OUT:-/tmp/soup-bench}
DATA=${DATA:-../shared/datasets/hh-rlhf/harmless-base-test.jsonl.gz}
BIN=.venv/bin
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"

$BIN/python benchmarks/preference_split.py "$DATA" soup "$OUT/soup.jsonl"

SEEDS=${SEEDS:-0 1 2}
SOUPS=${SOUPS:-3:2 6:2 12:2}
MEMBERS=()
for seed in $SEEDS; do for loss in dpo sr-dpo ipo sr-ipo; do
  adapter="$PREF/runs/$loss-s$seed/adapter"
  [ -f "$adapter/adapter_config.json" ] || { echo "missing $adapter: run benchmarks/sr_dpo_benchmark.sh" >&2; exit 1; }
  MEMBERS+=("$adapter")
done; done

soup() {  # N B OUT_NAME
  local started=$SECONDS
  [ "$1" -le "${#MEMBERS[@]}" ] || { echo "soup of $1: only ${#MEMBERS[@]} members" >&2; exit 1; }
  /usr/bin/time -v $BIN/llm-gateway train soup --base smollm2-135m --members "${MEMBERS[@]:0:$1}" \
    --data "$OUT/soup.jsonl" --out "$OUT/$3" --objective dpo --model-batch "$2" --max-examples 64 --test-examples 64 \
    --max-length 192 --epochs 2 --lr 0.05 --baselines greedy peft new-lora ${SOUP_ARGS:-} > "$OUT/$3.log" 2> "$OUT/$3.err"
  cat "$OUT/$3.log"
  echo "soup of $1 members at b = $2: $((SECONDS - started)) s for the whole command;" \
       "$(grep 'Maximum resident set size' "$OUT/$3.err" | awk '{printf "peak RSS %.0f MiB", $6 / 1024}')"
}
for soup_shape in $SOUPS; do
  soup "${soup_shape%%:*}" "${soup_shape##*:}" "soup-n${soup_shape%%:*}-b${soup_shape##*:}"
done
