"""Routing data from the deployment's own traffic: routed requests that got feedback (``POST /v1/feedback``), read
from the usage store and written as a RouterBench CSV (``llm-gateway router collect --from-store``).

Each question is scored only for the models that answered it (usually one: the router's choice), so the file has
partial labels: the other models' cells are empty, as in RouterBench itself, and its reader and the trainers
that mask unscored cells (``router train --objective pareto``) take them as unknown, not as wrong. A model's cell
is 1.0 when its answers' mean feedback score is at least ``threshold`` (0.5), else 0.0 (RouterBench's quality
columns are correct / wrong); its cost column is what the store recorded for those answers.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import and_, func, or_, select

from gateway.engine.usage import UsageStore
from gateway.engine.usage.schema import feedback, requests

TRAFFIC_TASK = "traffic"


@dataclass(frozen=True)
class ScoredAnswer:
    """One routed request with feedback: what the router read, the model that answered, its cost and score."""

    question: str
    model: str
    cost_usd: float | None
    score: float  # mean feedback score, 0-1


def scored_answers(store: UsageStore) -> list[ScoredAnswer]:
    """Every successful routed request that has feedback (the mean of its scores), oldest first."""
    same_key = or_(feedback.c.key_name == requests.c.key_name,
                   and_(feedback.c.key_name.is_(None), requests.c.key_name.is_(None)))
    query = (select(requests.c.query, requests.c.model, requests.c.cost_usd, func.avg(feedback.c.score))
             .join(feedback, and_(feedback.c.request_id == requests.c.request_id, same_key))
             .where(requests.c.query.is_not(None), requests.c.status == 200, requests.c.request_id != "-")
             .group_by(requests.c.id, requests.c.query, requests.c.model, requests.c.cost_usd, requests.c.created_at)
             .order_by(requests.c.created_at))
    store.ensure_schema()
    with store.engine.connect() as connection:
        return [ScoredAnswer(question, model, None if cost is None else float(cost), float(score))
                for question, model, cost, score in connection.execute(query)]


def write_routerbench_csv(answers: Sequence[ScoredAnswer], out: Path, *, models: Sequence[str] | None = None,
                          names: Mapping[str, str] | None = None, threshold: float = 0.5) -> dict[str, int]:
    """Write ``answers`` as a RouterBench CSV with one row per distinct question; ``models`` are the configured
    models to keep (default: every one that answered), ``names`` what to call each column (a router checkpoint's
    LLM names, so the file mixes with benchmark data). Returns counts for a summary."""
    kept = list(models) if models is not None else sorted({a.model for a in answers})
    names = names or {}
    by_question: dict[str, dict[str, list[ScoredAnswer]]] = defaultdict(lambda: defaultdict(list))
    skipped = 0
    for answer in answers:
        if answer.model not in kept:
            skipped += 1
            continue
        by_question[answer.question][answer.model].append(answer)
    columns = [names.get(m, m) for m in kept]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["prompt", "eval_name", *columns, *(f"{c}|total_cost" for c in columns)])
    for question, per_model in by_question.items():
        quality, cost = [], []
        for model in kept:
            given = per_model.get(model)
            if not given:
                quality.append("")
                cost.append("")
                continue
            mean_score = sum(a.score for a in given) / len(given)
            quality.append("1.0" if mean_score >= threshold else "0.0")
            costs = [a.cost_usd for a in given if a.cost_usd is not None]
            cost.append(repr(sum(costs) / len(costs)) if costs else "")
        writer.writerow([repr([question]), TRAFFIC_TASK, *quality, *cost])
    data = buffer.getvalue().encode("utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(gzip.compress(data) if out.name.endswith(".gz") else data)
    return {"answers": len(answers) - skipped, "questions": len(by_question), "skipped_models": skipped}
