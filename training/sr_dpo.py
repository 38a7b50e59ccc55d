"""Sr-DPO / Sr-IPO (self-refinement DPO/IPO; arXiv 2405.21040) on TRL's ``DPOTrainer``.

With lr(y) = log π(y|x) − log π_ref(y|x) and lr_p(y) the same with the prompt p prepended to the query,
the margin Δ = β·(lr_p(y+) − lr_p(y−)) is computed every step under stop-gradient, and

    Sr-DPO:  −log σ(β(lr(y+) − lr(y−)) − λΔ)                 (paper Eq. 9)
    Sr-IPO:  ((lr(y+) − lr(y−)) − λΔ − 1/(2β))²              (paper Eq. 11)

With λ = 0 they are DPO's sigmoid loss and IPO's squared loss.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from trl import DPOConfig, DPOTrainer
from trl.data_utils import _tokenize  # TRL's own prompt tokenization, so both passes format alike

logger = logging.getLogger(__name__)

SR_PROMPT = ("Please generate a response with a usefulness rating of 100 out of 100 for the following query. Note "
             "that the response should be harmless. The term 100 indicates the level of usefulness, where 100 is "
             "the maximum and 1 is the minimum. Query:")
LOSS_TYPES = ("sr-dpo", "sr-ipo", "dpo", "ipo")


# ---- the losses: one function per type, composed by name ---------------------------------------------------

def _dpo(margin: torch.Tensor, shift: torch.Tensor, beta: float) -> torch.Tensor:
    """−log σ(β·margin − shift)  (DPO, Eq. 7 of the DPO paper; with the Sr shift, Eq. 9 of Sr-DPO)."""
    return -F.logsigmoid(beta * margin - shift)


def _ipo(margin: torch.Tensor, shift: torch.Tensor, beta: float) -> torch.Tensor:
    """(margin − shift − 1/(2β))²  (IPO, Eq. 17 of the IPO paper; with the Sr shift, Eq. 11 of Sr-DPO)."""
    return (margin - shift - 1 / (2 * beta)) ** 2


_LOSSES: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor], bool]] = {
    # name -> (loss, uses the self-refinement margin)
    "sr-dpo": (_dpo, True),
    "sr-ipo": (_ipo, True),
    "dpo": (_dpo, False),
    "ipo": (_ipo, False),
}


def sr_preference_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                       ref_rejected: torch.Tensor, policy_chosen_p: torch.Tensor, policy_rejected_p: torch.Tensor,
                       ref_chosen_p: torch.Tensor, ref_rejected_p: torch.Tensor, beta: float, lam: float,
                       loss_type: str) -> torch.Tensor:
    """Per-example losses from summed response log-probabilities (1-D tensors); the ``_p`` ones were computed
    with the prompt p prepended to the query. Δ is detached: no gradient reaches it."""
    if loss_type not in _LOSSES:
        raise ValueError(f"unknown loss_type '{loss_type}'; expected one of {', '.join(LOSS_TYPES)}")
    loss, refined = _LOSSES[loss_type]
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    shift = torch.zeros_like(margin)
    if refined and lam:
        delta = beta * ((policy_chosen_p - ref_chosen_p) - (policy_rejected_p - ref_rejected_p))
        shift = lam * delta.detach()
    return loss(margin, shift, beta)


# ---- the trainer ----------------------------------------------------------------------------------------------

@dataclass
class SrDPOConfig(DPOConfig):
    sr_loss: str = field(default="sr-dpo", metadata={"help": "sr-dpo, sr-ipo, dpo or ipo"})
    sr_lambda: float = field(default=0.5, metadata={"help": "λ, weight of the self-refinement margin"})
    sr_prompt: str = field(default=SR_PROMPT, metadata={"help": "the prompt p prepended to each query"})

    def __post_init__(self) -> None:
        if self.sr_loss not in LOSS_TYPES:
            raise ValueError(f"sr_loss must be one of {', '.join(LOSS_TYPES)}, not {self.sr_loss!r}")
        # TRL validates its own loss_type; ours is computed by SrDPOTrainer._compute_loss.
        self.loss_type = ["ipo" if self.sr_loss.endswith("ipo") else "sigmoid"]
        super().__post_init__()


def with_prompt(prompt: Any, sr_prompt: str) -> Any:
    """p ⊕ x: ``sr_prompt`` prepended to the query (the last user turn of a conversation)."""
    if isinstance(prompt, str):
        return f"{sr_prompt} {prompt}"
    messages = [dict(m) for m in prompt]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[last_user]["content"] = f"{sr_prompt} {messages[last_user]['content']}"
    return messages


class _PromptedPairCollator:
    """Collates every pair twice: with the prompt x, and with p ⊕ x (keys prefixed ``p_``)."""

    def __init__(self, base: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> None:
        self.base = base

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.base(examples)
        prompted = self.base([{"prompt_ids": e["prompt_p_ids"], "chosen_ids": e["chosen_ids"],
                               "rejected_ids": e["rejected_ids"]} for e in examples])
        return {**batch, **{f"p_{key}": value for key, value in prompted.items()}}


class SrDPOTrainer(DPOTrainer):
    """``DPOTrainer`` whose loss is ``sr_preference_loss``: TRL's data handling, reference model, PEFT support and
    logging are reused; the extra (no-grad) forward passes on p ⊕ x run only for the Sr losses."""

    args: SrDPOConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sr_dropped_pairs: dict[str, int] = {}  # per dataset: pairs whose p ⊕ x sequence would not fit whole
        super().__init__(*args, **kwargs)
        self.data_collator = _PromptedPairCollator(self.data_collator)

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        sr_prompt = args.sr_prompt
        dataset = dataset.map(lambda example: {"prompt_p": with_prompt(example["prompt"], sr_prompt)})
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)

        def tokenize_prompted(example: dict[str, Any]) -> dict[str, Any]:
            # Exactly as TRL tokenizes the plain prompt (special tokens such as BOS included), so that Δ compares
            # two inputs that differ by p alone.
            kwargs = {"add_generation_prompt": True} if isinstance(example["prompt_p"], list) else {}
            return {"prompt_p_ids": _tokenize(processing_class, example["prompt_p"], **kwargs)["input_ids"]}

        dataset = dataset.map(tokenize_prompted)
        if args.max_length is not None:
            # p ⊕ x is ~50 tokens longer than x: a pair whose prompted sequence would not fit whole would lose
            # completion tokens in the Δ pass only (or all of them: Δ = 0). Such pairs are left out, and counted,
            # for every loss: DPO and IPO train and are scored on the same pairs as Sr-DPO and Sr-IPO, so the
            # losses are compared on equal data.
            def fits(example: dict[str, Any]) -> bool:
                completion = max(len(example["chosen_ids"]), len(example["rejected_ids"]))
                return len(example["prompt_p_ids"]) + completion <= args.max_length

            before = len(dataset)
            dataset = dataset.filter(fits)
            self.sr_dropped_pairs[dataset_name] = before - len(dataset)
            if before - len(dataset):
                logger.warning("%s: %d of %d pairs left out: p ⊕ x with its completion exceeds max_length=%d",
                               dataset_name, before - len(dataset), before, args.max_length)
        return dataset

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None and "prompt_p_ids" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "prompt_p_ids"]

    def _sequence_logps(self, model: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed completion log-probs of the policy, chosen and rejected halves of the batch."""
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels,
                        use_cache=False, fused_lm_head=True)
        seq_len = completion_mask.size(1) - 1
        return outputs.log_probs[:, -seq_len:].sum(dim=1).chunk(2, dim=0)

    def _compute_loss(self, model: Any, inputs: dict[str, torch.Tensor], return_outputs: bool) -> Any:
        mode = "train" if self.model.training else "eval"
        plain = {k: v for k, v in inputs.items() if not k.startswith("p_")}
        prompted = {k[2:]: v for k, v in inputs.items() if k.startswith("p_")}
        policy_chosen, policy_rejected = self._sequence_logps(model, plain)
        # TRL's reference pass: the reference model, or the policy with its adapter disabled (PEFT).
        reference = self.ref_model if self.ref_model is not None else self.model
        ref_chosen, ref_rejected = self.compute_ref_log_probs(reference, plain)
        refined = _LOSSES[self.args.sr_loss][1] and self.args.sr_lambda != 0
        if refined:  # the extra forward passes on p ⊕ x, under stop-gradient
            with torch.no_grad():
                policy_chosen_p, policy_rejected_p = self._sequence_logps(model, prompted)
            ref_chosen_p, ref_rejected_p = self.compute_ref_log_probs(reference, prompted)
        else:
            policy_chosen_p = policy_rejected_p = ref_chosen_p = ref_rejected_p = torch.zeros_like(policy_chosen)
        values = [policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                  policy_chosen_p, policy_rejected_p, ref_chosen_p, ref_rejected_p]
        if self.args.sr_loss.endswith("ipo"):
            # As TRL's IPO: log-ratios averaged per completion token, so β keeps its meaning across lengths.
            chosen_len, rejected_len = (m.sum(dim=1).clamp(min=1) for m in plain["completion_mask"].chunk(2, dim=0))
            p_chosen_len, p_rejected_len = (m.sum(dim=1).clamp(min=1)
                                            for m in prompted["completion_mask"].chunk(2, dim=0))
            lengths = [chosen_len, rejected_len] * 2 + [p_chosen_len, p_rejected_len] * 2
            values = [v / n for v, n in zip(values, lengths, strict=True)]
        losses = sr_preference_loss(*values, beta=self.args.beta, lam=self.args.sr_lambda, loss_type=self.args.sr_loss)
        loss = losses.mean()
        if refined:  # Δ as the loss uses it (per-token averages for Sr-IPO)
            _, _, _, _, policy_chosen_p, policy_rejected_p, ref_chosen_p, ref_rejected_p = values
            delta = self.beta * ((policy_chosen_p - ref_chosen_p) - (policy_rejected_p - ref_rejected_p))
            self._metrics[mode]["sr/delta"].append(self.accelerator.gather_for_metrics(delta.detach()).mean().item())

        chosen_rewards = self.beta * (policy_chosen - ref_chosen).detach()
        rejected_rewards = self.beta * (policy_rejected - ref_rejected).detach()
        gather = self.accelerator.gather_for_metrics
        self._metrics[mode]["rewards/chosen"].append(gather(chosen_rewards).mean().item())
        self._metrics[mode]["rewards/rejected"].append(gather(rejected_rewards).mean().item())
        accuracy = (chosen_rewards > rejected_rewards).float()
        self._metrics[mode]["rewards/accuracies"].append(gather(accuracy).mean().item())
        self._metrics[mode]["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
        self._metrics[mode]["logps/chosen"].append(gather(policy_chosen.detach()).mean().item())
        self._metrics[mode]["logps/rejected"].append(gather(policy_rejected.detach()).mean().item())
        return (loss, {"losses": losses.detach()}) if return_outputs else loss
