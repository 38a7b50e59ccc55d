"""RouterDC: a query encoder plus one learned embedding per LLM; score(q, m) = cos(E(q), k_m) / t.

``RouterDCModel`` is the trainable part (optionally a mixture of cluster-conditional experts, MoCE);
``RouterDCRouter`` is a trained router behind the ``Router`` interface: one or several heads (a seed
ensemble), and optionally a cluster prior with a fallback to the best single LLM (see ``decide_scores``).
Checkpoint files are read and written by ``routers.checkpoint``; nothing here needs the training code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from routers.base import LearnedRouter
from routers.clusters import ClusterPrior
from routers.encoders import TextEncoder


def _residual_mlp(input_dim: int, hidden_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(input_dim, hidden_dim), nn.GELU(),
                         nn.Linear(hidden_dim, input_dim))


class RouterDCModel(nn.Module):
    """The trainable part on top of the encoder: an optional residual MLP head and the LLM embeddings.

    With ``experts > 1`` the head is a mixture of cluster-conditional experts (MoCE, Liu et al., ICLR 2023): a
    query goes to the one expert of its nearest training cluster (``centroids``), by the gate ``cluster_expert``
    (cluster -> expert), so every expert trains only on the queries of its clusters and a new query uses the
    expert of the cluster it resembles. The gate is fitted before the experts train (``fit_cluster_gate``).
    """

    centroids: torch.Tensor  # registered buffers (experts > 1)
    cluster_expert: torch.Tensor

    def __init__(self, input_dim: int, num_llms: int, *, hidden_dim: int = 0, temperature: float = 1.0,
                 dropout: float = 0.0, experts: int = 1, centroids: np.ndarray | None = None,
                 cluster_expert: np.ndarray | None = None) -> None:
        super().__init__()
        self.temperature = temperature
        self.hidden_dim = hidden_dim
        self.experts = experts
        if experts > 1:
            if not hidden_dim or centroids is None:
                raise ValueError("a mixture of experts needs hidden_dim > 0 and the cluster centroids")
            self.register_buffer("centroids", torch.as_tensor(np.asarray(centroids), dtype=torch.float32))
            gate = np.arange(len(centroids)) % experts if cluster_expert is None else np.asarray(cluster_expert)
            self.register_buffer("cluster_expert", torch.as_tensor(gate, dtype=torch.long))
            self.expert_heads = nn.ModuleList(_residual_mlp(input_dim, hidden_dim, dropout) for _ in range(experts))
        else:
            # With hidden_dim = 0 the encoder output is used directly, as in the paper.
            self.head: nn.Module = _residual_mlp(input_dim, hidden_dim, dropout) if hidden_dim else nn.Identity()
        # The paper's code initialises the LLM embeddings from N(0, 0.78).
        self.llm_embeddings = nn.Parameter(torch.randn(num_llms, input_dim) * 0.78)

    @property
    def shape(self) -> dict[str, Any]:
        """What rebuilds this module (stored in the checkpoint)."""
        return {"input_dim": int(self.llm_embeddings.shape[1]), "hidden_dim": self.hidden_dim,
                "temperature": self.temperature, "experts": self.experts,
                "clusters": int(self.centroids.shape[0]) if self.experts > 1 else 0}

    def query_embeddings(self, encoded: torch.Tensor) -> torch.Tensor:
        if self.experts > 1:
            chosen = self.cluster_expert[(encoded @ self.centroids.T).argmax(dim=1)]
            residual = torch.zeros_like(encoded)
            for index, expert in enumerate(self.expert_heads):
                routed = chosen == index
                if routed.any():
                    residual[routed] = expert(encoded[routed])
            return encoded + residual
        return encoded + self.head(encoded) if self.hidden_dim else encoded

    def forward(self, encoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, L] = cos(h, k) / t, query embeddings h [B, D])."""
        hidden = self.query_embeddings(encoded)
        logits = nn.functional.normalize(hidden, dim=-1) @ nn.functional.normalize(self.llm_embeddings, dim=-1).T
        return logits / self.temperature, hidden

    @classmethod
    def from_shape(cls, shape: dict[str, Any], num_llms: int) -> RouterDCModel:
        experts = int(shape.get("experts", 1))
        centroids = np.zeros((int(shape.get("clusters", 0)), int(shape["input_dim"]))) if experts > 1 else None
        return cls(int(shape["input_dim"]), num_llms, hidden_dim=int(shape.get("hidden_dim", 0)),
                   temperature=float(shape["temperature"]), experts=experts, centroids=centroids)


def fit_cluster_gate(profiles: np.ndarray, experts: int, seed: int = 0) -> np.ndarray:
    """MoCE's gate: cluster -> expert, so that clusters that need the same thing share an expert. ``profiles``
    [C, L]: how well each LLM did on each training cluster; clusters are grouped by k-means on them (all their
    own expert when there are no more clusters than experts).

    The paper learns its gate with the experts (top-k routing and a balance loss); on a few training clusters a
    gate trained that way stayed where it started (measured here: a Switch-style top-1 gate with noisy logits and
    a balance loss, 150 steps, left every task on one expert), so the gate is fitted first, on what the clusters
    are known to need."""
    clusters = len(profiles)
    if clusters <= experts:
        return np.arange(clusters)
    from sklearn.cluster import KMeans  # type: ignore[import-untyped]

    return np.asarray(KMeans(n_clusters=experts, n_init=10, random_state=seed).fit_predict(profiles))


