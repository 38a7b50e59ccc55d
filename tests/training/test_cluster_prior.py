"""The cluster prior and the calibration of its fallback, on hand-made clusters."""

from __future__ import annotations

import numpy as np
import pytest

from routers.routerdc import Decision, decide_scores
from training.cluster_prior import (
    MIN_GAIN_GRID,
    Group,
    calibrate_min_gain,
    familiarity_threshold,
    fit_cluster_prior,
    task_averaged_prior,
)


def _group(name: str, centre: list[float], accuracy: list[float], n: int = 200, seed: int = 0) -> Group:
    rng = np.random.default_rng(seed)
    encoded = np.asarray(centre) + 0.05 * rng.standard_normal((n, len(centre)))
    outcomes = (rng.random((n, len(accuracy))) < np.asarray(accuracy)).astype(float)
    return Group(name, encoded, outcomes)


def test_membership_follows_the_clusters_and_profiles_their_outcomes():
    groups = [_group("math", [1, 0, 0], [0.9, 0.5]), _group("code", [0, 1, 0], [0.4, 0.8], seed=1)]
    prior = fit_cluster_prior(groups, landmarks=4)
    membership = prior.membership(np.array([[1.0, 0, 0], [0, 1.0, 0]]))
    assert membership[0, 0] > 0.9 and membership[1, 1] > 0.9
    assert prior.profiles[0, 0] > prior.profiles[0, 1] and prior.profiles[1, 1] > prior.profiles[1, 0]
    assert prior.familiarity(np.array([[0, 0, 1.0]]))[0] < prior.familiarity(np.array([[1.0, 0, 0]]))[0]


def test_decision_puts_the_prior_first_below_the_gain_threshold():
    membership = np.array([[1.0, 0.0]])
    profiles = np.array([[0.60, 0.55], [0.3, 0.3]])  # cluster 0: LLM 0 is 5 points better than LLM 1
    assert decide_scores(membership, profiles, None, Decision(prior=1, min_gain=0.04)).argmax() == 0
    assert decide_scores(membership, profiles, None, Decision(prior=1, min_gain=0.06)).argmax() == 1
    unfamiliar = decide_scores(membership, profiles, None, Decision(prior=1, min_familiarity=0.5), np.array([0.2]))
    assert unfamiliar.argmax() == 1


def test_calibration_picks_the_smallest_threshold_that_spares_held_out_tasks():
    # Three tasks where LLM 0 is the overall best. "lookalike" sits next to "mmlu" but LLM 1, which wins
    # mmlu by 5 points, is worse on it: routing it like mmlu hurts unless gains of 5 points are not enough.
    groups = [_group("mmlu", [1, 0, 0], [0.60, 0.65, 0.5], n=400),
              _group("lookalike", [0.9, 0.2, 0], [0.60, 0.40, 0.5], n=400, seed=1),
              _group("code", [0, 0, 1], [0.70, 0.50, 0.2], n=400, seed=2)]
    assert task_averaged_prior(groups) == 0
    calibration = calibrate_min_gain(groups)
    gains = calibration.held_out_gains["lookalike"]
    assert gains[0.0][0] < -5  # without a threshold the held-out lookalike is routed like mmlu and loses
    chosen = MIN_GAIN_GRID.index(calibration.min_gain)
    assert chosen > 0 and gains[calibration.min_gain][0] == pytest.approx(0.0, abs=1.0)
    below, error = gains[MIN_GAIN_GRID[chosen - 1]]
    assert below < -error  # the next smaller threshold still hurt the held-out task beyond noise


def test_familiarity_is_calibrated_only_with_three_groups_and_ten_queries_per_landmark():
    two = [_group("math", [1, 0, 0], [0.9, 0.5], n=40), _group("code", [0, 1, 0], [0.4, 0.8], n=40, seed=1)]
    prior = fit_cluster_prior(two)
    assert prior.landmarks is not None and len(prior.landmarks) == 8  # 80 queries: not one landmark per query
    validation = [g.encoded[:5] for g in two]
    assert familiarity_threshold(prior, validation, len(two)) == -1.0  # two groups cannot say what is foreign
    three = [*two, _group("chat", [0, 0, 1], [0.5, 0.5], n=40, seed=2)]
    threshold = familiarity_threshold(fit_cluster_prior(three), [g.encoded[:5] for g in three], len(three))
    assert 0.5 < threshold <= 1.0
