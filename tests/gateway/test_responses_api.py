"""POST /v1/responses with the openai SDK: translated to chat for any backend, passed through natively to
upstreams that serve it, and the stateful parts refused with 400s that name the field."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.support.openapi import assert_conforms, assert_event_conforms, sse_events

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                          "required": ["city"], "additionalProperties": False}}


@pytest.fixture
def translated(upstream, make_gateway):
    return make_gateway({"models": [{"name": "alpha", "backend": "openai", "base_url": upstream.base_url}]})


def test_a_response_is_served_through_chat_and_answered_in_responses_shape(upstream, translated):
    response = translated.client().responses.create(model="alpha", input="hello there", instructions="Be brief.",
                                                    max_output_tokens=50, temperature=0.2)
    assert response.status == "completed" and response.output_text == "alpha: hello there"
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    sent = upstream.calls[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["messages"] == [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "hello there"}]
    assert sent.body["max_completion_tokens"] == 50 and sent.body["temperature"] == 0.2


def test_streamed_response_events_in_order(translated):
    events = list(translated.client().responses.create(model="alpha", input="one two three", stream=True))
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert kinds.index("response.output_item.added") < kinds.index("response.output_text.delta")
    assert kinds.index("response.output_text.done") < kinds.index("response.output_item.done")
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert text.strip() == "alpha: one two three"
    final = events[-1].response
    assert final.output_text.strip() == text.strip() and final.usage.output_tokens > 0


def test_function_calls_and_their_outputs_become_chat_history(upstream, translated):
    history = [{"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
               {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
               {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]
    translated.client().responses.create(model="alpha", input=history, tools=[WEATHER], tool_choice="auto",
                                         text={"format": {"type": "json_schema", "name": "w", "strict": True,
                                                          "schema": {"type": "object"}}})
    sent = upstream.calls[-1].body
    assert sent["messages"][1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    assert sent["tools"] == [{"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}]
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "w", "strict": True,
                                                                             "schema": {"type": "object"}}}


def test_an_upstream_tool_call_is_a_function_call_item(upstream, translated):
    from tests.support.upstream import Reply

    call = {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}
    upstream.responder = lambda body: Reply(extra={"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [call]}}]})
    response = translated.client().responses.create(model="alpha", input="Weather in Rome?", tools=[WEATHER])
    (item,) = response.output
    assert (item.type, item.call_id, item.name, json.loads(item.arguments)) == ("function_call", "call_9",
                                                                                  "get_weather", {"city": "Rome"})


def _reasoning_stream(field: str) -> str:
    """A vLLM-style chat stream that thinks (in ``field``) before it answers."""
    def chunk(delta: dict) -> str:
        return "data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                                      "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}) + "\n\n"
    final = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    return (chunk({"role": "assistant", field: "Paris is "}) + chunk({field: "in France."})
            + chunk({"content": "Paris."}) + f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n")


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_upstream_reasoning_is_relayed_in_chat_and_becomes_a_reasoning_item(upstream, translated, field):
    from tests.support.upstream import Reply

    upstream.responder = lambda body: Reply(raw_sse=_reasoning_stream(field)) if body.get("stream") else Reply(
        extra={"choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "Paris.", field: "Paris is in France."}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14,
                      "completion_tokens_details": {"reasoning_tokens": 6}}})
    client = translated.client()
    chat = client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "Capital?"}])
    assert chat.choices[0].message.model_extra[field] == "Paris is in France."  # relayed as the upstream sent it
    streamed = list(client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "Capital?"}],
                                                   stream=True))
    assert "".join(c.choices[0].delta.model_extra.get(field) or "" for c in streamed if c.choices) \
        == "Paris is in France."

    response = client.responses.create(model="alpha", input="Capital?")
    thought, answer = response.output
    assert thought.type == "reasoning" and thought.content[0].text == "Paris is in France."
    assert answer.type == "message" and response.output_text == "Paris."
    assert response.usage.output_tokens_details.reasoning_tokens == 6

    events = list(client.responses.create(model="alpha", input="Capital?", stream=True))
    kinds = [event.type for event in events]
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == "Paris is in France."
    raw = sse_events(httpx.post(f"{translated.base_url}/responses", json={"model": "alpha", "input": "Capital?",
                                                                          "stream": True}))
    for event in raw:  # the reasoning events and item as OpenAI's schemas define them
        assert_event_conforms(event)
    assert_conforms(httpx.post(f"{translated.base_url}/responses", json={"model": "alpha", "input": "Capital?"}
                               ).json(), "Response")
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")
    final = events[-1].response
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output[0].content[0].text == "Paris is in France." and final.output_text == "Paris."


def test_reasoning_items_sent_back_by_a_stateless_agent_stay_out_of_the_prompt(upstream, translated):
    history = [{"role": "user", "content": "Capital of France?"},
               {"type": "reasoning", "id": "rs_1", "summary": [],
                "content": [{"type": "reasoning_text", "text": "It is Paris."}]},
               {"role": "assistant", "content": [{"type": "output_text", "text": "Paris."}]},
               {"role": "user", "content": "And of Italy?"}]
    translated.client().responses.create(model="alpha", input=history)
    assert [m["role"] for m in upstream.calls[-1].body["messages"]] == ["user", "assistant", "user"]


def test_native_upstreams_get_the_responses_body_as_sent(upstream, make_gateway):
    gateway = make_gateway({"models": [{"name": "alpha", "backend": "openai", "base_url": upstream.base_url,
                                        "upstream_model": "org/alpha-7b", "responses_api": "native"}]})
    client = gateway.client()
    response = client.responses.create(model="alpha", input="hi", max_output_tokens=9,
                                       extra_body={"vendor_field": 1})
    assert response.output_text == "alpha native: hi" and response.model == "alpha"
    sent = upstream.calls[-1]
    assert sent.path == "/v1/responses"
    assert sent.body == {"model": "org/alpha-7b", "input": "hi", "max_output_tokens": 9, "vendor_field": 1}
    events = list(client.responses.create(model="alpha", input="hi", stream=True))
    assert [e.type for e in events][0] == "response.created" and events[-1].type == "response.completed"
    assert events[-1].response.model == "alpha"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta").strip() == "alpha native: hi"
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'endpoint="responses"' in metrics


@pytest.mark.parametrize("fields, param", [
    ({"previous_response_id": "resp_1"}, "previous_response_id"), ({"store": True}, "store"),
    ({"background": True}, "background"), ({"conversation": "conv_1"}, "conversation"),
    ({"tools": [{"type": "web_search"}]}, "tools.0"), ({"include": ["file_search_call.results"]}, "include"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input.0.type"),
    ({"text": {"format": {"type": "yaml"}}}, "text.format")])
def test_unsupported_parts_are_400s_naming_the_field(translated, fields, param):
    body = {"model": "alpha", "input": "hi", **fields}
    with pytest.raises(openai.BadRequestError) as refused:
        translated.client().post("/responses", cast_to=httpx.Response, body=body)
    assert refused.value.status_code == 400 and refused.value.body["param"] == param


def test_unknown_model_is_a_404_and_store_false_passes(translated):
    client = translated.client()
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="hi")
    assert client.responses.create(model="alpha", input="hi", store=False).status == "completed"


@pytest.mark.slow
def test_responses_on_the_embedded_model(embedded_gateway):
    """The embedded SmolLM2: a round trip, a stream, a json_schema format and a forced function call."""
    client = embedded_gateway.client()
    response = client.responses.create(model="smollm2-135m", input="What is the capital of France?",
                                       max_output_tokens=12, temperature=0)
    assert response.output_text and response.usage.output_tokens <= 12
    streamed = [e for e in client.responses.create(model="smollm2-135m", input="What is the capital of France?",
                                                   max_output_tokens=12, temperature=0, stream=True)]
    assert "".join(e.delta for e in streamed if e.type == "response.output_text.delta") == response.output_text
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
              "additionalProperties": False}
    structured = client.responses.create(model="smollm2-135m", input="The capital of France, as JSON",
                                         max_output_tokens=40, text={"format": {"type": "json_schema", "name": "c",
                                                                                "schema": schema, "strict": True}})
    assert set(json.loads(structured.output_text)) == {"city"}
    called = client.responses.create(model="smollm2-135m", input="Weather in Paris?", tools=[WEATHER],
                                     tool_choice="required", max_output_tokens=40)
    (item,) = called.output
    assert item.type == "function_call" and item.name == "get_weather"
    assert isinstance(json.loads(item.arguments)["city"], str)
