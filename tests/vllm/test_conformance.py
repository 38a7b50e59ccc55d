"""Differential conformance: the same OpenAI SDK call sent to vLLM directly and through the gateway gives the
same answer (ids and timestamps aside). Differences that remain by design are listed in the README
("The gateway in front of real vLLM")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import LiveGateway
from tests.support.vllm import VLLMServer
from tests.vllm.conftest import direct_client, live_gateway, upstream_model

pytestmark = pytest.mark.vllm

VOLATILE = {"id", "created", "created_at", "system_fingerprint"}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
PERSON_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                 "required": ["name", "age"], "additionalProperties": False}
MESSAGES = [{"role": "user", "content": "Name three colours of the rainbow."}]


@pytest.fixture(scope="module")
def gateway(smollm2: VLLMServer, gemma: VLLMServer, minilm: VLLMServer) -> Iterator[LiveGateway]:
    config = {"models": [
        upstream_model("smollm2", smollm2),
        upstream_model("smollm2-native", smollm2, responses_api="native", messages_api="native"),
        upstream_model("gemma-3-270m", gemma),
        upstream_model("all-minilm-l6-v2", minilm, task="embed"),
    ]}
    with live_gateway(config) as live:
        yield live


@pytest.fixture(scope="module")
def direct(smollm2: VLLMServer) -> openai.OpenAI:
    return direct_client(smollm2)


@pytest.fixture(scope="module")
def through(gateway: LiveGateway) -> openai.OpenAI:
    return gateway.client()


def comparable(value: Any) -> Any:
    """``value`` without what differs between any two calls (ids, timestamps), tool-call ids included."""
    if isinstance(value, dict):
        return {key: comparable(item) for key, item in value.items() if key not in VOLATILE}
    if isinstance(value, list):
        return [comparable(item) for item in value]
    return value


def both(direct: openai.OpenAI, through: openai.OpenAI, call: str, **kwargs: Any) -> tuple[Any, Any]:
    """The same SDK call to vLLM and to the gateway, as plain JSON with ids and timestamps dropped."""
    answers = []
    for client in (direct, through):
        method: Any = client
        for part in call.split("."):
            method = getattr(method, part)
        answer = method(**kwargs)
        if kwargs.get("stream"):
            answers.append([comparable(chunk.model_dump(mode="json")) for chunk in answer])
        else:
            answers.append(comparable(answer.model_dump(mode="json")))
    return answers[0], answers[1]


CHAT_CASES = {
    "temperature 0": {"temperature": 0, "max_tokens": 24},
    "seed": {"temperature": 0.9, "seed": 1234, "max_tokens": 24},
    "n with seed": {"temperature": 0.9, "seed": 7, "n": 2, "max_tokens": 12},
    "logprobs": {"temperature": 0, "max_tokens": 8, "logprobs": True, "top_logprobs": 3},
    "stop": {"temperature": 0, "max_tokens": 40, "stop": [","]},
    "max_completion_tokens": {"temperature": 0, "max_completion_tokens": 5},
    "vllm sampling extras": {"temperature": 0.7, "seed": 3, "max_tokens": 16,
                             "extra_body": {"top_k": 5, "repetition_penalty": 1.3, "min_tokens": 10}},
    "structured output": {"temperature": 0, "max_tokens": 60, "response_format": {
        "type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True}}},
    "vllm guided choice": {"temperature": 0, "max_tokens": 5,
                           "extra_body": {"structured_outputs": {"choice": ["red", "green", "blue"]}}},
    "tool_choice required": {"temperature": 0, "max_tokens": 60, "tools": [WEATHER_TOOL],
                             "tool_choice": "required",
                             "messages": [{"role": "user", "content": "What is the weather in Paris?"}]},
    "tool_choice named": {"temperature": 0, "max_tokens": 60, "tools": [WEATHER_TOOL],
                          "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                          "messages": [{"role": "user", "content": "Weather in Oslo?"}]},
    "tool_choice auto": {"temperature": 0, "max_tokens": 60, "tools": [WEATHER_TOOL], "tool_choice": "auto",
                         "messages": [{"role": "user", "content": "Use the tool: weather in Rome?"}]},
}


@pytest.mark.parametrize("case", CHAT_CASES)
def test_chat_completion_matches_vllm(direct: openai.OpenAI, through: openai.OpenAI, case: str) -> None:
    kwargs = {"model": "smollm2", "messages": MESSAGES, **CHAT_CASES[case]}
    from_vllm, from_gateway = both(direct, through, "chat.completions.create", **kwargs)
    if "tool_choice" in kwargs and kwargs["tool_choice"] != "auto":
        # Tool-call ids are random per call; the calls themselves must agree.
        for answer in (from_vllm, from_gateway):
            for choice in answer["choices"]:
                assert choice["message"]["tool_calls"], answer
                for call in choice["message"]["tool_calls"]:
                    call["id"] = "call"
    assert from_gateway == from_vllm


STREAM_CASES = {
    "chat with usage": ("chat.completions.create", {
        "messages": MESSAGES, "temperature": 0, "max_tokens": 16, "stream_options": {"include_usage": True}}),
    "chat without usage": ("chat.completions.create", {"messages": MESSAGES, "temperature": 0, "max_tokens": 8}),
    "chat with logprobs and n": ("chat.completions.create", {
        "messages": MESSAGES, "temperature": 0.8, "seed": 5, "n": 2, "max_tokens": 6, "logprobs": True,
        "top_logprobs": 2, "stream_options": {"include_usage": True}}),
    "chat tool call": ("chat.completions.create", {
        "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER_TOOL],
        "tool_choice": "required", "temperature": 0, "max_tokens": 40}),
    "completions with usage": ("completions.create", {
        "prompt": "The capital of France is", "temperature": 0, "max_tokens": 12,
        "stream_options": {"include_usage": True}}),
}


@pytest.mark.parametrize("case", STREAM_CASES)
def test_stream_matches_vllm(direct: openai.OpenAI, through: openai.OpenAI, case: str) -> None:
    call, kwargs = STREAM_CASES[case]
    from_vllm, from_gateway = both(direct, through, call, model="smollm2", stream=True, **kwargs)
    if "tools" in kwargs:
        for events in (from_vllm, from_gateway):
            for event in events:
                for choice in event["choices"]:
                    for tool_call in (choice["delta"].get("tool_calls") or []):
                        tool_call["id"] = "call" if tool_call.get("id") else None
    if kwargs.get("n", 1) > 1:
        # vLLM interleaves and groups the choices' chunks as its engine steps finish them, which differs run to
        # run: compare what each choice adds up to (text, logprobs, finish_reason) and the usage chunk.
        (from_vllm, vllm_values), (from_gateway, gateway_values) = (split_logprobs(assembled(events))
                                                                      for events in (from_vllm, from_gateway))
        assert gateway_values == pytest.approx(vllm_values, abs=1e-4)
    assert from_gateway == from_vllm
    if kwargs.get("stream_options"):
        usage = from_gateway["usage"] if isinstance(from_gateway, dict) else from_gateway[-1]["usage"]
        assert usage["completion_tokens"] > 0


def assembled(events: list[dict[str, Any]]) -> dict[str, Any]:
    """A chat stream's choices put back together, by index."""
    choices: dict[int, dict[str, Any]] = {}
    for event in events:
        for choice in event["choices"]:
            whole = choices.setdefault(choice["index"], {"content": "", "logprobs": [], "finish_reason": None})
            whole["content"] += choice["delta"].get("content") or ""
            whole["logprobs"] += (choice.get("logprobs") or {}).get("content") or []
            whole["finish_reason"] = choice["finish_reason"] or whole["finish_reason"]
    return {"choices": choices, "usage": events[-1].get("usage"), "model": {e["model"] for e in events}}


