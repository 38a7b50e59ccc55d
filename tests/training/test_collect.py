"""`llm-gateway router collect`: scripted upstreams that answer right or wrong on purpose, the embedded model,
resume after a kill, and a router trained on the collected data."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import numpy as np
import pytest
import yaml

from routers.data import load_routing_files
from tests.support.servers import VENV_BIN
from tests.support.upstream import Reply

MATH = [(f"What is {a} plus {b}?", str(a + b)) for a, b in [(2, 3), (10, 7), (41, 1), (6, 6), (13, 29), (8, 30)]]
CODE = [(f"Write a Python function add_{n}(x) that returns x + {n}.", f"assert add_{n}(1) == {1 + n}")
        for n in range(1, 7)]
CHOICE = [("Which planet is red? A. Venus B. Mars C. Jupiter D. Saturn", "B")]
EXACT = [("What is the capital of France? One word.", "Paris")]


def _questions(tmp_path, math=MATH, code=CODE):
    rows = [{"question": q, "answer": a, "grader": "number", "task": "math"} for q, a in math]
    rows += [{"question": q, "answer": a, "grader": "python-tests", "task": "code"} for q, a in code]
    path = tmp_path / "questions.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _solver(good_at: set[str], seed_parity: int | None = None):
    """Answers right on the tasks in ``good_at`` (and, with ``seed_parity``, only for matching seeds)."""

    def respond(body):
        question = body["messages"][-1]["content"]
        right = True
        if seed_parity is not None:
            right = body.get("seed", 0) % 2 == seed_parity
        if match := re.match(r"What is (\d+) plus (\d+)\?", question):
            total = int(match[1]) + int(match[2])
            return Reply(text=f"The sum is {total if 'math' in good_at and right else total + 1}.")
        if match := re.match(r"Write a Python function add_(\d+)", question):
            n = int(match[1])
            body_code = f"x + {n}" if "code" in good_at and right else "x"
            return Reply(text=f"```python\ndef add_{n}(x):\n    return {body_code}\n```")
        if "red" in question:
            return Reply(text="The answer is (B)." if right else "A")
        return Reply(text="Paris" if right else "Lyon")

    return respond


def _config(tmp_path, **servers):
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": name, "backend": "openai", "base_url": s.base_url}
                                               for name, s in servers.items()]}))
    return path


def _collect(config, questions, out, models, *extra, timeout=300):
    return subprocess.run([str(VENV_BIN / "llm-gateway"), "router", "collect", "--config", str(config), "--questions",
                           str(questions), "--models", *models, "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=timeout)


def test_scores_match_what_the_upstreams_got_right(make_upstream, tmp_path):
    mathy, coder, flaky = make_upstream("mathy"), make_upstream("coder"), make_upstream("flaky")
    mathy.responder, coder.responder = _solver({"math"}), _solver({"code"})
    flaky.responder = _solver({"math", "code"}, seed_parity=0)  # right on even seeds only
    rows = [{"question": q, "answer": a, "grader": "choice", "task": "mcq"} for q, a in CHOICE]
    rows += [{"question": q, "answer": a, "grader": "exact", "task": "trivia"} for q, a in EXACT]
    questions = _questions(tmp_path)
    questions.write_text(questions.read_text() + "\n" + "\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "data.json"
    result = _collect(_config(tmp_path, mathy=mathy, coder=coder, flaky=flaky), questions, out,
                      ["mathy", "coder", "flaky"], "--samples", "2", "--concurrency", "3")
    assert result.returncode == 0, result.stderr
    records = json.loads(out.read_text())
    assert len(records) == 14
    for record in records:
        if record["task"] == "math":
            assert record["scores"] == {"mathy": 1.0, "coder": 0.0, "flaky": 0.5}
        elif record["task"] == "code":
            assert record["scores"] == {"mathy": 0.0, "coder": 1.0, "flaky": 0.5}
    table = result.stdout
    assert re.search(r"math\s+100\.0\s+0\.0\s+50\.0", table) and re.search(r"code\s+0\.0\s+100\.0\s+50\.0", table)
    assert {c.body["seed"] for c in flaky.calls} == {0, 1} and all(c.body["temperature"] == 0.7 for c in flaky.calls)
    assert len(mathy.calls) == 14 * 2


def test_errors_are_clear(make_upstream, tmp_path):
    mathy = make_upstream("mathy")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a", "grader": "vibes"}\n')
    result = _collect(_config(tmp_path, mathy=mathy), bad, tmp_path / "o.json", ["mathy"])
    assert result.returncode == 2 and "line 1: unknown grader 'vibes'" in result.stderr
    result = _collect(_config(tmp_path, mathy=mathy), _questions(tmp_path), tmp_path / "o.json", ["nobody"])
    assert result.returncode == 2 and "--models: nobody not in the config" in result.stderr


def test_resume_after_a_kill_does_not_ask_again(make_upstream, tmp_path):
    slow = make_upstream("slow")
    solver = _solver({"math", "code"})

    def respond(body):
        time.sleep(0.3)
        return solver(body)

    slow.responder = respond
    config, questions, out = _config(tmp_path, slow=slow), _questions(tmp_path), tmp_path / "data.json"
    command = [str(VENV_BIN / "llm-gateway"), "router", "collect", "--config", str(config), "--questions",
               str(questions), "--models", "slow", "--out", str(out), "--concurrency", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = out.with_name(out.name + ".progress.jsonl")
    deadline = time.monotonic() + 120
    while not (progress.exists() and len(progress.read_text().splitlines()) >= 4):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    graded_before = {json.loads(line)["key"] for line in progress.read_text().splitlines() if line.strip()}
    calls_before = len(slow.calls)
    assert not out.exists() and 4 <= len(graded_before) < 12
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    asked_again = len(slow.calls) - calls_before
    assert asked_again == 12 - len(graded_before)  # only the pairs not graded yet
    assert len(json.loads(out.read_text())) == 12


def test_a_router_trained_on_collected_data_routes_as_expected(make_upstream, tmp_path):
    mathy, coder = make_upstream("mathy"), make_upstream("coder")
    mathy.responder, coder.responder = _solver({"math"}), _solver({"code"})
    math = [(f"What is {a} plus {b}?", str(a + b)) for a in range(3, 23, 2) for b in (4, 9)]
    code = [(f"Write a Python function add_{n}(x) that returns x + {n}.", f"assert add_{n}(1) == {1 + n}")
            for n in range(1, 21)]
    out = tmp_path / "data.json"
    result = _collect(_config(tmp_path, mathy=mathy, coder=coder), _questions(tmp_path, math, code), out,
                      ["mathy", "coder"], "--concurrency", "8")
    assert result.returncode == 0, result.stderr
    datasets = load_routing_files([out])
    assert [d.task for d in datasets] == ["math", "code"]
    checkpoint = tmp_path / "router"
    train = subprocess.run([str(VENV_BIN / "llm-gateway"), "router", "train", "--data", str(out), "--out",
                            str(checkpoint), "--steps", "60", "--samples-per-task", "40", "--batch-size", "16"],
                           capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr
    from routers import load_router

    router = load_router(checkpoint)
    new_math = ["What is 101 plus 202?", "What is 7 plus 1000?", "What is 55 plus 45?"]
    new_code = ["Write a Python function add_77(x) that returns x + 77.", "Write a Python function add_5(x) that "
                "returns x + 5.", "Write a Python function add_300(x) that returns x + 300."]
    names = router.llm_names
    assert [names[i] for i in np.argmax(router.score(new_math), axis=1)] == ["mathy"] * 3
    assert [names[i] for i in np.argmax(router.score(new_code), axis=1)] == ["coder"] * 3


@pytest.mark.slow
def test_the_embedded_model_answers_collection_questions(make_upstream, tmp_path):
    mathy = make_upstream("mathy")
    mathy.responder = _solver({"math"})
    config = tmp_path / "gw.yaml"
    config.write_text(yaml.safe_dump({"models": [{"name": "smol", "backend": "local"},
                                                 {"name": "mathy", "backend": "openai", "base_url": mathy.base_url}]}))
    questions = _questions(tmp_path, MATH[:2], [])
    out = tmp_path / "data.json"
    result = _collect(config, questions, out, ["smol", "mathy"], "--max-tokens", "48", timeout=600)
    assert result.returncode == 0, result.stderr
    records = json.loads(out.read_text())
    assert len(records) == 2 and all(r["scores"]["mathy"] == 1.0 for r in records)
    assert all(r["scores"]["smol"] in (0.0, 1.0) for r in records)
    answers = [json.loads(line)["answer"] for line in out.with_name(out.name + ".progress.jsonl").read_text()
               .splitlines() if json.loads(line)["model"] == "smol"]
    assert len(answers) == 2 and all(answers)  # the real model produced text that was graded
