"""Backends: how a configured model produces completions (in-process or over HTTP)."""

from __future__ import annotations

from pathlib import Path

from gateway.backends.base import AdapterView, Backend, RelayedChunks, Request
from gateway.backends.openai_http import OpenAIHTTPBackend
from gateway.core.config import ModelConfig
from gateway.core.images import ImagePolicy

__all__ = ["AdapterView", "Backend", "OpenAIHTTPBackend", "RelayedChunks", "Request", "create_backend"]


def create_backend(config: ModelConfig, cache_dir: Path, image_policy: ImagePolicy | None = None) -> Backend:
    """The backend a model entry asks for."""
    if config.backend == "local" and config.task in ("transcribe", "speech"):
        from gateway.backends.speech import EspeakBackend, WhisperBackend

        return WhisperBackend(config) if config.task == "transcribe" else EspeakBackend(config)
    if config.backend == "local" and config.task == "rerank":
        from gateway.backends.cross_encoder import CrossEncoderBackend

        return CrossEncoderBackend(config)
    if config.backend == "local":
        from gateway.backends.transformers.backend import LocalBackend  # torch and transformers load only when needed

        return LocalBackend(config, cache_dir, image_policy)
    if config.endpoints:
        from gateway.backends.replicas import ReplicaSet

        return ReplicaSet(config)
    return OpenAIHTTPBackend(config)
