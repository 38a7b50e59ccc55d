#!/usr/bin/env bash
# AlignCoT/MoTE on this CPU with SmolLM2-135M (a small-model run): generate chains through the gateway, train
# MoTE experts, then compare base model, prompted chain and MoTE experts on held-out HH-RLHF prompts. SmolLM2-135M
# cannot follow a judge prompt, so the judge here is refusal keywords (harmless = refuses); on a GPU host pass
# a real judge model to aligncot-eval instead.
#   benchmarks/aligncot_benchmark.sh [HH_RLHF_FILE] [OUT]
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
time $gw train aligncot-data --config "$out/base.yaml" --model smol --prompts "$data" --start 0 --limit 24 \
  --helpful 8 --max-tokens 64 --no-skip --out "$out/chains.jsonl"
time $gw train mote --model embedded --data "$out/chains.jsonl" --out "$out/mote" --steps 40 --batch-size 2 \
  --max-length 384 --lr 5e-4
cat > "$out/eval.yaml" <<YAML
models:
  - name: smol
    backend: local
    default_max_tokens: 64
    adapters: {smol-analysis: $out/mote/adapters/analysis, smol-guidance: $out/mote/adapters/guidance,
               smol-answer: $out/mote/adapters/answer}
YAML
# As served (step skipping), then the chain on every prompt: SmolLM2's own Safety Check passes nearly every
# direct answer, so with skipping the three settings mostly give the same answers.
for mode in skip no-skip; do
  time $gw train aligncot-eval --config "$out/eval.yaml" --base smol --judge refusal-keywords \
    --prompts "$data" --start 1000 --limit 12 --helpful 4 --max-tokens 64 $([ $mode = no-skip ] && echo --no-skip) \
    --experts analysis=smol-analysis guidance=smol-guidance answer=smol-answer --out "$out/eval-$mode.json"
done
