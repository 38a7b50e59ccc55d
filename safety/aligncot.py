"""AlignCoT (arXiv 2405.00557): safe answers through Question Analysis -> Answer Guidance -> Safe Answer, then a
Safety Check, with step skipping.

- Step skipping: the model's direct answer is checked first; when it passes, it is returned at once (two
  model calls) and the chain never runs.
- Otherwise each step runs on its model: the served model prompted for every step (``mode: prompted``), or
  one model per step (``experts: {analysis: m1, guidance: m2, answer: m3}``: MoTE experts, e.g. vLLM serving
  each step's LoRA adapter under its own name). The final answer is checked again; if it still fails, a
  refusal is returned.

The client sees only the final answer; ``extra_body={"aligncot": {"return_chain": true}}`` adds the chain to
the response (``aligncot_chain``), and debug logs carry it too.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.config import GatewayConfig, ModelConfig
from gateway.protocol import ChatCompletionRequest, judged_text_of, message_text_of
from gateway.stages import CompleteNext, Stage, StageContext, add_usage, non_streaming
from safety import prompts

logger = logging.getLogger(__name__)
SKIPPED, CHAIN, REFUSED = "skipped", "chain", "refused"


class AlignCoTSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    experts: dict[str, str] | None = Field(default=None, description="step -> model (MoTE experts)")
    check_model: str | None = Field(default=None, description="model for the Safety Check (default: served)")
    step_max_tokens: int = Field(default=256, ge=1, description="length limit of the analysis and guidance")
    skip_steps: bool = Field(default=True, description="return a direct answer that passes the check")

    def model_post_init(self, context: Any) -> None:
        if self.experts is not None:
            missing = [step for step in prompts.ALIGNCOT_STEPS if step not in self.experts]
            unknown = sorted(set(self.experts) - set(prompts.ALIGNCOT_STEPS))
            if missing or unknown:
                raise ValueError(f"aligncot.experts needs exactly the steps {', '.join(prompts.ALIGNCOT_STEPS)} "
                                 f"(missing: {missing or 'none'}, unknown: {unknown or 'none'})")


class AlignCoTStage(Stage):
    name = "aligncot"

    def __init__(self, settings: AlignCoTSettings) -> None:
        self.settings = settings

    @classmethod
    def from_config(cls, data: dict[str, Any] | None) -> AlignCoTStage:
        try:
            return cls(AlignCoTSettings.model_validate(data or {}))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"aligncot{'.' + where if where else ''}: {first['msg']}") from None

    def referenced_models(self) -> list[str]:
        return [*(self.settings.experts or {}).values(), *([self.settings.check_model] if self.settings.check_model
                                                          else [])]

    async def complete(self, ctx: StageContext, request: ChatCompletionRequest,
                       call_next: CompleteNext) -> dict[str, Any]:
        query = request.last_user_text()
        calls: list[dict[str, Any]] = []
        chain: list[dict[str, str]] = []
        if self.settings.skip_steps:
            direct = await call_next(non_streaming(request))
            calls.append(direct)
            chain.append({"step": "direct", "text": message_text_of(direct)})
            if await self._passes_check(ctx, query, judged_text_of(direct), calls, chain):
                return self._finish(ctx, request, direct, calls, chain, SKIPPED)
        analysis = await self._step(ctx, "analysis", _single_turn(request, prompts.aligncot_analysis(query),
                                                                  self.settings.step_max_tokens), calls, chain)
        guidance = await self._step(ctx, "guidance", _single_turn(
            request, prompts.aligncot_guidance(query, analysis), self.settings.step_max_tokens), calls, chain)
        final_request = _replace_last_user(request, prompts.aligncot_answer(query, analysis, guidance))
        answer_text = await self._step(ctx, "answer", final_request, calls, chain)
        final = calls[-1]
        if await self._passes_check(ctx, query, judged_text_of(final) or answer_text, calls, chain):
            return self._finish(ctx, request, final, calls, chain, CHAIN)
        refusal = {**final, "choices": [{**final["choices"][0], "message": {"role": "assistant",
                                                                             "content": prompts.ALIGNCOT_REFUSAL},
                                         "finish_reason": "stop"}]}
        return self._finish(ctx, request, refusal, calls, chain, REFUSED)

    def _model(self, ctx: StageContext, step: str) -> str:
        return (self.settings.experts or {}).get(step) or ctx.model

    async def _step(self, ctx: StageContext, step: str, request: ChatCompletionRequest, calls: list[dict[str, Any]],
                    chain: list[dict[str, str]]) -> str:
        response = await ctx.models.complete(self._model(ctx, step), request)
        calls.append(response)
        text = message_text_of(response).strip()
        chain.append({"step": step, "text": text})
        return text

    async def _passes_check(self, ctx: StageContext, query: str, answer: str, calls: list[dict[str, Any]],
                            chain: list[dict[str, str]]) -> bool:
        model = self.settings.check_model or ctx.model
        check = await ctx.models.complete(model, ChatCompletionRequest.model_validate({
            "model": model, "temperature": 0, "max_tokens": 8,
            "messages": [{"role": "user", "content": prompts.aligncot_safety_check(query, answer)}]}))
        calls.append(check)
        verdict = message_text_of(check)
        chain.append({"step": "safety_check", "text": verdict.strip()})
        return not prompts.is_unsafe_check(verdict)

    def _finish(self, ctx: StageContext, request: ChatCompletionRequest, response: dict[str, Any],
                calls: list[dict[str, Any]], chain: list[dict[str, str]], outcome: str) -> dict[str, Any]:
        ctx.report[self.name] = outcome
        ctx.count_outcome(self.name, outcome)
        logger.debug("aligncot chain", extra={"fields": {"outcome": outcome, "chain": chain}})
        result = {**response, "usage": add_usage(*calls), self.name: outcome}
        if request.aligncot is not None and request.aligncot.return_chain:
            result["aligncot_chain"] = chain
        return result


def _single_turn(request: ChatCompletionRequest, prompt: str, max_tokens: int) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": request.model, "temperature": 0, "max_tokens": max_tokens,
                                                 "messages": [{"role": "user", "content": prompt}]})


def _replace_last_user(request: ChatCompletionRequest, prompt: str) -> ChatCompletionRequest:
    """The client's request (sampling, earlier turns) with its last user turn replaced by ``prompt``."""
    body = request.model_dump(exclude_unset=True, exclude={"aligncot"})
    body.update(stream=False, stream_options=None)
    last_user = max(i for i, m in enumerate(body["messages"]) if m["role"] == "user")
    body["messages"][last_user] = {"role": "user", "content": prompt}
    return ChatCompletionRequest.model_validate(body)


def build_stage(model: ModelConfig, config: GatewayConfig) -> AlignCoTStage:
    """Entry point ``llm_gateway.stages: aligncot``."""
    return AlignCoTStage.from_config(model.aligncot)
