"""ECSO (Eyes Closed, Safety On; Gou et al., 2024, arXiv 2403.09572), training-free, for image queries.

1. the normal answer, with the image (the rest of the pipeline: the model serving the request);
2. the model judges its own answer, with the image (``prompts.ecso_harm_check``);
   safe -> that answer is returned as it is (two model calls);
3. unsafe -> a query-aware caption of the image (``prompts.ecso_caption``), with the image;
4. the final answer from the caption, *without* the image (``prompts.ecso_safe_answer``) (four calls).

Steps 2-4 run on the same model by default (as in the paper) or on ``ecso_model``. A multi-turn request's
query is its last user turn's text; earlier turns are kept for the answers (without images in step 4).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from gateway.core.config import GatewayConfig, ModelConfig
from gateway.wire.openai import (
    ChatCompletionRequest,
    ChatMessage,
    ContentPart,
    is_usage_chunk,
    judged_text_of,
    message_text_of,
    response_to_chunks,
)
from gateway.wire.stages import CompleteNext, Stage, StageContext, StreamNext, add_usage, non_streaming
from safety import prompts

SAFE, REWRITTEN = "safe", "rewritten"


class ECSOStage(Stage):
    name = "ecso"

    def __init__(self, step_model: str | None = None, *, check_max_tokens: int = 8,
                 caption_max_tokens: int = 512) -> None:
        self.step_model = step_model
        self.check_max_tokens = check_max_tokens
        self.caption_max_tokens = caption_max_tokens

    def applies(self, request: ChatCompletionRequest) -> bool:
        return request.has_images

    def referenced_models(self) -> list[str]:
        return [self.step_model] if self.step_model else []

    async def complete(self, ctx: StageContext, request: ChatCompletionRequest,
                       call_next: CompleteNext) -> dict[str, Any]:
        answer = await call_next(non_streaming(request))
        verdict, calls = await self._check(ctx, request, answer)
        if verdict == SAFE:
            return self._finish(ctx, answer, [answer, *calls], SAFE)
        caption = await self._caption(ctx, request)
        final = await ctx.models.complete(self._model(ctx), _answer_without_image(request, message_text_of(caption)))
        return self._finish(ctx, final, [answer, *calls, caption, final], REWRITTEN)

    async def stream(self, ctx: StageContext, request: ChatCompletionRequest, call_next: CompleteNext,
                     stream_next: StreamNext) -> AsyncIterator[dict[str, Any]]:
        # The answer is held until the check has passed: the time to first token is that of the whole
        # answer plus the check.
        answer = await call_next(non_streaming(request))
        verdict, calls = await self._check(ctx, request, answer)
        if verdict == SAFE:
            for chunk in response_to_chunks(self._finish(ctx, answer, [answer, *calls], SAFE)):
                yield chunk
            return
        caption = await self._caption(ctx, request)
        self._record(ctx, REWRITTEN)
        earlier = add_usage(answer, *calls, caption)
        safe_request = _answer_without_image(request, message_text_of(caption))
        async with aclosing(ctx.models.stream(self._model(ctx), safe_request)) as chunks:
            async for chunk in chunks:
                if is_usage_chunk(chunk):  # the final usage chunk: all steps together
                    chunk = {**chunk, "usage": add_usage({"usage": earlier}, chunk)}
                yield {**chunk, self.name: REWRITTEN}

    def _model(self, ctx: StageContext) -> str:
        return self.step_model or ctx.model

    async def _check(self, ctx: StageContext, request: ChatCompletionRequest,
                     answer: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        query = request.last_user_text()
        check = await ctx.models.complete(self._model(ctx), _with_image(
            request, prompts.ecso_harm_check(query, judged_text_of(answer)), self.check_max_tokens))
        return (REWRITTEN if prompts.is_unsafe_verdict(message_text_of(check)) else SAFE), [check]

    async def _caption(self, ctx: StageContext, request: ChatCompletionRequest) -> dict[str, Any]:
        return await ctx.models.complete(self._model(ctx), _with_image(
            request, prompts.ecso_caption(request.last_user_text()), self.caption_max_tokens))

    def _record(self, ctx: StageContext, verdict: str) -> None:
        ctx.report[self.name] = verdict
        ctx.count_outcome(self.name, verdict)

    def _finish(self, ctx: StageContext, response: dict[str, Any], calls: list[dict[str, Any]],
                verdict: str) -> dict[str, Any]:
        self._record(ctx, verdict)
        return {**response, "usage": add_usage(*calls), self.name: verdict}


def _with_image(request: ChatCompletionRequest, prompt: str, max_tokens: int) -> ChatCompletionRequest:
    """A single-turn, greedy request: the last user turn's images, then ``prompt``."""
    images = next((m for m in reversed(request.messages) if m.image_urls), None)
    parts = [part.model_dump(exclude_none=True) for part in (images.content if images else [])
             if isinstance(part, ContentPart) and part.type == "image_url"]
    return ChatCompletionRequest.model_validate({
        "model": request.model, "temperature": 0, "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": prompt}]}]})


def _answer_without_image(request: ChatCompletionRequest, caption: str) -> ChatCompletionRequest:
    """The client's request with every image removed and its last user turn replaced by the hint prompt."""
    prompt = prompts.ecso_safe_answer(request.last_user_text(), caption)
    last_user = max(i for i, m in enumerate(request.messages) if m.role == "user")
    messages = [_text_only(m) for m in request.messages[:last_user]] + [{"role": "user", "content": prompt}]
    messages += [_text_only(m) for m in request.messages[last_user + 1:]]
    body = request.model_dump(exclude_unset=True)
    return ChatCompletionRequest.model_validate({**body, "messages": messages})


def _text_only(message: ChatMessage) -> dict[str, Any]:
    data = message.model_dump(exclude_unset=True)
    if isinstance(message.content, list):
        data["content"] = message.text
    return data


def build_stage(model: ModelConfig, config: GatewayConfig) -> ECSOStage:
    """Entry point ``llm_gateway.stages: ecso``."""
    return ECSOStage(model.ecso_model)
