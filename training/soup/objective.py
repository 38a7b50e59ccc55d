"""What a soup is fitted to and judged by: the per-token NLL of the chosen replies of chat data, or the DPO
loss on the preference pairs (reference: the base model), computed for any weights through
``torch.func.functional_call`` so that the base model is loaded once and never copied."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import functional_call
from torch.nn import functional as F

Weights = dict[str, torch.Tensor]


@dataclass
class Example:
    """A chat prompt with its chosen (and rejected) reply as token ids; ``reference`` holds the base model's
    summed log-probabilities of the two replies (DPO)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    reference: tuple[float, float] | None = None


def tokenize_pairs(pairs: list[dict[str, Any]], tokenizer: Any, max_length: int) -> list[Example]:
    """TRL conversational pairs → token ids; the prompt is cut from the left so that replies stay whole."""
    examples = []
    for pair in pairs:
        prompt = tokenizer.apply_chat_template(pair["prompt"], add_generation_prompt=True, tokenize=True,
                                               return_dict=False)
        replies = [tokenizer(pair[side][0]["content"] + (tokenizer.eos_token or ""), add_special_tokens=False)
                   ["input_ids"] for side in ("chosen", "rejected")]
        room = max_length - max(len(r) for r in replies)
        if room < 8:
            continue  # a reply alone fills the budget: left out rather than cut
        examples.append(Example(list(prompt)[-room:], replies[0], replies[1]))
    return examples


def _batch(examples: list[Example], side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask, and labels (-100 outside the reply)."""
    rows = [(e.prompt, getattr(e, side)) for e in examples]
    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (prompt, reply) in enumerate(rows):
        sequence = prompt + reply
        ids[i, : len(sequence)] = torch.tensor(sequence)
        mask[i, : len(sequence)] = 1
        labels[i, len(prompt): len(sequence)] = torch.tensor(reply)
    return ids, mask, labels


def reply_logprobs(model: torch.nn.Module, weights: Weights, examples: list[Example], side: str
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: the summed log-probability of its reply and the reply's token count."""
    ids, mask, labels = _batch(examples, side)
    # Logits only from the first reply token on (the vocabulary projection of prompt positions is wasted work).
    first = min(len(e.prompt) for e in examples) - 1
    keep = torch.arange(max(first, 0), ids.shape[1] - 1)
    logits = functional_call(model, weights, args=(ids,), kwargs={"attention_mask": mask, "logits_to_keep": keep},
                             strict=False, tie_weights=True).logits
    targets = labels[:, keep + 1]
    logprobs = -F.cross_entropy(logits.float().transpose(1, 2), targets.clamp(min=0), reduction="none")
    counted = targets != -100
    return (logprobs * counted).sum(dim=1), counted.sum(dim=1)


def loss(model: torch.nn.Module, weights: Weights, examples: list[Example], objective: str, beta: float
         ) -> torch.Tensor:
    """The mean loss of a batch: per-token NLL of the chosen replies, or DPO against the base model."""
    if objective == "nll":
        chosen, tokens = reply_logprobs(model, weights, examples, "chosen")
        return -chosen.sum() / tokens.sum()
    _, _, margin = pair_margins(model, weights, examples)
    return -F.logsigmoid(beta * margin).mean()


def pair_margins(model: torch.nn.Module, weights: Weights, examples: list[Example]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pair: the chosen reply's summed log-probability and token count, and the implicit reward margin
    log π/π_ref(chosen) − log π/π_ref(rejected) against the reference held by each example."""
    chosen, tokens = reply_logprobs(model, weights, examples, "chosen")
    rejected, _ = reply_logprobs(model, weights, examples, "rejected")
    reference = torch.tensor([e.reference for e in examples])
    return chosen, tokens, (chosen - reference[:, 0]) - (rejected - reference[:, 1])


@torch.no_grad()
def evaluate(model: torch.nn.Module, weights: Weights, examples: list[Example], objective: str, beta: float,
             batch_size: int = 8) -> dict[str, float]:
    """Token-weighted NLL of the chosen replies; with ``dpo`` also the DPO loss and the preference accuracy
    (chosen more likely than rejected relative to the base)."""
    nll_sum, token_count, dpo_sum, correct = 0.0, 0, 0.0, 0
    for batch in batches(by_length(examples), batch_size):
        if objective == "dpo":
            chosen, tokens, margin = pair_margins(model, weights, batch)
            dpo_sum += float(-F.logsigmoid(beta * margin).sum())
            correct += int((margin > 0).sum())
        else:
            chosen, tokens = reply_logprobs(model, weights, batch, "chosen")
        nll_sum += float(-chosen.sum())
        token_count += int(tokens.sum())
    result = {"nll": round(nll_sum / max(token_count, 1), 5)}
    if objective == "dpo":
        result |= {"dpo_loss": round(dpo_sum / len(examples), 5), "accuracy": round(correct / len(examples), 4)}
    return result


@torch.no_grad()
def attach_reference(model: torch.nn.Module, weights: Weights, examples: list[Example], batch_size: int = 8) -> None:
    for batch in batches(by_length(examples), batch_size):
        chosen, _ = reply_logprobs(model, weights, batch, "chosen")
        rejected, _ = reply_logprobs(model, weights, batch, "rejected")
        for example, c, r in zip(batch, chosen.tolist(), rejected.tolist(), strict=True):
            example.reference = (c, r)


def by_length(examples: list[Example]) -> list[Example]:
    """Longest first: batches of similar lengths pad less (for passes whose order does not matter)."""
    return sorted(examples, key=lambda e: len(e.prompt) + max(len(e.chosen), len(e.rejected)), reverse=True)


def batches(examples: list[Example], size: int, shuffle_seed: int | None = None) -> Iterator[list[Example]]:
    order = list(range(len(examples)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    for start in range(0, len(order), size):
        yield [examples[i] for i in order[start:start + size]]