def split_logprobs(stream: dict[str, Any]) -> tuple[dict[str, Any], list[float]]:
    """An assembled stream with every log-probability (each token's and its top ones') taken out, and those values
    in order. The engine batches the choices differently run to run, and a batch of another shape moves them in
    the last float bits (seen: -2.698392152786255 against -2.698392629623413 for the same token): they are
    compared to a tolerance, everything else exactly."""
    values: list[float] = []

    def take(entry: dict[str, Any]) -> dict[str, Any]:
        values.append(entry["logprob"])
        return {**entry, "logprob": None, "top_logprobs": [take(top) for top in entry.get("top_logprobs") or []]}

    choices = {index: {**whole, "logprobs": [take(entry) for entry in whole["logprobs"]]}
               for index, whole in stream["choices"].items()}
    return {**stream, "choices": choices}, values


COMPLETION_CASES = {
    "echo with logprobs": {"prompt": "Hello, my name is", "echo": True, "logprobs": 2, "max_tokens": 6,
                           "temperature": 0},
    "prompt list": {"prompt": ["One, two,", "Red, green,"], "max_tokens": 6, "temperature": 0},
    "n with seed": {"prompt": "Once upon a time", "n": 3, "seed": 11, "temperature": 1.0, "max_tokens": 8},
    "token ids prompt": {"prompt": [1, 2, 3, 4], "max_tokens": 4, "temperature": 0},
}


