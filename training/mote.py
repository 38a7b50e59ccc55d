"""MoTE training (Mixture of insighTful Experts, arXiv 2405.00557): step-level LoRA experts plus a shared expert,
trained on AlignCoT chains (the layer itself is ``gateway.backends.transformers.mote``, which also serves it).

Two token rules (``MoTEConfig.token_rules``): ``frozen-start`` (the default) marks each step with a start token
frozen at the mean embedding and never predicted, and question tokens use the shared expert alone; ``paper``
follows the paper: start and end tokens per step, learnable and predicted (the model opens and closes its
steps itself), and question tokens use α·E_i + (1 − α)·E_shared with i a step expert drawn per sequence.

A run writes what serving needs: ``mote.json`` + ``mote_experts.safetensors`` + ``base/`` (the base model with
the marker rows in its embeddings, and its tokenizer) for the local backend's ``mote:`` (the model as trained:
experts switch at the markers), and per step one ordinary LoRA adapter that merges its expert with the shared
one, exactly: A' = [√α A_s; √(1−α) A_0], B' = [√α B_s, √(1−α) B_0], rank 2r, lora_alpha 2·lora_alpha (the same
scaling), so B'A' = α B_s A_s + (1−α) B_0 A_0. The adapters are PEFT directories for vLLM (``--enable-lora
--lora-modules analysis=...`` over ``base/``) and the local backend's ``adapters``; they apply their step's
expert to every token of a call, which is the one approximation of serving per step.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from gateway.backends.transformers.mote import (
    BASE,
    EXPERTS,
    TARGET_MODULES,
    MoTELinear,
    MoTEManifest,
    attach_mote,
    step_ids_from_markers,
)
from safety.prompts import ALIGNCOT_END_MARKERS, ALIGNCOT_START_MARKERS, ALIGNCOT_STEPS

TOKEN_RULES = ("frozen-start", "paper")


# ---- data -------------------------------------------------------------------------------------------------

def chain_text(record: dict[str, Any], skip_steps: bool = False) -> list[tuple[str, str]]:
    """The steps of an AlignCoT record as (step, text); a skipped record is its direct answer alone, and with
    ``skip_steps`` a chain is its safe answer alone (its intermediate steps skipped)."""
    if record.get("skipped"):
        return [("answer", record["direct"])]
    if skip_steps:
        return [("answer", record["answer"])]
    return [(step, record[step]) for step in ALIGNCOT_STEPS]


def skipped_chains(records: Sequence[dict[str, Any]], probability: float, seed: int) -> list[bool]:
    """Which chains train with their steps skipped: each with ``probability``, drawn once (seeded)."""
    draw = torch.rand(len(records), generator=torch.Generator().manual_seed(seed + 1)).tolist()
    return [not record.get("skipped") and value < probability for record, value in zip(records, draw, strict=True)]


def encode_record(tokenizer: Any, record: dict[str, Any], max_length: int,
                  token_rules: str = "frozen-start", skip_steps: bool = False) -> dict[str, list[int]]:
    """input_ids and labels: the query (chat template) is context, only the steps are learned. ``frozen-start``:
    a start marker before each step, never a target; ``paper``: start and end markers around each step, both
    targets (the model learns to open and close its steps)."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": record["prompt"]}], add_generation_prompt=True,
                                           tokenize=False)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    labels = [-100] * len(ids)
    for step, text in chain_text(record, skip_steps):
        marker = tokenizer.convert_tokens_to_ids(ALIGNCOT_START_MARKERS[step])
        piece = tokenizer(text.strip(), add_special_tokens=False)["input_ids"]
        if token_rules == "paper":
            end = tokenizer.convert_tokens_to_ids(ALIGNCOT_END_MARKERS[step])
            ids += [marker, *piece, end]
            labels += [marker, *piece, end]
        else:
            ids += [marker, *piece]
            labels += [-100, *piece]
    ids.append(tokenizer.eos_token_id)
    labels.append(tokenizer.eos_token_id)
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


# ---- training ---------------------------------------------------------------------------------------------

