"""Loading RouterDC-format data: both formats, scoring rules, and clear errors naming file and line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from routers.data import RoutingDataError, load_routing_file, load_routing_files, parse_file_spec, task_name
from tests.routers.conftest import SLICE


def test_loads_the_benchmark_format_with_task_names_and_scoring():
    datasets = load_routing_files([SLICE / "mmlu_train.json", SLICE / "gsm8k-train.json"])
    assert [d.task for d in datasets] == ["mmlu", "gsm8k"]
    assert [d.scoring for d in datasets] == ["probability", "multi_attempt"]
    assert datasets[0].llm_names[0] == "mistralai/Mistral-7B-v0.1" and len(datasets[0].llm_names) == 7
    assert datasets[0].cluster_ids is not None
    assert datasets[0].scores.shape == (80, 7)


def test_scoring_rules():
    (mmlu,) = load_routing_files([f"{SLICE / 'mmlu_test.json'}:probability"])
    assert set(np.unique(mmlu.outcome())) <= {0.0, 1.0}
    (gsm,) = load_routing_files([f"{SLICE / 'gsm8k-test.json'}:multi_attempt"])
    assert np.allclose(gsm.outcome(), gsm.scores)


def test_jsonl_gives_the_same_data(tmp_path):
    records = json.loads((SLICE / "humaneval_train.json").read_text())
    path = tmp_path / "humaneval_train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    a, b = load_routing_file(SLICE / "humaneval_train.json"), load_routing_file(path)
    assert a.questions == b.questions and np.array_equal(a.scores, b.scores) and b.task == "humaneval"


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "fragment"), [
    ('[\n{"question": "a", "scores": {"x": 1, "y": 0}},\n{"question": "b", "scores": {}}\n]',
     "line 3: 'scores' must be a non-empty object"),
    ('[\n{"question": "a", "scores": {"x": 1, "y": 0}},\n{"question": "b",\n "scores": {"x": NaN, "y": 0}}\n]',
     "line 3: score of 'x' is nan"),
    ('[{"question": "a", "scores": {"x": 1, "y": 0}},\n {"question": "b", "scores": {"x": 1, "z": 0}}]',
     "line 2: the LLM names disagree"),
    ('{"question": "a", "scores": {"x": 1}}\n{"question": "", "scores": {"x": 1}}\n', "line 2: 'question' must be"),
    ('{"question": "a", "scores": {"x": "high"}}\n', "line 1: score of 'x' is 'high'"),
    ('[{"question": "a", "scores": {"x": 1}},\n {"question": "b" "scores"}]', "line 2: not valid JSON"),
    ("", "the file is empty"),
    ("[]", "no records"),
])
def test_bad_files_name_file_and_line(tmp_path, text, fragment):
    path = _write(tmp_path, "bad.json", text)
    with pytest.raises(RoutingDataError) as info:
        load_routing_file(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_files_that_disagree_on_llm_names(tmp_path):
    a = _write(tmp_path, "a_train.json", '[{"question": "q", "scores": {"x": 1, "y": 0}}]')
    b = _write(tmp_path, "b_train.json", '[\n{"question": "q", "scores": {"x": 1, "w": 0}}]')
    with pytest.raises(RoutingDataError, match=r"b_train.json, line 2: the LLM names disagree.*missing: \['y'\]"):
        load_routing_files([a, b])


def test_file_specs_and_task_names(tmp_path):
    assert parse_file_spec("x/gsm8k-test.json:multi_attempt")[1] == "multi_attempt"
    assert parse_file_spec("x/mmlu_test.json")[1] is None
    with pytest.raises(RoutingDataError, match="unknown scoring 'accuracy'"):
        parse_file_spec("x/mmlu_test.json:accuracy")
    from pathlib import Path

    assert task_name(Path("arc_challenge_train.json")) == "arc_challenge"
    assert task_name(Path("gsm8k-test.jsonl")) == "gsm8k"
