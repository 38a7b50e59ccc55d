"""RouterDC's losses against values computed by hand on tiny tensors."""

from __future__ import annotations

import math

import torch

from training.routerdc_losses import sample_llm_loss, sample_sample_loss


def _nll(positive: float, negatives: list[float]) -> float:
    return -(positive - math.log(sum(math.exp(v) for v in [positive, *negatives])))


def test_sample_llm_loss_top2_last2():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    scores = torch.tensor([[0.9, 0.6, 0.0, 0.0]])
    expected = _nll(2.0, [0.0, -1.0]) + _nll(1.0, [0.0, -1.0])
    assert math.isclose(sample_llm_loss(logits, scores, top_k=2, last_k=2).item(), expected, rel_tol=1e-6)


def test_negatives_above_half_are_masked():
    logits = torch.tensor([[0.5, 0.0, 3.0, 1.0]])
    scores = torch.tensor([[0.9, 0.7, 0.6, 0.0]])  # last-2 = {index 3 (0.0), index 2 (0.6 > 0.5: masked)}
    expected = _nll(0.5, [1.0])
    assert math.isclose(sample_llm_loss(logits, scores, top_k=1, last_k=2).item(), expected, rel_tol=1e-6)
    unmasked = _nll(0.5, [1.0, 3.0])
    assert math.isclose(sample_llm_loss(logits, scores, top_k=1, last_k=2, negative_mask_above=0.65).item(),
                        unmasked, rel_tol=1e-6)


def test_zero_score_positives_are_skipped_but_counted_in_the_batch_mean():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.3, 0.2, 0.1, 0.0]])
    scores = torch.tensor([[0.9, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    # row 0: positive #1 (index 0) counts; its positive #2 has score 0 -> skipped. row 1: nothing counts.
    # last-3 of row 0 by score: indices 1, 2, 3 -> logits 1, 0, -1
    expected = _nll(2.0, [1.0, 0.0, -1.0]) / 2
    assert math.isclose(sample_llm_loss(logits, scores, top_k=2, last_k=3).item(), expected, rel_tol=1e-6)


def test_sample_llm_loss_pulls_towards_the_best_llm():
    logits = torch.zeros(1, 4, requires_grad=True)
    sample_llm_loss(logits, torch.tensor([[1.0, 0.0, 0.0, 0.0]]), top_k=1, last_k=3).backward()
    assert logits.grad[0, 0] < 0 and (logits.grad[0, 1:] > 0).all()


def test_sample_sample_loss_by_hand():
    embeddings = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    clusters = torch.tensor([0, 0, 1, 1])
    cos = torch.nn.functional.cosine_similarity(embeddings.unsqueeze(1), embeddings.unsqueeze(0), dim=-1)
    # H = 2 takes every out-of-cluster query, so the result does not depend on the random draw.
    expected = sum(_nll(cos[b, p].item(), [cos[b, n].item() for n in negs])
                   for b, p, negs in [(0, 1, [2, 3]), (1, 0, [2, 3]), (2, 3, [0, 1]), (3, 2, [0, 1])]) / 4
    got = sample_sample_loss(embeddings, clusters, num_negatives=2, generator=torch.Generator().manual_seed(0))
    assert math.isclose(got.item(), expected, rel_tol=1e-6)


def test_sample_sample_loss_skips_queries_without_enough_negatives():
    embeddings = torch.randn(3, 4)
    assert sample_sample_loss(embeddings, torch.tensor([0, 0, 0]), num_negatives=1).item() == 0.0
