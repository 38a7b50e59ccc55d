"""One Sr-DPO / Sr-IPO / DPO / IPO training run: data, trainer, held-out evaluation, artefacts.

The output directory holds ``adapter/`` (LoRA runs; PEFT format, servable by vLLM's ``--lora-modules``),
``model/`` (the merged or fully fine-tuned model: a transformers directory the gateway's ``local`` backend
and ``vllm serve`` load), ``metrics.jsonl``, ``summary.json`` and ``curves.png``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training.models import resolve_model_path
from training.plots import plot_curves
from training.preference_data import load_preference_pairs, split_pairs
from training.sr_dpo import SR_PROMPT, SrDPOConfig, SrDPOTrainer

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class PreferenceRun:
    model: str
    data: Path
    out: Path
    loss: str = "sr-dpo"
    beta: float = 0.1
    lam: float = 0.5
    lora: bool = False
    lora_rank: int = 16
    steps: int = 100
    batch_size: int = 2
    learning_rate: float = 5e-5
    max_length: int = 384
    held_out: int = 100
    max_train_pairs: int | None = None
    seed: int = 0
    sr_prompt: str = SR_PROMPT
    progress: bool = True


def run_preference_training(run: PreferenceRun) -> dict[str, Any]:
    from datasets import Dataset

    model_path = resolve_model_path(run.model)
    pairs, report = load_preference_pairs(run.data)
    logger.info("preference data: %s", report)
    if len(pairs) <= run.held_out:
        raise ValueError(f"{run.data}: {len(pairs)} usable pairs; need more than --held-out {run.held_out}")
    train, held = split_pairs(pairs, run.held_out, run.seed)
    if run.max_train_pairs:
        train = train[: run.max_train_pairs]
    config = SrDPOConfig(
        output_dir=str(run.out / "trainer"), sr_loss=run.loss, beta=run.beta, sr_lambda=run.lam,
        sr_prompt=run.sr_prompt, max_steps=run.steps, per_device_train_batch_size=run.batch_size,
        per_device_eval_batch_size=run.batch_size, learning_rate=run.learning_rate, max_length=run.max_length,
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[], seed=run.seed,
        disable_tqdm=not run.progress, use_cpu=not torch.cuda.is_available(),
        model_init_kwargs={"dtype": torch.bfloat16 if torch.cuda.is_available() else torch.float32})
    peft_config = None
    if run.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=run.lora_rank, lora_alpha=2 * run.lora_rank, lora_dropout=0.0,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    trainer = SrDPOTrainer(model=str(model_path), args=config, train_dataset=Dataset.from_list(train),
                           eval_dataset=Dataset.from_list(held), processing_class=tokenizer, peft_config=peft_config)
    if not len(trainer.train_dataset):
        raise ValueError(f"no training pair fits --max-length {run.max_length} with the self-refinement prompt "
                         "prepended; raise --max-length")
    started = time.monotonic()
    trainer.train()
    train_seconds = time.monotonic() - started
    evaluation = trainer.evaluate()

    run.out.mkdir(parents=True, exist_ok=True)
    model = trainer.model
    if run.lora:
        model.save_pretrained(run.out / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(run.out / "model")
    tokenizer.save_pretrained(run.out / "model")
    history = trainer.state.log_history
    with (run.out / "metrics.jsonl").open("w") as handle:
        for row in history:
            handle.write(json.dumps(row) + "\n")
    plot_curves(history, ["loss", "rewards/margins", "rewards/accuracies", "sr/delta"], run.out / "curves.png",
                f"{run.loss} (beta {run.beta}, lambda {run.lam})")
    summary = {"loss_type": run.loss, "beta": run.beta, "lambda": run.lam, "lora": run.lora, "steps": run.steps,
               "train_pairs": len(trainer.train_dataset), "held_out_pairs": len(trainer.eval_dataset),
               "pairs_left_out_too_long": trainer.sr_dropped_pairs, "data_report": str(report),
               "train_seconds": round(train_seconds, 1),
               "seconds_per_step": round(train_seconds / max(1, run.steps), 2),
               "held_out_accuracy": evaluation.get("eval_rewards/accuracies"),
               "held_out_margin": evaluation.get("eval_rewards/margins"),
               "held_out_loss": evaluation.get("eval_loss"),
               "first_loss": next((row["loss"] for row in history if "loss" in row), None),
               "last_loss": next((row["loss"] for row in reversed(history) if "loss" in row), None)}
    (run.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
