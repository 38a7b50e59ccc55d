"""The pipeline-stage interface: a stage wraps the model call of a chat request.

It sits at the bottom of the layers, beside the protocol types: the engine runs stages without importing
any (they are registered by name, through the ``llm_gateway.stages`` entry points, and built from the
config), and stage packages such as ``safety`` implement this interface.

A stage sees the request, can call the rest of the pipeline (``call_next``: the remaining stages and
finally the model that serves the request) and can reach any configured model by name through
``StageContext.models``; it never knows which backend serves a model::

    class ShoutStage(Stage):
        name = "shout"

        async def complete(self, ctx, request, call_next):
            response = await call_next(request)
            ctx.report[self.name] = "shouted"
            response["choices"][0]["message"]["content"] = message_text_of(response).upper()
            return response

What a stage writes into ``ctx.report`` before its first chunk becomes response headers
(``x-gateway-stages``, ``x-gateway-<stage>``) and a field of the response body.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from gateway.wire.openai import ChatCompletionRequest, response_to_chunks

if TYPE_CHECKING:
    from gateway.core.config import GatewayConfig, ModelConfig

CompleteNext = Callable[[ChatCompletionRequest], Awaitable[dict[str, Any]]]
StreamNext = Callable[[ChatCompletionRequest], AsyncIterator[dict[str, Any]]]


class ModelCaller(Protocol):
    """Calls a configured model by its public name, without running any stage."""

    async def complete(self, model: str, request: ChatCompletionRequest) -> dict[str, Any]: ...

    def stream(self, model: str, request: ChatCompletionRequest) -> AsyncIterator[dict[str, Any]]: ...


@dataclass
class StageContext:
    model: str  # the model serving this request
    models: ModelCaller
    report: dict[str, Any] = field(default_factory=dict)  # stage name -> outcome, shown to the client
    applied: list[str] = field(default_factory=list)  # stages that ran, in order
    count_outcome: Callable[[str, str], None] = lambda stage, outcome: None  # metrics hook


class Stage(ABC):
    name: ClassVar[str]

    def applies(self, request: ChatCompletionRequest) -> bool:
        """Whether this request goes through the stage at all."""
        return True

    def referenced_models(self) -> list[str]:
        """Configured models the stage calls besides the served one (checked at start)."""
        return []

    @abstractmethod
    async def complete(self, ctx: StageContext, request: ChatCompletionRequest,
                       call_next: CompleteNext) -> dict[str, Any]:
        """The whole response."""

    async def stream(self, ctx: StageContext, request: ChatCompletionRequest, call_next: CompleteNext,
                     stream_next: StreamNext) -> AsyncIterator[dict[str, Any]]:
        """The response as chunks; by default the whole answer is produced first, then streamed."""
        for chunk in response_to_chunks(await self.complete(ctx, request, call_next)):
            yield chunk


def add_usage(*responses: dict[str, Any]) -> dict[str, int]:
    """Summed usage of several model calls (a stage's client pays for all of them)."""
    prompt = sum(int((r.get("usage") or {}).get("prompt_tokens") or 0) for r in responses)
    completion = sum(int((r.get("usage") or {}).get("completion_tokens") or 0) for r in responses)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def non_streaming(request: ChatCompletionRequest) -> ChatCompletionRequest:
    """The same request asking for a whole answer (stages that hold an answer back call models this way)."""
    if not request.stream:
        return request
    return ChatCompletionRequest.model_validate(
        {**request.model_dump(exclude_unset=True), "stream": False, "stream_options": None})


StageBuilder = Callable[["ModelConfig", "GatewayConfig"], Stage]
ENTRY_POINT_GROUP = "llm_gateway.stages"


def registered_stages() -> dict[str, StageBuilder]:
    """Every stage installed: name -> builder (``[project.entry-points."llm_gateway.stages"]``)."""
    from importlib.metadata import entry_points

    return {entry.name: entry.load() for entry in entry_points(group=ENTRY_POINT_GROUP)}
