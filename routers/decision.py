"""The routing decision: candidates ranked for one query under a preference, prices, eligibility and a price cap.

Pure numpy, no gateway: the server (``gateway/engine/routing.py``) and the offline tools (calibration, the
price front) rank with the same function, so what an operator measures is what the gateway does.

For one query with scores ``s`` ([n] candidates, higher is better):

1. A router that is not preference-aware ranks by ``s − w · c``, with ``c`` each candidate's configured price
   normalised so that the most expensive is 1, and ``w = α_cost / α_quality`` from the preference ``α``
   (a preference-aware router's scores already include the preference).
2. The candidates the request cannot use are dropped: those not ``allowed`` (``router.candidates``); without
   vision when the request carries images; all but the audio-native ones when the request carries audio and
   some candidate hears it natively; those whose expected price is unknown or above ``max_cost_usd``.
3. The rest are ordered best first (stable: ties keep the checkpoint's order).

A request no candidate can serve raises ``NoEligibleCandidate``, saying why (``kind`` ``vision`` or ``budget``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RouteDecision:
    """Candidate names best first, with the scores that ordered them and, where known, each one's expected
    quality (accuracy, 0-1) and expected price of this request (US dollars)."""

    models: list[str]
    scores: list[float]
    quality: list[float | None] | None = None
    cost_usd: list[float | None] | None = None

    def top(self, count: int) -> list[dict[str, object]]:
        """The first ``count`` candidates as ``{model, score[, quality][, cost_usd]}``, rounded for display."""
        entries = []
        for i, (model, score) in enumerate(zip(self.models[:count], self.scores[:count], strict=True)):
            entry: dict[str, object] = {"model": model, "score": round(score, 4)}
            quality = self.quality[i] if self.quality is not None else None
            if quality is not None:
                entry["quality"] = round(float(quality), 4)
            cost = self.cost_usd[i] if self.cost_usd is not None else None
            if cost is not None:
                entry["cost_usd"] = float(f"{cost:.3g}")
            entries.append(entry)
        return entries


@dataclass(frozen=True)
class CandidateSet:
    """What the decision knows about each candidate, in the router's LLM order ([n] arrays)."""

    names: Sequence[str]
    normalised_cost: np.ndarray  # configured price, the most expensive = 1 (0 where unknown)
    allowed: np.ndarray  # bool: routed to at all
    vision: np.ndarray  # bool: accepts images
    audio: np.ndarray  # bool: hears audio natively


class NoEligibleCandidate(ValueError):
    """No candidate can serve the request; ``kind`` says why (``vision`` or ``budget``)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def rank(candidates: CandidateSet, scores: np.ndarray, alpha: np.ndarray, costs: np.ndarray, *,
         preference_aware: bool, needs_vision: bool = False, prefer_audio: bool = False,
         max_cost_usd: float | None = None, quality: np.ndarray | None = None) -> RouteDecision:
    """The decision for one query (see the module docstring). ``scores``, ``costs`` (expected US dollars of this
    request, NaN where unknown) and ``quality`` are [n]; ``alpha`` is the (quality, cost) preference."""
    if not preference_aware:
        weight = float(alpha[1] / alpha[0]) if alpha[0] > 0 else 1e6
        scores = scores - weight * candidates.normalised_cost
    eligible = candidates.allowed & (candidates.vision if needs_vision else True)
    if not eligible.any():
        raise NoEligibleCandidate("the request carries images, but none of the candidate models accepts images",
                                  "vision")
    if prefer_audio and (eligible & candidates.audio).any():
        eligible = eligible & candidates.audio
    if max_cost_usd is not None:
        affordable = eligible & ~np.isnan(costs) & (costs <= max_cost_usd)
        if not affordable.any():
            raise NoEligibleCandidate(_no_model_fits(candidates.names, costs, eligible, max_cost_usd), "budget")
        eligible = affordable
    order = [int(i) for i in np.argsort(-scores, kind="stable") if eligible[i]]
    return RouteDecision([candidates.names[i] for i in order], [float(scores[i]) for i in order],
                         None if quality is None else [float(quality[i]) for i in order],
                         [None if np.isnan(costs[i]) else float(costs[i]) for i in order])


def _no_model_fits(names: Sequence[str], costs: np.ndarray, eligible: np.ndarray, cap: float) -> str:
    known = [(costs[i], names[i]) for i in range(len(names)) if eligible[i] and not np.isnan(costs[i])]
    if not known:
        return (f"routing.max_cost_usd is {cap:g} but no candidate model has a price (configure models[].price "
                "or route with a checkpoint that learnt prices)")
    cheapest, model = min(known)
    return (f"no model fits routing.max_cost_usd={cap:g}: the cheapest candidate, '{model}', is expected to cost "
            f"${cheapest:.3g} for this request")
