"""Backend for an in-process transformers causal LM (CPU here, GPU where present)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import torch
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from gateway.backends.base import Backend, Request
from gateway.backends.in_process import LoadedModel
from gateway.backends.transformers.embedded import (
    GGUF_FILE,
    EmbeddedModelMissing,
    embedded_model_dir,
    gguf_package_dir,
)
from gateway.backends.transformers.generation import LocalGenerator, TextGenerator
from gateway.backends.transformers.mote import BASE, load_mote
from gateway.backends.transformers.sampling import Generation, SamplingParams, TokenLogprob
from gateway.backends.transformers.structured import OutputConstraint, output_constraint, tool_call_of, tools_prompt
from gateway.core.config import ModelConfig
from gateway.core.errors import InvalidRequestError
from gateway.core.images import ImagePolicy, load_image
from gateway.wire.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    Endpoint,
    chat_logprobs,
    chunk_dict,
    completion_logprobs,
    new_completion_id,
    response_choice,
    response_dict,
    usage_dict,
)

logger = logging.getLogger(__name__)


@dataclass
class PromptInputs:
    """One prompt's token ids, plus any other model inputs (e.g. ``pixel_values``)."""

    ids: list[int]
    extra: dict[str, Any] = field(default_factory=dict)


# transformers' loading is not thread-safe (it builds models on the meta device through process-wide hooks):
# two local models loading at once in worker threads both fail with "Cannot copy out of meta tensor".
_MODEL_LOADING = threading.Lock()


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# Generations the onnx engine runs at once (batched) unless max_concurrency says otherwise: the pass of 8 rows costs
# ~2.5x the pass of one on two cores, so 8 streams get ~3x the tokens of one.
ONNX_CONCURRENCY = 8


def local_engine(config: ModelConfig) -> str:
    """``onnx`` or ``transformers``: the config's ``engine``, or for ``auto`` onnx where it serves the model as
    exactly as transformers would (the embedded model: its own GGUF blocks) on the CPU, without adapters, MoTE or
    images."""
    if config.engine != "auto":
        return config.engine
    plain = not (config.adapters or config.mote or config.vision)
    return "onnx" if config.is_embedded and plain and resolve_device(config.device) == "cpu" else "transformers"


def load_causal_lm(path: Path, device: str, vision: bool = False) -> tuple[Any, Any, Any]:
    """(model, tokenizer, processor or None) from a transformers directory, ready for inference on
    ``device``; ``vision`` loads an image-text-to-text model with its processor."""
    device = resolve_device(device)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    # The ignores: transformers types PreTrainedModel.to as functools.wraps(nn.Module.to), the unbound signature.
    if vision:
        processor = AutoProcessor.from_pretrained(path)
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype).to(device).eval()  # type: ignore[arg-type]
        return model, processor.tokenizer, processor
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()  # type: ignore[arg-type]
    return model, tokenizer, None


# OpenAI request fields the local backend does not implement, with the values that ask for nothing (those pass).
# Any other value is a 400 naming the field: a client must be able to tell that what it asked for did not happen.
_NOT_IMPLEMENTED: dict[str, tuple[Any, ...]] = {
    "best_of": (None, 1), "suffix": (None, ""), "functions": (None, []), "function_call": (None, "none"),
    "modalities": (None, ["text"]), "audio": (None,),
    "prediction": (None,), "web_search_options": (None,), "store": (None, False),
}


def refuse_unsupported_fields(model: str, request: Request) -> None:
    """400 for a field the local backend would otherwise ignore (``logprobs``, ``tools``, ``response_format``...);
    fields that only describe the caller (``user``, ``metadata``) and unknown vendor fields pass."""
    for name, value in (request.model_extra or {}).items():
        neutral = _NOT_IMPLEMENTED.get(name)
        if neutral is not None and not any(_same(value, allowed) for allowed in neutral):
            raise InvalidRequestError(
                f"'{name}' is not supported by model '{model}' (a local model served by the gateway); leave it "
                "out, or send the request to a model served by vLLM", param=name, code="unsupported_parameter")


MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class OutputPlan:
    """What a request asks of every choice beyond text: a grammar (structured output, a forced tool call) and
    log-probabilities (``top``: how many alternatives; None: none; ``prompt``: an echoed prompt's too)."""

    constraint: OutputConstraint | None = None
    logprobs: int | None = None
    prompt_logprobs: bool = False


