""""Bring your own model pool" on real engines: `router collect` through two vLLM servers on a labelled slice,
`router train`, `router eval`, then `auto` served over both."""

from __future__ import annotations

import ast
import csv
import gzip
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.servers import VENV_BIN
from tests.support.vllm import VLLMServer
from tests.vllm.conftest import live_gateway, upstream_model

pytestmark = pytest.mark.vllm

SLICE = Path(__file__).resolve().parents[1] / "data" / "routerbench_slice"
REFERENCE_LLM = "gpt-4-1106-preview"
MODELS = ["smollm2", "gemma-3-270m"]


def labelled_questions(split: str, out: Path) -> Path:
    """ARC-Challenge and Winogrande questions of the committed RouterBench slice with their answer letter: the
    choice of the reference LLM's response where RouterBench graded it correct. Only the question itself (the
    last block of the few-shot prompt) is asked, so a small model's context is not spent on demonstrations."""
    rows = []
    for task, name in (("arc", "arc_challenge"), ("winogrande", "winograde")):
        with gzip.open(SLICE / f"{name}_{split}.csv.gz", "rt", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if row[REFERENCE_LLM] != "1.0":
                    continue
                question = ast.literal_eval(row["prompt"])[0].split("\n\n")[-1].strip()
                answer = ast.literal_eval(row[f"{REFERENCE_LLM}|model_response"])[0].strip()
                rows.append({"question": question, "answer": answer, "grader": "choice", "task": task})
    out.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return out


def llm_gateway(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(VENV_BIN / "llm-gateway"), *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"llm-gateway {' '.join(args[:2])} failed:\n{result.stderr[-3000:]}"
    return result


def test_collect_train_eval_and_serve_auto_over_two_vllm_servers(smollm2: VLLMServer, gemma: VLLMServer,
                                                                  tmp_path: Path) -> None:
    config = {"models": [upstream_model("smollm2", smollm2), upstream_model("gemma-3-270m", gemma)]}
    config_path = tmp_path / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config))

    collected = {}
    for split in ("train", "test"):
        out = tmp_path / f"{split}.json"
        result = llm_gateway("router", "collect", "--config", str(config_path), "--questions",
                             str(labelled_questions(split, tmp_path / f"{split}.jsonl")), "--models", *MODELS,
                             "--out", str(out), "--max-tokens", "8", "--concurrency", "8")
        records = json.loads(out.read_text())
        assert {record["task"] for record in records} == {"arc", "winogrande"}
        assert all(set(record["scores"]) == set(MODELS) for record in records)
        assert all(score in (0.0, 1.0) for record in records for score in record["scores"].values())
        # The per-model accuracy table (task rows, one column per model) is printed.
        assert re.search(r"arc\s+\d+\.\d\s+\d+\.\d", result.stdout), result.stdout
        collected[split] = records
        print(f"collected {split}:\n{result.stdout}")

    checkpoint = tmp_path / "router"
    llm_gateway("router", "train", "--data", str(tmp_path / "train.json"), "--out", str(checkpoint),
                "--steps", "80", "--batch-size", "16")
    report_path = tmp_path / "eval.json"
    evaluation = llm_gateway("router", "eval", "--checkpoint", str(checkpoint), "--test",
                             f"{tmp_path / 'test.json'}:probability", "--json", str(report_path))
    print(f"router eval:\n{evaluation.stdout}")
    report = json.loads(report_path.read_text())
    # The report's oracle and best single model are what the engines answered on the test slice; the router
    # lies between the worse model and the oracle.
    for task, figures in report["tasks"].items():
        records = [r for r in collected["test"] if r["task"] == task]
        per_model = {m: 100 * sum(r["scores"][m] for r in records) / len(records) for m in MODELS}
        oracle = 100 * sum(max(r["scores"].values()) for r in records) / len(records)
        assert figures["oracle"] == pytest.approx(oracle) and figures["best_single"] <= oracle + 1e-9
        assert min(per_model.values()) - 1e-9 <= figures["router"] <= oracle + 1e-9, (task, figures, per_model)

    with live_gateway({**config, "router": {"model_name": "auto", "checkpoint": str(checkpoint),
                                            "max_attempts": 2}}) as gateway:
        client = gateway.client()
        question = json.loads((tmp_path / "test.jsonl").read_text().splitlines()[0])["question"]
        answer = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": question}], temperature=0, max_tokens=8)
        assert answer.headers["x-gateway-routed-model"] in MODELS
        completion = answer.parse()
        assert completion.choices[0].message.content and completion.usage.completion_tokens > 0
        # A routed stream answers through the same engines.
        chunks = list(client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": question}], temperature=0, max_tokens=8,
            stream=True, stream_options={"include_usage": True}))
        assert chunks[-1].usage.completion_tokens > 0
