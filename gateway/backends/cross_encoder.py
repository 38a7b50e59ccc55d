"""Local re-rankers (``task: rerank``, ``backend: local``): a sentence-transformers ``CrossEncoder`` directory
(ms-marco MiniLM, BGE / Jina re-rankers, or one you trained) scoring each (query, document) pair."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.backends.base import NotAChatModel
from gateway.core.config import ModelConfig
from gateway.core.errors import UpstreamUnavailableError
from gateway.wire.rerank import RerankRequest, rerank_response

BATCH_SIZE = 32


class CrossEncoderBackend(NotAChatModel):
    """Relevance scores from a cross-encoder (with its own activation: a probability for one-label models)."""

    serves = "POST /v1/rerank"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self._model: Any = None
        self._load_error: str | None = None
        self._busy = asyncio.Semaphore(config.max_concurrency)

    async def start(self) -> None:
        try:
            self._model = await asyncio.to_thread(self._load)
        except Exception as exc:  # reported by /ready and on every request, never a crash at start
            self._load_error = f"{type(exc).__name__}: {exc}"

    def _load(self) -> Any:
        from sentence_transformers import CrossEncoder

        device = None if self.config.device == "auto" else self.config.device
        return CrossEncoder(self.config.path, device=device)

    async def check_ready(self) -> tuple[bool, str]:
        if self._load_error:
            return False, f"failed to load cross-encoder '{self.config.path}': {self._load_error}"
        return (True, "ok") if self._model is not None else (False, "loading")

    async def rerank(self, request: RerankRequest) -> dict[str, Any]:
        if self._model is None:
            raise UpstreamUnavailableError(f"re-ranker '{self.name}' is not loaded: "
                                           f"{self._load_error or 'still loading'}")
        texts = request.texts()
        async with self._busy:
            scores, tokens = await asyncio.to_thread(self._score, request.query, texts)
        return rerank_response(request, self.name, scores, tokens)

    def _score(self, query: str, texts: list[str]) -> tuple[list[float], int]:
        pairs = [(query, text) for text in texts]
        scores = self._model.predict(pairs, batch_size=BATCH_SIZE, show_progress_bar=False,
                                     convert_to_numpy=True)
        encoded = self._model.tokenizer([q for q, _ in pairs], [t for _, t in pairs], truncation=True,
                                        max_length=self._model.max_length)
        return [float(score) for score in scores.reshape(len(texts), -1)[:, -1]], sum(
            len(ids) for ids in encoded["input_ids"])
