"""Fitting the cluster prior (``routers.clusters.ClusterPrior``) and calibrating the prior fallback.

The fallback's ``min_gain`` is chosen on the training data itself, task by task: for every training task, a
prior fitted without it routes that task's questions, and the smallest ``min_gain`` for which no held-out task
does worse than the best single LLM of the other tasks wins. The test files are never read here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from routers.clusters import ClusterPrior
from routers.routerdc import Decision, decide_scores

# Candidate minimum expected gains (outcome units: 0.04 = 4 accuracy points), smallest first.
MIN_GAIN_GRID = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.10, 0.15)
REFINE_GRID = (0.0, 0.01, 0.02, 0.05, 0.1)
FAMILIARITY_PERCENTILE = 1.0  # validation queries below this percentile of familiarity fall back
REFINE_MARGIN = 0.5  # accuracy points on validation a non-zero heads' weight must gain over 0
# Fewer groups than this cannot say what an unseen kind of query looks like: the fallback stays off.
MIN_CALIBRATION_GROUPS = 3


@dataclass(frozen=True)
class Group:
    """The training rows of one cluster: encoder vectors, outcomes (what each LLM earns), a name, and which
    cells were scored at all (None = every one; unscored cells are left out of the profiles, not counted 0)."""

    name: str
    encoded: np.ndarray
    outcomes: np.ndarray
    scored: np.ndarray | None = None

    def mean_outcome(self) -> np.ndarray:
        if self.scored is None:
            return self.outcomes.mean(axis=0)  # type: ignore[no-any-return]
        return (self.outcomes * self.scored).sum(axis=0) / self.scored.sum(axis=0).clip(1)  # type: ignore[no-any-return]


def task_averaged_prior(groups: Sequence[Group]) -> int:
    """The best single LLM when every group weighs the same."""
    return int(np.argmax(np.mean([g.mean_outcome() for g in groups], axis=0)))


def fit_cluster_prior(groups: Sequence[Group], *, regularisation: float = 10.0, shrink: float = 10.0,
                      landmarks: int = 64, seed: int = 0) -> ClusterPrior:
    """A linear gate over the groups (logistic regression, groups weighted equally), each group's outcome
    profile shrunk towards the task-averaged profile by ``shrink`` pseudo-questions, and up to ``landmarks``
    k-means centres of all training queries (for familiarity; 0 = none)."""
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression

    overall = np.mean([g.mean_outcome() for g in groups], axis=0)
    profiles = []
    for g in groups:
        scored = np.ones_like(g.outcomes) if g.scored is None else g.scored.astype(float)
        profiles.append(((g.outcomes * scored).sum(axis=0) + shrink * overall) / (scored.sum(axis=0) + shrink))
    names = [g.name for g in groups]
    features = np.concatenate([g.encoded for g in groups])
    dim = features.shape[1]
    unit = None
    if landmarks:
        # At least ~10 queries per landmark: with a landmark per query, familiarity would be the distance to the
        # nearest training duplicate, and a paraphrase of a training question would count as unfamiliar.
        n_landmarks = max(1, min(landmarks, len(features) // 10))
        centres = KMeans(n_clusters=n_landmarks, n_init=1, random_state=seed).fit(features)
        unit = centres.cluster_centers_ / np.linalg.norm(centres.cluster_centers_, axis=1, keepdims=True).clip(1e-12)
    if len(groups) == 1:
        return ClusterPrior(names, np.zeros((1, dim)), np.zeros(1), np.stack(profiles), unit)
    labels = np.concatenate([np.full(len(g.encoded), i) for i, g in enumerate(groups)])
    gate = LogisticRegression(C=regularisation, max_iter=3000, class_weight="balanced", random_state=seed)
    gate.fit(features, labels)
    weight, bias = gate.coef_, gate.intercept_
    if len(groups) == 2:  # sklearn keeps one row for two classes: p(1) = sigmoid(w x + b) = softmax([0, w x + b])
        weight, bias = np.stack([np.zeros(dim), weight[0]]), np.array([0.0, bias[0]])
    return ClusterPrior(names, weight, bias, np.stack(profiles), unit)


def familiarity_threshold(prior: ClusterPrior, validation: Sequence[np.ndarray], n_groups: int) -> float:
    """The familiarity below which a query falls back to the best single LLM: a low percentile of the
    validation queries' familiarity, or -1 (never) with fewer than ``MIN_CALIBRATION_GROUPS`` groups — data
    that narrow makes its own paraphrases look foreign (measured: two tasks of templated questions put a new
    number in a template below every validation query)."""
    if n_groups < MIN_CALIBRATION_GROUPS:
        return -1.0
    return float(np.percentile(np.concatenate([prior.familiarity(x) for x in validation]), FAMILIARITY_PERCENTILE))


def kmeans_groups(encoded: np.ndarray, outcomes: np.ndarray, n_clusters: int, seed: int) -> list[Group]:
    """Groups for data without tasks: k-means clusters of the training queries."""
    from sklearn.cluster import KMeans

    n_clusters = max(1, min(n_clusters, len(encoded) // 10))
    labels = KMeans(n_clusters=n_clusters, n_init=4, random_state=seed).fit_predict(encoded) if n_clusters > 1 \
        else np.zeros(len(encoded), dtype=int)
    return [Group(f"cluster-{c}", encoded[labels == c], outcomes[labels == c]) for c in range(n_clusters)]


def routed_gain(prior: ClusterPrior, group: Group, fallback: int, min_gain: float) -> tuple[float, float]:
    """Accuracy points gained over always answering with ``fallback`` when ``prior`` routes ``group``, and the
    standard error of that gain (paired over the group's questions)."""
    scores = decide_scores(prior.membership(group.encoded), prior.profiles, None,
                           Decision(prior=fallback, min_gain=min_gain))
    chosen = scores.argmax(axis=1)
    difference = group.outcomes[np.arange(len(chosen)), chosen] - group.outcomes[:, fallback]
    error = float(difference.std(ddof=1) / np.sqrt(len(difference))) if len(difference) > 1 else 0.0
    return 100 * float(difference.mean()), 100 * error


@dataclass(frozen=True)
class Calibration:
    min_gain: float
    # held-out task -> min_gain -> (accuracy points over the fallback, standard error)
    held_out_gains: dict[str, dict[float, tuple[float, float]]]


def calibrate_min_gain(groups: Sequence[Group], *, regularisation: float = 10.0, seed: int = 0,
                       tolerance_se: float = 1.0) -> Calibration:
    """Leave each group out, fit the prior on the rest, route the held-out group: the smallest ``min_gain``
    with no held-out group worse than the others' best single LLM by more than ``tolerance_se`` standard
    errors of its gain (a held-out task of 115 questions moves by a tenth of a question from one threshold to
    the next; that is noise, not harm). The most cautious threshold when none qualifies."""
    if len(groups) < MIN_CALIBRATION_GROUPS:
        return Calibration(0.0, {})
    gains: dict[str, dict[float, tuple[float, float]]] = {}
    for held in groups:
        rest = [g for g in groups if g is not held]
        prior = fit_cluster_prior(rest, regularisation=regularisation, landmarks=0, seed=seed)
        fallback = task_averaged_prior(rest)
        gains[held.name] = {m: routed_gain(prior, held, fallback, m) for m in MIN_GAIN_GRID}
    for candidate in MIN_GAIN_GRID:
        if all(gain >= -tolerance_se * error - 1e-9 for gain, error in (g[candidate] for g in gains.values())):
            return Calibration(candidate, gains)
    return Calibration(MIN_GAIN_GRID[-1], gains)
