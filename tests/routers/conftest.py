from __future__ import annotations

from pathlib import Path

import pytest

from routers.data import load_routing_files

SLICE = Path(__file__).resolve().parents[1] / "data" / "routerdc_slice"
TRAIN_FILES = sorted(str(p) for p in SLICE.glob("*_train.json")) + sorted(str(p) for p in SLICE.glob("*-train.json"))
TEST_FILES = [f"{SLICE / 'mmlu_test.json'}:probability", f"{SLICE / 'gsm8k-test.json'}:multi_attempt",
              f"{SLICE / 'cmmlu_test.json'}:probability", f"{SLICE / 'arc_challenge_test.json'}:probability",
              f"{SLICE / 'humaneval_test.json'}:multi_attempt"]


@pytest.fixture(scope="session")
def train_sets():
    """The committed slice's five training files."""
    return load_routing_files(TRAIN_FILES)


@pytest.fixture(scope="session")
def test_sets():
    return load_routing_files(TEST_FILES)
