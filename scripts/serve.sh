#!/usr/bin/env bash
# Set up .venv and start the gateway on 127.0.0.1:8000 (embedded SmolLM2 on CPU when no --config is given).
# Extra arguments go to `llm-gateway serve`, e.g. scripts/serve.sh --config examples/vllm-pool.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/llm-gateway serve "$@"
