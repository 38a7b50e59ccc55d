"""A disk cache of encoded text lists (training and evaluation encode the same files again and again)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from routers.encoders.base import ConcatEncoder, TextEncoder


class CachedEncoder(TextEncoder):
    """Wraps an encoder with a disk cache of whole encoded text lists, keyed by the encoder's identity (its
    spec and its probe vectors: two fine-tuned encoders both named ``encoder`` never share entries) and by
    the texts."""

    def __init__(self, inner: TextEncoder, directory: Path) -> None:
        self.inner, self.directory = inner, directory
        self.spec, self.dim, self.batches_help = inner.spec, inner.dim, inner.batches_help
        self._identity: bytes | None = None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._identity is None:
            self._identity = self.spec.encode() + np.round(self.inner.probe(), 3).tobytes()
        digest = hashlib.sha256(self._identity)
        for text in texts:
            digest.update(hashlib.sha256(text.encode()).digest())
        path = self.directory / f"{digest.hexdigest()[:32]}.npy"
        if path.exists():
            cached = np.load(path)
            if cached.shape == (len(texts), self.dim):
                return np.asarray(cached, dtype=np.float32)
        vectors = self.inner.encode(texts)
        self.directory.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(f".{os.getpid()}.npy")
        np.save(staging, vectors)
        staging.replace(path)
        return vectors


def with_cache(encoder: TextEncoder, directory: Path) -> TextEncoder:
    """``encoder`` with a disk cache; the parts of a concatenation are cached one by one, so ``a+b`` reuses
    what ``a`` and ``b`` already encoded."""
    if isinstance(encoder, ConcatEncoder):
        return ConcatEncoder([with_cache(part, directory) for part in encoder.parts])
    if isinstance(encoder, CachedEncoder):
        return encoder
    return CachedEncoder(encoder, directory)
