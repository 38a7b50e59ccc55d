"""Collecting routing data from your own model pool: every question to every model through the gateway's
backends, each answer graded against the question's reference, written in the RouterDC format.

Progress is appended to ``<out>.progress.jsonl`` as each answer is graded, so an interrupted run resumes
where it stopped (graded pairs are never asked again); ``<out>`` is written when every pair is done.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from gateway.core.config import GatewayConfig
from gateway.core.errors import GatewayError
from gateway.engine.pool import ModelPool
from gateway.wire.openai import ChatCompletionRequest, message_text_of
from training.graders import GRADERS


class IncompleteCollection(Exception):
    """Some answers could not be obtained; the graded ones are kept for the next run."""


@dataclass(frozen=True)
class Question:
    question: str
    answer: str
    grader: str
    task: str

    @property
    def key(self) -> str:
        return hashlib.sha256(f"{self.task}\x00{self.question}".encode()).hexdigest()[:20]


def load_questions(path: Path) -> list[Question]:
    questions = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected an object")
        for key in ("question", "answer", "grader"):
            if not isinstance(record.get(key), str) or not record[key].strip():
                raise ValueError(f"{where}: '{key}' must be a non-empty string")
        if record["grader"] not in GRADERS:
            raise ValueError(f"{where}: unknown grader '{record['grader']}'; known: {', '.join(GRADERS)}")
        questions.append(Question(record["question"], record["answer"], record["grader"],
                                  str(record.get("task") or path.stem)))
    if not questions:
        raise ValueError(f"{path}: no questions")
    return questions


@dataclass
class CollectOptions:
    models: list[str]
    samples: int = 1
    concurrency: int = 4
    temperature: float = 0.7  # used when samples > 1 (one greedy answer otherwise)
    max_tokens: int = 512
    progress: bool = True


def _progress_path(out: Path) -> Path:
    return out.with_name(out.name + ".progress.jsonl")


def _done(out: Path) -> dict[tuple[str, str, int], bool]:
    done: dict[tuple[str, str, int], bool] = {}
    path = _progress_path(out)
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the interruption
                continue
            done[(row["key"], row["model"], row["sample"])] = row["correct"]
    return done


async def _ask(pool: ModelPool, model: str, question: Question, sample: int, options: CollectOptions) -> str:
    request = ChatCompletionRequest.model_validate({
        "model": model, "max_tokens": options.max_tokens,
        "temperature": options.temperature if options.samples > 1 else 0.0,
        **({"seed": sample} if options.samples > 1 else {}),
        "messages": [{"role": "user", "content": question.question}]})
    backend = pool.get(model)
    assert backend is not None
    return message_text_of(await backend.complete("chat", request))


async def collect(config: GatewayConfig, questions: Sequence[Question], options: CollectOptions, out: Path,
                  cache_dir: Path) -> dict[str, Any]:
    unknown = [m for m in options.models if config.model(m) is None]
    if unknown:
        raise ValueError(f"--models: {', '.join(unknown)} not in the config (configured: "
                         f"{', '.join(m.name for m in config.models)})")
    done = _done(out)
    todo = [(q, m, s) for q in questions for m in options.models for s in range(options.samples)
            if (q.key, m, s) not in done]
    pool = ModelPool(config, cache_dir)
    await pool.start()
    for model in options.models:  # local models load in the background: wait for them
        backend = pool.get(model)
        if backend is not None:
            await backend.wait_loaded()
    progress_file = _progress_path(out)
    progress_file.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    limit = asyncio.Semaphore(options.concurrency)
    bar = tqdm(total=len(todo), desc="collect", unit="answer", disable=not options.progress,
               initial=0, postfix={"resumed": len(done)})
    with progress_file.open("a") as log:
        async def one(question: Question, model: str, sample: int) -> None:
            async with limit:
                try:
                    answer = await _ask(pool, model, question, sample, options)
                except GatewayError as exc:
                    failures.append(f"{model}: {exc.message}")  # not recorded: asked again on the next run
                    bar.update()
                    return
                correct = await asyncio.to_thread(GRADERS[question.grader], answer, question.answer)
                done[(question.key, model, sample)] = correct
                log.write(json.dumps({"key": question.key, "model": model, "sample": sample, "correct": correct,
                                      "answer": answer[:2000]}) + "\n")
                log.flush()
                bar.update()

        try:
            await asyncio.gather(*(one(q, m, s) for q, m, s in todo))
        finally:
            bar.close()
            await pool.aclose()
    if failures:
        raise IncompleteCollection(f"{len(failures)} answers failed (first: {failures[0]}); run the command again to "
                           "retry them, graded answers are kept")
    records = [{"question": q.question, "task": q.task,
                "scores": {m: sum(done[(q.key, m, s)] for s in range(options.samples)) / options.samples
                           for m in options.models}} for q in questions]
    out.write_text(json.dumps(records, ensure_ascii=False, indent=1))
    return summarise(records, options.models)


def summarise(records: Sequence[dict[str, Any]], models: Sequence[str]) -> dict[str, Any]:
    """Accuracy (%) of each model per task and overall."""
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_task[record["task"]].append(record)
    table = {task: {m: 100 * sum(r["scores"][m] for r in rows) / len(rows) for m in models}
             for task, rows in by_task.items()}
    table["ALL"] = {m: 100 * sum(r["scores"][m] for r in records) / len(records) for m in models}
    return {"questions": len(records), "accuracy": table}


def format_summary(summary: dict[str, Any]) -> str:
    models = list(next(iter(summary["accuracy"].values())))
    width = max(10, *(len(m) for m in models)) + 2
    lines = [f"{'task':<16}" + "".join(f"{m:>{width}}" for m in models)]
    for task, row in summary["accuracy"].items():
        lines.append(f"{task:<16}" + "".join(f"{row[m]:>{width}.1f}" for m in models))
    return "\n".join(lines)