def output_plan(request: Request) -> OutputPlan:
    """The request's structured output and logprobs fields, checked (a 400 names the field)."""
    extra = request.model_extra or {}
    if isinstance(request, ChatCompletionRequest):
        constraint = output_constraint(extra, request.model)
        top = extra.get("top_logprobs")
        if top is not None and (isinstance(top, bool) or not isinstance(top, int)
                                or not 0 <= top <= MAX_TOP_LOGPROBS):
            raise InvalidRequestError(f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}",
                                      param="top_logprobs")
        wanted = extra.get("logprobs")
        if wanted not in (None, True, False):
            raise InvalidRequestError("logprobs must be a boolean", param="logprobs")
        if top and not wanted:
            raise InvalidRequestError("top_logprobs needs logprobs: true", param="top_logprobs")
        return OutputPlan(constraint, (top or 0) if wanted else None)
    for name in ("tools", "tool_choice"):
        if extra.get(name) is not None:
            raise InvalidRequestError(f"'{name}' is a chat completions field", param=name)
    constraint = output_constraint(extra, request.model)
    wanted = extra.get("logprobs")
    if wanted is not None and (isinstance(wanted, bool) or not isinstance(wanted, int)
                               or not 0 <= wanted <= MAX_TOP_LOGPROBS):
        raise InvalidRequestError(f"logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}", param="logprobs")
    return OutputPlan(constraint, wanted, prompt_logprobs=wanted is not None and request.echo)


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidRequestError(f"{name} must be a number from {low:g} to {high:g}", param=name)
    return float(value)


def _flag(extra: dict[str, Any], name: str, default: bool) -> bool:
    value = extra.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be a boolean", param=name)
    return value


def _template_flags(request: ChatCompletionRequest) -> tuple[bool, bool]:
    """vLLM's chat template fields, checked: (``continue_final_message``, ``add_generation_prompt``). Continuing
    the final message renders it without its end, so the model writes on from the client's text (an assistant
    prefix, e.g. a MoTE model's step markers)."""
    extra = request.model_extra or {}
    continue_final = _flag(extra, "continue_final_message", False)
    generation_prompt = _flag(extra, "add_generation_prompt", not continue_final)
    if continue_final and generation_prompt:
        raise InvalidRequestError("continue_final_message and add_generation_prompt cannot both be true",
                                  param="continue_final_message")
    if continue_final and request.messages[-1].role != "assistant":
        raise InvalidRequestError("continue_final_message needs the last message to be the assistant's",
                                  param="continue_final_message")
    return continue_final, generation_prompt


def _add(total: int | None, more: int | None) -> int | None:
    """Sum of counts that may be unknown (None: none known yet)."""
    return total if more is None else (total or 0) + more


def _same(value: Any, allowed: Any) -> bool:
    """Equal, with booleans kept apart from numbers (``presence_penalty: 0.0`` is neutral, ``top_k: False`` not)."""
    return value == allowed and isinstance(value, bool) == isinstance(allowed, bool)


