"""Local re-rankers (``task: rerank``, ``backend: local``): a sentence-transformers ``CrossEncoder`` directory
(ms-marco MiniLM, BGE / Jina re-rankers, or one you trained) scoring each (query, document) pair."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.backends.base import NotAChatModel
from gateway.backends.in_process import LoadedModel
from gateway.core.config import ModelConfig
from gateway.wire.rerank import RerankRequest, rerank_response

BATCH_SIZE = 32


class CrossEncoderBackend(NotAChatModel):
    """Relevance scores from a cross-encoder (with its own activation: a probability for one-label models)."""

    serves = "POST /v1/rerank"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self._model: LoadedModel[Any] = LoadedModel("re-ranker", config.name, self._load)
        self._busy = asyncio.Semaphore(config.max_concurrency or 1)

    async def start(self) -> None:
        self._model.start()

    async def wait_loaded(self) -> None:
        await self._model.wait()

    async def aclose(self) -> None:
        self._model.cancel()

    def _load(self) -> Any:
        from sentence_transformers import CrossEncoder

        device = None if self.config.device == "auto" else self.config.device
        return CrossEncoder(self.config.path, device=device)

    async def check_ready(self) -> tuple[bool, str]:
        return self._model.readiness()

    async def rerank(self, request: RerankRequest) -> dict[str, Any]:
        model = self._model.model
        texts = request.texts()
        async with self._busy:
            scores, tokens = await asyncio.to_thread(self._score, model, request.query, texts)
        return rerank_response(request, self.name, scores, tokens)

    @staticmethod
    def _score(model: Any, query: str, texts: list[str]) -> tuple[list[float], int]:
        pairs = [(query, text) for text in texts]
        scores = model.predict(pairs, batch_size=BATCH_SIZE, show_progress_bar=False, convert_to_numpy=True)
        encoded = model.tokenizer([q for q, _ in pairs], [t for _, t in pairs], truncation=True,
                                  max_length=model.max_length)
        return [float(score) for score in scores.reshape(len(texts), -1)[:, -1]], sum(
            len(ids) for ids in encoded["input_ids"])
