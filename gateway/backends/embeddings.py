"""Local embedding models (``task: embed``, ``backend: local``): the router's encoders served on
``/v1/embeddings`` — the packaged MiniLM, multilingual e5, the static and ONNX encoders, any
sentence-transformers directory. Texts from concurrent requests are encoded together on a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.backends.base import NotAChatModel
from gateway.backends.in_process import LoadedModel
from gateway.core.batching import MicroBatcher
from gateway.core.config import ModelConfig
from gateway.core.errors import InvalidRequestError
from gateway.wire.openai import EmbeddingRequest, embedding_response
from routers.encoders import TextEncoder, build_encoder

DEFAULT_EMBEDDING_ENCODER = "minilm"
BATCH_WINDOW_S = 0.002
MAX_BATCH = 64


class LocalEmbeddingBackend(NotAChatModel):
    """Embeddings from a local encoder; chat and completions on it are a 400 naming the right endpoint."""

    serves = "POST /v1/embeddings"

    def __init__(self, config: ModelConfig, cache_dir: Path) -> None:
        super().__init__(config)
        self.spec = config.encoder or DEFAULT_EMBEDDING_ENCODER
        self._cache_dir = cache_dir
        self._loaded: LoadedModel[tuple[TextEncoder, MicroBatcher]] = LoadedModel("embedding model", config.name,
                                                                                 self._load)

    def _load(self) -> tuple[TextEncoder, MicroBatcher]:
        encoder = build_encoder(self.spec)
        return encoder, MicroBatcher(encoder.encode, BATCH_WINDOW_S, MAX_BATCH)

    async def start(self) -> None:
        self._loaded.start()

    async def wait_loaded(self) -> None:
        await self._loaded.wait()

    async def aclose(self) -> None:
        self._loaded.cancel()
        if self._loaded.loaded is not None:
            self._loaded.loaded[1].close()

    async def check_ready(self) -> tuple[bool, str]:
        return self._loaded.readiness()

    @property
    def _encoder(self) -> TextEncoder | None:
        return self._loaded.loaded[0] if self._loaded.loaded is not None else None

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        encoder, batcher = self._loaded.model
        inputs = request.texts_or_token_ids()
        texts = self._texts(inputs)
        dimension = encoder.dim
        if request.dimensions is not None and request.dimensions != dimension:
            raise InvalidRequestError(f"model '{self.name}' makes {dimension}-dimensional embeddings and cannot "
                                      f"shorten them to {request.dimensions}", param="dimensions")
        vectors, prompt_tokens = await asyncio.gather(
            asyncio.gather(*(batcher.encode(text) for text in texts)), self._prompt_tokens(inputs, texts))
        return embedding_response(self.name, vectors, request.encoding_format, prompt_tokens)

    def _texts(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> list[str]:
        if all(isinstance(item, str) for item in inputs):
            return list(inputs)  # type: ignore[arg-type]
        tokenizer = self._encoder.tokenizer if self._encoder is not None else None
        if tokenizer is None:
            raise InvalidRequestError(f"model '{self.name}' takes text input only (encoder '{self.spec}' has no "
                                      "tokenizer to read token ids with)", param="input")
        vocabulary = len(tokenizer)
        bad = next((t for ids in inputs for t in ids if not isinstance(t, int) or not 0 <= t < vocabulary), None)
        if bad is not None:
            raise InvalidRequestError(f"token id {bad} is outside the vocabulary of model '{self.name}' (0 to "
                                      f"{vocabulary - 1})", param="input", code="invalid_token_id")
        return [tokenizer.decode(list(ids), skip_special_tokens=True) for ids in inputs]

    async def _prompt_tokens(self, inputs: Sequence[str] | Sequence[Sequence[int]], texts: list[str]) -> int:
        """Usage: token ids as given; texts counted by the encoder's tokenizer on a worker thread (a long
        input list must not hold the event loop), or by words for an encoder without one."""
        if inputs and not isinstance(inputs[0], str):
            return sum(len(ids) for ids in inputs)
        tokenizer = self._encoder.tokenizer if self._encoder is not None else None
        if tokenizer is None:
            return sum(len(text.split()) for text in texts)
        encoded = await asyncio.to_thread(tokenizer, texts, add_special_tokens=True)
        return sum(len(ids) for ids in encoded["input_ids"])
