"""KICGPT link prediction: a retriever ranks every entity, a chat model re-ranks the top m through the
gateway's ``/v1/rerank`` with knowledge in context, and the filtered MRR / Hits@k of both are reported.

Resumable: each query's outcome is appended to ``OUT/predictions.jsonl`` as it finishes and a re-run skips
the queries already there; the trained retriever (``OUT/retriever.pt``) and the entity embeddings are reused.
"""

from __future__ import annotations

import json
import logging
import random
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from training.kg import PROMPTS_FILE
from training.kg.graph import KnowledgeGraph, Query, Triple
from training.kg.retriever import (
    RetrieverSettings,
    filtered_rank,
    filtered_ranks,
    load_retriever,
    save_retriever,
    top_candidates,
    train_retriever,
)
from training.kg.wordnet import WORDNET_DIR, entity_labels, read_synsets, resolve_entities

logger = logging.getLogger(__name__)

HITS_AT = (1, 3, 10)
CHARACTERS_PER_TOKEN = 4


@dataclass(frozen=True)
class KGPrompts:
    relations: dict[str, str]
    query_tail: str
    query_head: str
    fact: str
    link_base_label: str
    analogy_label: str
    supplement_label: str
    link_base_facts: int
    facts_per_step: int
    max_steps: int
    token_budget: int

    @classmethod
    def load(cls, path: Path = PROMPTS_FILE) -> KGPrompts:
        fields = yaml.safe_load(path.read_text(encoding="utf-8"))
        try:
            return cls(**fields)
        except TypeError as exc:
            raise ValueError(f"KG prompt file {path}: {exc}") from None

    def relation(self, name: str) -> str:
        return self.relations.get(name, name.strip("_").replace("_", " "))


@dataclass
class Entities:
    """What the model and the retriever read about each entity."""

    labels: dict[str, str]
    definitions: dict[str, str]

    def text(self, entity: str) -> str:
        return f"{self.labels[entity]}: {self.definitions[entity]}"


@dataclass
class LinkPredictionTask:
    graph: KnowledgeGraph
    entities: Entities
    prompts: KGPrompts
    fact_texts: dict[Triple, str] = field(default_factory=dict)

    def fact(self, triple: Triple) -> str:
        text = self.fact_texts.get(triple)
        if text is None:
            head, relation, tail = triple
            text = self.prompts.fact.format(head=self.entities.labels[head], tail=self.entities.labels[tail],
                                            relation=self.prompts.relation(relation))
            self.fact_texts[triple] = text
        return text

    def query_text(self, query: Query) -> str:
        template = self.prompts.query_tail if query.direction == "tail" else self.prompts.query_head
        side = "head" if query.direction == "tail" else "tail"
        fields = {"head": "?", "tail": "?", "head_definition": "", "tail_definition": "",
                  side: self.entities.labels[query.known], f"{side}_definition": self.entities.definitions[query.known]}
        return template.format(relation=self.prompts.relation(query.relation), **fields)

    def demonstrations(self, query: Query, candidates: list[str], seed: int = 0) -> list[dict[str, Any]]:
        """KICGPT's knowledge turns (``/v1/rerank``'s labelled groups): the link base first, then steps of an
        analogy turn and a supplement turn, while the conversation with its query and ``candidates`` (their names)
        stays within the token budget. A fact is shown once."""
        prompts = self.prompts
        analogy_per_step = prompts.facts_per_step // 2
        supplement_per_step = prompts.facts_per_step - analogy_per_step
        analogy = self.graph.analogy_pool(query, analogy_per_step * prompts.max_steps, seed)
        texts = {t: self.fact(t) for t in self.graph.facts_about(query.known)}
        supplement = self.graph.supplement_pool(query, self.query_text(query), texts,
                                                supplement_per_step * prompts.max_steps)
        link_base = self.graph.link_base(query, prompts.link_base_facts)
        used = _tokens(self.query_text(query)) + sum(_tokens(name) + 1 for name in candidates)
        shown: set[Triple] = set(link_base)
        groups: list[dict[str, Any]] = []

        def add(label: str, triples: list[Triple]) -> bool:
            """One turn of these facts; False when it would not fit the budget (nothing more is shown then)."""
            nonlocal used
            if not triples:
                return True
            facts = [self.fact(t) for t in triples]
            cost = _tokens(label) + sum(_tokens(f) + 1 for f in facts)
            if used + cost > prompts.token_budget:
                return False
            groups.append({"label": label, "facts": facts})
            used += cost
            return True

        if not add(prompts.link_base_label, link_base):
            return groups
        for step in range(prompts.max_steps):
            step_analogy = [t for t in analogy[step * analogy_per_step:(step + 1) * analogy_per_step]
                            if t not in shown]
            step_supplement = [t for t in supplement[step * supplement_per_step:(step + 1) * supplement_per_step]
                               if t not in shown]
            if not step_analogy and not step_supplement:
                break
            shown.update(step_analogy + step_supplement)
            if not add(prompts.analogy_label, step_analogy) or not add(prompts.supplement_label, step_supplement):
                break
        return groups


