"""Baseline routers: random, fixed, best-single, k-nearest-neighbours, and the two that route by task alone
(``task-best``, the task known; ``task-classifier``, the task predicted): what a learned router must beat to show
that it routes per query rather than per task."""

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


def task_profiles(datasets: Sequence[RoutingDataset]) -> dict[str, np.ndarray]:
    """Task -> [n_llms] accuracy of every LLM on that task's questions (the LLM order of ``datasets[0]``)."""
    names = datasets[0].llm_names
    return {d.task: d.outcome().mean(axis=0)[[d.llm_names.index(name) for name in names]] for d in datasets}


class TaskBestRouter(Router):
    """Each question to the best LLM of its task on the training data, the task known: an oracle on task
    identity, so the ceiling of routing by task alone. A task the training data lacks gets the best single LLM
    (its task-averaged accuracy order); so does a query scored without its task."""

    def __init__(self, train: Sequence[RoutingDataset]) -> None:
        super().__init__(train[0].llm_names)
        self.profiles = task_profiles(train)
        self.fallback = task_averaged_outcome(train)

    def score(self, queries: Sequence[str]) -> np.ndarray:
        return np.tile(self.fallback, (len(queries), 1))

    def score_known_task(self, queries: Sequence[str], task: str) -> np.ndarray:
        return np.tile(self.profiles.get(task, self.fallback), (len(queries), 1))


class TaskClassifierRouter(Router):
    """The task predicted from the query, then that task's best LLM: routing by task without the oracle. The
    classifier is a logistic regression on the encoder's vectors of the training questions, labelled by task."""

    def __init__(self, encoder: TextEncoder, train: Sequence[RoutingDataset], seed: int = 0) -> None:
        from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

        super().__init__(train[0].llm_names)
        self.encoder = encoder
        profiles = task_profiles(train)
        self.tasks = list(profiles)
        self._profiles = np.stack([profiles[task] for task in self.tasks])  # [n_tasks, n_llms]
        vectors = np.concatenate([encoder.encode(d.questions) for d in train])
        labels = np.concatenate([np.full(len(d), self.tasks.index(d.task)) for d in train])
        self.classifier = LogisticRegression(max_iter=2000, random_state=seed).fit(vectors, labels)

    def predict_tasks(self, queries: Sequence[str]) -> list[str]:
        return [self.tasks[i] for i in self.classifier.predict(self.encoder.encode(queries))]

    def score(self, queries: Sequence[str]) -> np.ndarray:
        return self._profiles[self.classifier.predict(self.encoder.encode(queries))]  # type: ignore[no-any-return]


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
