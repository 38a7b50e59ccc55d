"""MoTE layers (Mixture of insighTful Experts, arXiv 2405.00557): step-level LoRA experts plus a shared expert,
and what a local model needs to run them as they were trained.

Every targeted linear layer keeps its frozen weight W0 and gains one LoRA expert per step and one shared LoRA
expert. Special tokens mark where each step starts; each token uses the expert of its step:

    y = W0·x + α·(B_s A_s x)·c + (1 − α)·(B_0 A_0 x)·c        tokens inside step s   (c = lora_alpha / r)
    y = W0·x + (B_0 A_0 x)·c                                   tokens before any step (the question)

No gate and no balance loss: the routing is fixed by the markers. Under the paper's token rules the question
tokens use α·E_i + (1 − α)·E_shared with i a step expert drawn per sequence while training; serving uses the
expectation of that draw, α·mean_i E_i + (1 − α)·E_shared (the layer is linear in the expert, so this is the
mean output of the layer over the draw).

A trained run (``llm-gateway train mote``) is a directory: ``mote.json`` (this module's ``MoTEManifest``),
``mote_experts.safetensors`` and ``base/`` (the base model with the marker tokens in its vocabulary and
tokenizer). ``load_mote`` turns a loaded ``base/`` into the trained model: the MoTE layers with their experts,
and a hook that follows the markers through every forward pass, cached decoding included, so the expert in
use switches at a marker whether it was in the prompt or generated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NO_STEP = -1
MANIFEST = "mote.json"
EXPERTS = "mote_experts.safetensors"
BASE = "base"


def step_ids_from_markers(input_ids: torch.Tensor, marker_ids: Sequence[int],
                          initial: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T] step index of every token: the last start marker at or before it (the marker belongs to its own
    step); before the first marker, ``initial`` ([B], the step the sequence was in before these tokens) or
    ``NO_STEP``."""
    marked = torch.full_like(input_ids, NO_STEP)
    for step, marker in enumerate(marker_ids):
        marked = torch.where(input_ids == marker, torch.full_like(input_ids, step), marked)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    last_marker = torch.where(marked != NO_STEP, positions, torch.full_like(positions, -1)).cummax(dim=1).values
    before = (torch.full_like(marked, NO_STEP) if initial is None
              else initial.to(marked.device)[:, None].expand_as(marked))
    return torch.where(last_marker >= 0, marked.gather(1, last_marker.clamp(min=0)), before)


class StepRouting:
    """The current forward pass's step ids for every MoTE layer, and how question tokens (``NO_STEP``) mix:
    ``question_expert`` [B] names a step expert per sequence (training under the paper's rules),
    ``question_mean`` mixes the mean of the step experts (serving under them); neither: the shared expert alone."""

    def __init__(self) -> None:
        self.step_ids: torch.Tensor | None = None
        self.question_expert: torch.Tensor | None = None
        self.question_mean = False


