"""RouterDC's two contrastive losses (Chen et al., 2024, arXiv 2409.19886), as pure functions.

Notation: a batch of B queries, L candidate LLMs; ``logits[b, m] = cos(E(q_b), k_m) / t``; ``scores[b, m]``
is how well LLM m answered query b.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_llm_loss(logits: torch.Tensor, scores: torch.Tensor, top_k: int = 3, last_k: int = 3,
                    negative_mask_above: float = 0.5, tie_break: torch.Tensor | None = None) -> torch.Tensor:
    """Sample-LLM contrastive loss (paper Eq. 3).

    For each of the ``top_k`` best-scoring LLMs of a query (a positive), a softmax over that positive and
    the query's ``last_k`` worst-scoring LLMs (the negatives); the loss is -log p(positive). A positive
    with score 0 contributes nothing (no LLM worth pulling towards); a negative whose score is above
    ``negative_mask_above`` is masked out of the softmax (it answered well, so it is no negative).
    Summed over the ``top_k`` positives, averaged over the batch (as the paper's code does).

    ``tie_break`` (tiny values, same shape) only orders LLMs of equal score, e.g. several LLMs that all
    answered right: without it the sort would always favour the LLMs listed first.
    """
    top_k = min(top_k, scores.shape[1])
    last_k = min(last_k, scores.shape[1])
    ranking = scores if tie_break is None else scores + tie_break
    top_index = ranking.argsort(dim=-1, descending=True)
    last_index = ranking.topk(k=last_k, dim=-1, largest=False).indices
    top_scores, last_scores = scores.gather(1, top_index), scores.gather(1, last_index)
    negatives = logits.gather(1, last_index).masked_fill(last_scores > negative_mask_above, float("-inf"))
    loss = logits.new_zeros(())
    for i in range(top_k):
        positive = logits.gather(1, top_index[:, i : i + 1])
        # A positive may also be among the negatives (few LLMs, ties): never contrast it with itself.
        is_self = last_index == top_index[:, i : i + 1]
        log_p = F.log_softmax(torch.cat([positive, negatives.masked_fill(is_self, float("-inf"))], dim=1), dim=1)
        keep = (top_scores[:, i] > 0).to(logits.dtype)
        loss = loss + (-log_p[:, 0] * keep).mean()
    return loss


def sample_sample_loss(embeddings: torch.Tensor, cluster_ids: torch.Tensor, num_negatives: int = 3,
                       temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample-sample contrastive loss (paper Eq. 5).

    For each query: one random query of the same cluster as positive (another one when the batch has one)
    and ``num_negatives`` random queries of other clusters; -log softmax of the positive's cosine similarity
    (divided by ``temperature``) among these. Queries with too few out-of-cluster queries in the batch are
    skipped, as in the paper's code; the mean is over the remaining queries.

    Vectorised: a uniform random subset is the top-k of i.i.d. uniform keys, so one random matrix draws every
    query's positive and negatives at once (a per-query loop cost ~10x more than the whole MLP step on a CPU).
    """
    unit = F.normalize(embeddings, dim=-1)
    similarity = unit @ unit.T / temperature
    batch = embeddings.shape[0]
    same = cluster_ids.unsqueeze(0) == cluster_ids.unsqueeze(1)
    eye = torch.eye(batch, dtype=torch.bool, device=embeddings.device)
    others_in_cluster = same & ~eye
    # A query alone in its cluster is its own positive (as the paper's code falls back to).
    positive_pool = torch.where(others_in_cluster.any(dim=1, keepdim=True), others_in_cluster, same)
    negative_pool = ~same
    keep = negative_pool.sum(dim=1) >= num_negatives
    if not keep.any():
        return embeddings.new_zeros(())
    keys = torch.rand(batch, batch, generator=generator).to(embeddings.device)
    positive = keys.masked_fill(~positive_pool, -1.0).argmax(dim=1, keepdim=True)
    negatives = keys.masked_fill(~negative_pool, -1.0).topk(num_negatives, dim=1).indices
    picked = similarity.gather(1, torch.cat([positive, negatives], dim=1))[keep]
    return -F.log_softmax(picked, dim=1)[:, 0].mean()