@pytest.mark.parametrize("case", COMPLETION_CASES)
def test_completion_matches_vllm(direct: openai.OpenAI, through: openai.OpenAI, case: str) -> None:
    from_vllm, from_gateway = both(direct, through, "completions.create", model="smollm2",
                                   **COMPLETION_CASES[case])
    assert from_gateway == from_vllm


def test_second_model_matches_vllm(gemma: VLLMServer, through: openai.OpenAI) -> None:
    """Gemma 3 270M (another architecture and tokenizer, a chat template passed to vLLM) relays the same."""
    kwargs = {"model": "gemma-3-270m", "temperature": 0, "max_tokens": 12}
    from_vllm, from_gateway = both(direct_client(gemma), through, "chat.completions.create", messages=MESSAGES,
                                   **kwargs)
    assert from_gateway == from_vllm
    from_vllm, from_gateway = both(direct_client(gemma), through, "completions.create",
                                   prompt="The capital of France is", **kwargs)
    assert from_gateway == from_vllm


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings_match_vllm(minilm: VLLMServer, through: openai.OpenAI, encoding: str) -> None:
    kwargs = {"model": "all-minilm-l6-v2", "input": ["a cat sat on the mat", "stock markets fell"],
              "encoding_format": encoding}
    from_vllm, from_gateway = both(direct_client(minilm), through, "embeddings.create", **kwargs)
    assert from_gateway == from_vllm
    assert len(from_gateway["data"]) == 2 and from_gateway["usage"]["prompt_tokens"] > 0


def test_native_responses_match_vllm(direct: openai.OpenAI, through: openai.OpenAI) -> None:
    """``responses_api: native`` hands /v1/responses to vLLM's own: the same response object, streams too."""
    request = {"input": "Say hello in French.", "temperature": 0, "max_output_tokens": 16}
    from_vllm = direct.responses.create(model="smollm2", **request)
    from_gateway = through.responses.create(model="smollm2-native", **request)
    assert from_gateway.output_text == from_vllm.output_text
    assert from_gateway.usage == from_vllm.usage and from_gateway.status == from_vllm.status
    assert from_gateway.model == "smollm2-native"
    events_vllm = [event.type for event in direct.responses.create(model="smollm2", stream=True, **request)]
    events_gateway = [event.type for event in through.responses.create(model="smollm2-native", stream=True,
                                                                       **request)]
    assert events_gateway == events_vllm


def test_translated_responses_answer_as_vllm_does(direct: openai.OpenAI, through: openai.OpenAI) -> None:
    """The default (``translate``) serves /v1/responses over vLLM's chat completions: the same text and token
    counts as vLLM's own Responses endpoint, the same event kinds in a stream."""
    request = {"input": "Say hello in French.", "temperature": 0, "max_output_tokens": 16}
    from_vllm = direct.responses.create(model="smollm2", **request)
    from_gateway = through.responses.create(model="smollm2", **request)
    assert from_gateway.output_text == from_vllm.output_text
    assert (from_gateway.usage.input_tokens, from_gateway.usage.output_tokens) == (
        from_vllm.usage.input_tokens, from_vllm.usage.output_tokens)
    assert from_gateway.status == from_vllm.status
    streamed = list(through.responses.create(model="smollm2", stream=True, **request))
    # max_output_tokens was reached: the stream ends in response.incomplete, as OpenAI's does and as the status
    # of vLLM's own non-streamed answer says (vLLM 0.32's own stream ends in response.completed: README).
    assert from_vllm.status == "incomplete"
    assert streamed[-1].type == "response.incomplete" and streamed[-1].response.status == "incomplete"
    assert "".join(e.delta for e in streamed if e.type == "response.output_text.delta") == from_vllm.output_text


