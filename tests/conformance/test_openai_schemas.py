"""Every answer of the embedded default, blocking and streamed, validated against OpenAI's published response
schemas (the openai/openai-openapi document, ``tests/support/openapi.py``): chat, tool calls, JSON schema output,
completions, embeddings, the Responses API (every stream event too), the model list and errors. Raw JSON over
httpx, not the SDK's models, which fill in missing fields and so would hide them."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest

from tests.support.openapi import assert_conforms, assert_event_conforms, sse_events

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m"
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string", "maxLength": 20}}, "required": ["city"]}}}
CHAT_CASES: dict[str, dict[str, Any]] = {
    "basic": {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8},
    "system prompt": {"messages": [{"role": "system", "content": "You answer in French."},
                                   {"role": "user", "content": "Say hello."}], "max_tokens": 8},
    "logprobs": {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4, "logprobs": True,
                 "top_logprobs": 2},
    "required tool call": {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER],
                           "tool_choice": "required", "max_tokens": 40},
    "json_schema": {"messages": [{"role": "user", "content": "A city as JSON."}], "max_tokens": 40,
                    "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": {
                        "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                        "required": ["city"]}}}},
    "complex schema": {"messages": [{"role": "user", "content": "A trip as JSON."}], "max_tokens": 80,
                       "response_format": {"type": "json_schema", "json_schema": {"name": "trip", "schema": {
                           "type": "object", "required": ["city", "days", "mode", "stops"], "properties": {
                               "city": {"type": "string", "maxLength": 12},
                               "days": {"type": "integer", "minimum": 1, "maximum": 9},
                               "mode": {"enum": ["train", "plane"]},
                               "stops": {"type": "array", "maxItems": 2, "items": {
                                   "type": "object", "required": ["name"],
                                   "properties": {"name": {"type": "string", "maxLength": 10}}}}}}}}},
    "agentic multi-turn": {"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C."}], "tools": [WEATHER],
        "tool_choice": "none", "max_tokens": 16},
    "multi-turn": {"messages": [{"role": "user", "content": "My name is Ada."},
                                {"role": "assistant", "content": "Hello Ada."},
                                {"role": "user", "content": "What is my name?"}], "max_tokens": 8},
}


def _post(gateway: Any, path: str, body: dict[str, Any]) -> httpx.Response:
    response = httpx.post(f"{gateway.base_url}/{path}", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response


@pytest.mark.parametrize("case", CHAT_CASES)
def test_chat_answers_conform_blocking_and_streamed(embedded_gateway, case: str) -> None:
    body = {"model": MODEL, "temperature": 0, **CHAT_CASES[case]}
    assert_conforms(_post(embedded_gateway, "chat/completions", body).json(), "CreateChatCompletionResponse")
    chunks = sse_events(_post(embedded_gateway, "chat/completions", {
        **body, "stream": True, "stream_options": {"include_usage": True}}))
    assert chunks and chunks[-1]["usage"]["completion_tokens"] > 0
    for chunk in chunks:
        assert_conforms(chunk, "CreateChatCompletionStreamResponse")
    if "response_format" in body:  # the streamed text is the same valid JSON
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        jsonschema.validate(json.loads(text), body["response_format"]["json_schema"]["schema"])


def test_completions_and_embeddings_conform(embedded_gateway) -> None:
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
    assert_conforms(_post(embedded_gateway, "completions", body).json(), "CreateCompletionResponse")
    chunks = sse_events(_post(embedded_gateway, "completions", {**body, "stream": True}))
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    for chunk in chunks:
        # The document gives streamed and whole completions one shape, whose finish_reason is a string; OpenAI's
        # own streams (and vLLM's) send null before the last chunk, so that one field is checked as they send it.
        assert all(choice["finish_reason"] is None for choice in chunk["choices"]) or chunk is chunks[-1]
        assert_conforms({**chunk, "choices": [{**choice, "finish_reason": choice["finish_reason"] or "length"}
                                              for choice in chunk["choices"]]}, "CreateCompletionResponse")
    embeddings = _post(embedded_gateway, "embeddings", {"model": "all-minilm-l6-v2", "input": ["a", "b"]}).json()
    assert_conforms(embeddings, "CreateEmbeddingResponse")
    assert_conforms(httpx.get(f"{embedded_gateway.base_url}/models").json(), "ListModelsResponse")


RESPONSES_CASES: dict[str, dict[str, Any]] = {
    "basic": {"input": "Say hello.", "max_output_tokens": 8},
    "system prompt": {"input": "Say hello.", "instructions": "You answer in French.", "max_output_tokens": 8},
    "tool calling": {"input": "Weather in Paris?", "tool_choice": "required", "max_output_tokens": 40,
                     "tools": [{"type": "function", **WEATHER["function"]}]},
    "multi-turn": {"input": [{"role": "user", "content": "My name is Ada."},
                             {"role": "assistant", "content": "Hello Ada."},
                             {"role": "user", "content": "What is my name?"}], "max_output_tokens": 8},
}


@pytest.mark.parametrize("case", RESPONSES_CASES)
def test_responses_conform_blocking_and_every_stream_event(embedded_gateway, case: str) -> None:
    body = {"model": MODEL, "temperature": 0, **RESPONSES_CASES[case]}
    assert_conforms(_post(embedded_gateway, "responses", body).json(), "Response")
    events = sse_events(_post(embedded_gateway, "responses", {**body, "stream": True}))
    for event in events:
        assert_event_conforms(event)
    assert events[-1]["type"] in ("response.completed", "response.incomplete")
    if case == "tool calling":  # a function_call item, its arguments streamed as deltas
        kinds = [event["type"] for event in events]
        assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
        assert [item["type"] for item in events[-1]["response"]["output"]] == ["function_call"]


def test_errors_conform(embedded_gateway) -> None:
    for body in ({"model": MODEL}, {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
                 {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 5}):
        response = httpx.post(f"{embedded_gateway.base_url}/chat/completions", json=body, timeout=30)
        assert 400 <= response.status_code < 500
        assert_conforms(response.json(), "ErrorResponse")
