"""Preference-conditioned routing over the quality–cost front with one network: LORPMAN (Chen & Kwok, ICML
2024, "Efficient Pareto manifold learning with low-rank structure").

Every linear layer is a shared main weight plus one low-rank pair per objective, mixed by the preference α::

    W(α) = W0 + s · Σ_i α_i B_i A_i          (objectives i: quality, cost; α on the simplex)

so one checkpoint serves every point of the trade-off: a request's ``{"quality": 0.7, "cost": 0.3}`` is its α.
The head gives each LLM its value for a query under α (trained towards α_quality·correct − α_cost·price);
the request goes to the best. Expected quality (the cluster prior of ``routers.clusters``) and expected price
per LLM (learnt from the training data) are kept beside it, for the route-scores header and the
``max_cost_usd`` cap. Training lives in ``training.pareto``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from routers.base import LearnedRouter
from routers.clusters import ClusterPrior
from routers.encoders import TextEncoder

OBJECTIVES = ("quality", "cost")
# Preferences are read on this grid of cost weights (0, 0.02, ..., 1): fine enough that no one can tell, coarse
# enough that walking it from 0 (see ``ParetoRouter.score_encoded``) costs one small batched forward pass.
PREFERENCE_STEP = 0.02
GRID = np.round(np.arange(0, 1 + PREFERENCE_STEP / 2, PREFERENCE_STEP), 6)


class LowRankLinear(nn.Module):
    """``W0 x + b + s · Σ_i α_i B_i (A_i x)`` with one (A_i, B_i) pair of rank ``rank`` per objective."""

    def __init__(self, in_features: int, out_features: int, objectives: int, rank: int, scale: float) -> None:
        super().__init__()
        self.main = nn.Linear(in_features, out_features)
        self.scale = scale
        # As in LoRA: A random, B zero, so training starts from the main network alone.
        self.low_a = nn.Parameter(torch.randn(objectives, rank, in_features) / np.sqrt(in_features))
        self.low_b = nn.Parameter(torch.zeros(objectives, out_features, rank))

    def forward(self, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """``x`` [batch, in], ``alpha`` [batch, objectives] (one preference per row)."""
        low = torch.einsum("bi,ori->bor", x, self.low_a)  # [batch, objectives, rank]
        low = torch.einsum("bor,ojr->boj", low, self.low_b)  # [batch, objectives, out]
        return self.main(x) + self.scale * (alpha.unsqueeze(-1) * low).sum(dim=1)

    def low_rank_updates(self) -> torch.Tensor:
        """[objectives, out * in]: each objective's B_i A_i, flattened (for the orthogonality penalty)."""
        return torch.einsum("ojr,ori->oji", self.low_b, self.low_a).flatten(start_dim=1)


