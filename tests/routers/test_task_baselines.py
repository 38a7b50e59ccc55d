"""The baselines that route by task alone: ``task-best`` (the task known) and ``task-classifier`` (the task
predicted from the query). A learned router is worth its training only where it beats them."""

from __future__ import annotations

import numpy as np
import pytest

from routers.baselines import TaskBestRouter, TaskClassifierRouter, best_single_llm, task_profiles
from routers.evaluation import evaluate
from training.router_registry import RouterOptions, build_router


def test_task_best_sends_each_task_to_its_best_llm_on_the_training_data(train_sets, test_sets) -> None:
    report = evaluate(build_router("task-best", train_sets), test_sets, best_single_llm(train_sets), "task-best")
    profiles = task_profiles(train_sets)
    for dataset in test_sets:
        best = train_sets[0].llm_names[int(np.argmax(profiles[dataset.task]))]
        assert report.shares[dataset.task] == {best: 1.0}
        expected = 100 * dataset.outcome()[:, dataset.llm_names.index(best)].mean()
        assert report.tasks[dataset.task].router == pytest.approx(expected)


def test_task_best_falls_back_to_the_best_single_llm_on_a_task_it_never_saw(train_sets, test_sets) -> None:
    held_out = next(d for d in test_sets if d.task == "gsm8k")
    seen = [d for d in train_sets if d.task != held_out.task]
    accuracy = evaluate(TaskBestRouter(seen), [held_out], best_single_llm(seen), "task-best").tasks["gsm8k"]
    assert accuracy.router == pytest.approx(accuracy.best_single)


def test_task_classifier_recognises_the_tasks_and_routes_close_to_the_oracle(train_sets, test_sets,
                                                                            embedding_cache) -> None:
    router = build_router("task-classifier", train_sets, RouterOptions(cache_dir=embedding_cache))
    assert isinstance(router, TaskClassifierRouter)
    predicted = np.concatenate([np.array(router.predict_tasks(d.questions)) == d.task for d in test_sets])
    assert predicted.mean() > 0.8  # five question styles: the static MiniLM tells them apart
    oracle = evaluate(TaskBestRouter(train_sets), test_sets, best_single_llm(train_sets), "task-best").average.router
    classified = evaluate(router, test_sets, best_single_llm(train_sets), "task-classifier").average.router
    single = evaluate(router, test_sets, best_single_llm(train_sets), "task-classifier").average.best_single
    assert oracle > single + 3 and classified > single + 3  # routing by task alone already beats one LLM
    assert abs(classified - oracle) < 3  # wrong task guesses cost little where the tasks' best LLMs agree
