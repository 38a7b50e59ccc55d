"""Structured output, forced tool calls and logprobs on the embedded SmolLM2-135M, with the openai SDK."""

from __future__ import annotations

import json
import math

import jsonschema
import openai
import pytest

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m"

CITY = {"type": "object", "additionalProperties": False, "required": ["city", "country", "population", "capital"],
        "properties": {"city": {"type": "string", "maxLength": 24}, "population": {"type": "integer", "minimum": 0},
                       "country": {"type": "string", "enum": ["France", "Germany", "Italy", "Other"]},
                       "capital": {"type": "boolean"}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string", "maxLength": 30},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "description": "The local time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                   "required": ["city"]}}}


def _ask(client: openai.OpenAI, text: str, **fields):  # type: ignore[no-untyped-def]
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}], **fields)


def test_json_schema_output_validates_every_time(embedded_gateway):
    client = embedded_gateway.client()
    cities = ["Paris", "Berlin", "Rome", "Lyon", "Munich"]
    for attempt in range(20):  # sampled at temperature 1: twenty different generations
        reply = _ask(client, f"Describe {cities[attempt % 5]} as JSON.", max_tokens=80, temperature=1.0,
                     seed=attempt, response_format={"type": "json_schema", "json_schema": {
                         "name": "city", "schema": CITY, "strict": True}})
        choice = reply.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), CITY)


def test_json_object_output_parses_as_an_object(embedded_gateway):
    reply = _ask(embedded_gateway.client(), "Give a JSON object with the name of a cat.", max_tokens=120,
                 response_format={"type": "json_object"}, temperature=0)
    # Nothing bounds a free object's length: it parses when it finishes, and otherwise stops at max_tokens.
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
    else:
        assert reply.choices[0].message.content.startswith("{")


def test_required_tool_call_validates_against_its_schema(embedded_gateway):
    client = embedded_gateway.client()
    reply = _ask(client, "What is the weather in Paris?", tools=[WEATHER, CLOCK], tool_choice="required",
                 max_tokens=60, temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.function.name in ("get_weather", "get_time")
    schema = (WEATHER if call.function.name == "get_weather" else CLOCK)["function"]["parameters"]
    jsonschema.validate(json.loads(call.function.arguments), schema)


def test_open_parameter_objects_are_closed_so_the_call_finishes_within_60_tokens(embedded_gateway):
    # No additionalProperties: JSON Schema would let any key through, and SmolLM2 then invents keys
    # ("properties", "temperature", ...) until max_tokens runs out (3 of 4 calls before objects were closed).
    open_tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}
    client = embedded_gateway.client()
    for seed in range(4):
        reply = _ask(client, "Weather in Paris?", tools=[open_tool], tool_choice="required", max_tokens=60,
                     seed=seed)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        assert set(json.loads(choice.message.tool_calls[0].function.arguments)) <= {"city"}
    reply = _ask(client, "Describe Paris as JSON.", max_tokens=60, seed=0, response_format={
        "type": "json_schema", "json_schema": {"name": "city", "schema": {
            "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}}})
    assert reply.choices[0].finish_reason == "stop"
    assert set(json.loads(reply.choices[0].message.content)) == {"city"}


def test_named_tool_call_streams_as_tool_call_deltas(embedded_gateway):
    chunks = list(_ask(embedded_gateway.client(), "Weather in Rome, in fahrenheit?", tools=[WEATHER, CLOCK],
                       tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=60,
                       stream=True))
    deltas = [call for chunk in chunks if chunk.choices for call in chunk.choices[0].delta.tool_calls or []]
    assert deltas and deltas[0].id.startswith("call_") and deltas[0].function.name == "get_weather"
    arguments = "".join(delta.function.arguments or "" for delta in deltas)
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_a_tool_round_trip_is_rendered_into_the_prompt(embedded_gateway):
    client = embedded_gateway.client()
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                             "arguments": '{"city":"Paris","unit":"celsius"}'}}
    history = [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": None,
                                                                 "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 31 degrees"}]
    reply = client.chat.completions.create(model=MODEL, messages=history, max_tokens=30, temperature=0)
    assert reply.choices[0].message.content  # the model answers from the tool's result
    assert reply.usage.prompt_tokens > 30  # the call and its result are in the prompt


def test_auto_tool_choice_and_bad_schemas_are_400s(embedded_gateway):
    client = embedded_gateway.client()
    cases = [({"tools": [WEATHER]}, "tool_choice"),
             ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
             ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}},
              "response_format.json_schema.schema"),
             ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"), ({"top_logprobs": 2}, "top_logprobs")]
    errors = []
    for fields, param in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            _ask(client, "hi", max_tokens=1, **fields)
        assert refused.value.body["param"] == param, fields
        errors.append(refused.value.body)
    assert errors[0]["code"] == "unsupported_parameter" and MODEL in errors[0]["message"]


def test_chat_logprobs_count_order_and_mass(embedded_gateway):
    reply = _ask(embedded_gateway.client(), "What is the capital of France?", max_tokens=10, temperature=0,
                 logprobs=True, top_logprobs=5)
    choice = reply.choices[0]
    entries = choice.logprobs.content
    # One entry per generated token (an EOS that ended it is not text and has none).
    assert len(entries) == reply.usage.completion_tokens - (choice.finish_reason == "stop")
    assert "".join(entry.token for entry in entries) == choice.message.content
    for entry in entries:
        tops = [top.logprob for top in entry.top_logprobs]
        assert len(tops) == 5 and tops == sorted(tops, reverse=True)
        assert entry.token == entry.top_logprobs[0].token and entry.logprob == pytest.approx(tops[0])  # greedy
        assert sum(math.exp(lp) for lp in tops) <= 1 + 1e-5 and all(lp <= 0 for lp in tops)
        assert bytes(entry.bytes).decode() == entry.token
    streamed = list(_ask(embedded_gateway.client(), "What is the capital of France?", max_tokens=10, temperature=0,
                         logprobs=True, top_logprobs=5, stream=True))
    streamed_entries = [entry for chunk in streamed if chunk.choices and chunk.choices[0].logprobs
                        for entry in chunk.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed_entries] == [(e.token, round(e.logprob, 4))
                                                                          for e in entries]


def test_completion_logprobs_with_echo_score_the_prompt_too(embedded_gateway):
    reply = embedded_gateway.client().completions.create(model=MODEL, prompt="The capital of France is",
                                                         max_tokens=4, temperature=0, logprobs=2, echo=True)
    choice, usage = reply.choices[0], reply.usage
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == usage.prompt_tokens + usage.completion_tokens
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(lp <= 0 for lp in logprobs.token_logprobs[1:])
    assert all(len(top) <= 2 for top in logprobs.top_logprobs[1:])
    assert "".join(logprobs.tokens) == choice.text
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(logprobs.tokens))]
    streamed = list(embedded_gateway.client().completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0, logprobs=2, echo=True,
        stream=True))
    pieces = [chunk.choices[0].logprobs for chunk in streamed if chunk.choices and chunk.choices[0].logprobs]
    assert [t for piece in pieces for t in piece.tokens] == logprobs.tokens
    assert [o for piece in pieces for o in piece.text_offset] == logprobs.text_offset
