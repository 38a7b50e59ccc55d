"""The ``Router`` interface: queries in, candidate models ranked with their scores out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Candidate:
    model: str
    score: float


class Router(ABC):
    """Scores every candidate LLM for a batch of queries; higher is better.

    Learned routers also expose what a server needs to rank one request cheaply (see ``LearnedRouter``).

    Implement ``score``; ranking (and the cost trade-off) is shared::

        class LengthRouter(Router):
            def score(self, queries):
                short = np.array([[1.0, 0.0] if len(q) < 100 else [0.0, 1.0] for q in queries])
                return short
    """

    def __init__(self, llm_names: Sequence[str]) -> None:
        if not llm_names:
            raise ValueError("a router needs at least one candidate LLM")
        self.llm_names = list(llm_names)

    # A router whose scores depend on a quality/cost preference α (score_encoded(encoded, alpha)).
    preference_aware = False
    # Mean US dollars per question of each LLM, learnt from the training data (None: not learnt).
    cost_per_query: np.ndarray | None = None

    @property
    def batches_help(self) -> bool:
        """Whether scoring several queries at once is much cheaper per query than one by one (a contextual
        encoder on a CPU: yes). When not, a server scores each query inline, with no batch window."""
        return False

    @abstractmethod
    def score(self, queries: Sequence[str]) -> np.ndarray:
        """[len(queries), len(llm_names)] scores."""

    def score_known_task(self, queries: Sequence[str], task: str) -> np.ndarray:
        """Scores of queries whose task is known (evaluation on a task's file). A router reads the query alone
        unless it is an oracle on the task (``routers.baselines.TaskBestRouter``)."""
        return self.score(queries)

    def rank(self, queries: Sequence[str], cost_penalty: np.ndarray | None = None) -> list[list[Candidate]]:
        """Candidates per query, best first; ``cost_penalty`` ([n_llms]) is subtracted before ranking. The order
        is ``routers.decision.rank``'s, every candidate eligible (what the gateway adds: prices, eligibility)."""
        from routers.decision import CandidateSet, rank

        n = len(self.llm_names)
        everyone = CandidateSet(self.llm_names, np.zeros(n), allowed=np.ones(n, dtype=bool),
                                vision=np.ones(n, dtype=bool), audio=np.zeros(n, dtype=bool))
        scores = np.asarray(self.score(queries), dtype=np.float64)
        adjusted = scores - cost_penalty if cost_penalty is not None else scores
        decisions = [rank(everyone, row, np.array([1.0, 0.0]), np.full(n, np.nan), preference_aware=True)
                     for row in adjusted]
        return [[Candidate(model, score) for model, score in zip(d.models, d.scores, strict=True)] for d in decisions]


class LearnedRouter(Router):
    """A router with an encoder: texts are encoded once, then scored (under a preference when the router is
    ``preference_aware``), and the expected quality per LLM comes with the scores where the router knows it."""

    encoder: Any  # routers.encoders.TextEncoder (not imported here: this module stays free of torch)

    @abstractmethod
    def score_encoded(self, encoded: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
        """[n, n_llms] scores of encoded queries (``alpha``: the preference, for preference-aware routers)."""

    def expected_quality(self, encoded: np.ndarray) -> np.ndarray | None:
        """[n, n_llms] expected accuracy (0-1) per LLM, or None when the router does not estimate it."""
        return None

    def score(self, queries: Sequence[str]) -> np.ndarray:
        return self.score_encoded(self.encoder.encode(queries))

    @property
    def batches_help(self) -> bool:
        return bool(self.encoder.batches_help)