def _tokens(text: str) -> int:
    return len(text) // CHARACTERS_PER_TOKEN + 1


def load_task(data: Path, wordnet_dir: Path = WORDNET_DIR, prompts: Path = PROMPTS_FILE) -> LinkPredictionTask:
    graph = KnowledgeGraph.load(data)
    edges = [(h, t) for triples in graph.splits.values() for h, _, t in triples]
    synsets = resolve_entities(graph.entities, edges, read_synsets(wordnet_dir))
    entities = Entities(entity_labels(synsets), {e: s.definition for e, s in synsets.items()})
    return LinkPredictionTask(graph, entities, KGPrompts.load(prompts))


def entity_vectors(task: LinkPredictionTask, cache: Path) -> np.ndarray:
    """MiniLM embeddings of each entity's name and definition (cached in ``cache``)."""
    if cache.exists():
        vectors = np.load(cache)
        if len(vectors) == len(task.graph.entities):
            return vectors
    from sentence_transformers import SentenceTransformer

    from routers.encoders.contextual import minilm_path

    encoder = SentenceTransformer(str(minilm_path()), device="cpu")
    vectors = encoder.encode([task.entities.text(e) for e in task.graph.entities], batch_size=256,
                             normalize_embeddings=True, show_progress_bar=True, convert_to_numpy=True)
    np.save(cache, vectors)
    return vectors


@dataclass
class RunSettings:
    top_m: int = 50
    sample: int | None = None  # test triples (each asked in both directions); None: all
    seed: int = 0
    model: str | None = None  # the re-ranking chat model; None: the retriever alone
    concurrency: int = 1
    retriever: RetrieverSettings = field(default_factory=RetrieverSettings)


Rerank = Callable[[str, list[str], list[dict[str, Any]]], tuple[list[int], dict[str, Any]]]


