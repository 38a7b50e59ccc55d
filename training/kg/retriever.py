"""The cheap first stage of link prediction: a text-initialised embedding retriever trained on the graph.

Each entity starts as the MiniLM embedding of its name and definition; a query (entity, relation, direction)
is the known entity's embedding through a linear map of its own (one per relation and direction, starting as
the identity, so an untrained retriever ranks by text similarity). Entity embeddings and maps are trained
with a sampled softmax over the training triples (the batch's answers plus random entities as negatives),
keeping the epoch whose filtered MRR on a validation sample is best. On two CPU cores it trains in minutes.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from training.kg.graph import KnowledgeGraph, Query

logger = logging.getLogger(__name__)


@dataclass
class RetrieverSettings:
    epochs: int = 4
    batch_size: int = 1024
    negatives: int = 4096
    learning_rate: float = 2e-3
    temperature: float = 0.05
    validation_queries: int = 1000
    seed: int = 0


class TextRetriever(torch.nn.Module):
    def __init__(self, entity_vectors: np.ndarray, relations: list[str], temperature: float) -> None:
        super().__init__()
        self.entity = torch.nn.Parameter(torch.tensor(entity_vectors, dtype=torch.float32))
        self.relations = relations
        dim = entity_vectors.shape[1]
        maps = torch.eye(dim).repeat(2 * len(relations), 1, 1)  # one per relation and direction
        self.maps = torch.nn.Parameter(maps)
        self.bias = torch.nn.Parameter(torch.zeros(2 * len(relations), dim))
        self.temperature = temperature
        self._relation_index = {r: i for i, r in enumerate(relations)}

    def map_index(self, relation: str, direction: str) -> int:
        return 2 * self._relation_index[relation] + (direction == "head")

    def query_vectors(self, entities: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """Normalised query vectors of (known entity index, map index) pairs."""
        out = torch.empty(len(entities), self.entity.shape[1])
        for m in maps.unique():
            rows = maps == m
            out[rows] = self.entity[entities[rows]] @ self.maps[m] + self.bias[m]
        return F.normalize(out, dim=-1)

    @torch.no_grad()
    def scores(self, graph: KnowledgeGraph, queries: list[Query]) -> np.ndarray:
        """Cosine scores of every entity for each query (queries × entities)."""
        entities = torch.tensor([graph.index[q.known] for q in queries])
        maps = torch.tensor([self.map_index(q.relation, q.direction) for q in queries])
        return (self.query_vectors(entities, maps) @ F.normalize(self.entity, dim=-1).T).numpy()


def filtered_rank(graph: KnowledgeGraph, query: Query, scores: np.ndarray) -> int:
    """The answer's rank (1 = best) among all entities but the query's other true answers (ties count
    against it)."""
    answer = scores[graph.index[query.answer]]
    better = scores >= answer
    better[graph.index[query.answer]] = False
    for other in graph.filtered_out(query):
        better[graph.index[other]] = False
    return int(better.sum()) + 1


def top_candidates(graph: KnowledgeGraph, query: Query, scores: np.ndarray, m: int) -> list[str]:
    """The best ``m`` entities for ``query`` without its other true answers (the filtered setting)."""
    masked = scores.copy()
    for other in graph.filtered_out(query):
        masked[graph.index[other]] = -np.inf
    top = np.argpartition(-masked, m)[:m] if m < len(masked) else np.arange(len(masked))
    return [graph.entities[i] for i in top[np.argsort(-masked[top], kind="stable")]]


def train_retriever(graph: KnowledgeGraph, entity_vectors: np.ndarray, settings: RetrieverSettings,
                    progress: bool = True) -> tuple[TextRetriever, list[dict[str, float]]]:
    from tqdm import tqdm

    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    model = TextRetriever(entity_vectors, graph.relations, settings.temperature)
    training = graph.queries("train")
    known = torch.tensor([graph.index[q.known] for q in training])
    answers = torch.tensor([graph.index[q.answer] for q in training])
    maps = torch.tensor([model.map_index(q.relation, q.direction) for q in training])
    validation = graph.queries("valid")
    validation = rng.sample(validation, min(settings.validation_queries, len(validation)))
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    history = [{"epoch": 0, "valid_mrr": _mrr(model, graph, validation)}]
    best = (history[0]["valid_mrr"], {k: v.clone() for k, v in model.state_dict().items()})
    n_entities = len(graph.entities)
    for epoch in range(1, settings.epochs + 1):
        order = torch.randperm(len(training))
        losses = []
        for start in tqdm(range(0, len(order), settings.batch_size), desc=f"retriever epoch {epoch}",
                          disable=not progress, leave=False):
            rows = order[start:start + settings.batch_size]
            # Candidates: the batch's answers, then random entities; the loss finds each row's own answer.
            candidates = torch.cat([answers[rows], torch.randint(n_entities, (settings.negatives,))])
            queries = model.query_vectors(known[rows], maps[rows])
            logits = queries @ F.normalize(model.entity[candidates], dim=-1).T / settings.temperature
            # A random negative (or another row's answer) that is this row's answer counts as its positive.
            positive = candidates.unsqueeze(0) == answers[rows].unsqueeze(1)
            loss = (torch.logsumexp(logits, dim=1) - torch.logsumexp(logits.masked_fill(~positive, -1e9), dim=1))
            optimiser.zero_grad()
            loss.mean().backward()
            optimiser.step()
            losses.append(float(loss.mean().detach()))
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)),
                        "valid_mrr": _mrr(model, graph, validation)})
        logger.info("retriever epoch %d: loss %.3f, validation MRR %.4f", epoch, history[-1]["train_loss"],
                    history[-1]["valid_mrr"])
        if history[-1]["valid_mrr"] > best[0]:
            best = (history[-1]["valid_mrr"], {k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[1])
    return model, history


def filtered_ranks(model: TextRetriever, graph: KnowledgeGraph, queries: list[Query]) -> list[int]:
    """``filtered_rank`` of every query, scored 512 at a time."""
    ranks = []
    for start in range(0, len(queries), 512):
        batch = queries[start:start + 512]
        ranks += [filtered_rank(graph, q, s) for q, s in zip(batch, model.scores(graph, batch), strict=True)]
    return ranks


def _mrr(model: TextRetriever, graph: KnowledgeGraph, queries: list[Query]) -> float:
    ranks = filtered_ranks(model, graph, queries)
    return float(np.mean([1 / r for r in ranks])) if ranks else 0.0


def save_retriever(model: TextRetriever, path: Path) -> None:
    torch.save({"state": model.state_dict(), "relations": model.relations, "temperature": model.temperature}, path)


def load_retriever(path: Path) -> TextRetriever:
    saved = torch.load(path, weights_only=True)
    model = TextRetriever(saved["state"]["entity"].numpy(), saved["relations"], saved["temperature"])
    model.load_state_dict(saved["state"])
    return model