class LocalBackend(Backend):
    """Serves chat and legacy completions from a model loaded in this process.

    Loading starts in the background at start-up (``/ready`` says when it is done); requests that arrive
    earlier get 503.
    """

    def __init__(self, config: ModelConfig, cache_dir: Path, image_policy: ImagePolicy | None = None) -> None:
        super().__init__(config)
        self._cache_dir = cache_dir
        self._image_policy = image_policy or ImagePolicy()
        self.engine = local_engine(config)
        self._loaded: LoadedModel[tuple[TextGenerator, Any]] = LoadedModel("local model", config.name, self._load)

    async def start(self) -> None:
        self._loaded.start()

    def _load(self) -> tuple[TextGenerator, Any]:
        if self.engine == "onnx":
            return self._load_onnx(), None
        model, tokenizer, processor = self._load_blocking()
        generator = LocalGenerator(model, tokenizer, name=self.name, max_concurrency=self.config.max_concurrency or 1,
                                   max_queue=self.config.max_queue, exclusive=self.config.mote is not None)
        logger.info("local model '%s' loaded on %s (transformers engine)", self.name, model.device)
        return generator, processor

    def _load_onnx(self) -> TextGenerator:
        from transformers import GenerationConfig

        from gateway.backends.transformers.batched import BatchedGenerator
        from gateway.backends.transformers.onnx_model import OnnxModelSpec, onnx_model_dir

        with _MODEL_LOADING:
            if self.config.path:
                hf_dir, gguf = Path(self.config.path), None
            else:
                hf_dir = embedded_model_dir(self._cache_dir)
                try:
                    gguf = gguf_package_dir() / GGUF_FILE
                except EmbeddedModelMissing:  # a model built earlier (e.g. in the image) needs no GGUF package
                    gguf = Path(GGUF_FILE)
            spec = OnnxModelSpec.read(onnx_model_dir(hf_dir, self._cache_dir, gguf))
            tokenizer = AutoTokenizer.from_pretrained(hf_dir)
            generator = BatchedGenerator(spec, tokenizer, GenerationConfig.from_pretrained(hf_dir), name=self.name,
                                         max_concurrency=self.config.max_concurrency or ONNX_CONCURRENCY,
                                         max_queue=self.config.max_queue)
        logger.info("local model '%s' loaded from %s (onnx engine)", self.name, spec.directory)
        return generator

    def _load_blocking(self) -> tuple[Any, Any, Any]:
        with _MODEL_LOADING:
            mote = Path(self.config.mote) if self.config.mote else None
            path = (Path(self.config.path) if self.config.path else mote / BASE if mote
                    else embedded_model_dir(self._cache_dir))
            model, tokenizer, processor = load_causal_lm(path, self.config.device, vision=self.config.vision)
            if mote is not None:
                manifest = load_mote(model, tokenizer, mote)
                logger.info("local model '%s': MoTE experts for %s (%s token rules)", self.name,
                            ", ".join(manifest.steps), manifest.token_rules)
            if self.config.adapters:
                from peft import PeftModel

                (first, first_dir), *others = self.config.adapters.items()
                model = PeftModel.from_pretrained(model, first_dir, adapter_name=first).eval()
                for name, directory in others:
                    model.load_adapter(directory, adapter_name=name)
        return model, tokenizer, processor

    async def wait_loaded(self) -> None:
        await self._loaded.wait()

    async def aclose(self) -> None:
        self._loaded.cancel()
        if self._loaded.loaded is not None:
            self._loaded.loaded[0].shutdown()

    async def abort(self) -> None:
        if self._loaded.loaded is not None:
            self._loaded.loaded[0].abort()

    async def check_ready(self) -> tuple[bool, str]:
        return self._loaded.readiness()

    @property
    def generator(self) -> TextGenerator:
        """The loaded model's generator; a 503 while it loads or after its load failed."""
        return self._loaded.model[0]

    @property
    def _processor(self) -> Any:
        return self._loaded.loaded[1] if self._loaded.loaded is not None else None

    # ---- requests ----------------------------------------------------------------------------------------

    async def complete(self, endpoint: Endpoint, request: Request, adapter: str | None = None) -> dict[str, Any]:
        refuse_unsupported_fields(self.name, request)
        plan = await self._output_plan(request)
        prompts = await self._prompts(request, plan)
        choices, prompt_tokens, completion_tokens, cached = [], 0, 0, None
        for index, (prompt, echo) in enumerate(self._choices(request, prompts)):
            outcome = Generation()
            params = self._params(request, prompt.ids, index, plan)
            async with aclosing(self.generator.stream_text(prompt.ids, params, outcome, prompt.extra,
                                                           adapter)) as deltas:
                text = "".join([delta async for delta in deltas])
            choices.append(self._choice(endpoint, index, echo, text, outcome, plan))
            prompt_tokens += len(prompt.ids)
            completion_tokens += outcome.completion_tokens
            cached = _add(cached, outcome.cached_tokens)
        return response_dict(endpoint, new_completion_id(endpoint), self.name, choices,
                             usage_dict(prompt_tokens, completion_tokens, cached))

    async def stream(self, endpoint: Endpoint, request: Request,
                     adapter: str | None = None) -> AsyncIterator[dict[str, Any]]:
        refuse_unsupported_fields(self.name, request)
        plan = await self._output_plan(request)
        prompts = await self._prompts(request, plan)
        completion_id = new_completion_id(endpoint)
        prompt_tokens = completion_tokens = 0
        cached: int | None = None
        for index, (prompt, echo) in enumerate(self._choices(request, prompts)):
            outcome = Generation()
            params = self._params(request, prompt.ids, index, plan)
            tool_call = plan.constraint is not None and plan.constraint.kind == "tool_call"
            pieces: list[str] = []
            first, scored, sent = True, 0, len(echo)  # tokens whose logprobs went out; characters sent
            async with aclosing(self.generator.stream_text(prompt.ids, params, outcome, prompt.extra,
                                                           adapter)) as deltas:
                async for delta in deltas:
                    if tool_call:  # a call is sent whole, once it parses
                        pieces.append(delta)
                        continue
                    logprobs, scored = self._logprobs_since(endpoint, outcome, plan, scored, first, sent)
                    yield chunk_dict(endpoint, completion_id, self.name, index=index, logprobs=logprobs,
                                     text=echo + delta if first else delta, role=first)
                    first, sent = False, sent + len(delta)
            if tool_call:
                choice = self._choice(endpoint, index, echo, "".join(pieces), outcome, plan)
                calls = [{"index": position, **call}
                         for position, call in enumerate(choice["message"].get("tool_calls") or [])]
                yield chunk_dict(endpoint, completion_id, self.name, index=index, role=True,
                                 text=choice["message"]["content"], tool_calls=calls, logprobs=choice["logprobs"])
                finish_reason, logprobs = choice["finish_reason"], None
            else:
                if first:  # nothing was generated: still announce the choice
                    yield chunk_dict(endpoint, completion_id, self.name, index=index, text=echo, role=True)
                finish_reason = outcome.finish_reason
                logprobs, scored = self._logprobs_since(endpoint, outcome, plan, scored, first, sent)
            yield chunk_dict(endpoint, completion_id, self.name, index=index, logprobs=logprobs,
                             text=None if endpoint == "chat" else "", finish_reason=finish_reason)
            prompt_tokens += len(prompt.ids)
            completion_tokens += outcome.completion_tokens
            cached = _add(cached, outcome.cached_tokens)
        yield chunk_dict(endpoint, completion_id, self.name,
                         usage=usage_dict(prompt_tokens, completion_tokens, cached))

    async def _output_plan(self, request: Request) -> OutputPlan:
        plan = output_plan(request)
        # llguidance's view of the vocabulary is built on first use (~0.3 s) and grammars compile against it:
        # both off the event loop.
        if plan.constraint is not None:
            error = await asyncio.to_thread(self.generator.grammar_error, plan.constraint.grammar)
            if error:
                raise InvalidRequestError(f"the JSON schema cannot be used: {error}", param=plan.constraint.param)
        elif plan.logprobs is not None:
            await asyncio.to_thread(lambda: self.generator.grammar_tokenizer)  # token bytes come from it
        return plan

    def _choice(self, endpoint: Endpoint, index: int, echo: str, text: str, outcome: Generation,
                plan: OutputPlan) -> dict[str, Any]:
        """One finished choice: text, or the tool call a constrained generation made, with its logprobs."""
        logprobs = self._logprobs(endpoint, self._completion_logprobs(outcome, 0, len(outcome.token_ids)),
                                  plan, outcome, len(echo)) if plan.logprobs is not None else None
        if plan.constraint is not None and plan.constraint.kind == "tool_call" and outcome.finish_reason != "length":
            call = tool_call_of(plan.constraint, text)
            if call is not None:
                return response_choice(endpoint, index, None, "tool_calls", logprobs, [call])
        return response_choice(endpoint, index, echo + text, outcome.finish_reason, logprobs)

    def _completion_logprobs(self, outcome: Generation, start: int, end: int) -> list[TokenLogprob]:
        """The logprobs of generated tokens ``start:end``, EOS left out (it is not part of the text)."""
        return [entry for entry in outcome.logprobs[start:end] if not self.generator.is_eos(entry.token)]

    def _logprobs_since(self, endpoint: Endpoint, outcome: Generation, plan: OutputPlan, scored: int,
                        first: bool, text_offset: int) -> tuple[dict[str, Any] | None, int]:
        """A stream chunk's logprobs: those of the tokens generated since the last chunk's (None when none)."""
        end = len(outcome.token_ids)
        entries = self._completion_logprobs(outcome, scored, end) if plan.logprobs is not None else []
        if not entries and not (first and plan.prompt_logprobs):
            return None, scored
        return self._logprobs(endpoint, entries, plan, outcome if first else None, text_offset), end

    def _logprobs(self, endpoint: Endpoint, entries: Sequence[TokenLogprob], plan: OutputPlan,
                  outcome: Generation | None, text_offset: int) -> dict[str, Any]:
        """Entries in the endpoint's format; ``outcome`` given: an echoed prompt's logprobs go first."""
        token_bytes = self.generator.token_bytes
        if endpoint == "chat":
            return chat_logprobs(entries, token_bytes)
        if outcome is not None and plan.prompt_logprobs:
            return completion_logprobs([*outcome.prompt_logprobs, *entries], token_bytes)
        return completion_logprobs(entries, token_bytes, text_offset)

    def _choices(self, request: Request, prompts: list[PromptInputs]) -> list[tuple[PromptInputs, str]]:
        """(prompt, echoed text) per choice: n choices per prompt, in prompt order."""
        echo = isinstance(request, CompletionRequest) and request.echo
        tokenizer = self.generator.tokenizer
        return [(prompt, tokenizer.decode(prompt.ids) if echo else "") for prompt in prompts for _ in range(request.n)]

    async def _prompts(self, request: Request, plan: OutputPlan) -> list[PromptInputs]:
        """Token ids of every prompt. Templates and tokenizers run in a thread: a long prompt takes long
        enough to stall every other request on the event loop."""
        if isinstance(request, ChatCompletionRequest) and request.has_images:
            if self._processor is None:
                raise InvalidRequestError(f"model '{self.name}' does not accept images", param="messages")
            return [await self._vision_prompt(request)]
        prompts = await asyncio.to_thread(self._tokenize, request, plan)
        vocabulary = len(self.generator.tokenizer)
        for prompt in prompts:
            bad = next((token for token in prompt.ids if not 0 <= token < vocabulary), None)
            if bad is not None:
                raise InvalidRequestError(f"token id {bad} is outside the vocabulary of model '{self.name}' "
                                          f"(0 to {vocabulary - 1})", param="prompt", code="invalid_token_id")
        return prompts

    def _tokenize(self, request: Request, plan: OutputPlan) -> list[PromptInputs]:
        tokenizer = self.generator.tokenizer
        if isinstance(request, ChatCompletionRequest):
            text = self._chat_prompt(request, plan)
            return [PromptInputs(tokenizer(text, add_special_tokens=False)["input_ids"])]
        prompt = request.prompt
        if isinstance(prompt, str):
            return [PromptInputs(tokenizer(prompt)["input_ids"])]
        if all(isinstance(item, int) for item in prompt):
            return [PromptInputs(list(prompt))]  # type: ignore[arg-type]
        return [PromptInputs(tokenizer(p)["input_ids"] if isinstance(p, str) else list(p))  # type: ignore[arg-type]
                for p in prompt]

    def _chat_prompt(self, request: ChatCompletionRequest, plan: OutputPlan) -> str:
        """The chat template applied to the messages. Assistant tool calls and tool results are given to a
        template that has a tool format; for one without, a call is written into the assistant's text as
        ``{"name": ..., "arguments": ...}`` and the functions to call are described in the system prompt."""
        tokenizer = self.generator.tokenizer
        native_tools = "tools" in (tokenizer.chat_template or "")
        messages: list[dict[str, Any]] = []
        for message in request.messages:
            entry: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role,
                                     "content": message.text}
            extra = message.model_extra or {}
            calls = extra.get("tool_calls") or []
            if native_tools:
                entry.update({key: extra[key] for key in ("tool_calls", "tool_call_id") if extra.get(key)})
            elif calls:
                written = [orjson.dumps({"name": (call.get("function") or {}).get("name"),
                                         "arguments": (call.get("function") or {}).get("arguments")}).decode()
                           for call in calls if isinstance(call, dict)]
                entry["content"] = "\n".join([message.text, *written]).strip()
            messages.append(entry)
        options: dict[str, Any] = {}
        if plan.constraint is not None and plan.constraint.kind == "tool_call":
            extra = request.model_extra or {}
            if native_tools:
                options["tools"] = extra["tools"]
            elif note := tools_prompt(extra, plan.constraint):
                if messages[0]["role"] == "system":
                    messages[0]["content"] = f"{messages[0]['content']}\n\n{note}".strip()
                else:
                    messages.insert(0, {"role": "system", "content": note})
        continue_final, generation_prompt = _template_flags(request)
        return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt,  # type: ignore[no-any-return]
                                             continue_final_message=continue_final, tokenize=False, **options)

    async def _vision_prompt(self, request: ChatCompletionRequest) -> PromptInputs:
        """Text and pixels through the model's processor; images are read under the gateway's URL policy."""
        images, messages = [], []
        for message in request.messages:
            if isinstance(message.content, list):
                content = []
                for part in message.content:
                    if part.type == "image_url" and part.image_url is not None:
                        images.append(await load_image(part.image_url.url, self._image_policy))
                        content.append({"type": "image"})
                    elif part.type == "text":
                        content.append({"type": "text", "text": part.text or ""})
                messages.append({"role": message.role, "content": content})
            else:
                messages.append({"role": message.role, "content": [{"type": "text", "text": message.text}]})
        text = self._processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = await asyncio.to_thread(self._processor, text=text, images=images, return_tensors="pt")
        ids = inputs.pop("input_ids")[0].tolist()
        inputs.pop("attention_mask", None)
        return PromptInputs(ids, dict(inputs))

    def _params(self, request: Request, prompt: list[int], choice: int, plan: OutputPlan) -> SamplingParams:
        """Sampling for one choice; with ``seed``, choice i draws from seed + i (n choices that differ, each
        reproducible)."""
        context = self.generator.context_length
        wanted = request.completion_token_limit
        if context and len(prompt) >= context:
            raise InvalidRequestError(
                f"this model's maximum context length is {context} tokens; the prompt has {len(prompt)}",
                param="messages" if isinstance(request, ChatCompletionRequest) else "prompt")
        if wanted is None:
            wanted = self.config.default_max_tokens if isinstance(request, ChatCompletionRequest) else 16
        if context and len(prompt) + wanted > context:
            if request.completion_token_limit is not None:
                raise InvalidRequestError(
                    f"this model's maximum context length is {context} tokens: {len(prompt)} in the prompt "
                    f"plus max_tokens {wanted} is too many", param="max_tokens")
            wanted = context - len(prompt)
        return SamplingParams(max_new_tokens=wanted, temperature=request.temperature, top_p=request.top_p,
                              stop=tuple(request.stop_sequences),
                              seed=None if request.seed is None else request.seed + choice,
                              logprobs=plan.logprobs, prompt_logprobs=plan.prompt_logprobs,
                              grammar=plan.constraint.grammar if plan.constraint is not None else None,
                              **self._sampling_fields(request))

    def _sampling_fields(self, request: Request) -> dict[str, Any]:
        """OpenAI's and vLLM's extra sampling fields, checked (a 400 names the field): ``logit_bias``,
        ``presence_penalty``, ``frequency_penalty``, ``repetition_penalty``, ``top_k``, ``min_p``,
        ``skip_special_tokens``."""
        extra = request.model_extra or {}
        fields: dict[str, Any] = {}
        if extra.get("skip_special_tokens") is not None:
            fields["skip_special_tokens"] = _flag(extra, "skip_special_tokens", True)
        for name in ("presence_penalty", "frequency_penalty"):
            if extra.get(name) is not None:
                fields[name] = _number(extra[name], name, -2.0, 2.0)
        if extra.get("repetition_penalty") is not None:
            fields["repetition_penalty"] = _number(extra["repetition_penalty"], "repetition_penalty", 0.01, 10.0)
        if extra.get("min_p") is not None:
            fields["min_p"] = _number(extra["min_p"], "min_p", 0.0, 1.0)
        if extra.get("top_k") is not None:
            top_k = extra["top_k"]
            if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < -1:
                raise InvalidRequestError("top_k must be an integer >= -1 (-1 or 0: off)", param="top_k")
            fields["top_k"] = top_k
        if extra.get("logit_bias"):
            bias = extra["logit_bias"]
            vocabulary = len(self.generator.tokenizer)
            if not isinstance(bias, dict):
                raise InvalidRequestError("logit_bias must map token ids to biases", param="logit_bias")
            pairs = []
            for token, value in bias.items():
                if not str(token).lstrip("-").isdigit() or not 0 <= int(token) < vocabulary:
                    raise InvalidRequestError(f"logit_bias: '{token}' is not a token id of model '{self.name}' "
                                              f"(0 to {vocabulary - 1})", param="logit_bias")
                pairs.append((int(token), _number(value, "logit_bias", -100.0, 100.0)))
            fields["logit_bias"] = tuple(pairs)
        return fields
