"""Routing data: the RouterDC format (``{"question", "scores": {llm: score}, "cluster_id"?}`` records, as a
JSON list or as JSONL) and RouterBench's CSV (quality and price per LLM per question, read as it is, gzipped
or not). Bad records are errors naming the file and the line.

Scoring rules (the RouterDC repository's ``evaluation()``): on ``probability`` tasks a routed LLM scores 1
when its score is > 0, else 0; on ``multi_attempt`` tasks it scores its score (the fraction of sampled
attempts that were correct).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

Scoring = Literal["probability", "multi_attempt"]
SCORINGS: tuple[str, ...] = ("probability", "multi_attempt")


class RoutingDataError(ValueError):
    """A routing data file is unusable; the message names the file and the line."""


@dataclass(frozen=True)
class RoutingDataset:
    """One task's questions and the score of every LLM on each (rows follow ``llm_names``)."""

    task: str
    path: str
    questions: list[str]
    llm_names: list[str]
    scores: np.ndarray  # [n_questions, n_llms], float
    cluster_ids: np.ndarray | None  # [n_questions] or None when the file has none
    scoring: Scoring
    row_tasks: list[str] | None = None  # per-question "task" field (collected files mix tasks)
    costs: np.ndarray | None = None  # [n_questions, n_llms] US dollars each LLM charged (RouterBench), NaN = unknown

    def __len__(self) -> int:
        return len(self.questions)

    def subset(self, rows: Sequence[int] | np.ndarray) -> RoutingDataset:
        rows = np.asarray(rows, dtype=int)
        return RoutingDataset(self.task, self.path, [self.questions[i] for i in rows], self.llm_names,
                              self.scores[rows], None if self.cluster_ids is None else self.cluster_ids[rows],
                              self.scoring, None if self.row_tasks is None else [self.row_tasks[i] for i in rows],
                              None if self.costs is None else self.costs[rows])

    @property
    def scored(self) -> np.ndarray:
        """[n_questions, n_llms]: False where the LLM was not scored on the question (an empty CSV cell)."""
        return ~np.isnan(self.scores)

    def outcome(self) -> np.ndarray:
        """[n_questions, n_llms]: what choosing each LLM earns under this task's scoring rule. An unscored cell
        earns 0 (RouterBench's own convention); trainers mask them with ``scored`` instead."""
        return score_outcome(np.nan_to_num(self.scores, nan=0.0), self.scoring)

    def fully_scored(self) -> RoutingDataset:
        """The questions every LLM was scored on."""
        return self.subset(np.flatnonzero(self.scored.all(axis=1)))


def score_outcome(scores: np.ndarray, scoring: Scoring) -> np.ndarray:
    if scoring == "probability":
        return (scores > 0).astype(np.float64)
    return scores.astype(np.float64)


def task_name(path: Path) -> str:
    """``mmlu_train.json`` -> ``mmlu``; ``gsm8k-test.json`` -> ``gsm8k``."""
    stem = path.name.split(".")[0]
    return re.sub(r"[-_](train|test|val|valid|dev)$", "", stem) or stem


def parse_file_spec(spec: str) -> tuple[Path, Scoring | None]:
    """``FILE`` or ``FILE:SCORING``."""
    head, sep, tail = spec.rpartition(":")
    if sep and tail in SCORINGS:
        return Path(head), tail  # type: ignore[return-value]
    if sep and head and "/" not in tail and not Path(spec).exists():
        raise RoutingDataError(f"{spec}: unknown scoring '{tail}'; expected one of {', '.join(SCORINGS)}")
    return Path(spec), None


def infer_scoring(scores: np.ndarray) -> Scoring:
    """multi_attempt scores are fractions of 10 attempts; probability scores are free floats."""
    known = scores[~np.isnan(scores)]  # unscored cells say nothing
    tenths = np.abs(known * 10 - np.round(known * 10)) < 1e-6
    return "multi_attempt" if bool(tenths.all()) else "probability"


