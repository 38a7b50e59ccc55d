"""AlignCoT (arXiv 2405.00557): safe answers through Question Analysis -> Answer Guidance -> Safe Answer, then a
Safety Check, with step skipping.

- Step skipping: the model's direct answer is checked first; when it passes, it is returned at once (two
  model calls) and the chain never runs.
- Otherwise each step runs on its model: the served model for every step, or one model per step (``experts:
  {analysis: m1, guidance: m2, answer: m3}``: MoTE experts, e.g. vLLM serving each step's LoRA adapter under its
  own name). The final answer is checked again; if it still fails, or is empty, a refusal is returned.

How a step is asked (``format``):
- ``prompted`` (default): an instruction per step (``safety.prompts``), for any chat model.
- ``trained``: the sequence ``llm-gateway train mote`` trained on — the conversation, then the assistant's
  ``<|analysis|>…<|guidance|>…<|answer|>…`` (``token_rules: paper``: each step also closed, ``<|/analysis|>``)
  — sent as an assistant prefix the model continues (vLLM's ``continue_final_message``, with the markers kept in
  the text). On a local model served with ``mote:`` this is exact: the step experts switch at the markers as in
  training. Per-step adapters (``experts``, e.g. on vLLM) are approximate: each call runs its step's adapter
  over the whole prefix, where training ran the question on the shared expert and earlier steps on their own.
  Step skipping asks for the direct answer as trained (``<|answer|>`` at once); under the paper's rules a MoTE
  model (no ``experts``) writes its chain in one generation and decides itself whether to skip to the answer.

The client sees only the final answer; ``extra_body={"aligncot": {"return_chain": true}}`` adds the chain to
the response (``aligncot_chain``), and debug logs carry it too.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.core.config import GatewayConfig, ModelConfig
from gateway.wire.openai import ChatCompletionRequest, judged_text_of, message_text_of
from gateway.wire.stages import CompleteNext, Stage, StageContext, add_usage, non_streaming
from safety import prompts

logger = logging.getLogger(__name__)
SKIPPED, CHAIN, REFUSED = "skipped", "chain", "refused"


class AlignCoTSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    experts: dict[str, str] | None = Field(default=None, description="step -> model (MoTE experts)")
    format: Literal["prompted", "trained"] = Field(default="prompted", description="how each step is asked")
    token_rules: Literal["frozen-start", "paper"] = Field(
        default="frozen-start", description="trained format: the rules the MoTE model was trained with")
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
        if self.settings.format == "trained":
            return await self._complete_trained(ctx, request)
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
        return self._finish(ctx, request, _refusal(final), calls, chain, REFUSED)

    async def _complete_trained(self, ctx: StageContext, request: ChatCompletionRequest) -> dict[str, Any]:
        query = request.last_user_text()
        calls: list[dict[str, Any]] = []
        chain: list[dict[str, str]] = []
        written: list[tuple[str, str]] = []
        if self.settings.token_rules == "paper" and not self.settings.experts:
            # One generation: the model opens and closes its own steps (and may answer at once when skipping).
            first = None if self.settings.skip_steps else "analysis"
            budget = 2 * self.settings.step_max_tokens + (request.completion_token_limit or 512)
            response = await ctx.models.complete(ctx.model, self._continuation(
                request, [], first, budget, [prompts.ALIGNCOT_END_MARKERS["answer"]], answer=True))
            calls.append(response)
            prefix = prompts.aligncot_trained_prefix([], first, end_markers=True)
            written = prompts.aligncot_written_steps(prefix + message_text_of(response))
            chain.extend({"step": step, "text": text} for step, text in written if step != "answer")
            if written and [step for step, _ in written] == ["answer"]:  # the model skipped to the answer
                chain.append({"step": "direct", "text": written[0][1]})
                if await self._passes_check(ctx, query, written[0][1], calls, chain):
                    return self._finish(ctx, request, _with_answer(response, written[0][1]), calls, chain, SKIPPED)
                written = []
            elif written and written[-1][0] == "answer":
                chain.append({"step": "answer", "text": written[-1][1]})
        elif self.settings.skip_steps:
            response, direct = await self._trained_step(ctx, request, [], "answer", calls)
            chain.append({"step": "direct", "text": direct})
            if await self._passes_check(ctx, query, direct, calls, chain):
                return self._finish(ctx, request, _with_answer(response, direct), calls, chain, SKIPPED)
        answer_call = calls[-1] if written and written[-1][0] == "answer" else None
        for step in prompts.ALIGNCOT_STEPS[len(written):]:
            answer_call, text = await self._trained_step(ctx, request, written, step, calls)
            written.append((step, text))
            chain.append({"step": step, "text": text})
        assert answer_call is not None
        answer = written[-1][1]
        if await self._passes_check(ctx, query, answer, calls, chain):
            return self._finish(ctx, request, _with_answer(answer_call, answer), calls, chain, CHAIN)
        return self._finish(ctx, request, _refusal(answer_call), calls, chain, REFUSED)

    async def _trained_step(self, ctx: StageContext, request: ChatCompletionRequest, written: list[tuple[str, str]],
                            step: str, calls: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
        """One step in the trained format, on its expert (or the served MoTE model): the response and the text
        the step wrote."""
        answer = step == "answer"
        stop = [*prompts.ALIGNCOT_START_MARKERS.values()]
        if self.settings.token_rules == "paper":
            stop += prompts.ALIGNCOT_END_MARKERS.values()
        response = await ctx.models.complete(self._model(ctx, step), self._continuation(
            request, written, step, None if answer else self.settings.step_max_tokens, stop, answer))
        calls.append(response)
        return response, prompts.without_step_markers(message_text_of(response))

    def _continuation(self, request: ChatCompletionRequest, written: list[tuple[str, str]], step: str | None,
                      max_tokens: int | None, stop: list[str], answer: bool) -> ChatCompletionRequest:
        """The client's conversation with the trained assistant prefix to continue, markers kept in the text.
        The answer keeps the client's sampling and length; analysis and guidance are greedy and short."""
        body = request.model_dump(exclude_unset=True, exclude={"aligncot"})
        prefix = prompts.aligncot_trained_prefix(written, step, end_markers=self.settings.token_rules == "paper")
        if prefix:
            body["messages"] = [*body["messages"], {"role": "assistant", "content": prefix}]
        if not answer:
            body["temperature"] = 0
            for field in ("top_p", "seed"):
                body.pop(field, None)
        if max_tokens is not None:
            body.pop("max_completion_tokens", None)
            body["max_tokens"] = max_tokens
        client_stop = request.stop_sequences if answer else []
        body.update(stream=False, stream_options=None, stop=[*client_stop, *stop], skip_special_tokens=False,
                    continue_final_message=bool(prefix), add_generation_prompt=not prefix)
        return ChatCompletionRequest.model_validate(body)

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
        """Whether ``answer`` may be returned. An empty answer never passes (a step adapter that closes its step
        at once writes nothing, and any check passes nothing): a direct one goes on to the chain, a final one is
        refused, so no client gets an empty message."""
        if not answer.strip():
            chain.append({"step": "safety_check", "text": "no answer: not returned"})
            return False
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


def _with_answer(response: dict[str, Any], text: str) -> dict[str, Any]:
    """``response`` with its first choice's message replaced by ``text``."""
    choice = response["choices"][0]
    return {**response, "choices": [{**choice, "message": {"role": "assistant", "content": text}}]}


def _refusal(response: dict[str, Any]) -> dict[str, Any]:
    refused = _with_answer(response, prompts.ALIGNCOT_REFUSAL)
    refused["choices"][0]["finish_reason"] = "stop"
    return refused


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
