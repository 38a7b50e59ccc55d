"""The ``Router`` interface: queries in, candidate models ranked with their scores out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Candidate:
    model: str
    score: float


class Router(ABC):
    """Scores every candidate LLM for a batch of queries; higher is better.

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

    @abstractmethod
    def score(self, queries: Sequence[str]) -> np.ndarray:
        """[len(queries), len(llm_names)] scores."""

    def rank(self, queries: Sequence[str], cost_penalty: np.ndarray | None = None) -> list[list[Candidate]]:
        """Candidates per query, best first; ``cost_penalty`` ([n_llms]) is subtracted before ranking."""
        scores = np.asarray(self.score(queries), dtype=np.float64)
        adjusted = scores - cost_penalty if cost_penalty is not None else scores
        order = np.argsort(-adjusted, axis=1, kind="stable")
        return [[Candidate(self.llm_names[m], float(adjusted[q, m])) for m in order[q]] for q in range(len(queries))]
