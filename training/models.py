"""Resolving the model a trainer starts from: a local transformers directory, or ``embedded``."""

from __future__ import annotations

from pathlib import Path

from gateway.core.config import Settings

EMBEDDED_NAMES = ("embedded", "smollm2-135m", "SmolLM2-135M-Instruct")


def resolve_model_path(model: str) -> Path:
    """``embedded`` (the packaged SmolLM2-135M-Instruct, converted once) or a local model directory."""
    if model in EMBEDDED_NAMES:
        from gateway.backends.transformers.embedded import embedded_model_dir

        return embedded_model_dir(Settings().cache_dir)
    path = Path(model)
    if not (path / "config.json").exists():
        raise ValueError(f"--model {model}: not 'embedded' and not a local transformers model directory")
    return path
