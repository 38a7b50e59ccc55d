"""The ONNX engine: every running generation of a model advances together, one batched forward pass a step.

**Decoder.** :class:`OnnxDecoder` runs the graph of :mod:`.onnx_model` on ONNX Runtime's CPU kernels (4-bit weights,
fp32 activations). Its KV cache is the caller's: one buffer per layer and kind, ``[rows, kv_heads, capacity,
head_size]``, bound as both the past and the present of GroupQueryAttention, which writes each new token's keys and
values in place at the row's own length. A pass takes a contiguous block of rows, each with its own length, so
sequences of any lengths decode in one pass; rows do not see each other. The buffers grow as needed (rows up to
``max_concurrency``, capacity by doubling up to the context length) and cost ``2 · layers · kv_heads · head_size · 4``
bytes a token a row (46 KB for SmolLM2-135M).

**Scheduler.** One thread owns the decoder; each turn of its loop

1. takes new requests, drops those whose client left (their row is free at once), moves running requests down into
   free rows below them (a pass costs what its widest row costs), and gives each waiting request the lowest free
   row;
2. prefills one chunk (``PREFILL_CHUNK`` tokens) of the oldest prompt still prefilling, first copying from any
   other row the keys and values of a longer shared prefix (a system prompt, an earlier turn of the conversation,
   the other choices of ``n``) so that only the rest is computed;
3. decodes one token for every request past its prompt, in one pass over rows ``0..k``.

A long prompt therefore delays the others' next tokens by one chunk at a time, not by its whole prefill. A row in
the pass that is still prefilling gets a dummy token written just past its valid keys and values, where the next
chunk overwrites it. A finished request's row keeps its tokens' keys and values for the next request that shares
their prefix (the same conversation's next turn, another request with the same system prompt).

**Choosing tokens** is :mod:`.sampling`'s, as on the transformers engine: each request's processors and draw run on
its row of the pass's logits, in this thread (the pass itself runs without the GIL).
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gateway.backends.transformers.generation import Emit, TextGenerator
from gateway.backends.transformers.onnx_model import OnnxModelSpec
from gateway.backends.transformers.sampling import (
    Generation,
    SamplingParams,
    TokenChooser,
    TokenLogprob,
    default_draw,
    score_rows,
    seeded_generator,
    token_processors,
)
from gateway.core.errors import InvalidRequestError

logger = logging.getLogger(__name__)

PREFILL_CHUNK = 128  # prompt tokens a pass: bounds the others' wait for their next token (~0.1 s here)
# A pass of several rows costs ~2.5x a pass of one (the matrix-product kernels dequantize every weight, the
# matrix-vector kernel reads them as they are): 8.0 ms for one row, 20.6 for two, 21.7 for three, 29.2 for eight
# (SmolLM2-135M, two cores). So two rows go as two passes of one.
SINGLE_ROW_PASSES_UP_TO = 2
_INITIAL_CAPACITY = 256


def cpu_threads() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class OnnxDecoder:
    """One ONNX Runtime session over a decoder graph, and the KV cache it reads and writes (module docstring)."""

    def __init__(self, spec: OnnxModelSpec, max_rows: int, threads: int | None = None) -> None:
        import onnxruntime as ort  # type: ignore[import-untyped]

        self.spec, self.max_rows = spec, max_rows
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or cpu_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # the builder's graph keeps one unused constant, which ORT warns about
        self._ort = ort
        self._session = ort.InferenceSession(str(spec.path), options, providers=["CPUExecutionProvider"])
        self._past = [f"past_key_values.{layer}.{kind}" for layer in range(spec.layers) for kind in ("key", "value")]
        self._present = [name.replace("past_key_values", "present") for name in self._past]
        self._buffers: list[np.ndarray] = []
        self.rows, self.capacity = 0, 0

    def reserve(self, rows: int, length: int) -> None:
        """Room for ``rows`` rows of ``length`` tokens each (the buffers grow, keeping what they hold)."""
        if rows <= self.rows and length <= self.capacity:
            return
        new_rows = max(self.rows, min(self.max_rows, max(rows, 2 * self.rows)))
        new_capacity = self.capacity or _INITIAL_CAPACITY
        while new_capacity < length:
            new_capacity *= 2
        new_capacity = min(max(new_capacity, length), self.spec.context_length)
        shape = (new_rows, self.spec.kv_heads, new_capacity, self.spec.head_size)
        grown = [np.zeros(shape, dtype=np.float32) for _ in self._past]
        for buffer, old in zip(grown, self._buffers, strict=False):
            buffer[:old.shape[0], :, :old.shape[2]] = old
        self._buffers, self.rows, self.capacity = grown, new_rows, new_capacity

    def forward(self, first_row: int, ids: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
        """Logits ``[rows, tokens, vocabulary]`` of ``ids`` ``[rows, tokens]`` on rows ``first_row...``; row i's
        tokens take its positions ``lengths[i] - tokens ... lengths[i] - 1`` (its valid length after the pass)."""
        rows, _ = ids.shape
        width = max(lengths)
        mask = np.zeros((rows, width), dtype=np.int64)
        for row, length in enumerate(lengths):
            mask[row, :length] = 1
        binding = self._session.io_binding()
        binding.bind_output("logits")
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(ids, dtype=np.int64))
        binding.bind_cpu_input("attention_mask", mask)
        for past, present, buffer in zip(self._past, self._present, self._buffers, strict=True):
            value = self._ort.OrtValue.ortvalue_from_numpy(buffer[first_row:first_row + rows])
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)  # the same memory: written in place
        self._session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()  # type: ignore[no-any-return]

    def copy(self, source: int, target: int, start: int, end: int) -> None:
        """Row ``target``'s keys and values at positions ``start:end`` become row ``source``'s."""
        for buffer in self._buffers:
            buffer[target, :, start:end] = buffer[source, :, start:end]


@dataclass
class EngineCounters:
    """What the engine has done since it started."""

    decode_passes: int = 0
    decoded_tokens: int = 0  # tokens decoded, over all passes (divided by the passes: the mean batch)
    widest_pass: int = 0  # rows in the widest decoding pass
    prefilled_tokens: int = 0  # prompt tokens computed
    reused_tokens: int = 0  # prompt tokens whose keys and values came from a row's cache instead


@dataclass(eq=False)
class _Sequence:
    """One generation: its prompt and tokens so far, its row and how much of it is in the row's cache."""

    order: int  # arrival: the oldest prompt is prefilled first
    prompt: list[int]
    params: SamplingParams
    emit: Emit
    cancel: threading.Event
    outcome: Generation
    future: Future[None] = field(default_factory=Future)
    processors: list[Any] = field(default_factory=list)  # before the chooser (built on the engine's thread)
    chooser: TokenChooser | None = None
    tokens: list[int] = field(default_factory=list)
    ids: torch.Tensor = field(init=False)  # the tokens as the processors read them, [1, room]
    row: int = -1
    computed: int = 0  # tokens whose keys and values are in the row
    generated: int = 0

    def __post_init__(self) -> None:
        self.tokens = list(self.prompt)
        self.ids = torch.zeros((1, len(self.prompt) + self.params.max_new_tokens), dtype=torch.long)
        self.ids[0, :len(self.prompt)] = torch.tensor(self.prompt, dtype=torch.long)

    @property
    def prefilling(self) -> bool:
        return self.computed < len(self.prompt)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    same = np.asarray(a[:n]) == np.asarray(b[:n])
    return n if same.all() else int(same.argmin())


