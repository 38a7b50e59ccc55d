"""Runs ``model.generate`` off the event loop and streams its text as it is produced.

Each local model owns a thread pool of ``max_concurrency`` workers; at most ``max_queue`` more requests
wait for one, beyond that a request is refused with 503 at once. Tokens travel from the worker thread
to the event loop through an ``asyncio.Queue``; closing the consumer sets a flag that a stopping criterion
checks after every token, so a disconnected client stops its generation within one decoding step.

Sampling is done by ``_Sampler``, the last logits processor, with a generator of its own; transformers then
decodes greedily (its sampler would draw from torch's global RNG, which every worker thread shares, so a
seeded request would not be reproducible while another generation runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

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

from gateway.errors import OverloadedError, UpstreamError, UpstreamUnavailableError


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


@dataclass
class Generation:
    """Outcome of one generation, filled in while its text is consumed."""

    completion_tokens: int = 0
    finish_reason: str | None = None
    token_ids: list[int] = field(default_factory=list)


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
    """Draws the next token (temperature, then top-k, min-p and top-p) with its own ``torch.Generator`` and
    hands transformers' greedy decoding a distribution with all its mass on that token. Temperature 0 (or None)
    is greedy (the filters cannot change an argmax)."""

    def __init__(self, temperature: float | None, top_p: float | None, generator: torch.Generator,
                 top_k: int | None = None, min_p: float | None = None) -> None:
        self.temperature, self.top_p, self.generator = temperature, top_p, generator
        self.warpers = LogitsProcessorList(
            ([TopKLogitsWarper(top_k)] if top_k and top_k > 0 else []) + ([MinPLogitsWarper(min_p)] if min_p else []))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if not self.temperature:
            return scores
        warped = self.warpers(input_ids, scores.float() / self.temperature)
        probabilities = torch.softmax(warped, dim=-1)
        if self.top_p is not None and self.top_p < 1:
            ordered, order = probabilities.sort(dim=-1, descending=True)
            outside = ordered.cumsum(dim=-1) - ordered > self.top_p  # keep the smallest set reaching top_p
            probabilities = probabilities.scatter(-1, order, ordered.masked_fill(outside, 0.0))
        choice = torch.multinomial(probabilities, 1, generator=self.generator)
        return torch.full_like(scores, float("-inf")).scatter(-1, choice, 0.0)


class _IncrementalText:
    """Turns token ids into text deltas (incrementally, through ``tokenizers``' ``DecodeStream``: decoding
    the whole sequence again for every token is quadratic), cutting at the first stop sequence.

    Text that could be the start of a stop sequence is held back until it is decided.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str]) -> None:
        self._tokenizer, self._stop = tokenizer, [s for s in stop if s]
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._backend = backend
        self._stream = DecodeStream(skip_special_tokens=True) if backend is not None else None
        self._ids: list[int] = []
        self._text = ""
        self._emitted = 0
        self.stopped = False

    def _extend(self, ids: list[int]) -> str:
        if self._stream is None:  # a slow tokenizer: decode everything again
            self._ids.extend(ids)
            self._text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
            return self._text
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

    def __init__(self, model: Any, tokenizer: Any, *, name: str, max_concurrency: int, max_queue: int) -> None:
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self._executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix=f"generate-{name}")
        self._capacity = max_concurrency + max_queue
        self._admitted = 0
        self._running: set[threading.Event] = set()
        self._aborted = False
        self._adapter_lock = threading.Lock()
        eos = model.generation_config.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            self._eos_ids.add(tokenizer.eos_token_id)

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
                          adapter: str | None = None) -> AsyncIterator[str]:
        """Text deltas of one completion of ``prompt_ids``; ``outcome`` is complete when this ends."""
        if self._admitted >= self._capacity:
            raise OverloadedError(f"model '{self.name}' is busy: {self._admitted} requests running or queued; "
                                  "retry later")
        if self._aborted:
            raise UpstreamUnavailableError(f"model '{self.name}' is shutting down", code="shutting_down")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()
        self._running.add(cancel)
        self._admitted += 1
        job = loop.run_in_executor(self._executor, self._run, prompt_ids, params, _TokenSink(loop, queue),
                                   cancel, extra_inputs or {}, adapter)
        # The slot is freed when the worker is really done, not when the consumer stops listening.
        job.add_done_callback(lambda _: self._release())
        job.add_done_callback(lambda future: queue.put_nowait(future))
        text = _IncrementalText(self.tokenizer, params.stop)
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
                if delta := text.add(item):
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

    def _release(self) -> None:
        self._admitted -= 1

    def _finish_reason(self, outcome: Generation, params: SamplingParams, stopped: bool) -> str:
        if stopped or (outcome.token_ids and outcome.token_ids[-1] in self._eos_ids):
            return "stop"
        return "length" if outcome.completion_tokens >= params.max_new_tokens else "stop"

    def _run(self, prompt_ids: list[int], params: SamplingParams, sink: _TokenSink, cancel: threading.Event,
             extra_inputs: dict[str, Any], adapter: str | None) -> None:
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
                                                                           top_p, generator))}
        for name, value in extra_inputs.items():  # e.g. pixel_values of a vision model
            kwargs[name] = value.to(self.model.device) if isinstance(value, torch.Tensor) else value
        with torch.inference_mode(), self._adapter(adapter):
            self.model.generate(**kwargs)

    @staticmethod
    def _processors(params: SamplingParams, prompt_length: int, temperature: float, top_p: float | None,
                    generator: torch.Generator) -> list[LogitsProcessor]:
        """Biases and penalties first, the draw last."""
        processors: list[LogitsProcessor] = []
        if params.logit_bias or params.presence_penalty or params.frequency_penalty:
            processors.append(_OpenAIPenalties(prompt_length, params.presence_penalty, params.frequency_penalty,
                                               params.logit_bias))
        if params.repetition_penalty is not None and params.repetition_penalty != 1:
            processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        processors.append(_Sampler(temperature, top_p, generator, params.top_k, params.min_p))
        return processors

    @contextlib.contextmanager
    def _adapter(self, adapter: str | None) -> Iterator[None]:
        """A PEFT model with several LoRA adapters generates with ``adapter`` on (the base when None); the
        switch and the generation are one critical section, since the adapter is model-wide state."""
        if not hasattr(self.model, "peft_config"):
            yield
            return
        with self._adapter_lock:
            if adapter is None:
                with self.model.disable_adapter():
                    yield
            else:
                self.model.set_adapter(adapter)
                yield