@dataclass
class MoTEConfig:
    rank: int = field(default=16, metadata={"help": "LoRA rank of every expert (paper: 16)"})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA alpha; scaling = alpha / rank"})
    mix: float = field(default=0.5, metadata={"help": "α: weight of the step expert against the shared one"})
    learning_rate: float = field(default=2e-4, metadata={"help": "AdamW learning rate (paper: 2e-5, full size)"})
    epochs: int = field(default=1, metadata={"help": "passes over the data (paper: 3)"})
    max_steps: int | None = field(default=None, metadata={"help": "optimiser steps (overrides epochs)"})
    batch_size: int = field(default=4, metadata={"help": "sequences per step (paper: 16)"})
    max_length: int = field(default=512, metadata={"help": "tokens per sequence"})
    token_rules: str = field(default="frozen-start", metadata={"help": "frozen-start or paper (see the module)"})
    skip_steps: float = field(default=0.0, metadata={
        "help": "step skipping: the share of chains trained as their safe answer alone (the question, then the "
                "answer step), so the model learns that it may answer at once; served under the paper's rules it "
                "decides itself whether to write the steps (0: every chain whole)"})
    marker_learning_rate: float | None = field(default=None, metadata={
        "help": "paper rules: learning rate of the marker embeddings (default: learning_rate); new rows start at "
                "the mean embedding and must move far for the model to predict its markers"})
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.mix <= 1:
            raise ValueError("mix (α) must be between 0 and 1")
        if not 0 <= self.skip_steps <= 1:
            raise ValueError("skip_steps must be between 0 and 1")
        if self.token_rules not in TOKEN_RULES:
            raise ValueError(f"token_rules must be one of {', '.join(TOKEN_RULES)}, not {self.token_rules!r}")


def _batches(encoded: list[dict[str, list[int]]], batch_size: int, pad_id: int,
             generator: torch.Generator) -> list[dict[str, torch.Tensor]]:
    order = torch.randperm(len(encoded), generator=generator).tolist()
    batches = []
    for start in range(0, len(order), batch_size):
        rows = [encoded[i] for i in order[start:start + batch_size]]
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad_id)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(row["input_ids"]), torch.tensor(row["labels"]), 1
        batches.append({"input_ids": ids, "labels": labels, "attention_mask": mask})
    return batches


