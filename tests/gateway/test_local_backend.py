"""The embedded SmolLM2-135M-Instruct served in-process, started exactly as the README's serve command does."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from gateway.backends import AdapterView
from gateway.backends.transformers.backend import LocalBackend
from gateway.backends.transformers.embedded import embedded_model_dir
from gateway.core.config import Settings, parse_config
from gateway.engine.pool import ModelPool

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(embedded_model_dir(Settings().cache_dir))


def test_answers_the_capital_of_france(embedded_gateway, tokenizer):
    response = embedded_gateway.client().chat.completions.create(model="smollm2-135m", messages=QUESTION,
                                                                 temperature=0, max_tokens=30)
    text = response.choices[0].message.content
    assert "Paris" in text
    assert response.choices[0].finish_reason == "stop"
    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert response.usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    # completion tokens: the answer's tokens plus the end-of-turn token that stopped it
    assert response.usage.completion_tokens == len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_alias_and_model_list(embedded_gateway):
    client = embedded_gateway.client()
    assert [m.id for m in client.models.list()] == ["smollm2-135m", "all-minilm-l6-v2", "whisper-tiny.en", "espeak"]
    response = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=QUESTION, max_tokens=2)
    assert response.model == "smollm2-135m"


def test_stream_yields_tokens_and_a_final_usage_chunk(embedded_gateway):
    stream = embedded_gateway.client().chat.completions.create(
        model="smollm2-135m", messages=QUESTION, temperature=0, max_tokens=30, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) >= 3 and "Paris" in "".join(deltas)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= len(deltas)


def test_max_tokens_and_max_completion_tokens_cut_with_length(embedded_gateway):
    client = embedded_gateway.client()
    for limit in ({"max_tokens": 3}, {"max_completion_tokens": 4}):
        response = client.chat.completions.create(model="smollm2-135m", messages=[
            {"role": "user", "content": "Write a long story about a dragon."}], temperature=0, **limit)
        assert response.usage.completion_tokens == next(iter(limit.values()))
        assert response.choices[0].finish_reason == "length"


def test_stop_sequence_cuts_the_text(embedded_gateway):
    client = embedded_gateway.client()
    full = client.chat.completions.create(model="smollm2-135m", messages=QUESTION, temperature=0, max_tokens=30)
    assert "Paris" in full.choices[0].message.content
    for stream in (False, True):
        result = client.chat.completions.create(model="smollm2-135m", messages=QUESTION, temperature=0,
                                                max_tokens=30, stop=["Paris"], stream=stream)
        if stream:
            chunks = list(result)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        else:
            text, finish = result.choices[0].message.content, result.choices[0].finish_reason
        assert text == full.choices[0].message.content.split("Paris")[0]
        assert finish == "stop"


def test_seed_makes_sampling_reproducible_and_top_p_is_accepted(embedded_gateway):
    client = embedded_gateway.client()
    messages = [{"role": "user", "content": "Tell me a random fact about cats."}]
    runs = [client.chat.completions.create(model="smollm2-135m", messages=messages, temperature=1.2, top_p=0.95,
                                           seed=1234, max_tokens=20).choices[0].message.content for _ in range(2)]
    assert runs[0] == runs[1]
    others = {client.chat.completions.create(model="smollm2-135m", messages=messages, temperature=1.2,
                                             seed=seed, max_tokens=20).choices[0].message.content
              for seed in (1, 2, 3)}
    assert len(others | {runs[0]}) > 1  # sampling really samples


def test_n_choices(embedded_gateway):
    response = embedded_gateway.client().chat.completions.create(model="smollm2-135m", messages=QUESTION, n=2,
                                                                 temperature=0, max_tokens=8)
    assert [c.index for c in response.choices] == [0, 1]
    assert response.choices[0].message.content == response.choices[1].message.content


def test_n_seeded_choices_differ_and_each_reproduces(embedded_gateway):
    client = embedded_gateway.client()
    messages = [{"role": "user", "content": "Name an animal."}]

    def ask() -> list[str]:
        response = client.chat.completions.create(model="smollm2-135m", messages=messages, n=3, seed=7,
                                                  temperature=1.3, max_tokens=12)
        return [choice.message.content for choice in response.choices]

    first = ask()
    assert len(set(first)) > 1  # choice i samples from seed + i, not three copies of one draw
    assert ask() == first


def test_a_seed_reproduces_while_other_generations_run(make_gateway):
    gateway = make_gateway({"models": [{"name": "smol", "backend": "local", "max_concurrency": 3}]})
    client = gateway.async_client()
    seeded = {"model": "smol", "seed": 11, "temperature": 1.2, "max_tokens": 24,
              "messages": [{"role": "user", "content": "Write one sentence about the sea."}]}

    async def run() -> tuple[str, str]:
        alone = (await client.chat.completions.create(**seeded)).choices[0].message.content
        noise = {**seeded, "seed": None, "messages": [{"role": "user", "content": "Count to twenty."}]}
        together = await asyncio.gather(client.chat.completions.create(**noise),
                                        client.chat.completions.create(**seeded),
                                        client.chat.completions.create(**noise))
        return alone, together[1].choices[0].message.content

    alone, beside_others = asyncio.run(run())
    assert alone == beside_others


@pytest.mark.parametrize("prompt", [[99999999], [-5], [1, 2, 49152]])
def test_token_ids_outside_the_vocabulary_are_400s(embedded_gateway, prompt):
    response = httpx.post(f"{embedded_gateway.base_url}/completions", timeout=30,
                          json={"model": "smollm2-135m", "prompt": prompt, "max_tokens": 2})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "prompt" and error["code"] == "invalid_token_id"
    assert str(prompt[-1]) in error["message"]


def test_shutdown_stops_running_generations(tokenizer):
    from gateway.backends.transformers.backend import load_causal_lm
    from gateway.backends.transformers.generation import Generation, LocalGenerator, SamplingParams
    from gateway.core.errors import UpstreamUnavailableError

    model, tok, _ = load_causal_lm(embedded_model_dir(Settings().cache_dir), "cpu")
    generator = LocalGenerator(model, tok, name="smol", max_concurrency=1, max_queue=1)
    prompt = tok("Count from one to a thousand:")["input_ids"]

    async def run() -> tuple[int, float]:
        deltas, stopped_at = 0, 0.0
        with pytest.raises(UpstreamUnavailableError, match="shutting down"):
            async for _ in generator.stream_text(prompt, SamplingParams(max_new_tokens=2000), Generation()):
                deltas += 1
                if deltas == 3:
                    generator.shutdown()
                    stopped_at = time.monotonic()
        return deltas, time.monotonic() - stopped_at

    deltas, after = asyncio.run(run())
    assert deltas < 20 and after < 2.0


def test_legacy_completion(embedded_gateway):
    client = embedded_gateway.client()
    result = client.completions.create(model="smollm2-135m", prompt="The capital of France is", max_tokens=5,
                                       temperature=0)
    assert "Paris" in result.choices[0].text
    assert result.usage.completion_tokens == 5 and result.choices[0].finish_reason == "length"
    echoed = client.completions.create(model="smollm2-135m", prompt="Hello", max_tokens=2, temperature=0, echo=True)
    assert echoed.choices[0].text.startswith("Hello")


def test_context_overflow_is_a_400(embedded_gateway):
    with pytest.raises(openai.BadRequestError) as info:
        embedded_gateway.client().chat.completions.create(model="smollm2-135m", messages=QUESTION,
                                                          max_tokens=9000)
    assert "maximum context length is 8192" in info.value.body["message"]


def test_disconnect_stops_local_generation(embedded_gateway):
    """A client that leaves frees the single generation worker at once: the next request is served quickly."""
    url = f"{embedded_gateway.base_url}/chat/completions"
    with httpx.stream("POST", url, timeout=30, json={
            "model": "smollm2-135m", "stream": True, "max_tokens": 4000, "temperature": 0.8,
            "messages": [{"role": "user", "content": "Write a very long essay about the sea."}]}) as response:
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
    started = time.monotonic()
    quick = embedded_gateway.client().chat.completions.create(model="smollm2-135m", messages=QUESTION,
                                                              max_tokens=5, temperature=0)
    assert quick.usage.completion_tokens == 5
    assert time.monotonic() - started < 10  # 4000 tokens would take minutes had it kept generating
    for _ in range(20):  # the access log line is written when the stream ends
        if any(entry.get("status") == 499 for entry in embedded_gateway.server.log_entries()) or \
                '"client_closed_request"' in httpx.get(f"{embedded_gateway.url}/metrics").text:
            break
        time.sleep(0.1)
    assert 'code="client_closed_request"' in httpx.get(f"{embedded_gateway.url}/metrics").text


def test_generation_does_not_block_the_event_loop(embedded_gateway):
    async def scenario() -> float:
        client = embedded_gateway.async_client()
        generation = asyncio.create_task(client.chat.completions.create(
            model="smollm2-135m", messages=[{"role": "user", "content": "Count from 1 to 50."}], max_tokens=60,
            temperature=0))
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient() as http:
            started = time.monotonic()
            assert (await http.get(f"{embedded_gateway.url}/health")).status_code == 200
            health_latency = time.monotonic() - started
        await generation
        return health_latency

    assert asyncio.run(scenario()) < 0.5


def test_metrics_count_requests_tokens_and_latency(embedded_gateway):
    client = embedded_gateway.client()
    client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=3)
    text = httpx.get(f"{embedded_gateway.url}/metrics").text
    assert 'gateway_requests_total{endpoint="chat",model="smollm2-135m",status="200"}' in text
    assert 'gateway_tokens_total{kind="completion",model="smollm2-135m"}' in text
    assert 'gateway_request_duration_seconds_bucket{endpoint="chat",le="0.5",model="smollm2-135m"}' in text
    assert 'gateway_requests_in_flight{model="smollm2-135m"} 0.0' in text


def test_two_local_models_load_side_by_side(make_gateway):
    # Both start loading at once in worker threads; transformers' loading is not thread-safe, so this failed
    # with "Cannot copy out of meta tensor" before loads were serialised.
    # (smol-b differs in a generation setting, so it loads its own copy instead of sharing smol-a's)
    gateway = make_gateway({"models": [{"name": "smol-a", "backend": "local"},
                                       {"name": "smol-b", "backend": "local", "max_concurrency": 2}]},
                           wait_ready=False)
    deadline = time.monotonic() + 240
    while (ready := httpx.get(f"{gateway.url}/ready")).status_code != 200 and time.monotonic() < deadline:
        assert "failed" not in ready.text.lower(), ready.text
        time.sleep(0.5)
    assert ready.status_code == 200, ready.text
    client = gateway.client()
    for name in ("smol-a", "smol-b"):
        reply = client.chat.completions.create(model=name, messages=QUESTION, max_tokens=12, temperature=0)
        assert "Paris" in reply.choices[0].message.content


def test_entries_with_the_same_weights_share_one_loaded_model(tmp_path, make_gateway):
    config = parse_config({"models": [
        {"name": "smol", "backend": "local", "adapters": {"smol-lora": str(tmp_path / "adapter")}},
        {"name": "smol-safe", "backend": "local", "stages": ["aligncot"], "cost_per_1k_tokens": 1.0},
        {"name": "smol-short", "backend": "local", "default_max_tokens": 8},
    ]})
    pool = ModelPool(config, tmp_path)
    shared = pool.get("smol-safe")
    assert isinstance(shared, AdapterView) and shared.base is pool.get("smol") and shared.adapter is None
    assert isinstance(pool.get("smol-short"), LocalBackend)  # another generation setting: its own copy

    gateway = make_gateway({"models": [{"name": "smol", "backend": "local"},
                                       {"name": "smol-again", "backend": "local", "aliases": ["again"]}]})
    reply = gateway.client().chat.completions.create(model="again", messages=QUESTION, max_tokens=12, temperature=0)
    assert reply.model == "smol-again" and "Paris" in reply.choices[0].message.content


@pytest.mark.slow
@pytest.mark.parametrize("field, value", [("best_of", 2), ("store", True),
                                          ("functions", [{"name": "f", "parameters": {}}]),
                                          ("prediction", {"type": "content", "content": "x"})])
def test_fields_the_local_model_cannot_honour_are_400s_not_silence(embedded_gateway, field, value):
    client = embedded_gateway.client()
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=1,
                                       extra_body={field: value})
    error = refused.value.body
    assert error["param"] == field and error["code"] == "unsupported_parameter"
    assert "smollm2-135m" in error["message"]


@pytest.mark.slow
def test_values_that_ask_for_nothing_pass(embedded_gateway):
    answer = embedded_gateway.client().chat.completions.create(
        model="smollm2-135m", messages=QUESTION, max_tokens=1, user="u-1", presence_penalty=0.0, logprobs=False,
        tool_choice="none", response_format={"type": "text"}, extra_body={"metadata_tag": "kept"},
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    assert answer.choices[0].message.content is not None


@pytest.mark.slow
def test_logit_bias_penalties_and_filters_change_the_draw(embedded_gateway, tokenizer):
    client = embedded_gateway.client()

    def ask(**fields) -> str:  # type: ignore[no-untyped-def]
        reply = client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=12,
                                               temperature=0, extra_body=fields)
        return reply.choices[0].message.content or ""

    plain = ask()
    forced = tokenizer.encode(" Banana", add_special_tokens=False)[0]
    assert set(ask(logit_bias={str(forced): 100}).split()) == {tokenizer.decode([forced]).strip()}  # every token
    # A repeating answer: OpenAI's penalties (completion tokens only) and transformers' repetition penalty change it.
    repeat = [{"role": "user", "content": "Write the word cat ten times, separated by spaces."}]

    def say(**fields) -> str:  # type: ignore[no-untyped-def]
        reply = client.chat.completions.create(model="smollm2-135m", messages=repeat, max_tokens=20, temperature=0,
                                               extra_body=fields)
        return reply.choices[0].message.content or ""

    repeated = say()
    for penalty in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"repetition_penalty": 2.0}):
        assert say(**penalty) != repeated, penalty
    assert ask(repetition_penalty=1.0, top_k=0, min_p=0.0, presence_penalty=0.0) == plain  # all off: unchanged
    # top_k = 1 leaves one candidate: any seed at temperature 1 gives the greedy answer.
    sampled = {client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=12,
                                              temperature=1.0, seed=seed, extra_body={"top_k": 1})
               .choices[0].message.content for seed in (1, 2)}
    assert sampled == {plain}


@pytest.mark.slow
@pytest.mark.parametrize("fields, param", [({"presence_penalty": 3}, "presence_penalty"),
                                           ({"logit_bias": {"99999999": 1}}, "logit_bias"),
                                           ({"logit_bias": {"5": 500}}, "logit_bias"), ({"top_k": -5}, "top_k"),
                                           ({"min_p": 2}, "min_p")])
def test_bad_sampling_fields_are_400s(embedded_gateway, fields, param):
    with pytest.raises(openai.BadRequestError) as refused:
        embedded_gateway.client().chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=1,
                                                          extra_body=fields)
    assert refused.value.body["param"] == param
