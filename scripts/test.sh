#!/usr/bin/env bash
# Set up .venv with the dev dependencies and run the whole test suite (slow real-model tests included).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/python -m ruff check .
.venv/bin/lint-imports --no-cache
exec .venv/bin/python -m pytest "$@"