class MoTELinear(nn.Module):
    def __init__(self, base: nn.Linear, routing: StepRouting, n_steps: int, rank: int, lora_alpha: float,
                 mix: float) -> None:
        super().__init__()
        self.base, self.routing, self.n_steps, self.mix = base, routing, n_steps, mix
        self.scaling = lora_alpha / rank
        for parameter in base.parameters():
            parameter.requires_grad_(False)
        # experts 0..n_steps-1 are the steps, expert n_steps is the shared one
        self.lora_A = nn.Parameter(torch.empty(n_steps + 1, rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(n_steps + 1, base.out_features, rank))
        for expert in range(n_steps + 1):  # as PEFT initialises LoRA A
            nn.init.kaiming_uniform_(self.lora_A.data[expert], a=math.sqrt(5))

    def _expert(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        return (x @ self.lora_A[expert].T) @ self.lora_B[expert].T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.routing.step_ids
        shared = self._expert(x, self.n_steps)
        if steps is None:
            return self.base(x) + self.scaling * shared
        if self.routing.question_expert is not None:  # question tokens: α·E_i + (1 − α)·E_shared
            steps = torch.where(steps == NO_STEP, self.routing.question_expert[:, None].expand_as(steps), steps)
        question = (steps == NO_STEP) & self.routing.question_mean  # α·mean_i E_i + (1 − α)·E_shared
        mixed = ((steps != NO_STEP) | question).unsqueeze(-1).to(x.dtype)
        delta = shared * (1 - mixed * self.mix)  # (1 − α)·shared where a step expert mixes in, shared alone else
        for step in range(self.n_steps):
            weight = ((steps == step).to(x.dtype) + question.to(x.dtype) / self.n_steps).unsqueeze(-1)
            if weight.any():
                delta = delta + self.mix * weight * self._expert(x, step)
        return self.base(x) + self.scaling * delta


def attach_mote(model: nn.Module, *, n_steps: int, rank: int, lora_alpha: float, mix: float,
                targets: Sequence[str] = TARGET_MODULES) -> tuple[StepRouting, dict[str, MoTELinear]]:
    """Replace every targeted ``nn.Linear`` with a ``MoTELinear``; returns the routing holder and the layers.
    Only the experts are trainable afterwards."""
    routing = StepRouting()
    layers: dict[str, MoTELinear] = {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and child_name in targets:
                layer = MoTELinear(child, routing, n_steps, rank, lora_alpha, mix)
                setattr(module, child_name, layer)
                layers[f"{name}.{child_name}" if name else child_name] = layer
    if not layers:
        raise ValueError(f"no linear layer named {', '.join(targets)} found to attach MoTE experts to")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for layer in layers.values():
        layer.lora_A.requires_grad_(True)
        layer.lora_B.requires_grad_(True)
    return routing, layers


@dataclass(frozen=True)
class MoTEManifest:
    """How a MoTE run was trained: its steps and their marker tokens, the experts' shape, the token rules."""

    steps: tuple[str, ...]
    start_markers: tuple[str, ...]
    end_markers: tuple[str, ...]  # empty under the frozen-start rules
    token_rules: str
    rank: int
    lora_alpha: float
    mix: float
    targets: tuple[str, ...] = TARGET_MODULES

    def write(self, directory: Path) -> None:
        (directory / MANIFEST).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, directory: Path) -> MoTEManifest:
        path = directory / MANIFEST
        if not path.is_file():
            raise ValueError(f"{directory} is not a MoTE run: {MANIFEST} is missing (train one with "
                             "'llm-gateway train mote')")
        data = json.loads(path.read_text())
        fields: dict[str, Any] = {key: tuple(value) if isinstance(value, list) else value
                                  for key, value in data.items()}
        return cls(**fields)


def follow_markers(model: nn.Module, routing: StepRouting, marker_ids: Sequence[int]) -> None:
    """Set ``routing.step_ids`` before every forward pass of ``model`` from its input ids. A pass over a cache
    that already holds tokens continues the step the sequence was in, so cached decoding switches experts
    exactly where a marker is (generated or not); a pass without one starts a new sequence."""
    current: dict[str, torch.Tensor | None] = {"step": None}

    def before_forward(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise ValueError("a MoTE model routes by token ids: call it with input_ids, not inputs_embeds")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        continuing = cache is not None and cache.get_seq_length() > 0 and current["step"] is not None
        routing.step_ids = step_ids_from_markers(ids, marker_ids, current["step"] if continuing else None)
        current["step"] = routing.step_ids[:, -1]

    model.register_forward_pre_hook(before_forward, with_kwargs=True)


def load_mote(model: nn.Module, tokenizer: Any, directory: Path) -> MoTEManifest:
    """Make ``model`` (loaded from ``directory/base``) the trained MoTE model: its layers, experts and marker
    routing. Returns the run's manifest."""
    from safetensors.torch import load_file

    manifest = MoTEManifest.read(directory)
    marker_ids = [tokenizer.convert_tokens_to_ids(marker) for marker in manifest.start_markers]
    unknown = [m for m, i in zip(manifest.start_markers, marker_ids, strict=True) if i == tokenizer.unk_token_id
               or i is None]
    if unknown:
        raise ValueError(f"{directory}: the tokenizer has no marker token {', '.join(unknown)}; load the model "
                         f"from {directory / BASE}")
    routing, layers = attach_mote(model, n_steps=len(manifest.steps), rank=manifest.rank,
                                  lora_alpha=manifest.lora_alpha, mix=manifest.mix, targets=manifest.targets)
    experts = load_file(directory / EXPERTS)
    with torch.no_grad():
        for name, layer in layers.items():
            for kind in ("lora_A", "lora_B"):
                getattr(layer, kind).copy_(experts[f"{name}.{kind}"])
            layer.to(device=layer.base.weight.device, dtype=layer.base.weight.dtype)
    model.requires_grad_(False)
    routing.question_mean = manifest.token_rules == "paper"
    follow_markers(model, routing, marker_ids)
    return manifest
