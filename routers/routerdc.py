"""RouterDC: a query encoder plus one learned embedding per LLM; score(q, m) = cos(E(q), k_m) / t.

A checkpoint is a directory::

    router.json          LLM names in order, encoder spec, temperature, head shape, best single LLM,
                         training config and validation figures
    router.safetensors   the head and the LLM embeddings
    encoder/             the fine-tuned encoder (finetune mode only; a sentence-transformers directory)

It loads with this module alone (no training code).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from routers.base import Router
from routers.encoders import TextEncoder, build_encoder

CHECKPOINT_FORMAT = "routerdc/1"
METADATA_FILE = "router.json"
WEIGHTS_FILE = "router.safetensors"


class RouterDCModel(nn.Module):
    """The trainable part on top of the encoder: an optional residual MLP head and the LLM embeddings."""

    def __init__(self, input_dim: int, num_llms: int, *, hidden_dim: int = 0, temperature: float = 1.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.temperature = temperature
        self.hidden_dim = hidden_dim
        # With hidden_dim = 0 the encoder output is used directly, as in the paper.
        self.head: nn.Module = (nn.Sequential(nn.Dropout(dropout), nn.Linear(input_dim, hidden_dim), nn.GELU(),
                                              nn.Linear(hidden_dim, input_dim)) if hidden_dim else nn.Identity())
        # The paper's code initialises the LLM embeddings from N(0, 0.78).
        self.llm_embeddings = nn.Parameter(torch.randn(num_llms, input_dim) * 0.78)

    def query_embeddings(self, encoded: torch.Tensor) -> torch.Tensor:
        return encoded + self.head(encoded) if self.hidden_dim else encoded

    def forward(self, encoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, L] = cos(h, k) / t, query embeddings h [B, D])."""
        hidden = self.query_embeddings(encoded)
        logits = nn.functional.normalize(hidden, dim=-1) @ nn.functional.normalize(self.llm_embeddings, dim=-1).T
        return logits / self.temperature, hidden


class RouterDCRouter(Router):
    """A trained RouterDC checkpoint behind the ``Router`` interface."""

    def __init__(self, encoder: TextEncoder, model: RouterDCModel, llm_names: Sequence[str],
                 metadata: dict[str, Any] | None = None) -> None:
        super().__init__(llm_names)
        self.encoder = encoder
        self.model = model.eval()
        self.metadata = metadata or {}

    @property
    def best_single(self) -> str | None:
        return self.metadata.get("best_single")

    def score_encoded(self, encoded: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits, _ = self.model(torch.from_numpy(np.asarray(encoded, dtype=np.float32)))
        return logits.numpy()

    def score(self, queries: Sequence[str]) -> np.ndarray:
        return self.score_encoded(self.encoder.encode(queries))

    def save(self, directory: Path | str, extra_metadata: dict[str, Any] | None = None) -> Path:
        return save_checkpoint(directory, self.model, self.llm_names, self.encoder.spec,
                               {**self.metadata, **(extra_metadata or {})})


def save_checkpoint(directory: Path | str, model: RouterDCModel, llm_names: Sequence[str], encoder_spec: str,
                    metadata: dict[str, Any]) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    save_file(weights, directory / WEIGHTS_FILE)
    document = {**metadata, "format": CHECKPOINT_FORMAT, "llm_names": list(llm_names), "encoder": encoder_spec,
                "temperature": model.temperature, "hidden_dim": model.hidden_dim,
                "input_dim": int(model.llm_embeddings.shape[1])}
    (directory / METADATA_FILE).write_text(json.dumps(document, indent=2, ensure_ascii=False))
    return directory


def read_metadata(directory: Path | str) -> dict[str, Any]:
    path = Path(directory) / METADATA_FILE
    try:
        metadata: dict[str, Any] = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"{directory} is not a router checkpoint: cannot read {METADATA_FILE} ({exc.strerror})"
                         ) from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {metadata.get('format')!r}; "
                         f"expected {CHECKPOINT_FORMAT!r}")
    return metadata


def load_routerdc(directory: Path | str, *, encoder: TextEncoder | None = None, device: str = "cpu") -> RouterDCRouter:
    """Load a checkpoint directory (``encoder`` may be passed to share one already loaded)."""
    directory = Path(directory)
    metadata = read_metadata(directory)
    model = RouterDCModel(int(metadata["input_dim"]), len(metadata["llm_names"]),
                          hidden_dim=int(metadata.get("hidden_dim", 0)), temperature=float(metadata["temperature"]))
    model.load_state_dict(load_file(directory / WEIGHTS_FILE))
    encoder = encoder or build_encoder(metadata["encoder"], base_dir=directory, device=device)
    if encoder.dim != model.llm_embeddings.shape[1]:
        raise ValueError(f"{directory}: encoder '{encoder.spec}' gives {encoder.dim}-d vectors; the checkpoint "
                         f"expects {model.llm_embeddings.shape[1]}")
    return RouterDCRouter(encoder, model, metadata["llm_names"], metadata)