class BatchedGenerator(TextGenerator):
    """The ONNX engine (module docstring): up to ``max_concurrency`` generations decoded together."""

    def __init__(self, spec: OnnxModelSpec, tokenizer: Any, generation_config: Any, *, name: str,
                 max_concurrency: int, max_queue: int, threads: int | None = None) -> None:
        super().__init__(tokenizer, generation_config, name=name, context_length=spec.context_length,
                         max_concurrency=max_concurrency, max_queue=max_queue)
        self.decoder = OnnxDecoder(spec, max_concurrency, threads)
        self._arrivals: queue.SimpleQueue[_Sequence | None] = queue.SimpleQueue()
        self._arrived = itertools.count()
        self._waiting: list[_Sequence] = []
        self._owners: list[_Sequence | None] = [None] * max_concurrency
        self._cached: list[list[int]] = [[] for _ in range(max_concurrency)]  # a free row's valid tokens
        self._closed = False
        self.counters = EngineCounters()
        self._thread = threading.Thread(target=self._loop, name=f"generate-{name}", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        super().shutdown()
        self._closed = True
        self._arrivals.put(None)

    def _start(self, prompt_ids: list[int], params: SamplingParams, emit: Emit, cancel: threading.Event,
               extra_inputs: dict[str, Any], adapter: str | None, outcome: Generation) -> Future[None]:
        if extra_inputs or adapter is not None:
            raise InvalidRequestError(f"model '{self.name}' runs on the onnx engine, which takes no images or "
                                      "adapters (set engine: transformers)")
        sequence = _Sequence(next(self._arrived), list(prompt_ids), params, emit, cancel, outcome)
        self._arrivals.put(sequence)
        return sequence.future

    # ---- the engine's thread ------------------------------------------------------------------------------------

    def _active(self) -> list[_Sequence]:
        return [owner for owner in self._owners if owner is not None]

    def _loop(self) -> None:
        while not self._closed:
            try:
                self._turn()
            except Exception as exc:  # a fault of the engine itself: end what it holds, keep serving
                logger.exception("local model '%s': the engine failed; its running generations end", self.name)
                for sequence in [*self._waiting, *self._active()]:
                    self._finish(sequence, exc)
                self._cached = [[] for _ in self._owners]  # nothing in the rows is trusted any more
        for sequence in [*self._waiting, *self._active()]:
            self._finish(sequence)

    def _turn(self) -> None:
        """One turn of the loop (module docstring)."""
        self._take_arrivals(wait=not self._waiting and not self._active())
        for sequence in [*self._waiting, *self._active()]:
            if sequence.cancel.is_set():
                self._finish(sequence)
        self._compact()
        self._assign_rows()
        prefilling = [s for s in self._active() if s.prefilling]
        if prefilling:
            self._run(self._prefill, [min(prefilling, key=lambda s: s.order)])
        decoding = [s for s in self._active() if not s.prefilling]
        if decoding:
            self._run(self._decode, decoding)

    def _take_arrivals(self, wait: bool) -> None:
        try:
            item = self._arrivals.get(block=wait)
            while True:
                if item is not None:
                    self._admit(item)
                item = self._arrivals.get_nowait()
        except queue.Empty:
            pass

    def _admit(self, sequence: _Sequence) -> None:
        """A new request waits for a row, with its processors and draw built (a grammar compiles here, off the
        event loop)."""
        params = sequence.params
        try:
            temperature, top_p = default_draw(params, self.generation_config)
            processors = token_processors(params, len(sequence.prompt), temperature, top_p,
                                          seeded_generator(params.seed), sequence.outcome,
                                          self.grammar_tokenizer if params.grammar is not None else None)
        except Exception as exc:
            self._finish(sequence, exc)
            return
        chooser = processors.pop()
        assert isinstance(chooser, TokenChooser)
        sequence.processors, sequence.chooser = processors, chooser
        self._waiting.append(sequence)

    def _assign_rows(self) -> None:
        """Each waiting request, oldest first, takes the lowest free row (a prefix it shares with another row's
        keys and values is copied over when it is prefilled)."""
        while self._waiting and None in self._owners:
            sequence = self._waiting.pop(0)
            row = self._owners.index(None)
            self._owners[row], sequence.row = sequence, row
            sequence.computed = sequence.outcome.cached_tokens = self._reusable(sequence, self._cached[row])
            self.counters.reused_tokens += sequence.computed
            self._cached[row] = []

    def _compact(self) -> None:
        """Keep the running requests in the lowest rows: a decoding pass costs what its widest row costs, and a
        pass of one row runs on a faster kernel than a pass of several. The request in the highest row moves
        down into a free row below it (its keys and values are copied; the row it leaves keeps them as a cache)."""
        while True:
            free = [row for row, owner in enumerate(self._owners) if owner is None]
            busy = [row for row, owner in enumerate(self._owners) if owner is not None]
            if not free or not busy or free[0] > busy[-1]:
                return
            low, high = free[0], busy[-1]
            sequence = self._owners[high]
            assert sequence is not None
            if sequence.computed:  # (a row not yet prefilled may not even be allocated: nothing to copy)
                self.decoder.copy(high, low, 0, sequence.computed)
            self._owners[low], self._owners[high], sequence.row = sequence, None, low
            self._cached[low], self._cached[high] = [], sequence.tokens[:sequence.computed]

    def _reusable(self, sequence: _Sequence, tokens: Sequence[int]) -> int:
        """How many of ``tokens``' keys and values ``sequence`` can take: their common prefix, short of the last
        prompt token (its logits give the first draw); none when the prompt's own logprobs are wanted."""
        if sequence.params.prompt_logprobs:
            return 0
        return min(_common_prefix(tokens, sequence.prompt), len(sequence.prompt) - 1)

    def _run(self, step: Any, sequences: list[_Sequence]) -> None:
        """One step; an error of the pass itself ends every sequence in it with that error."""
        try:
            step(sequences)
        except Exception as exc:
            logger.exception("local model '%s': a forward pass failed", self.name)
            for sequence in sequences:
                self._finish(sequence, exc)

    def _prefill(self, sequences: list[_Sequence]) -> None:
        """The next chunk of one prompt; with the last one, its first token."""
        (sequence,) = sequences
        prompt = sequence.prompt
        self.decoder.reserve(sequence.row + 1, len(prompt))
        self._take_longer_prefix(sequence)
        start = sequence.computed
        end = min(len(prompt), start + PREFILL_CHUNK)
        logits = self.decoder.forward(sequence.row, np.array([prompt[start:end]]), [end])[0]
        sequence.computed = end
        self.counters.prefilled_tokens += end - start
        if sequence.params.prompt_logprobs:
            top = sequence.params.logprobs or 0
            if start == 0:
                sequence.outcome.prompt_logprobs.append(TokenLogprob(prompt[0], None))
            predicted = prompt[start + 1:end + 1]  # row i predicts the token after it
            sequence.outcome.prompt_logprobs.extend(score_rows(torch.from_numpy(logits[:len(predicted)]),
                                                               predicted, top))
        if end == len(prompt):
            self._advance(sequence, logits[-1])

    def _take_longer_prefix(self, sequence: _Sequence) -> None:
        """Copy from another row the keys and values of a longer prefix this prompt shares with it."""
        best, source = sequence.computed, -1
        for row, owner in enumerate(self._owners):
            if row == sequence.row:
                continue
            valid = owner.tokens[:owner.computed] if owner is not None else self._cached[row]
            shared = self._reusable(sequence, valid)
            if shared > best:
                best, source = shared, row
        if source >= 0:
            self.decoder.copy(source, sequence.row, sequence.computed, best)
            sequence.outcome.cached_tokens = (sequence.outcome.cached_tokens or 0) + best - sequence.computed
            self.counters.reused_tokens += best - sequence.computed
            sequence.computed = best

    def _decode(self, decoding: list[_Sequence]) -> None:
        """One token for each of ``decoding``, in one pass over rows 0..k."""
        width = max(sequence.row for sequence in decoding) + 1
        ids = np.zeros((width, 1), dtype=np.int64)
        lengths = [1] * width
        needed = max(sequence.computed + 1 for sequence in decoding)
        self.decoder.reserve(width, needed)
        for row in range(width):
            owner = self._owners[row]
            if owner is not None and not owner.prefilling:
                ids[row, 0], lengths[row] = owner.tokens[owner.computed], owner.computed + 1
            else:  # a dummy token just past the row's valid keys and values
                valid = owner.computed if owner is not None else len(self._cached[row])
                if valid >= self.decoder.capacity:
                    valid = self.decoder.capacity - 1
                    self._cached[row] = self._cached[row][:valid]
                lengths[row] = valid + 1
        if width <= SINGLE_ROW_PASSES_UP_TO:
            logits = np.concatenate([self.decoder.forward(row, ids[row:row + 1], lengths[row:row + 1])
                                     for row in range(width)])
        else:
            logits = self.decoder.forward(0, ids, lengths)
        counters = self.counters
        counters.decode_passes += 1
        counters.decoded_tokens += len(decoding)
        counters.widest_pass = max(counters.widest_pass, width)
        for sequence in decoding:  # (rows move only in _compact, between passes)
            sequence.computed += 1
            self._advance(sequence, logits[sequence.row, 0])

    def _advance(self, sequence: _Sequence, logits: np.ndarray) -> None:
        """Choose the sequence's next token from its logits, hand it to its consumer, and end it when done."""
        try:
            length = len(sequence.tokens)
            ids = sequence.ids[:, :length]
            scores = torch.from_numpy(logits)[None]
            for processor in sequence.processors:
                scores = processor(ids, scores)
            assert sequence.chooser is not None  # built when admitted
            token = sequence.chooser.choose(ids, scores)
        except Exception as exc:
            self._finish(sequence, exc)
            return
        sequence.tokens.append(token)
        if length < sequence.ids.shape[1]:
            sequence.ids[0, length] = token
        sequence.generated += 1
        sequence.emit([token])
        if self.is_eos(token) or sequence.generated >= sequence.params.max_new_tokens:
            self._finish(sequence)

    def _finish(self, sequence: _Sequence, error: BaseException | None = None) -> None:
        """End a sequence: its row is free, keeping its valid keys and values for a later prompt."""
        if sequence in self._waiting:
            self._waiting.remove(sequence)
        if sequence.row >= 0 and self._owners[sequence.row] is sequence:
            self._owners[sequence.row] = None
            self._cached[sequence.row] = sequence.tokens[:sequence.computed]
        if not sequence.future.done():
            if error is None:
                sequence.future.set_result(None)
            else:
                sequence.future.set_exception(error)