def test_messages_native_and_translated_answer_as_vllm_does(smollm2: VLLMServer, gateway: LiveGateway) -> None:
    """/v1/messages with Anthropic's SDK: ``messages_api: native`` hands it to vLLM's own endpoint (the same
    Message), and the default translation over vLLM's chat gives the same text and token counts as vLLM's own
    /v1/messages; streamed, the SDK's accumulated message has that text too."""
    import anthropic

    request = {"max_tokens": 16, "system": "Answer briefly.",
               "messages": [{"role": "user", "content": "Say hello in French."}], "extra_body": {"temperature": 0}}
    direct = anthropic.Anthropic(base_url=smollm2.url, api_key="unused", max_retries=0)
    from_vllm = direct.messages.create(model="smollm2", **request)
    through = gateway.anthropic_client()
    native = through.messages.create(model="smollm2-native", **request)
    translated = through.messages.create(model="smollm2", **request)
    for answer, model in ((native, "smollm2-native"), (translated, "smollm2")):
        assert [block.type for block in answer.content] == [block.type for block in from_vllm.content]
        assert answer.content[0].text == from_vllm.content[0].text, model
        assert (answer.usage.input_tokens, answer.usage.output_tokens) == (
            from_vllm.usage.input_tokens, from_vllm.usage.output_tokens), model
        assert answer.stop_reason == from_vllm.stop_reason == "max_tokens" and answer.model == model
    for model in ("smollm2-native", "smollm2"):
        with through.messages.stream(model=model, **request) as stream:
            final = stream.get_final_message()
        assert final.content[0].text == from_vllm.content[0].text and final.stop_reason == "max_tokens", model


# Where vLLM 0.32's own answers leave OpenAI's schemas: optional fields sent as null where the schema wants them
# absent (or a value), and a Response without its required ``error``. vLLM's shape, which the gateway relays
# unchanged (the differential tests above hold it to vLLM's bytes); README lists them. Chat: these nulls, and a
# logprobs object without ``refusal``.
VLLM_CHAT_NULLS = {"annotations", "function_call", "completion_tokens_details", "prompt_tokens_details"}
# Its own /v1/responses (``responses_api: native``): these nulls (on echoed tools and function calls too), ``error``
# missing, and an output_text's ``logprobs`` null where the schema wants a list.
VLLM_RESPONSES_NULLS = {"user", "text", "usage", "phase", "allowed_callers", "async", "defer_loading", "caller",
                        "namespace"}


def without_vllm_deviations(value: Any, nulls: set[str]) -> Any:
    """``value`` as OpenAI's schema has it, undoing exactly the deviations listed above."""
    if isinstance(value, dict):
        fixed = {key: without_vllm_deviations(item, nulls) for key, item in value.items()
                 if not (key in nulls and item is None)}
        if nulls is VLLM_RESPONSES_NULLS and fixed.get("object") == "response":
            fixed.setdefault("error", None)
        if nulls is VLLM_RESPONSES_NULLS and fixed.get("type") == "output_text" and fixed.get("logprobs") is None:
            fixed["logprobs"] = []
        tokens = fixed.get("content")
        if nulls is VLLM_CHAT_NULLS and isinstance(tokens, list) and tokens and isinstance(tokens[0], dict) \
                and "logprob" in tokens[0]:
            fixed.setdefault("refusal", None)
        return fixed
    if isinstance(value, list):
        return [without_vllm_deviations(item, nulls) for item in value]
    return value


def test_answers_through_the_gateway_conform_to_openais_schemas(gateway: LiveGateway) -> None:
    """vLLM's answers as the gateway relays or translates them, raw JSON, against OpenAI's published schemas
    (``tests/support/openapi.py``): chat and its stream, a tool call, Responses translated and native, every
    stream event of both."""
    from tests.support.openapi import assert_conforms, assert_event_conforms, sse_events

    def post(path: str, body: dict[str, Any]) -> Any:
        response = httpx.post(f"{gateway.base_url}/{path}", json=body, timeout=120)
        assert response.status_code == 200, response.text
        nulls = VLLM_RESPONSES_NULLS if body["model"] == "smollm2-native" else VLLM_CHAT_NULLS
        if body.get("stream"):
            return [without_vllm_deviations(event, nulls) for event in sse_events(response)]
        return without_vllm_deviations(response.json(), nulls)

    for chat in ({"messages": MESSAGES, "max_tokens": 8},
                 {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER_TOOL],
                  "tool_choice": "required", "max_tokens": 40}):
        body = {"model": "smollm2", "temperature": 0, **chat}
        assert_conforms(post("chat/completions", body), "CreateChatCompletionResponse")
        for chunk in post("chat/completions", {**body, "stream": True, "stream_options": {"include_usage": True}}):
            assert_conforms(chunk, "CreateChatCompletionStreamResponse")
    for model in ("smollm2", "smollm2-native"):
        body = {"model": model, "input": "Say hello in French.", "temperature": 0, "max_output_tokens": 16}
        assert_conforms(post("responses", body), "Response")
        for event in post("responses", {**body, "stream": True}):
            assert_event_conforms(event)


