"""Runs ``model.generate`` off the event loop and streams its text as it is produced.

Each local model owns a thread pool of ``max_concurrency`` workers; at most ``max_queue`` more requests
wait for one, beyond that a request is refused with 503 at once. Tokens travel from the worker thread
to the event loop through an ``asyncio.Queue``; closing the consumer sets a flag that a stopping criterion
checks after every token, so a disconnected client stops its generation within one decoding step.

Sampling is done by ``_Sampler``, the last logits processor, with a generator of its own; transformers then
decodes greedily (its sampler would draw from torch's global RNG, which every worker thread shares, so a
seeded request would not be reproducible while another generation runs). The sampler also records each chosen
token's log-probability (of the model's raw distribution, before penalties, masks and temperature, as vLLM
reports them) when asked, and a ``GrammarMask`` before it keeps a constrained generation inside its grammar.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
from collections.abc import AsyncGenerator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tokenizers.decoders import DecodeStream
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
    TopKLogitsWarper,
)
from transformers.generation.streamers import BaseStreamer

from gateway.backends.in_process import BoundedWork
from gateway.core.errors import UpstreamError, UpstreamUnavailableError


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float | None = None  # None: the model's generation_config decides
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_k: int | None = None  # None, 0 or -1: off
    min_p: float | None = None
    repetition_penalty: float | None = None  # transformers' (prompt and completion tokens), 1 = off
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token already generated
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per occurrence in the completion so far
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    logprobs: int | None = None  # None: none recorded; k >= 0: the chosen token's and the k most likely
    prompt_logprobs: bool = False  # also score the prompt's tokens (legacy completions' echo + logprobs)
    grammar: str | None = None  # an llguidance grammar the completion must follow (structured output)
    skip_special_tokens: bool = True  # False: special tokens (e.g. a MoTE model's step markers) are in the text


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-probability and the ``top`` alternatives at its position, most likely first."""

    token: int
    logprob: float | None  # None: nothing predicts it (a prompt's first token)
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Generation:
    """Outcome of one generation, filled in while its text is consumed."""

    completion_tokens: int = 0
    finish_reason: str | None = None
    token_ids: list[int] = field(default_factory=list)
    # Filled by the worker thread; entry i exists before token i reaches the event loop.
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)


class _TokenSink(BaseStreamer):
    """transformers streamer forwarding each new token id to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> None:
        self._loop, self._queue, self._prompt_seen = loop, queue, False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first puts the prompt
            self._prompt_seen = True
            return
        self._loop.call_soon_threadsafe(self._queue.put_nowait, value.reshape(-1).tolist())

    def end(self) -> None:
        pass


class _Cancelled(StoppingCriteria):
    def __init__(self, flag: threading.Event) -> None:
        self._flag = flag

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self._flag.is_set(), dtype=torch.bool, device=input_ids.device)


class _OpenAIPenalties(LogitsProcessor):
    """OpenAI's ``logit_bias`` (added to the logits) and ``presence_penalty`` / ``frequency_penalty`` (counted
    over the completion only, not the prompt: ``logit -= presence * [count > 0] + frequency * count``)."""

    def __init__(self, prompt_length: int, presence: float, frequency: float,
                 bias: tuple[tuple[int, float], ...]) -> None:
        self.prompt_length, self.presence, self.frequency = prompt_length, presence, frequency
        self.bias_ids = torch.tensor([token for token, _ in bias], dtype=torch.long)
        self.bias_values = torch.tensor([value for _, value in bias], dtype=torch.float32)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        if len(self.bias_ids):
            scores[:, self.bias_ids.to(scores.device)] += self.bias_values.to(scores.device, scores.dtype)
        generated = input_ids[:, self.prompt_length:]
        if (self.presence or self.frequency) and generated.shape[1]:
            counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
            scores -= self.frequency * counts + self.presence * (counts > 0).to(scores.dtype)
        return scores


class _Sampler(LogitsProcessor):
    """Chooses the next token (temperature, then top-k, min-p and top-p, drawn with its own ``torch.Generator``;
    temperature 0 or None: the argmax) and hands transformers' greedy decoding a distribution with all its mass
    on it. With ``record`` set, the chosen token's raw log-probability (and the top alternatives) goes there."""

    def __init__(self, temperature: float | None, top_p: float | None, generator: torch.Generator,
                 top_k: int | None = None, min_p: float | None = None,
                 record: _LogprobRecorder | None = None) -> None:
        self.temperature, self.top_p, self.generator, self.record = temperature, top_p, generator, record
        self.warpers = LogitsProcessorList(
            ([TopKLogitsWarper(top_k)] if top_k and top_k > 0 else []) + ([MinPLogitsWarper(min_p)] if min_p else []))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if not self.temperature:
            choice = scores.argmax(dim=-1, keepdim=True)
        else:
            warped = self.warpers(input_ids, scores.float() / self.temperature)
            probabilities = torch.softmax(warped, dim=-1)
            if self.top_p is not None and self.top_p < 1:
                ordered, order = probabilities.sort(dim=-1, descending=True)
                outside = ordered.cumsum(dim=-1) - ordered > self.top_p  # keep the smallest set reaching top_p
                probabilities = probabilities.scatter(-1, order, ordered.masked_fill(outside, 0.0))
            choice = torch.multinomial(probabilities, 1, generator=self.generator)
        if self.record is not None:
            self.record.chosen(int(choice[0, 0]))
        return torch.full_like(scores, float("-inf")).scatter(-1, choice, 0.0)


