"""Soup members as dense weight deltas from the base: PEFT LoRA adapters (ΔW = s·B·A per adapted weight,
merged exactly as PEFT merges them) or full fine-tunes (θ − θ_base for every floating-point tensor).

Members are read from disk one at a time and dropped when done; ``MemberStore`` counts loads and how many are
alive at once, which is what keeps a soup's memory proportional to the model batch, not to the pool.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

Delta = dict[str, torch.Tensor]  # base parameter name -> member weight minus base weight


@dataclass(frozen=True)
class Member:
    name: str
    path: Path
    kind: str  # "lora" or "full"


def find_member(path: Path) -> Member:
    if (path / "adapter_config.json").exists():
        return Member(path.name if path.name != "adapter" else path.parent.name, path, "lora")
    if (path / "config.json").exists() and any(path.glob("*.safetensors")):
        return Member(path.name if path.name != "model" else path.parent.name, path, "full")
    raise ValueError(f"--members {path}: neither a PEFT adapter (adapter_config.json) nor a model directory "
                     "with safetensors weights")


def lora_delta(adapter_dir: Path, base: dict[str, torch.Tensor]) -> Delta:
    """Dense ΔW of every weight the adapter adapts, keyed by the base model's parameter name."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{adapter_dir}: a {config.get('peft_type')} adapter; only LoRA adapters can be merged")
    if config.get("fan_in_fan_out"):
        raise ValueError(f"{adapter_dir}: fan_in_fan_out adapters (GPT-2 Conv1D) are not supported")
    rank, alpha = config["r"], config["lora_alpha"]
    scale = alpha / rank ** 0.5 if config.get("use_rslora") else alpha / rank
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    delta: Delta = {}
    for key, a in weights.items():
        if ".lora_A." not in key:
            continue
        b = weights[key.replace(".lora_A.", ".lora_B.")]
        module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        name = f"{module}.weight"
        if name not in base:
            raise ValueError(f"{adapter_dir}: adapts {name}, which the base model does not have")
        delta[name] = (scale * (b.float() @ a.float())).to(base[name].dtype)
    return delta


def full_delta(model_dir: Path, base: dict[str, torch.Tensor]) -> Delta:
    weights: dict[str, torch.Tensor] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        weights.update(load_file(str(file)))
    delta = {}
    for name, tensor in weights.items():
        if name in base and tensor.is_floating_point():
            if tensor.shape != base[name].shape:
                raise ValueError(f"{model_dir}: {name} has shape {tuple(tensor.shape)}, the base "
                                 f"{tuple(base[name].shape)}: not a fine-tune of this base")
            difference = tensor.to(base[name].dtype) - base[name]
            if difference.any():
                delta[name] = difference
    return delta


class MemberStore:
    """Loads members' deltas on demand; ``loads`` and ``peak_alive`` say how many were read and held at once."""

    def __init__(self, members: list[Member], base: dict[str, torch.Tensor]) -> None:
        self.members = members
        self.base = base
        self.loads = 0
        self.peak_alive = 0
        self._alive: weakref.WeakSet[_TrackedDelta] = weakref.WeakSet()

    def load(self, index: int) -> Delta:
        member = self.members[index]
        delta = lora_delta(member.path, self.base) if member.kind == "lora" else full_delta(member.path, self.base)
        self.loads += 1
        tracked = _TrackedDelta(delta)
        self._alive.add(tracked)
        self.peak_alive = max(self.peak_alive, len(self._alive))
        return tracked



class _TrackedDelta(dict):  # type: ignore[type-arg]
    """A delta the store can see alive (weak references need a class of our own)."""

    __hash__ = object.__hash__
    __eq__ = object.__eq__  # type: ignore[assignment]