class ParetoHead(nn.Module):
    """A two-layer MLP of ``LowRankLinear`` layers: query vector and preference in, one score per LLM out."""

    def __init__(self, input_dim: int, num_llms: int, *, hidden_dim: int = 256, rank: int = 8,
                 scale: float = 1.0, objectives: int = len(OBJECTIVES), dropout: float = 0.1) -> None:
        super().__init__()
        self.config = {"input_dim": input_dim, "num_llms": num_llms, "hidden_dim": hidden_dim, "rank": rank,
                       "scale": scale, "objectives": objectives, "dropout": dropout}
        self.dropout = nn.Dropout(dropout)
        self.hidden = LowRankLinear(input_dim, hidden_dim, objectives, rank, scale)
        self.out = LowRankLinear(hidden_dim, num_llms, objectives, rank, scale)

    def forward(self, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        return self.out(nn.functional.gelu(self.hidden(self.dropout(x), alpha)), alpha)

    def layers(self) -> list[LowRankLinear]:
        return [self.hidden, self.out]


def preference_vector(preference: dict[str, float] | None, default: Sequence[float]) -> np.ndarray:
    """α from ``{"quality": q, "cost": c}`` (weights >= 0 that sum to 1), or the default."""
    if preference is None:
        return np.asarray(default, dtype=np.float32)
    return np.asarray([float(preference.get(name, 0.0)) for name in OBJECTIVES], dtype=np.float32)


class ParetoRouter(LearnedRouter):
    """A trained LORPMAN router: encoder, preference-conditioned head, expected quality and price per LLM."""

    preference_aware = True
    cost_per_query: np.ndarray  # always learnt (set in __init__)

    def __init__(self, encoder: TextEncoder, head: ParetoHead, llm_names: Sequence[str], *,
                 cost_per_query: np.ndarray, quality: ClusterPrior | None = None,
                 default_preference: Sequence[float] = (1.0, 0.0), single_best: Sequence[int] | None = None,
                 min_familiarity: float = -1.0, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(llm_names)
        self.encoder, self.head = encoder, head.eval()
        self.cost_per_query = np.asarray(cost_per_query, dtype=np.float64)  # [n_llms] mean US dollars per question
        self.quality = quality
        self.default_preference = np.asarray(default_preference, dtype=np.float32)
        # The fallback: for a query unlike the training queries (familiarity below ``min_familiarity``), the
        # single LLM that is best on the training data at each grid preference (its price never rises with c).
        self.single_best = None if single_best is None else np.asarray(single_best, dtype=int)
        self.min_familiarity = min_familiarity
        self.metadata = metadata or {}

    @property
    def best_single(self) -> str | None:
        return self.metadata.get("best_single")

    def head_scores(self, encoded: np.ndarray, cost_weights: np.ndarray) -> np.ndarray:
        """[len(cost_weights), n, n_llms]: the head's scores at α = (1 − c, c) for every c, in one pass."""
        n, k = len(encoded), len(cost_weights)
        inputs = np.repeat(np.asarray(encoded, dtype=np.float32)[None], k, axis=0).reshape(k * n, -1)
        alphas = np.repeat(np.stack([1 - cost_weights, cost_weights], axis=1).astype(np.float32), n, axis=0)
        with torch.inference_mode():
            scores = self.head(torch.from_numpy(inputs), torch.from_numpy(alphas))
        return scores.numpy().astype(np.float64).reshape(k, n, -1)

    def monotone_choices(self, encoded: np.ndarray, steps: int) -> np.ndarray:
        """[steps, n] the choice per query at the first ``steps`` grid preferences, walking from quality-first:
        at each step the best-scored LLM among those no more expensive (learnt mean price) than the previous
        step's choice. So moving a preference towards cost can never pick a dearer LLM for any query, which a
        network's argmax alone does not promise."""
        scores = self.head_scores(encoded, GRID[:steps])
        rows = np.arange(len(encoded))
        choices = np.empty((steps, len(encoded)), dtype=int)
        choices[0] = scores[0].argmax(axis=1)
        for step in range(1, steps):
            ceiling = self.cost_per_query[choices[step - 1]][:, None]
            allowed = self.cost_per_query[None, :] <= ceiling + 1e-15
            choices[step] = np.where(allowed, scores[step], -np.inf).argmax(axis=1)
        unfamiliar = self.unfamiliar(encoded)
        if unfamiliar.any() and self.single_best is not None:
            choices[:, unfamiliar] = self.single_best[:steps, None]
        assert (self.cost_per_query[choices[:, rows]][1:] <= self.cost_per_query[choices[:, rows]][:-1] + 1e-15).all()
        return choices

    def score_encoded(self, encoded: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
        """[n, n_llms] ranking scores under preference ``alpha`` (one for all rows; read on ``GRID``): the head's
        scores at that preference, with the monotone choice (``monotone_choices``) ranked first."""
        alpha = self.default_preference if alpha is None else np.asarray(alpha, dtype=np.float64)
        cost_weight = float(alpha[1] / max(float(alpha.sum()), 1e-12))
        step = int(round(cost_weight / PREFERENCE_STEP))
        choices = self.monotone_choices(encoded, step + 1)
        scores = self.head_scores(encoded, GRID[step:step + 1])[0]
        rows = np.arange(len(encoded))
        scores[rows, choices[-1]] = scores.max(axis=1) + 1e-3
        return scores

    def unfamiliar(self, encoded: np.ndarray) -> np.ndarray:
        """[n] True for queries unlike every training landmark (they get the single-best LLM)."""
        if self.quality is None:
            return np.zeros(len(encoded), dtype=bool)
        return self.quality.familiarity(encoded) < self.min_familiarity  # type: ignore[no-any-return]

    def expected_quality(self, encoded: np.ndarray) -> np.ndarray | None:
        """[n, n_llms] expected accuracy per LLM (the cluster prior), or None when the checkpoint has none."""
        return None if self.quality is None else self.quality.expected(encoded)