class _LogprobRecorder(LogitsProcessor):
    """First processor: keeps the raw log-softmax of this step, so the sampler can record its choice's."""

    def __init__(self, top: int, into: list[TokenLogprob]) -> None:
        self.top, self.into = top, into
        self._step: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._step = torch.log_softmax(scores[0].float(), dim=-1)
        return scores

    def chosen(self, token: int) -> None:
        assert self._step is not None
        self.into.append(token_logprob(self._step, token, self.top))


def token_logprob(row: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """``token``'s entry of one position's log-softmax ``row``, with the ``top`` most likely tokens."""
    alternatives: tuple[tuple[int, float], ...] = ()
    if top:
        values, ids = row.topk(top)
        alternatives = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprob(token, float(row[token]), alternatives)


class GrammarMask(LogitsProcessor):
    """Constrained decoding: every token outside what the grammar allows next gets -inf (llguidance computes
    the allowed set; it allows EOS once the grammar is complete). Placed after biases and penalties, before
    the sampler, so nothing can push the generation out of its grammar."""

    def __init__(self, matcher: Any, prompt_length: int) -> None:
        self.matcher, self.prompt_length = matcher, prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids.shape[1] - self.prompt_length
        if generated and not self.matcher.consume_token(int(input_ids[0, -1])):
            raise RuntimeError(f"constrained decoding failed: {self.matcher.get_error()}")
        allowed = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        vocabulary = scores.shape[-1]
        keep = torch.zeros(vocabulary, dtype=torch.bool)
        width = min(vocabulary, len(allowed))
        keep[:width] = torch.from_numpy(allowed[:width].astype(bool))
        return scores.masked_fill(~keep.to(scores.device), float("-inf"))


class _IncrementalText:
    """Turns token ids into text deltas (incrementally, through ``tokenizers``' ``DecodeStream``: decoding
    the whole sequence again for every token is quadratic), cutting at the first stop sequence.

    Text that could be the start of a stop sequence is held back until it is decided.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str], skip_special_tokens: bool = True) -> None:
        self._tokenizer, self._stop = tokenizer, [s for s in stop if s]
        self._skip_special = skip_special_tokens
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._backend = backend
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens) if backend is not None else None
        self._ids: list[int] = []
        self._text = ""
        self._emitted = 0
        self.stopped = False

    def _extend(self, ids: list[int]) -> str:
        if self._stream is None:  # a slow tokenizer: decode everything again
            self._ids.extend(ids)
            self._text = self._tokenizer.decode(self._ids, skip_special_tokens=self._skip_special)
            return self._text
        assert self._backend is not None  # the stream is made only with a backend tokenizer
        for token in ids:
            piece = self._stream.step(self._backend, token)
            if piece:
                self._text += piece
        return self._text

    def add(self, ids: list[int]) -> str:
        text = self._extend(ids)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the next token
            return ""
        if not self._stop:
            return self._take(text, len(text))
        longest = max(len(s) for s in self._stop)
        start = max(0, self._emitted - longest + 1)
        hits = [pos for pos in (text.find(s, start) for s in self._stop) if pos >= 0]
        if hits:
            self.stopped = True
            return self._take(text, min(hits))
        return self._take(text, len(text) - self._undecided_suffix(text))

    def flush(self) -> str:
        if self.stopped:
            return ""
        return self._take(self._text, None)

    def _undecided_suffix(self, text: str) -> int:
        for size in range(min(len(text), max(len(s) for s in self._stop) - 1), 0, -1):
            if any(s.startswith(text[-size:]) for s in self._stop):
                return size
        return 0

    def _take(self, text: str, end: int | None) -> str:
        end = len(text) if end is None else end
        if end <= self._emitted:
            return ""
        delta, self._emitted = text[self._emitted:end], end
        return delta


class LocalGenerator:
    """Bounded, cancellable, streaming text generation for one in-process model."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str, max_concurrency: int, max_queue: int,
                 exclusive: bool = False) -> None:
        """``exclusive``: the model keeps per-sequence state of its own (MoTE's step routing), so its
        generations run one at a time."""
        self.model, self.tokenizer, self.name, self._exclusive = model, tokenizer, name, exclusive
        self._executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix=f"generate-{name}")
        self._work = BoundedWork(name, max_concurrency, max_queue)
        self._running: set[threading.Event] = set()
        self._aborted = False
        self._adapter_lock = threading.Lock()
        self._grammar_tokenizer: Any = None
        self._grammar_tokenizer_lock = threading.Lock()
        eos = model.generation_config.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            self._eos_ids.add(tokenizer.eos_token_id)

    @property
    def grammar_tokenizer(self) -> Any:
        """llguidance's view of the vocabulary (built once, ~0.3 s): token bytes and grammar masks."""
        with self._grammar_tokenizer_lock:
            if self._grammar_tokenizer is None:
                import llguidance.hf

                self._grammar_tokenizer = llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=len(self.tokenizer),
                                                                       eos_token=sorted(self._eos_ids) or None)
            return self._grammar_tokenizer

    def grammar_error(self, grammar: str) -> str:
        """Why ``grammar`` cannot constrain this model's generation ("" when it can)."""
        import llguidance

        return llguidance.LLMatcher.validate_grammar(grammar, self.grammar_tokenizer)

    def is_eos(self, token: int) -> bool:
        return token in self._eos_ids

    def token_bytes(self, token: int) -> bytes:
        return self.grammar_tokenizer.decode_bytes([token])  # type: ignore[no-any-return]

    def shutdown(self) -> None:
        """Refuse new work, stop the running generations within one decoding step, drop the queued ones."""
        self.abort()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def abort(self) -> None:
        """Stop every generation now; their streams end with an error."""
        self._aborted = True
        for cancel in list(self._running):
            cancel.set()

    async def stream_text(self, prompt_ids: list[int], params: SamplingParams, outcome: Generation,
                          extra_inputs: dict[str, Any] | None = None,
                          adapter: str | None = None) -> AsyncGenerator[str, None]:
        """Text deltas of one completion of ``prompt_ids``; ``outcome`` is complete when this ends."""
        if self._aborted:
            raise UpstreamUnavailableError(f"model '{self.name}' is shutting down", code="shutting_down")
        self._work.admit()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()
        self._running.add(cancel)
        job = loop.run_in_executor(self._executor, self._run, prompt_ids, params, _TokenSink(loop, queue),
                                   cancel, extra_inputs or {}, adapter, outcome)
        # The slot is freed when the worker is really done, not when the consumer stops listening.
        job.add_done_callback(lambda _: self._work.release())
        job.add_done_callback(lambda future: queue.put_nowait(future))
        text = _IncrementalText(self.tokenizer, params.stop, params.skip_special_tokens)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, asyncio.Future):
                    if (error := item.exception()) is not None:
                        raise UpstreamError(f"local model '{self.name}' failed: {error}") from error
                    if self._aborted:
                        raise UpstreamUnavailableError("the gateway is shutting down; the generation was ended "
                                                       "before it completed", code="shutting_down")
                    break
                outcome.token_ids.extend(item)
                outcome.completion_tokens += len(item)
                # the end-of-sequence token ends the text, it is not part of it (skipped special or not)
                if delta := text.add([token for token in item if token not in self._eos_ids]):
                    yield delta
                if text.stopped:
                    cancel.set()
                    break
            if tail := text.flush():
                yield tail
            outcome.finish_reason = self._finish_reason(outcome, params, text.stopped)
        finally:
            cancel.set()
            self._running.discard(cancel)

    def _finish_reason(self, outcome: Generation, params: SamplingParams, stopped: bool) -> str:
        if stopped or (outcome.token_ids and outcome.token_ids[-1] in self._eos_ids):
            return "stop"
        return "length" if outcome.completion_tokens >= params.max_new_tokens else "stop"

    def _run(self, prompt_ids: list[int], params: SamplingParams, sink: _TokenSink, cancel: threading.Event,
             extra_inputs: dict[str, Any], adapter: str | None, outcome: Generation) -> None:
        if cancel.is_set():  # the client left while this request was queued
            return
        config = copy.deepcopy(self.model.generation_config)
        config.max_new_tokens = params.max_new_tokens
        # Unset fields follow the model's own sampling defaults (its generation_config).
        default_temperature = (config.temperature or 1.0) if config.do_sample else 0.0
        temperature = params.temperature if params.temperature is not None else default_temperature
        top_p = params.top_p if params.top_p is not None else (config.top_p if config.do_sample else None)
        # transformers decodes greedily; _Sampler (the last processor) makes the draw with its own generator.
        config.do_sample, config.temperature, config.top_p, config.top_k = False, None, None, None
        if config.pad_token_id is None:
            config.pad_token_id = self.tokenizer.pad_token_id or next(iter(self._eos_ids), 0)
        generator = torch.Generator(device=self.model.device)
        if params.seed is None:
            generator.seed()
        else:
            generator.manual_seed(params.seed)
        input_ids = torch.tensor([prompt_ids], device=self.model.device)
        kwargs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "generation_config": config,
                  "streamer": sink, "stopping_criteria": StoppingCriteriaList([_Cancelled(cancel)]),
                  "logits_processor": LogitsProcessorList(self._processors(params, len(prompt_ids), temperature,
                                                                           top_p, generator, outcome))}
        for name, value in extra_inputs.items():  # e.g. pixel_values of a vision model
            kwargs[name] = value.to(self.model.device) if isinstance(value, torch.Tensor) else value
        with torch.inference_mode(), self._adapter(adapter):
            if params.prompt_logprobs:
                outcome.prompt_logprobs = self._score_prompt(kwargs, params.logprobs or 0)
            self.model.generate(**kwargs)

    def _score_prompt(self, inputs: dict[str, Any], top: int) -> list[TokenLogprob]:
        """Each prompt token's log-probability given the tokens before it (one forward pass)."""
        ids = inputs["input_ids"]
        model_inputs = {k: v for k, v in inputs.items() if k not in ("generation_config", "streamer",
                                                                     "stopping_criteria", "logits_processor")}
        rows = torch.log_softmax(self.model(**model_inputs).logits[0, :-1].float(), dim=-1)
        scored = [token_logprob(row, int(token), top) for row, token in zip(rows, ids[0, 1:], strict=True)]
        return [TokenLogprob(int(ids[0, 0]), None), *scored]

    def _processors(self, params: SamplingParams, prompt_length: int, temperature: float, top_p: float | None,
                    generator: torch.Generator, outcome: Generation) -> list[LogitsProcessor]:
        """The raw log-probabilities kept first, then biases and penalties, the grammar, the draw last."""
        processors: list[LogitsProcessor] = []
        recorder = None
        if params.logprobs is not None:
            recorder = _LogprobRecorder(params.logprobs, outcome.logprobs)
            processors.append(recorder)
        if params.logit_bias or params.presence_penalty or params.frequency_penalty:
            processors.append(_OpenAIPenalties(prompt_length, params.presence_penalty, params.frequency_penalty,
                                               params.logit_bias))
        if params.repetition_penalty is not None and params.repetition_penalty != 1:
            processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        if params.grammar is not None:
            import llguidance

            processors.append(GrammarMask(llguidance.LLMatcher(self.grammar_tokenizer, params.grammar, log_level=0),
                                          prompt_length))
        processors.append(_Sampler(temperature, top_p, generator, params.top_k, params.min_p, recorder))
        return processors

    @contextlib.contextmanager
    def _adapter(self, adapter: str | None) -> Iterator[None]:
        """A PEFT model with several LoRA adapters generates with ``adapter`` on (the base when None); the
        switch and the generation are one critical section, since the adapter is model-wide state (as is an
        exclusive model's own state)."""
        if not hasattr(self.model, "peft_config"):
            with self._adapter_lock if self._exclusive else contextlib.nullcontext():
                yield
            return
        with self._adapter_lock:
            if adapter is None:
                with self.model.disable_adapter():
                    yield
            else:
                self.model.set_adapter(adapter)
                yield