def _records_with_lines(text: str, path: Path) -> list[tuple[int, Any]]:
    """The records of a JSON list (or of JSONL), each with the line it starts on."""
    stripped = text.lstrip()
    if not stripped:
        raise RoutingDataError(f"{path}: the file is empty")
    if not stripped.startswith("["):
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append((number, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise RoutingDataError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        return records
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    records = []
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text):
            raise RoutingDataError(f"{path}: the JSON list is not closed")
        if text[position] == "]":
            return records
        start_line = text.count("\n", 0, position) + 1
        try:
            record, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise RoutingDataError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg})") from None
        records.append((start_line, record))


def load_routing_file(path: Path | str, scoring: Scoring | None = None,
                      expected_llms: Sequence[str] | None = None) -> RoutingDataset:
    """Read and check one file. ``expected_llms`` makes disagreeing LLM names an error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RoutingDataError(f"{path}: cannot read ({exc.strerror})") from None
    records = _records_with_lines(text, path)
    if not records:
        raise RoutingDataError(f"{path}: no records")
    llm_names = list(expected_llms) if expected_llms is not None else None
    questions, rows, clusters, tasks = [], [], [], []
    for line, record in records:
        where = f"{path}, line {line}"
        if not isinstance(record, dict):
            raise RoutingDataError(f"{where}: a record must be an object with 'question' and 'scores'")
        question, scores = record.get("question"), record.get("scores")
        if not isinstance(question, str) or not question.strip():
            raise RoutingDataError(f"{where}: 'question' must be a non-empty string")
        if not isinstance(scores, dict) or not scores:
            raise RoutingDataError(f"{where}: 'scores' must be a non-empty object of LLM name -> score")
        if llm_names is None:
            llm_names = list(scores)
        if set(scores) != set(llm_names):
            missing, extra = sorted(set(llm_names) - set(scores)), sorted(set(scores) - set(llm_names))
            raise RoutingDataError(f"{where}: the LLM names disagree with the rest of the data "
                                   f"(missing: {missing or 'none'}; unexpected: {extra or 'none'})")
        row = []
        for name in llm_names:
            value = scores[name]
            if value is None:  # not scored on this question (collected feedback: only the model that answered)
                row.append(math.nan)
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise RoutingDataError(f"{where}: score of '{name}' is {value!r}; expected a finite number or "
                                       "null (not scored)")
            row.append(float(value))
        if all(math.isnan(value) for value in row):
            raise RoutingDataError(f"{where}: no LLM is scored (every score is null)")
        questions.append(question)
        rows.append(row)
        clusters.append(record.get("cluster_id"))
        tasks.append(record.get("task"))
    matrix = np.asarray(rows, dtype=np.float64)
    has_clusters = all(isinstance(c, int) for c in clusters)
    has_tasks = all(isinstance(t, str) and t for t in tasks)
    return RoutingDataset(task=task_name(path), path=str(path), questions=questions, llm_names=list(llm_names or []),
                          scores=matrix, cluster_ids=np.asarray(clusters, dtype=int) if has_clusters else None,
                          scoring=scoring or infer_scoring(matrix),
                          row_tasks=cast(list[str], tasks) if has_tasks else None)  # has_tasks: all str


def split_by_task(dataset: RoutingDataset, scoring: Scoring | None) -> list[RoutingDataset]:
    """A file whose records carry ``task`` (e.g. from ``router collect``) becomes one dataset per task."""
    if dataset.row_tasks is None:
        return [dataset]
    parts = []
    for name in dict.fromkeys(dataset.row_tasks):
        part = dataset.subset([i for i, t in enumerate(dataset.row_tasks) if t == name])
        parts.append(replace(part, task=name, scoring=scoring or infer_scoring(part.scores)))
    return parts


def is_routerbench_csv(path: Path) -> bool:
    return path.name.endswith((".csv", ".csv.gz"))


def load_routerbench_csv(path: Path | str, expected_llms: Sequence[str] | None = None) -> RoutingDataset:
    """RouterBench's CSV as it is: ``prompt`` (a Python-list repr of one string, read without evaluating it),
    ``eval_name``, and per LLM a quality column (1.0 / 0.0, empty = not scored), ``<llm>|model_response`` and
    ``<llm>|total_cost`` (US dollars). The question is the prompt string, as a client would send it."""
    import ast
    import csv
    import gzip
    import io

    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise RoutingDataError(f"{path}: cannot read ({exc})") from None
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8")))
    columns = reader.fieldnames or []
    llm_names = [c[: -len("|total_cost")] for c in columns if c.endswith("|total_cost")]
    missing = [c for c in ("prompt", "eval_name", *llm_names) if c not in columns]
    if not llm_names or missing:
        raise RoutingDataError(f"{path}: not a RouterBench CSV (needs prompt, eval_name and <llm> / "
                               f"<llm>|total_cost columns; missing: {', '.join(missing) or 'every <llm>|total_cost'})")
    if expected_llms is not None and set(llm_names) != set(expected_llms):
        raise RoutingDataError(f"{path}: the LLM names disagree with the rest of the data")
    llm_names = list(expected_llms) if expected_llms is not None else llm_names
    questions, scores, costs, tasks = [], [], [], []
    for line, row in enumerate(reader, start=2):
        try:
            prompt = ast.literal_eval(row["prompt"])
        except (ValueError, SyntaxError):
            prompt = row["prompt"]
        if isinstance(prompt, list):
            prompt = "\n".join(str(part) for part in prompt)
        if not isinstance(prompt, str) or not prompt.strip():
            raise RoutingDataError(f"{path}, line {line}: 'prompt' is empty")
        questions.append(prompt)
        tasks.append(row["eval_name"] or task_name(path))
        scores.append([_cell(row[name], path, line, name) for name in llm_names])
        costs.append([_cell(row[f"{name}|total_cost"], path, line, f"{name}|total_cost") for name in llm_names])
    if not questions:
        raise RoutingDataError(f"{path}: no records")
    return RoutingDataset(task=tasks[0] if len(set(tasks)) == 1 else task_name(path), path=str(path),
                          questions=questions, llm_names=llm_names, scores=np.asarray(scores, dtype=np.float64),
                          cluster_ids=None, scoring="probability",
                          row_tasks=tasks if len(set(tasks)) > 1 else None, costs=np.asarray(costs, dtype=np.float64))


def _cell(value: str | None, path: Path, line: int, column: str) -> float:
    if value is None or not value.strip():
        return math.nan
    try:
        number = float(value)
    except ValueError:
        raise RoutingDataError(f"{path}, line {line}: '{column}' is {value!r}; expected a number or nothing") from None
    if not math.isfinite(number):
        raise RoutingDataError(f"{path}, line {line}: '{column}' is {value!r}; expected a finite number")
    return number


def load_routing_files(specs: Sequence[str | Path]) -> list[RoutingDataset]:
    """Several files (``FILE`` or ``FILE:SCORING``; RouterDC JSON/JSONL or RouterBench CSV) that must agree on
    the LLM names; order from the first."""
    datasets: list[RoutingDataset] = []
    for spec in specs:
        path, scoring = parse_file_spec(str(spec))
        expected = datasets[0].llm_names if datasets else None
        loaded = load_routerbench_csv(path, expected) if is_routerbench_csv(path) else \
            load_routing_file(path, scoring, expected)
        datasets.extend(split_by_task(loaded, scoring))
    names = [d.task for d in datasets]
    for i, name in enumerate(names):  # two files of one task name: keep both, tell them apart
        if names.count(name) > 1:
            datasets[i] = replace(datasets[i], task=f"{name}#{names[:i].count(name) + 1}")
    return datasets
