"""The ``TextEncoder`` interface, the concatenation of encoders, and the probe that identifies an encoder."""

from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Texts whose vectors identify an encoder: a checkpoint stores them, and refuses an encoder that maps them
# elsewhere (another model, another distillation, int8 where fp32 was trained). Several languages and styles.
PROBE_TEXTS = (
    "What is the capital of France?",
    "Natalia sold clips to 48 of her friends in April, and then half as many in May. How many in all?",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"",
    "下列关于中国古代科举制度的说法，正确的是",
)
# Minimum cosine between stored and recomputed probe vectors: an fp32 encoder reproduces its own vectors to
# ~1e-6; int8 ONNX reaches only 0.94-0.98 against fp32, another model far less.
PROBE_MIN_COSINE = 0.99


def default_cache_dir() -> Path:
    """Where derived artefacts (distilled and exported encoders, converted models) are kept:
    ``$LLM_GATEWAY_CACHE_DIR``, else ``$XDG_CACHE_HOME/llm-gateway``, else ``~/.cache/llm-gateway``."""
    explicit = os.environ.get("LLM_GATEWAY_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llm-gateway"


def staging_dir(target: Path) -> Path:
    """An empty private directory beside ``target`` to build a derived artefact in (``publish`` moves it)."""
    staging = target.with_name(f".{target.name}.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def publish(staging: Path, target: Path) -> Path:
    """Move a finished ``staging`` directory to ``target`` in one rename, so no reader sees it half-written;
    when another process published first, its copy is kept and this one dropped."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return target


class TextEncoder(ABC):
    """Maps texts to fixed-size float32 vectors (L2-normalised).

    ``spec`` is the string that rebuilds it (``build_encoder(spec)``) and is stored in router checkpoints.
    ``batches_help`` says whether encoding several texts at once is much cheaper per text than one by one
    (contextual models: yes; static lookups: no, so the gateway scores them inline without a batch window).
    """

    spec: str
    dim: int
    batches_help: bool = True

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), dim] float32."""

    @property
    def tokenizer(self) -> Any | None:
        """The Hugging Face tokenizer the encoder reads text with, when it has one (token-id inputs, counts)."""
        return None

    def probe(self) -> np.ndarray:
        """The encoder's vectors for ``PROBE_TEXTS`` (its fingerprint)."""
        return np.asarray(self.encode(list(PROBE_TEXTS)), dtype=np.float32)


def probe_mismatch(encoder: TextEncoder, stored: Sequence[Sequence[float]]) -> float | None:
    """The worst cosine between ``stored`` probe vectors and the encoder's own, or None when they agree."""
    expected = np.asarray(stored, dtype=np.float32)
    actual = encoder.probe()
    if expected.shape != actual.shape:
        return 0.0
    cosine = (expected * actual).sum(axis=1) / (
        np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1)).clip(1e-12)
    worst = float(cosine.min())
    return None if worst >= PROBE_MIN_COSINE else worst


class ConcatEncoder(TextEncoder):
    """Several encoders side by side (``a+b``); each part is unit-norm, the whole is rescaled to unit norm."""

    def __init__(self, parts: list[TextEncoder]) -> None:
        self.parts = parts
        self.spec = "+".join(p.spec for p in parts)
        self.dim = sum(p.dim for p in parts)
        self.batches_help = any(p.batches_help for p in parts)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        joined = np.concatenate([p.encode(texts) for p in self.parts], axis=1) / np.sqrt(len(self.parts))
        return joined.astype(np.float32)