def run(task: LinkPredictionTask, out: Path, settings: RunSettings, rerank: Rerank | None,
        progress: bool = True) -> dict[str, Any]:
    """Retrieve (and re-rank) the sampled test queries; write predictions and ``report.json``; return it."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    retriever_path = out / "retriever.pt"
    history: list[dict[str, float]] = []
    if retriever_path.exists():
        retriever = load_retriever(retriever_path)
    else:
        vectors = entity_vectors(task, out / "entity_vectors.npy")
        retriever, history = train_retriever(task.graph, vectors, settings.retriever, progress)
        save_retriever(retriever, retriever_path)
        (out / "retriever_history.json").write_text(json.dumps(history, indent=1))

    all_queries = task.graph.queries("test")
    all_ranks = filtered_ranks(retriever, task.graph, all_queries)
    triples = task.graph.splits["test"]
    if settings.sample is not None and settings.sample < len(triples):
        triples = random.Random(settings.seed).sample(triples, settings.sample)
    queries = [Query(t, d) for t in triples for d in ("tail", "head")]

    predictions_path = out / "predictions.jsonl"
    done = {}
    if predictions_path.exists():
        for line in predictions_path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record.get("model") == settings.model and record.get("top_m") == settings.top_m:
                done[record["query"]] = record
    pending = [q for q in queries if q.key not in done]

    def predict(query: Query) -> dict[str, Any]:
        scores = retriever.scores(task.graph, [query])[0]
        retrieved_rank = filtered_rank(task.graph, query, scores)
        record: dict[str, Any] = {"query": query.key, "model": settings.model, "top_m": settings.top_m,
                                  "retriever_rank": retrieved_rank, "rank": retrieved_rank}
        if rerank is None or retrieved_rank > settings.top_m:
            # Without the answer among the candidates a re-ranking cannot change its rank: the model is not
            # asked (this saves evaluation time only; the metrics are the same either way).
            return record
        candidates = top_candidates(task.graph, query, scores, settings.top_m)
        started = time.monotonic()
        names = [task.entities.labels[c] for c in candidates]
        order, info = rerank(task.query_text(query), names, task.demonstrations(query, names, settings.seed))
        record["seconds"] = round(time.monotonic() - started, 3)
        record.update(info)
        reranked = [candidates[i] for i in order]
        if query.answer in reranked:
            record["rank"] = reranked.index(query.answer) + 1
        return record

    with predictions_path.open("a", encoding="utf-8") as handle, \
            ThreadPoolExecutor(max(1, settings.concurrency)) as pool:
        bar = tqdm(total=len(queries), initial=len(queries) - len(pending), desc="link prediction",
                   disable=not progress)
        for record in pool.map(predict, pending):
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            done[record["query"]] = record
            bar.update()
        bar.close()

    records = [done[q.key] for q in queries]
    report = {
        "data": {"test_triples": len(task.graph.splits["test"]), "sampled_triples": len(triples),
                 "queries": len(queries), "entities": len(task.graph.entities), "seed": settings.seed},
        "settings": {"top_m": settings.top_m, "model": settings.model, "retriever": vars(settings.retriever)},
        "retriever_full_test": _metrics(all_ranks, settings.top_m),
        "retriever": _metrics([r["retriever_rank"] for r in records], settings.top_m),
        "retriever_by_direction": {
            direction: _metrics([r["retriever_rank"] for r in records if r["query"].endswith(f"\t{direction}")],
                                settings.top_m) for direction in ("tail", "head")},
    }
    if history:
        report["retriever_training"] = history
    if rerank is not None:
        timed = [r["seconds"] for r in records if "seconds" in r]
        report["reranked"] = _metrics([r["rank"] for r in records], settings.top_m)
        report["reranked"]["queries_whose_answer_left_the_top_m"] = sum(
            r["retriever_rank"] <= settings.top_m < r["rank"] for r in records)
        report["reranked"]["mean_candidates_placed_by_the_model"] = round(statistics.fmean(
            r.get("placed", 0) for r in records if "seconds" in r), 2) if timed else 0
        report["reranked_by_direction"] = {
            direction: _metrics([r["rank"] for r in records if r["query"].endswith(f"\t{direction}")],
                                settings.top_m) for direction in ("tail", "head")}
        report["seconds_per_query"] = {"mean": round(statistics.fmean(timed), 3),
                                       "median": round(statistics.median(timed), 3)} if timed else {}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def _metrics(ranks: list[int], top_m: int) -> dict[str, float]:
    ranks_array = np.array(ranks, dtype=float)
    metrics = {"queries": len(ranks), "mrr": round(float(np.mean(1 / ranks_array)), 4)}
    for k in (*HITS_AT, top_m):
        metrics[f"hits@{k}"] = round(float(np.mean(ranks_array <= k)) * 100, 2)
    return metrics
