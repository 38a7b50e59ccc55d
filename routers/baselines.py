"""Baseline routers: random, fixed, best-single and k-nearest-neighbours."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from routers.base import Router
from routers.data import RoutingDataset
from routers.encoders import TextEncoder


def task_averaged_outcome(datasets: Sequence[RoutingDataset]) -> np.ndarray:
    """[n_llms]: each LLM's accuracy averaged over tasks (every task weighs the same)."""
    return np.mean([d.outcome().mean(axis=0) for d in datasets], axis=0)


def best_single_llm(datasets: Sequence[RoutingDataset]) -> str:
    """The LLM with the best task-averaged accuracy."""
    return datasets[0].llm_names[int(np.argmax(task_averaged_outcome(datasets)))]


class RandomRouter(Router):
    """Uniformly random ranking (seeded)."""

    def __init__(self, llm_names: Sequence[str], seed: int = 0) -> None:
        super().__init__(llm_names)
        self._rng = np.random.default_rng(seed)

    def score(self, queries: Sequence[str]) -> np.ndarray:
        return self._rng.random((len(queries), len(self.llm_names)))


class FixedRouter(Router):
    """Always the same LLM first; the rest keep their order."""

    def __init__(self, llm_names: Sequence[str], model: str) -> None:
        super().__init__(llm_names)
        if model not in self.llm_names:
            raise ValueError(f"fixed router: '{model}' is not one of {', '.join(self.llm_names)}")
        self.model = model
        self._row = np.linspace(0, -0.5, len(self.llm_names))
        self._row[self.llm_names.index(model)] = 1.0

    def score(self, queries: Sequence[str]) -> np.ndarray:
        return np.tile(self._row, (len(queries), 1))


class KNNRouter(Router):
    """Scores each LLM by its mean outcome on the k most similar training queries (cosine)."""

    def __init__(self, encoder: TextEncoder, train_embeddings: np.ndarray, train_outcomes: np.ndarray,
                 llm_names: Sequence[str], k: int = 10) -> None:
        super().__init__(llm_names)
        self.encoder, self.k = encoder, k
        self._embeddings = train_embeddings / np.linalg.norm(train_embeddings, axis=1, keepdims=True)
        self._outcomes = train_outcomes

    def score_encoded(self, encoded: np.ndarray) -> np.ndarray:
        encoded = encoded / np.linalg.norm(encoded, axis=1, keepdims=True)
        similarity = encoded @ self._embeddings.T
        k = min(self.k, similarity.shape[1])
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        return self._outcomes[nearest].mean(axis=1)

    def score(self, queries: Sequence[str]) -> np.ndarray:
        return self.score_encoded(self.encoder.encode(queries))
