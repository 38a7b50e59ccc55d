"""Streaming, bounded, cancellable text generation for one in-process model, off the event loop.

:class:`TextGenerator` is what both engines share: admission (``max_concurrency`` generations at once and at most
``max_queue`` more waiting; beyond that a 503 at once), token ids travelling from the engine's thread to the event
loop through an ``asyncio.Queue``, their text cut at stop sequences, cancellation (closing the consumer sets a flag
the engine checks after every token, so a client that leaves stops its generation within one decoding step),
shutdown, and the model's vocabulary as llguidance sees it.

:class:`LocalGenerator` is the transformers engine: each request runs ``model.generate`` on a thread of its own
pool, with the processors of :mod:`.sampling` (transformers then decodes greedily: the draw is made by the last
processor with a generator of its own). The ONNX engine (:mod:`.batched`) runs every request in one batch instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from gateway.backends.in_process import BoundedWork
from gateway.backends.transformers.detokenize import IncrementalText
from gateway.backends.transformers.sampling import (
    Generation,
    SamplingParams,
    TokenLogprob,
    default_draw,
    score_rows,
    seeded_generator,
    token_processors,
)
from gateway.core.errors import UpstreamError, UpstreamUnavailableError

# Called from the engine's thread with the ids of each new token (usually one at a time).
Emit = Callable[[list[int]], None]


class TextGenerator:
    """Bounded, cancellable, streaming generation (see the module docstring); engines implement :meth:`_start`."""

    def __init__(self, tokenizer: Any, generation_config: Any, *, name: str, context_length: int,
                 max_concurrency: int, max_queue: int) -> None:
        self.tokenizer, self.generation_config, self.name = tokenizer, generation_config, name
        self.context_length = context_length  # prompt plus completion, in tokens (0: unknown)
        self._work = BoundedWork(name, max_concurrency, max_queue)
        self._running: set[threading.Event] = set()
        self._aborted = False
        self._grammar_tokenizer: Any = None
        self._grammar_tokenizer_lock = threading.Lock()
        eos = generation_config.eos_token_id
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

    def abort(self) -> None:
        """Stop every generation now; their streams end with an error."""
        self._aborted = True
        for cancel in list(self._running):
            cancel.set()

    def _start(self, prompt_ids: list[int], params: SamplingParams, emit: Emit, cancel: threading.Event,
               extra_inputs: dict[str, Any], adapter: str | None, outcome: Generation) -> Future[None]:
        """Start one generation; ``emit`` each new token's id from the engine's thread, fill ``outcome``'s
        logprobs before emitting their tokens, stop soon after ``cancel`` is set, and resolve the future when
        done (its exception: the generation failed)."""
        raise NotImplementedError

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

        def emit(ids: list[int]) -> None:  # on the engine's thread
            loop.call_soon_threadsafe(queue.put_nowait, ids)

        def finished(future: Future[None]) -> None:  # on the event loop
            self._work.release()  # the slot is freed when the engine is really done, not when the consumer leaves
            queue.put_nowait(future)

        try:
            job = self._start(prompt_ids, params, emit, cancel, extra_inputs or {}, adapter, outcome)
        except BaseException:
            self._work.release()
            self._running.discard(cancel)
            raise
        job.add_done_callback(lambda future: loop.call_soon_threadsafe(finished, future))
        text = IncrementalText(self.tokenizer, params.stop, params.skip_special_tokens)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Future):
                    if (error := item.exception()) is not None:
                        if isinstance(error, UpstreamError):
                            raise error
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


class _TokenSink(BaseStreamer):
    """transformers streamer forwarding each new token id to the event loop."""

    def __init__(self, emit: Emit) -> None:
        self._emit, self._prompt_seen = emit, False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first puts the prompt
            self._prompt_seen = True
            return
        self._emit(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


class _Cancelled(StoppingCriteria):
    def __init__(self, flag: threading.Event) -> None:
        self._flag = flag

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self._flag.is_set(), dtype=torch.bool, device=input_ids.device)


class LocalGenerator(TextGenerator):
    """The transformers engine: ``model.generate`` per request on a pool of ``max_concurrency`` threads."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str, max_concurrency: int, max_queue: int,
                 exclusive: bool = False) -> None:
        """``exclusive``: the model keeps per-sequence state of its own (MoTE's step routing), so its
        generations run one at a time."""
        text_config = model.config.get_text_config()
        super().__init__(tokenizer, model.generation_config, name=name, max_concurrency=max_concurrency,
                         max_queue=max_queue,
                         context_length=int(getattr(text_config, "max_position_embeddings", 0) or 0))
        self.model, self._exclusive = model, exclusive
        self._executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix=f"generate-{name}")
        self._adapter_lock = threading.Lock()

    def shutdown(self) -> None:
        super().shutdown()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _start(self, prompt_ids: list[int], params: SamplingParams, emit: Emit, cancel: threading.Event,
               extra_inputs: dict[str, Any], adapter: str | None, outcome: Generation) -> Future[None]:
        return self._executor.submit(self._run, prompt_ids, params, _TokenSink(emit), cancel, extra_inputs,
                                     adapter, outcome)

    def _run(self, prompt_ids: list[int], params: SamplingParams, sink: _TokenSink, cancel: threading.Event,
             extra_inputs: dict[str, Any], adapter: str | None, outcome: Generation) -> None:
        if cancel.is_set():  # the client left while this request was queued
            return
        config = copy.deepcopy(self.model.generation_config)
        config.max_new_tokens = params.max_new_tokens
        temperature, top_p = default_draw(params, config)
        # transformers decodes greedily; the TokenChooser (the last processor) makes the draw with its own generator.
        config.do_sample, config.temperature, config.top_p, config.top_k = False, None, None, None
        if config.pad_token_id is None:
            config.pad_token_id = self.tokenizer.pad_token_id or next(iter(self._eos_ids), 0)
        generator = seeded_generator(params.seed, self.model.device)
        input_ids = torch.tensor([prompt_ids], device=self.model.device)
        processors = token_processors(params, len(prompt_ids), temperature, top_p, generator, outcome,
                                      self.grammar_tokenizer if params.grammar is not None else None)
        kwargs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "generation_config": config,
                  "streamer": sink, "stopping_criteria": StoppingCriteriaList([_Cancelled(cancel)]),
                  "logits_processor": LogitsProcessorList(processors)}
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
        logits = self.model(**model_inputs).logits[0, :-1]
        return [TokenLogprob(int(ids[0, 0]), None), *score_rows(logits, ids[0, 1:].tolist(), top)]

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
