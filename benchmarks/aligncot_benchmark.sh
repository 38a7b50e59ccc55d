#!/usr/bin/env bash
# AlignCoT/MoTE on this CPU with SmolLM2-135M (a small-model run): generate chains through the gateway, train
# MoTE experts under both token rules, then compare base model, prompted chain and each MoTE run served three
# ways on held-out HH-RLHF prompts. SmolLM2-135M cannot follow a judge prompt, so the judge here is refusal
# keywords (harmless = refuses); on a GPU host pass a real judge model to aligncot-eval instead.
# A third run trains the paper's rules with step skipping (--skip-steps 0.5: half the chains taught as their safe
# answer alone), so the served model may answer at once.
#   benchmarks/aligncot_benchmark.sh [HH_RLHF_FILE] [OUT]     (LIMIT=12 harmful and HELPFUL=4 held-out prompts)
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/datasets/hh-rlhf/harmless-base-test.jsonl.gz}
out=${2:-reports/aligncot}
mkdir -p "$out"
gw=.venv/bin/llm-gateway
cat > "$out/base.yaml" <<YAML
models:
  - {name: smol, backend: local, default_max_tokens: 64}
YAML
[ -f "$out/chains.jsonl" ] || time $gw train aligncot-data --config "$out/base.yaml" --model smol --prompts "$data" --start 0 --limit 24 \
  --helpful 8 --max-tokens 64 --no-skip --out "$out/chains.jsonl"
# The same chains trained under both token rules (item: frozen start markers vs the paper's learned start/end).
for run in frozen-start:frozen-start:0 paper:paper:0 paper-skip:paper:0.5; do
  IFS=: read -r name rules skip <<< "$run"
  [ -f "$out/mote-$name/mote.json" ] || time $gw train mote --model embedded --data "$out/chains.jsonl" \
    --out "$out/mote-$name" --steps 40 --batch-size 2 --max-length 384 --lr 5e-4 --token-rules "$rules" --skip-steps "$skip"
done
# Base, prompted chain, and each run served three ways: its step adapters asked with the prompted steps (as
# served before), the adapters fed the trained sequence (the vLLM way: approximate), the MoTE model as trained.
# Skipping (as served): SmolLM2's own Safety Check passes nearly every direct answer, so the settings mostly give
# the same answers; --no-skip measures the chains themselves.
for mode in no-skip skip; do
  time $gw train aligncot-eval --config "$out/base.yaml" --base smol --judge refusal-keywords \
    --prompts "$data" --start 1000 --limit "${LIMIT:-12}" --helpful "${HELPFUL:-4}" --max-tokens 64 $([ $mode = no-skip ] && echo --no-skip) \
    --mote frozen-start="$out/mote-frozen-start" --mote paper="$out/mote-paper" \
    --mote paper-skip="$out/mote-paper-skip" --out "$out/eval-$mode.json"
done
