"""Cluster-conditional routing (the MoCE idea with the simplest experts): each training cluster — a task of
the training files, or a k-means cluster when the data has no tasks — has an outcome profile (how well every
LLM did on it); a query is softly assigned to the clusters by a linear gate on its embedding, and its expected
outcome per LLM is the gate-weighted mix of the profiles::

    expected[m] = sum_c softmax(W x + b)[c] * profile[c, m]

Measured on the RouterDC benchmark, this beats per-query contrastive scores: most of what separates the LLMs
there is the kind of question, and per-query differences inside a task are mostly noise that a per-query head
fits. Its scores are in outcome units (expected accuracy), which is what the prior fallback needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClusterPrior:
    names: list[str]  # one per cluster: the task name, or "cluster-<i>"
    weight: np.ndarray  # [n_clusters, dim] gate
    bias: np.ndarray  # [n_clusters]
    profiles: np.ndarray  # [n_clusters, n_llms] mean outcome per cluster (shrunk towards the overall mean)
    landmarks: np.ndarray | None = None  # [n_landmarks, dim] unit k-means centres of the training queries

    def familiarity(self, encoded: np.ndarray) -> np.ndarray:
        """[n_queries] cosine of each query to the nearest training landmark (1 when there are none)."""
        if self.landmarks is None:
            return np.ones(len(encoded))
        unit = encoded / np.linalg.norm(encoded, axis=1, keepdims=True).clip(1e-12)
        return (unit @ self.landmarks.T).max(axis=1)  # type: ignore[no-any-return]

    def __post_init__(self) -> None:
        if self.weight.shape[0] != len(self.names) or self.profiles.shape[0] != len(self.names):
            raise ValueError("cluster prior: weight, bias and profiles disagree on the number of clusters")
        # Kept at the precision they are saved in, so a loaded checkpoint scores exactly as the trained router.
        for name in ("weight", "bias", "profiles", "landmarks"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, np.asarray(value, dtype=np.float32).astype(np.float64))

    def membership(self, encoded: np.ndarray) -> np.ndarray:
        """[n_queries, n_clusters] soft assignment of each query to the clusters."""
        logits = np.asarray(encoded, dtype=np.float64) @ self.weight.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]

    def expected(self, encoded: np.ndarray) -> np.ndarray:
        """[n_queries, n_llms] expected outcome of each LLM for each query."""
        return self.membership(encoded) @ self.profiles  # type: ignore[no-any-return]

    def tensors(self) -> dict[str, np.ndarray]:
        """float32, C-ordered (safetensors writes the raw buffer: sklearn's Fortran-ordered arrays would be
        read back transposed)."""
        arrays = {"weight": self.weight, "bias": self.bias, "profiles": self.profiles, "landmarks": self.landmarks}
        return {f"cluster_prior.{name}": np.ascontiguousarray(value, dtype=np.float32)
                for name, value in arrays.items() if value is not None}

    @classmethod
    def from_tensors(cls, names: Sequence[str], tensors: dict[str, np.ndarray]) -> ClusterPrior:
        landmarks = tensors.get("cluster_prior.landmarks")
        return cls(list(names), np.asarray(tensors["cluster_prior.weight"], dtype=np.float64),
                   np.asarray(tensors["cluster_prior.bias"], dtype=np.float64),
                   np.asarray(tensors["cluster_prior.profiles"], dtype=np.float64),
                   None if landmarks is None else np.asarray(landmarks, dtype=np.float64))