@dataclass(frozen=True)
class Decision:
    """How a router's scores become a ranking when it has a cluster prior.

    ``refine_weight``: weight of the RouterDC heads' centred logits added to the prior's expected outcomes
    (0 = the heads are not consulted). ``prior``: index of the best single LLM of the training data.
    ``min_gain``: the top choice must be expected to beat the prior by this much (outcome units, e.g. 0.04 =
    4 accuracy points), else the prior is ranked first — calibrated on training tasks held out one at a time,
    so a query from a kind of task never seen is not routed away from the safe choice on thin evidence.
    ``min_familiarity``: a query whose cosine to every training landmark is below this (set at a low
    percentile of the validation queries') is unlike anything trained on: the prior is ranked first.
    """

    refine_weight: float = 0.0
    prior: int | None = None
    min_gain: float = 0.0
    min_familiarity: float = -1.0

    def to_dict(self) -> dict[str, Any]:
        return {"refine_weight": self.refine_weight, "prior": self.prior, "min_gain": self.min_gain,
                "min_familiarity": self.min_familiarity}


FALLBACK_REASONS = ("", "small_gain", "unfamiliar")  # codes 0, 1, 2 of ``fallback_codes``


def decide_scores(membership: np.ndarray, profiles: np.ndarray, logits: np.ndarray | None, decision: Decision,
                  familiarity: np.ndarray | None = None) -> np.ndarray:
    """Ranking scores [Q, L]: the cluster prior's expected outcomes (``membership @ profiles``), plus the heads'
    centred logits times ``refine_weight``, with the prior fallback applied (``fallback_codes``)."""
    scores = membership @ profiles
    if logits is not None and decision.refine_weight:
        scores += decision.refine_weight * (logits - logits.mean(axis=1, keepdims=True))
    if decision.prior is None:
        return scores
    unsure = fallback_codes(membership, profiles, scores, decision, familiarity) > 0
    # The prior goes first, just above the top score; the others keep their order behind it.
    scores[unsure, decision.prior] = scores[unsure].max(axis=1) + 1e-3
    return scores


def fallback_codes(membership: np.ndarray, profiles: np.ndarray, scores: np.ndarray, decision: Decision,
                   familiarity: np.ndarray | None) -> np.ndarray:
    """Per query: 0 = route by ``scores``; 1 = the top choice's gain over the prior is too small; 2 = the query
    is unlike the training queries. Either way the prior (the best single LLM) goes first.

    The gain is judged by the profile of the query's most likely cluster: a choice is worth leaving the best
    single LLM for only if the cluster the query most resembles showed the gain. (The soft mix would shrink
    every gain towards zero wherever clusters overlap, and fall back on familiar queries.)
    """
    codes = np.zeros(len(scores), dtype=int)
    if decision.prior is None:
        return codes
    cluster = membership.argmax(axis=1)
    top = scores.argmax(axis=1)
    codes[profiles[cluster, top] - profiles[cluster, decision.prior] < decision.min_gain] = 1
    if familiarity is not None:
        codes[familiarity < decision.min_familiarity] = 2
    return codes


class RouterDCRouter(LearnedRouter):
    """A trained RouterDC router: encoder, heads (logits averaged), optional cluster prior and decision."""

    def __init__(self, encoder: TextEncoder, heads: Sequence[RouterDCModel], llm_names: Sequence[str],
                 metadata: dict[str, Any] | None = None, *, cluster_prior: ClusterPrior | None = None,
                 decision: Decision | None = None) -> None:
        super().__init__(llm_names)
        if not heads:
            raise ValueError("a RouterDC router needs at least one head")
        self.encoder = encoder
        self.heads = [head.eval() for head in heads]
        self.metadata = metadata or {}
        self.cluster_prior = cluster_prior
        self.decision = decision or Decision()

    @property
    def best_single(self) -> str | None:
        return self.metadata.get("best_single")

    def head_logits(self, encoded: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            inputs = torch.from_numpy(np.asarray(encoded, dtype=np.float32))
            return np.mean([head(inputs)[0].numpy() for head in self.heads], axis=0)  # type: ignore[no-any-return]

    def expected_quality(self, encoded: np.ndarray) -> np.ndarray | None:
        return None if self.cluster_prior is None else self.cluster_prior.expected(encoded)

    def score_encoded(self, encoded: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
        if self.cluster_prior is None:
            return self.head_logits(encoded)
        prior = self.cluster_prior
        logits = self.head_logits(encoded) if self.decision.refine_weight else None
        return decide_scores(prior.membership(encoded), prior.profiles, logits, self.decision,
                             prior.familiarity(encoded))

    def fallbacks(self, queries: Sequence[str]) -> list[str]:
        """Per query, why the best single LLM was put first ("small_gain", "unfamiliar"), or "" when not."""
        if self.cluster_prior is None:
            return ["" for _ in queries]
        encoded = self.encoder.encode(queries)
        prior = self.cluster_prior
        membership, familiarity = prior.membership(encoded), prior.familiarity(encoded)
        logits = self.head_logits(encoded) if self.decision.refine_weight else None
        raw = decide_scores(membership, prior.profiles, logits, replace(self.decision, prior=None))
        codes = fallback_codes(membership, prior.profiles, raw, self.decision, familiarity)
        return [FALLBACK_REASONS[code] for code in codes]
