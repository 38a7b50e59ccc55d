"""Static encoders: a model2vec table of token vectors distilled from a contextual sentence encoder.

Encoding is a tokenisation and a mean of looked-up rows (~0.1-0.4 ms per query on one CPU core, ~50x faster
than MiniLM itself), with no batching needed. Distillation (``model2vec.distill``: every vocabulary token
through the source model, PCA, SIF weighting) takes ~15-50 s on a small CPU and runs once: the result is kept
under the cache directory, like the converted embedded model, and never shipped as weights.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from routers.encoders.base import TextEncoder

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
    """A model2vec static model (a directory) behind the ``TextEncoder`` interface."""

    batches_help = False

    def __init__(self, spec: str, path: Path) -> None:
        from model2vec import StaticModel

        self.spec = spec
        self.model = StaticModel.from_pretrained(str(path))
        self.dim = int(self.model.dim)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        # No worker processes: the gateway calls this inline for one query at a time.
        vectors = self.model.encode(list(texts), use_multiprocessing=False, normalize=True)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)


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
    staging = target.with_name(f".{target.name}.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target
