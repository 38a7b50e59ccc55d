"""The onnx engine against the transformers engine, in process, on the real embedded SmolLM2: the same answers
(what the GGUF's own blocks and fp32 activations are for), generations batched into one pass, shared prefixes
reused without changing an answer, and rows freed when clients leave."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from typing import Any

import pytest
from transformers import AutoTokenizer, GenerationConfig

from gateway.backends.transformers.backend import load_causal_lm
from gateway.backends.transformers.batched import PREFILL_CHUNK, BatchedGenerator
from gateway.backends.transformers.embedded import GGUF_FILE, embedded_model_dir, gguf_package_dir
from gateway.backends.transformers.generation import LocalGenerator, TextGenerator
from gateway.backends.transformers.onnx_model import OnnxModelSpec, onnx_model_dir
from gateway.backends.transformers.sampling import Generation, SamplingParams
from gateway.core.config import Settings
from gateway.core.errors import UpstreamUnavailableError

pytestmark = pytest.mark.slow
QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "Why is the sky blue?",
             "Give me three tips for learning Python."]
STORY = ("The lighthouse keeper of Ardmore kept a logbook of every ship that passed, every storm that broke on the "
         "rocks and every gull that nested on the rail. ")


@pytest.fixture(scope="module")
def engines() -> Any:
    cache = Settings().cache_dir
    hf_dir = embedded_model_dir(cache)
    spec = OnnxModelSpec.read(onnx_model_dir(hf_dir, cache, gguf_package_dir() / GGUF_FILE))
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    onnx = BatchedGenerator(spec, tokenizer, GenerationConfig.from_pretrained(hf_dir), name="smol-onnx",
                            max_concurrency=4, max_queue=8)
    model, _, _ = load_causal_lm(hf_dir, "cpu")
    reference = LocalGenerator(model, tokenizer, name="smol-transformers", max_concurrency=1, max_queue=8)
    yield onnx, reference, tokenizer
    onnx.shutdown()
    reference.shutdown()


def chat(tokenizer: Any, question: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]  # type: ignore[no-any-return]


async def generate(generator: TextGenerator, prompt: list[int], **fields: Any) -> Generation:
    outcome = Generation()
    params = SamplingParams(**{"max_new_tokens": 24, "temperature": 0, **fields})
    async with aclosing(generator.stream_text(prompt, params, outcome)) as deltas:
        async for _ in deltas:
            pass
    return outcome


def test_greedy_answers_are_token_identical_to_transformers(engines):
    onnx, reference, tokenizer = engines
    long_prompt = chat(tokenizer, STORY * 8 + "What did the keeper write down?")
    assert len(long_prompt) > 2 * PREFILL_CHUNK  # prefilled in three chunks
    for prompt in [chat(tokenizer, q) for q in QUESTIONS[:2]] + [long_prompt]:
        ours, theirs = asyncio.run(generate(onnx, prompt)), asyncio.run(generate(reference, prompt))
        assert ours.token_ids == theirs.token_ids, tokenizer.decode(ours.token_ids)
        assert ours.finish_reason == theirs.finish_reason
    capital = asyncio.run(generate(onnx, chat(tokenizer, QUESTIONS[0])))
    assert "Paris" in tokenizer.decode(capital.token_ids)


def test_logprobs_and_an_echoed_prompt_score_as_transformers_does(engines):
    onnx, reference, tokenizer = engines
    prompt = tokenizer("The capital of France is")["input_ids"]
    fields = {"logprobs": 3, "prompt_logprobs": True, "max_new_tokens": 4}
    ours, theirs = asyncio.run(generate(onnx, prompt, **fields)), asyncio.run(generate(reference, prompt, **fields))
    assert ours.token_ids == theirs.token_ids
    for mine, other in zip([*ours.prompt_logprobs, *ours.logprobs], [*theirs.prompt_logprobs, *theirs.logprobs],
                           strict=True):
        assert mine.token == other.token and [t for t, _ in mine.top] == [t for t, _ in other.top]
        assert (mine.logprob is None) == (other.logprob is None)
        if mine.logprob is not None:
            assert mine.logprob == pytest.approx(other.logprob, abs=1e-3)


def test_concurrent_generations_share_passes_and_answer_as_alone(engines):
    onnx, _, tokenizer = engines
    prompts = [chat(tokenizer, q) for q in QUESTIONS]
    alone = [asyncio.run(generate(onnx, prompt)).token_ids for prompt in prompts]
    before = (onnx.counters.decode_passes, onnx.counters.decoded_tokens)

    async def together() -> list[Generation]:
        return await asyncio.gather(*(generate(onnx, prompt) for prompt in prompts))

    outcomes = asyncio.run(together())
    assert [outcome.token_ids for outcome in outcomes] == alone
    passes = onnx.counters.decode_passes - before[0]
    decoded = onnx.counters.decoded_tokens - before[1]
    assert decoded / passes > 2.5, (decoded, passes)  # four streams mostly in the same passes
    assert onnx.counters.widest_pass == 4


def test_more_requests_than_rows_wait_for_one(engines):
    onnx, _, tokenizer = engines
    prompts = [chat(tokenizer, f"Name a colour. ({i})") for i in range(7)]  # four rows

    async def together() -> list[Generation]:
        return await asyncio.gather(*(generate(onnx, prompt, max_new_tokens=6) for prompt in prompts))

    assert all(outcome.completion_tokens >= 1 for outcome in asyncio.run(together()))


def test_a_shared_prefix_is_reused_and_changes_no_answer(engines):
    onnx, reference, tokenizer = engines
    context = f"{STORY * 3}Chapter {time.time_ns()}."  # a prefix no earlier test left in a row
    first = tokenizer(f"{context} The keeper's name was")["input_ids"]
    second = tokenizer(f"{context} The ships were")["input_ids"]
    shared = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    reused_before = onnx.counters.reused_tokens
    asyncio.run(generate(onnx, first))
    again = asyncio.run(generate(onnx, second))
    assert again.cached_tokens is not None and again.cached_tokens >= shared - 1
    assert onnx.counters.reused_tokens - reused_before >= shared - 1
    assert again.token_ids == asyncio.run(generate(reference, second)).token_ids


def test_clients_that_leave_free_their_rows_at_once(engines):
    onnx, _, tokenizer = engines
    prompt = chat(tokenizer, "Count from one to a thousand.")

    async def leave_after_a_token() -> None:
        outcome = Generation()
        async with aclosing(onnx.stream_text(prompt, SamplingParams(max_new_tokens=2000), outcome)) as deltas:
            async for _ in deltas:
                break

    async def scenario() -> float:
        await asyncio.gather(*(leave_after_a_token() for _ in range(4)))  # every row taken, then left
        started = time.monotonic()
        await generate(onnx, chat(tokenizer, QUESTIONS[0]), max_new_tokens=8)
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 5  # 4 x 2000 tokens would take over a minute


def _fresh_engine(tokenizer: Any, max_concurrency: int) -> BatchedGenerator:
    cache = Settings().cache_dir
    hf_dir = embedded_model_dir(cache)
    spec = OnnxModelSpec.read(onnx_model_dir(hf_dir, cache, gguf_package_dir() / GGUF_FILE))
    return BatchedGenerator(spec, tokenizer, GenerationConfig.from_pretrained(hf_dir), name="smol",
                            max_concurrency=max_concurrency, max_queue=4)


def test_shutdown_ends_running_generations():
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir(Settings().cache_dir))
    onnx = _fresh_engine(tokenizer, max_concurrency=2)
    prompt = tokenizer("Count from one to a thousand:")["input_ids"]

    async def run() -> tuple[int, float]:
        deltas, stopped_at = 0, 0.0
        with pytest.raises(UpstreamUnavailableError, match="shutting down"):
            async for _ in onnx.stream_text(prompt, SamplingParams(max_new_tokens=2000), Generation()):
                deltas += 1
                if deltas == 3:
                    onnx.shutdown()
                    stopped_at = time.monotonic()
        return deltas, time.monotonic() - stopped_at

    deltas, after = asyncio.run(run())
    assert deltas < 20 and after < 2.0


def test_a_request_that_finishes_while_others_wait_for_their_prefill(engines):
    """Rows are compacted as requests finish, also when the request that moves down has not been prefilled yet
    (its row never allocated): the engine keeps serving every request."""
    _, _, tokenizer = engines
    onnx = _fresh_engine(tokenizer, max_concurrency=4)  # rows not allocated yet
    quick = chat(tokenizer, QUESTIONS[0])
    slow = [chat(tokenizer, STORY * 6 + f"Question {i}: what did the keeper see?") for i in range(3)]

    async def together() -> list[Generation]:
        return await asyncio.gather(generate(onnx, quick, max_new_tokens=1),
                                    *(generate(onnx, prompt, max_new_tokens=4) for prompt in slow))

    outcomes = asyncio.run(together())
    onnx.shutdown()
    assert [outcome.completion_tokens for outcome in outcomes] == [1, 4, 4, 4]
    assert all(outcome.finish_reason == "length" for outcome in outcomes)
