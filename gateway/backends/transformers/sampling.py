"""How a local model picks each next token: penalties, biases, grammar masks, the draw, and the log-probabilities.

Both engines use these: the transformers engine as the logits processors of ``model.generate``, the ONNX engine
calling :meth:`TokenChooser.choose` on each step's logits. Processors run in this order: the raw log-probabilities
are kept first (as vLLM reports them: of the model's own distribution, before penalties, masks and temperature),
then biases and penalties, the grammar mask, and the draw last, so nothing can push a constrained generation out
of its grammar.

The draw uses a ``torch.Generator`` of its own per generation: a seeded request is reproducible while other
generations run (torch's global generator is shared by every thread).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor, MinPLogitsWarper, RepetitionPenaltyLogitsProcessor, TopKLogitsWarper

# top_p looks at this many of the most likely tokens first: when they hold more than top_p of the mass, the nucleus
# lies among them and the full sort of the vocabulary (~1 ms for 49k tokens) is not needed.
_NUCLEUS_PROBE = 64


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
    cached_tokens: int | None = None  # prompt tokens whose keys and values came from a cache (None: no cache)
    finish_reason: str | None = None
    token_ids: list[int] = field(default_factory=list)
    # Filled by the engine's thread; entry i exists before token i reaches the event loop.
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)


def default_draw(params: SamplingParams, generation_config: Any) -> tuple[float, float | None]:
    """(temperature, top_p) of a request: its own, or the model's generation_config defaults for what it left out
    (temperature 0: the most likely token)."""
    default_temperature = (generation_config.temperature or 1.0) if generation_config.do_sample else 0.0
    temperature = params.temperature if params.temperature is not None else default_temperature
    top_p = params.top_p if params.top_p is not None else (generation_config.top_p
                                                            if generation_config.do_sample else None)
    return temperature, top_p


def token_logprob(row: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """``token``'s entry of one position's log-softmax ``row``, with the ``top`` most likely tokens."""
    alternatives: tuple[tuple[int, float], ...] = ()
    if top:
        values, ids = row.topk(top)
        alternatives = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprob(token, float(row[token]), alternatives)


class LogprobRecorder(LogitsProcessor):
    """First processor: keeps the raw log-softmax of this step, so the draw can record its choice's."""

    def __init__(self, top: int, into: list[TokenLogprob]) -> None:
        self.top, self.into = top, into
        self._step: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._step = torch.log_softmax(scores[0].float(), dim=-1)
        return scores

    def chosen(self, token: int) -> None:
        assert self._step is not None
        self.into.append(token_logprob(self._step, token, self.top))


class OpenAIPenalties(LogitsProcessor):
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


class GrammarMask(LogitsProcessor):
    """Constrained decoding: every token outside what the grammar allows next gets -inf (llguidance computes
    the allowed set; it allows EOS once the grammar is complete)."""

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


class TokenChooser(LogitsProcessor):
    """The draw: temperature, then top-k, min-p and top-p, drawn with its own ``torch.Generator`` (temperature 0 or
    None: the argmax). As the last processor of ``model.generate`` it hands transformers' greedy decoding a
    distribution with all its mass on its choice; the ONNX engine calls :meth:`choose`."""

    def __init__(self, temperature: float | None, top_p: float | None, generator: torch.Generator,
                 top_k: int | None = None, min_p: float | None = None,
                 record: LogprobRecorder | None = None) -> None:
        self.temperature, self.top_p, self.generator, self.record = temperature, top_p, generator, record
        self.warpers: list[LogitsProcessor] = (([TopKLogitsWarper(top_k)] if top_k and top_k > 0 else [])
                                               + ([MinPLogitsWarper(min_p)] if min_p else []))

    def choose(self, input_ids: torch.Tensor, scores: torch.Tensor) -> int:
        """The next token, given the processed ``scores`` [1, vocabulary]."""
        if not self.temperature:
            token = int(scores[0].argmax())
        else:
            warped = scores.float() / self.temperature
            for warper in self.warpers:
                warped = warper(input_ids, warped)
            token = self._draw(torch.softmax(warped[0], dim=-1))
        if self.record is not None:
            self.record.chosen(token)
        return token

    def _draw(self, probabilities: torch.Tensor) -> int:
        if self.top_p is None or self.top_p >= 1:
            return int(torch.multinomial(probabilities, 1, generator=self.generator))
        # The nucleus: the most likely tokens, in order, up to and including the one that reaches top_p.
        probe = min(_NUCLEUS_PROBE, probabilities.shape[0])
        ordered, order = probabilities.topk(probe)
        if float(ordered.sum()) <= self.top_p and probe < probabilities.shape[0]:
            ordered, order = probabilities.sort(descending=True)
        outside = ordered.cumsum(dim=0) - ordered > self.top_p
        kept = ordered.masked_fill(outside, 0.0)
        return int(order[torch.multinomial(kept, 1, generator=self.generator)])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        choice = self.choose(input_ids, scores)
        return torch.full_like(scores, float("-inf")).index_fill_(-1, torch.tensor([choice], device=scores.device),
                                                                   0.0)


def token_processors(params: SamplingParams, prompt_length: int, temperature: float, top_p: float | None,
                     generator: torch.Generator, outcome: Generation,
                     grammar_tokenizer: Any = None) -> list[LogitsProcessor]:
    """Every processor a generation needs, in order, the :class:`TokenChooser` last. ``grammar_tokenizer``
    (llguidance's) is needed when ``params.grammar`` is set."""
    processors: list[LogitsProcessor] = []
    recorder = None
    if params.logprobs is not None:
        recorder = LogprobRecorder(params.logprobs, outcome.logprobs)
        processors.append(recorder)
    if params.logit_bias or params.presence_penalty or params.frequency_penalty:
        processors.append(OpenAIPenalties(prompt_length, params.presence_penalty, params.frequency_penalty,
                                          params.logit_bias))
    if params.repetition_penalty is not None and params.repetition_penalty != 1:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.grammar is not None:
        import llguidance

        processors.append(GrammarMask(llguidance.LLMatcher(grammar_tokenizer, params.grammar, log_level=0),
                                      prompt_length))
    processors.append(TokenChooser(temperature, top_p, generator, params.top_k, params.min_p, recorder))
    return processors


def seeded_generator(seed: int | None, device: Any = "cpu") -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def score_rows(rows: torch.Tensor, tokens: Sequence[int], top: int) -> list[TokenLogprob]:
    """Each of ``tokens``' log-probability under the logits ``rows`` predicting it (row i predicts token i)."""
    scored = torch.log_softmax(rows.float(), dim=-1)
    return [token_logprob(row, int(token), top) for row, token in zip(scored, tokens, strict=True)]
