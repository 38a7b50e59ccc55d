"""The baselines that route by task alone: ``task-best`` (the task known) and ``task-classifier`` (the task
predicted from the query). A learned router is worth its training only where it beats them."""

from __future__ import annotations

import numpy as np
import pytest

from routers.baselines import TaskBestRouter, TaskClassifierRouter, best_single_llm, task_profiles
from routers.data import load_routing_files
from routers.evaluation import evaluate
from tests.routers.conftest import TEST_FILES, TRAIN_FILES
from training.router_registry import RouterOptions, build_router


@pytest.fixture(scope="module")
def train():
    return load_routing_files(TRAIN_FILES)


@pytest.fixture(scope="module")
def tests():
    return load_routing_files(TEST_FILES)


def test_task_best_sends_each_task_to_its_best_llm_on_the_training_data(train, tests) -> None:
    report = evaluate(build_router("task-best", train), tests, best_single_llm(train), "task-best")
    profiles = task_profiles(train)
    for dataset in tests:
        best = train[0].llm_names[int(np.argmax(profiles[dataset.task]))]
        assert report.shares[dataset.task] == {best: 1.0}
        expected = 100 * dataset.outcome()[:, dataset.llm_names.index(best)].mean()
        assert report.tasks[dataset.task].router == pytest.approx(expected)


def test_task_best_falls_back_to_the_best_single_llm_on_a_task_it_never_saw(train, tests) -> None:
    held_out = next(d for d in tests if d.task == "gsm8k")
    seen = [d for d in train if d.task != held_out.task]
    accuracy = evaluate(TaskBestRouter(seen), [held_out], best_single_llm(seen), "task-best").tasks["gsm8k"]
    assert accuracy.router == pytest.approx(accuracy.best_single)


def test_task_classifier_recognises_the_tasks_and_routes_close_to_the_oracle(train, tests, embedding_cache) -> None:
    router = build_router("task-classifier", train, RouterOptions(cache_dir=embedding_cache))
    assert isinstance(router, TaskClassifierRouter)
    predicted = np.concatenate([np.array(router.predict_tasks(d.questions)) == d.task for d in tests])
    assert predicted.mean() > 0.8  # five question styles: the static MiniLM tells them apart
    oracle = evaluate(TaskBestRouter(train), tests, best_single_llm(train), "task-best").average.router
    classified = evaluate(router, tests, best_single_llm(train), "task-classifier").average.router
    single = evaluate(router, tests, best_single_llm(train), "task-classifier").average.best_single
    assert oracle > single + 3 and classified > single + 3  # routing by task alone already beats one LLM
    assert abs(classified - oracle) < 3  # wrong task guesses cost little where the tasks' best LLMs agree
