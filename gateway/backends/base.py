"""The interface every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from gateway.core.config import ModelConfig
from gateway.core.errors import InvalidRequestError
from gateway.wire.anthropic import MessagesRequest
from gateway.wire.audio import SpeechRequest, Transcript, TranscriptionRequest, UpstreamAudioReply
from gateway.wire.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Endpoint
from gateway.wire.rerank import RerankRequest
from gateway.wire.responses import ResponsesRequest

Request = ChatCompletionRequest | CompletionRequest

# The replica that answered the current request, by name: set by a backend over several replicas
# (``backends/replicas.py``), read by the engine for ``x-gateway-endpoint``; None for a single-endpoint model.
ANSWERED_BY_ENDPOINT: ContextVar[str | None] = ContextVar("answered_by_endpoint", default=None)


@dataclass(frozen=True, slots=True)
class RelayedChunks:
    """Stream chunks that go to the client as they are: their SSE frames (``data: {...}`` and a blank line, model
    already renamed), all that one read of the upstream brought, so they leave in one write.

    ``usage`` is the final usage chunk's (``choices: []``) when it is among them, for the caller to count; its
    frame is left out when the client did not ask for usage (``stream_options.include_usage``).
    """

    frames: bytes
    usage: dict[str, Any] | None = None


class Backend(ABC):
    """Produces completions for one configured model.

    A backend answers in OpenAI's shapes, with ``model`` set to the public name::

        class EchoBackend(Backend):
            async def complete(self, endpoint, request):
                return response_dict(endpoint, new_completion_id(endpoint), self.name, [...], usage)

            async def stream(self, endpoint, request):
                yield chunk_dict(endpoint, cid, self.name, text="hi", role=True)

    Failures are raised as ``gateway.core.errors.GatewayError`` subclasses; ``stream`` raises before its first
    chunk when the request cannot start, so the caller can still fail over or answer with an HTTP error.
    Closing the ``stream`` iterator early (client gone) must stop the work it started.
    """

    def __init__(self, config: ModelConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Acquire resources (load weights, open connection pools)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release them."""

    async def abort(self) -> None:  # noqa: B027 - optional hook
        """End in-flight requests now with an error (the shutdown deadline passed)."""

    async def wait_loaded(self) -> None:  # noqa: B027 - optional hook
        """Return once what ``start`` began loading in the background is loaded (or failed to load)."""

    @abstractmethod
    async def check_ready(self) -> tuple[bool, str]:
        """Whether requests can be served now, and a short reason."""

    @abstractmethod
    async def complete(self, endpoint: Endpoint, request: Request) -> dict[str, Any]:
        """One whole response."""

    @abstractmethod
    def stream(self, endpoint: Endpoint, request: Request) -> AsyncIterator[dict[str, Any]]:
        """The response as chunks; a usage chunk (``choices: []``) last when the backend knows usage."""

    def relay(self, endpoint: Endpoint, request: Request) -> AsyncIterator[dict[str, Any] | RelayedChunks]:
        """The stream for a client that reads it unchanged (no stage in between): chunks, or ``RelayedChunks``
        from a backend that can forward its upstream's bytes without building each chunk again."""
        return self.stream(endpoint, request)

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        """The OpenAI embeddings response (``task: embed`` models)."""
        raise InvalidRequestError(f"model '{self.name}' does not serve embeddings", param="model")

    async def rerank(self, request: RerankRequest) -> dict[str, Any]:
        """The re-rank response of a ``task: rerank`` model (a cross-encoder, or an upstream's ``/v1/rerank``)."""
        raise InvalidRequestError(f"model '{self.name}' is not a re-ranker", param="model")

    async def transcribe(self, request: TranscriptionRequest, task: str) -> Transcript | UpstreamAudioReply:
        """Speech to text (``task``: transcribe or translate) for ``task: transcribe`` models."""
        raise InvalidRequestError(f"model '{self.name}' does not transcribe audio", param="model")

    async def speak(self, request: SpeechRequest) -> tuple[AsyncIterator[bytes], str]:
        """Text to speech for ``task: speech`` models: (the audio file's bytes, its media type)."""
        raise InvalidRequestError(f"model '{self.name}' does not synthesise speech", param="model")

    async def respond(self, request: ResponsesRequest) -> dict[str, Any]:
        """A Response object from an upstream's own ``/v1/responses`` (``responses_api: native``)."""
        raise InvalidRequestError(f"model '{self.name}' does not serve the Responses API natively", param="model")

    def stream_responses(self, request: ResponsesRequest) -> AsyncIterator[dict[str, Any]]:
        """The Responses stream events of an upstream's own ``/v1/responses``."""
        raise InvalidRequestError(f"model '{self.name}' does not serve the Responses API natively", param="model")

    async def messages(self, request: MessagesRequest) -> dict[str, Any]:
        """A Message from an upstream's own ``/v1/messages`` (``messages_api: native``)."""
        raise InvalidRequestError(f"model '{self.name}' does not serve the Messages API natively", param="model")

    def stream_messages(self, request: MessagesRequest) -> AsyncIterator[dict[str, Any]]:
        """Anthropic's stream events from an upstream's own ``/v1/messages``."""
        raise InvalidRequestError(f"model '{self.name}' does not serve the Messages API natively", param="model")


class NotAChatModel(Backend):
    """A model that serves other endpoints (embeddings, re-ranking, audio): chat and completions on it are a 400
    naming the endpoint to use (``serves``)."""

    serves: ClassVar[str] = ""

    async def complete(self, endpoint: Endpoint, request: Request) -> dict[str, Any]:
        raise self._wrong_endpoint()

    async def stream(self, endpoint: Endpoint, request: Request) -> AsyncIterator[dict[str, Any]]:
        raise self._wrong_endpoint()
        yield {}  # pragma: no cover - makes this an async generator

    def _wrong_endpoint(self) -> InvalidRequestError:
        return InvalidRequestError(f"model '{self.name}' is not a chat model: use {self.serves}", param="model")


class AdapterView(Backend):
    """A loaded local model served under another public name: with one of its LoRA adapters enabled (like
    vLLM's ``--lora-modules``), or, with ``adapter=None``, as its base weights (a second entry for the same weights,
    e.g. with other stages, shares the loaded model and its generation queue instead of loading a copy)."""

    def __init__(self, config: ModelConfig, base: Backend, adapter: str | None) -> None:
        super().__init__(config)
        self.base, self.adapter = base, adapter

    async def check_ready(self) -> tuple[bool, str]:
        return await self.base.check_ready()

    async def wait_loaded(self) -> None:
        await self.base.wait_loaded()

    async def complete(self, endpoint: Endpoint, request: Request) -> dict[str, Any]:
        response = await self.base.complete(endpoint, request, adapter=self.adapter)  # type: ignore[call-arg]
        return {**response, "model": self.name}

    async def stream(self, endpoint: Endpoint, request: Request) -> AsyncIterator[dict[str, Any]]:
        # Closed explicitly when this stream is: the base's generation stops at once, not at garbage collection.
        # The base is a local backend (the pool makes views of those only), whose stream takes the adapter and is
        # an async generator.
        base_chunks = cast(AsyncGenerator[dict[str, Any], None],
                           self.base.stream(endpoint, request, adapter=self.adapter))  # type: ignore[call-arg]
        async with aclosing(base_chunks) as chunks:
            async for chunk in chunks:
                yield {**chunk, "model": self.name}
