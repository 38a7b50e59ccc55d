"""The conformance cases SmolLM2-135M cannot pass by its nature, against a scripted tool-capable upstream:

- parallel tool calls and ``tool_choice: "auto"`` (a model without a trained tool format has no way to decide to
  call, or to call twice; the local backend answers ``auto`` with a 400, README "What the local backend does");
- reasoning present and not leaked (SmolLM2 does not think apart from its answer);
- image input (no vision-language model is installable here).

Each blocking and streamed; every answer validated against OpenAI's schemas (``tests/support/openapi.py``), and
translated into the Responses API and Anthropic's Messages API too."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.support.openapi import assert_conforms, assert_event_conforms, sse_events
from tests.support.upstream import Reply

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALLS = [{"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
         {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]
THOUGHT, ANSWER = "The user wants a greeting; keep it short.", "Hello!"
PIXEL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAA"
         "AABJRU5ErkJggg==")  # one red pixel


def _chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
    return "data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                                  "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                               "finish_reason": finish_reason}]}) + "\n\n"


USAGE = ('data: {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [], '
         '"usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}}\n\ndata: [DONE]\n\n')


def _parallel_calls(body: dict[str, Any]) -> Reply:
    if body.get("stream"):
        deltas = [_chunk({"role": "assistant", "content": None})]
        for index, call in enumerate(CALLS):
            deltas.append(_chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                                  "function": {"name": "get_weather", "arguments": ""}}]}))
            deltas.append(_chunk({"tool_calls": [{"index": index, "function": {
                "arguments": call["function"]["arguments"]}}]}))
        return Reply(raw_sse="".join(deltas) + _chunk({}, "tool_calls") + USAGE)
    return Reply(extra={"choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None, "message": {
        "role": "assistant", "content": None, "refusal": None, "tool_calls": CALLS}}]})


def _reasoning(body: dict[str, Any]) -> Reply:
    if body.get("stream"):
        return Reply(raw_sse=_chunk({"role": "assistant", "reasoning": THOUGHT}) + _chunk({"content": ANSWER})
                     + _chunk({}, "stop") + USAGE)
    return Reply(extra={"choices": [{"index": 0, "finish_reason": "stop", "logprobs": None, "message": {
        "role": "assistant", "content": ANSWER, "refusal": None, "reasoning": THOUGHT}}]})


@pytest.fixture
def capable(upstream, make_gateway):
    gateway = make_gateway({"models": [{"name": "alpha", "backend": "openai", "base_url": upstream.base_url,
                                        "vision": True}]})
    return upstream, gateway


def _post(gateway: Any, path: str, body: dict[str, Any]) -> httpx.Response:
    response = httpx.post(f"{gateway.base_url}/{path}", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response


@pytest.mark.parametrize("tool_choice", ["auto", "required"])
def test_parallel_tool_calls_conform_in_chat_responses_and_messages(capable, tool_choice: str) -> None:
    upstream, gateway = capable
    upstream.responder = _parallel_calls
    chat = {"model": "alpha", "messages": [{"role": "user", "content": "Weather in Paris and Rome?"}],
            "tools": [WEATHER], "tool_choice": tool_choice, "parallel_tool_calls": True}
    whole = _post(gateway, "chat/completions", chat).json()
    assert_conforms(whole, "CreateChatCompletionResponse")
    assert [c["function"]["arguments"] for c in whole["choices"][0]["message"]["tool_calls"]] == [
        '{"city":"Paris"}', '{"city":"Rome"}']
    for chunk in sse_events(_post(gateway, "chat/completions", {**chat, "stream": True})):
        assert_conforms(chunk, "CreateChatCompletionStreamResponse")

    tools = [{"type": "function", **WEATHER["function"]}]
    ask = {"model": "alpha", "input": "Weather in Paris and Rome?", "tools": tools, "tool_choice": tool_choice}
    response = _post(gateway, "responses", ask).json()
    assert_conforms(response, "Response")
    assert [(item["type"], item["call_id"]) for item in response["output"]] == [("function_call", "call_a"),
                                                                                ("function_call", "call_b")]
    events = sse_events(_post(gateway, "responses", {**ask, "stream": True}))
    for event in events:
        assert_event_conforms(event)
    assert [item["arguments"] for item in events[-1]["response"]["output"]] == ['{"city":"Paris"}',
                                                                               '{"city":"Rome"}']

    message = httpx.post(f"{gateway.url}/v1/messages", json={
        "model": "alpha", "max_tokens": 50, "messages": [{"role": "user", "content": "Weather in Paris and Rome?"}],
        "tools": [{"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}],
        "tool_choice": {"type": "auto" if tool_choice == "auto" else "any"}}).json()
    assert [(block["type"], block["input"]) for block in message["content"]] == [
        ("tool_use", {"city": "Paris"}), ("tool_use", {"city": "Rome"})] and message["stop_reason"] == "tool_use"


def test_reasoning_is_present_apart_and_never_leaks_into_the_answer(capable) -> None:
    upstream, gateway = capable
    upstream.responder = _reasoning
    chat = {"model": "alpha", "messages": [{"role": "user", "content": "Greet me."}]}
    whole = _post(gateway, "chat/completions", chat).json()
    assert_conforms(whole, "CreateChatCompletionResponse")
    message = whole["choices"][0]["message"]
    assert message["reasoning"] == THOUGHT and message["content"] == ANSWER
    chunks = sse_events(_post(gateway, "chat/completions", {**chat, "stream": True}))
    for chunk in chunks:
        assert_conforms(chunk, "CreateChatCompletionStreamResponse")
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == ANSWER
    assert "".join(d.get("reasoning") or "" for d in deltas) == THOUGHT

    for stream in (False, True):
        body = {"model": "alpha", "input": "Greet me.", "stream": stream}
        if stream:
            events = sse_events(_post(gateway, "responses", body))
            for event in events:
                assert_event_conforms(event)
            response = events[-1]["response"]
        else:
            response = _post(gateway, "responses", body).json()
            assert_conforms(response, "Response")
        thought, answer = response["output"]
        assert thought["type"] == "reasoning" and thought["content"][0]["text"] == THOUGHT
        assert answer["content"][0]["text"] == ANSWER and THOUGHT not in json.dumps(answer)


def test_image_input_reaches_a_vision_upstream_in_chat_and_responses(capable) -> None:
    upstream, gateway = capable
    upstream.responder = lambda body: Reply(text="a red pixel")
    parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": PIXEL}}]
    for stream in (False, True):
        chat = _post(gateway, "chat/completions", {"model": "alpha", "stream": stream,
                                                   "messages": [{"role": "user", "content": parts}]})
        for answer in (sse_events(chat) if stream else [chat.json()]):
            assert_conforms(answer, "CreateChatCompletionStreamResponse" if stream else "CreateChatCompletionResponse")
        assert upstream.calls[-1].body["messages"][0]["content"][1]["image_url"]["url"] == PIXEL
        body = {"model": "alpha", "stream": stream, "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": PIXEL}]}]}
        response = _post(gateway, "responses", body)
        if stream:
            for event in sse_events(response):
                assert_event_conforms(event)
        else:
            assert_conforms(response.json(), "Response")
            assert response.json()["output"][0]["content"][0]["text"].strip() == "a red pixel"
        assert upstream.calls[-1].body["messages"][0]["content"][1] == {"type": "image_url",
                                                                        "image_url": {"url": PIXEL}}
