"""Static encoders: a model2vec table of token vectors distilled from a contextual sentence encoder.

Encoding is a tokenisation and a mean of looked-up rows (~0.1-0.4 ms per query on one CPU core, ~50x faster
than MiniLM itself), with no batching needed. Distillation (``model2vec.distill``: every vocabulary token
through the source model, PCA, SIF weighting) takes ~15-50 s on a small CPU and runs once: the result is kept
under the cache directory, like the converted embedded model, and never shipped as weights.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from routers.encoders.base import TextEncoder, publish, staging_dir

logger = logging.getLogger(__name__)

# Output width of the distilled tables (PCA); 256 kept the routing accuracy of the 384-d source (measured).
STATIC_DIMS = 256


def is_static_model_dir(path: Path) -> bool:
    """A model2vec directory (``config.json`` says ``model_type: model2vec``)."""
    try:
        return json.loads((path / "config.json").read_text()).get("model_type") == "model2vec"
    except (OSError, ValueError):
        return False


class StaticEncoder(TextEncoder):
    """A model2vec static model (a directory) behind the ``TextEncoder`` interface.

    model2vec loads the table and tokenizer; encoding is done here, the same way (text cut to the model's
    length, no special tokens, unknown tokens dropped, mean of rows, unit norm) but in float32 and without its
    per-call dispatch, which cost more than the lookup itself for one query (~170 vs ~90 us).
    """

    batches_help = False

    def __init__(self, spec: str, path: Path) -> None:
        from model2vec import StaticModel

        self.spec = spec
        model = StaticModel.from_pretrained(str(path))
        if model.token_mapping is not None or model.weights is not None:
            raise ValueError(f"{path}: quantised or weighted model2vec vocabularies are not supported")
        self._tokenizer = model.tokenizer  # its truncation is set to the model's max_length by model2vec
        self._table = np.asarray(model.embedding, dtype=np.float32)
        self._unknown = model.unk_token_id
        self._max_chars = model.max_length * model.median_token_length if model.max_length else None
        self.dim = int(self._table.shape[1])

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch_fast([text[:self._max_chars] for text in texts],
                                                      add_special_tokens=False)
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, encoding in enumerate(encodings):
            ids = encoding.ids if self._unknown is None else [i for i in encoding.ids if i != self._unknown]
            if ids:
                vectors[row] = self._table[ids].mean(axis=0)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0)


def distilled_dir(source: Path, cache_dir: Path, name: str, dims: int = STATIC_DIMS) -> Path:
    """The static model distilled from the sentence-transformers/transformers model at ``source``, made on
    first use under ``cache_dir/encoders/`` (written beside and renamed, so concurrent first uses never read
    a half-written table)."""
    target = cache_dir / "encoders" / f"static-{name}-{dims}"
    if is_static_model_dir(target):
        return target
    from model2vec.distill import distill

    logger.info("distilling a static encoder from %s into %s (once; ~15-50 s)", source, target)
    model = distill(model_name=str(source), pca_dims=dims)
    staging = staging_dir(target)
    model.save_pretrained(str(staging))
    return publish(staging, target)