ERROR_CASES = {
    "prompt over max-model-len": {"messages": [{"role": "user", "content": "word " * 2100}], "max_tokens": 4},
    "max_tokens over context": {"messages": MESSAGES, "max_tokens": 5000},
    "n above 1 when greedy": {"messages": MESSAGES, "temperature": 0, "n": 2},
    "too many top_logprobs": {"messages": MESSAGES, "logprobs": True, "top_logprobs": 50},
    "unknown tool choice": {"messages": MESSAGES, "tools": [WEATHER_TOOL],
                            "tool_choice": {"type": "function", "function": {"name": "nope"}}},
    "repetition_penalty of 0": {"messages": MESSAGES, "extra_body": {"repetition_penalty": 0}},
}
# Values outside the ranges of OpenAI's API are refused by the gateway itself, for every backend alike, before
# any upstream sees them: the same status as vLLM's, the gateway's own message naming the parameter.
GATEWAY_VALIDATED_CASES = {
    "negative temperature": ("temperature", {"messages": MESSAGES, "temperature": -1}),
    "top_p out of range": ("top_p", {"messages": MESSAGES, "top_p": 1.5}),
}


def errors_of(direct: openai.OpenAI, through: openai.OpenAI, kwargs: dict[str, Any]) -> list[openai.APIStatusError]:
    errors = []
    for client in (direct, through):
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="smollm2", **kwargs)
        errors.append(caught.value)
    return errors


@pytest.mark.parametrize("case", ERROR_CASES)
def test_vllm_errors_keep_status_and_message(direct: openai.OpenAI, through: openai.OpenAI, case: str) -> None:
    from_vllm, from_gateway = errors_of(direct, through, ERROR_CASES[case])
    assert 400 <= from_vllm.status_code < 500
    assert from_gateway.status_code == from_vllm.status_code
    assert from_gateway.body["message"] == from_vllm.body["message"]
    assert from_gateway.body["type"] == "invalid_request_error"


@pytest.mark.parametrize("case", GATEWAY_VALIDATED_CASES)
def test_out_of_range_values_keep_vllms_status(direct: openai.OpenAI, through: openai.OpenAI, case: str) -> None:
    param, kwargs = GATEWAY_VALIDATED_CASES[case]
    from_vllm, from_gateway = errors_of(direct, through, kwargs)
    assert from_gateway.status_code == from_vllm.status_code == 400
    assert from_gateway.body["param"] == param and param in from_gateway.body["message"]


def test_unknown_model_is_404_like_vllm(direct: openai.OpenAI, through: openai.OpenAI) -> None:
    for client in (direct, through):
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="no-such-model", messages=MESSAGES)
        assert "no-such-model" in caught.value.message


def test_models_lists_every_configured_model(gateway: LiveGateway) -> None:
    names = {model.id for model in gateway.client().models.list()}
    assert names == {"smollm2", "smollm2-native", "gemma-3-270m", "all-minilm-l6-v2"}


@pytest.mark.parametrize("path", ["/tokenize", "/detokenize", "/pooling", "/v1/score"])
def test_vllm_only_endpoints_answer_openai_shaped_404(gateway: LiveGateway, smollm2: VLLMServer,
                                                      path: str) -> None:
    """vLLM's non-OpenAI endpoints are not relayed (README: "vLLM's own endpoints"): a clear 404 in OpenAI's
    error shape, while vLLM itself serves them."""
    body = {"model": "smollm2", "prompt": "hello", "tokens": [1, 2]}
    answer = httpx.post(f"{gateway.url}{path}", json=body, timeout=10)
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "not_found"
    if path in ("/tokenize", "/detokenize"):
        assert httpx.post(f"{smollm2.url}{path}", json=body, timeout=10).status_code == 200