def train_mote(model_path: Path, records: Sequence[dict[str, Any]], out: Path, config: MoTEConfig,
               progress: bool = True) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.plots import plot_curves

    torch.manual_seed(config.seed)
    paper = config.token_rules == "paper"
    markers = list(ALIGNCOT_START_MARKERS.values()) + (list(ALIGNCOT_END_MARKERS.values()) if paper else [])
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.add_special_tokens({"additional_special_tokens": markers})
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    embeddings = model.get_input_embeddings().weight
    mean = embeddings.detach().mean(dim=0)
    old_vocabulary = embeddings.shape[0]
    model.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():  # the markers start at the mean embedding
        model.get_input_embeddings().weight[old_vocabulary:] = mean
    routing, layers = attach_mote(model, n_steps=len(ALIGNCOT_STEPS), rank=config.rank,
                                  lora_alpha=config.lora_alpha, mix=config.mix)
    marker_ids = [tokenizer.convert_tokens_to_ids(ALIGNCOT_START_MARKERS[s]) for s in ALIGNCOT_STEPS]
    skipped = skipped_chains(records, config.skip_steps, config.seed)
    encoded = [encode_record(tokenizer, r, config.max_length, config.token_rules, skip)
               for r, skip in zip(records, skipped, strict=True)]
    trainable = [p for layer in layers.values() for p in (layer.lora_A, layer.lora_B)]
    groups: list[dict[str, Any]] = [{"params": trainable}]
    marker_tables = _learnable_marker_rows(model, old_vocabulary) if paper else []
    if marker_tables:  # no weight decay: it would shrink the frozen rows of the table too
        groups.append({"params": marker_tables, "weight_decay": 0.0,
                       "lr": config.marker_learning_rate or config.learning_rate})
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total = config.max_steps or config.epochs * math.ceil(len(encoded) / config.batch_size)
    history: list[dict[str, float]] = []
    started, step = time.monotonic(), 0
    model.train()
    bar = tqdm(total=total, desc="mote", unit="step", disable=not progress)
    while step < total:
        for batch in _batches(encoded, config.batch_size, pad, generator):
            routing.step_ids = step_ids_from_markers(batch["input_ids"], marker_ids)
            if paper:  # each sequence's question tokens mix with a step expert drawn at random
                routing.question_expert = torch.randint(len(ALIGNCOT_STEPS), (len(batch["input_ids"]),),
                                                        generator=generator)
            loss = model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            history.append({"step": step, "loss": loss.item()})
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if step >= total:
                break
    bar.close()
    seconds = time.monotonic() - started

    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file({f"{name}.{kind}": getattr(layer, kind).detach().contiguous() for name, layer in layers.items()
               for kind in ("lora_A", "lora_B")}, out / EXPERTS)
    save_base_with_markers(model_path, model, tokenizer, old_vocabulary, out / BASE)
    MoTEManifest(steps=ALIGNCOT_STEPS, start_markers=tuple(ALIGNCOT_START_MARKERS.values()),
                 end_markers=tuple(ALIGNCOT_END_MARKERS.values()) if paper else (), token_rules=config.token_rules,
                 rank=config.rank, lora_alpha=config.lora_alpha, mix=config.mix).write(out)
    adapters = export_step_adapters(out / BASE, layers, config, out / "adapters")
    with (out / "loss.jsonl").open("w") as handle:
        for row in history:
            handle.write(json.dumps(row) + "\n")
    plot_curves(history, ["loss"], out / "loss.png", f"MoTE SFT (rank {config.rank}, α {config.mix})")
    summary = {"records": len(records), "chains_skipped": sum(skipped), "steps": step,
               "seconds": round(seconds, 1), "first_loss": history[0]["loss"],
               "last_loss": history[-1]["loss"], "config": asdict(config),
               "adapters": {k: str(v) for k, v in adapters.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _learnable_marker_rows(model: nn.Module, old_vocabulary: int) -> list[nn.Parameter]:
    """The embedding tables (input, and output when untied) made trainable in the marker rows only: a gradient
    hook zeroes every other row, so the model's own vocabulary stays as it was."""
    tables = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not tables[0]:
        tables.append(output.weight)

    def markers_only(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:old_vocabulary] = 0
        return grad

    for table in tables:
        table.requires_grad_(True)
        table.register_hook(markers_only)
    return tables


def save_base_with_markers(model_path: Path, trained: nn.Module, tokenizer: Any, old_vocabulary: int,
                           directory: Path) -> None:
    """The base model with the marker rows of the trained embedding tables (the mean, or learned under the
    paper's rules), and the tokenizer that has the markers: what the MoTE layers and the step adapters run on."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    base.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        base.get_input_embeddings().weight[old_vocabulary:] = trained.get_input_embeddings().weight[old_vocabulary:]
        output, trained_output = base.get_output_embeddings(), trained.get_output_embeddings()
        if output is not None and output.weight is not base.get_input_embeddings().weight:
            output.weight[old_vocabulary:] = trained_output.weight[old_vocabulary:]
    base.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def export_step_adapters(model_path: Path, layers: dict[str, MoTELinear], config: MoTEConfig,
                         directory: Path) -> dict[str, Path]:
    """One PEFT LoRA adapter per step: its expert merged with the shared expert (exact, rank 2r)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapters = {}
    a, shared = math.sqrt(config.mix), math.sqrt(1 - config.mix)
    for index, step in enumerate(ALIGNCOT_STEPS):
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        peft_model = get_peft_model(base, LoraConfig(r=2 * config.rank, lora_alpha=2 * config.lora_alpha,
                                                     target_modules=list(TARGET_MODULES), lora_dropout=0.0,
                                                     task_type="CAUSAL_LM"))
        with torch.no_grad():
            for name, module in peft_model.base_model.model.named_modules():
                if name not in layers:
                    continue
                layer = layers[name]
                module.lora_A["default"].weight.copy_(torch.cat([a * layer.lora_A[index],
                                                                 shared * layer.lora_A[layer.n_steps]], dim=0))
                module.lora_B["default"].weight.copy_(torch.cat([a * layer.lora_B[index],
                                                                 shared * layer.lora_B[layer.n_steps]], dim=1))
        peft_model.save_pretrained(directory / step)
        adapters[step] = directory / step
    return adapters
