"""POST /v1/messages (Anthropic's Messages API) with the anthropic SDK as the client: translated to chat for any
backend, passed through to upstreams that serve it (``messages_api: native``), errors in Anthropic's shape."""

from __future__ import annotations

import base64
import json

import anthropic
import httpx
import pytest

from tests.support.upstream import Reply

WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
KEY = "sk-team-messages"


@pytest.fixture
def translated(upstream, make_gateway):
    return make_gateway({"models": [{"name": "alpha", "backend": "openai", "base_url": upstream.base_url,
                                     "vision": True}]})


def _chunk(delta: dict, finish_reason: str | None = None, **choice: object) -> str:
    body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, **choice}]}
    return f"data: {json.dumps(body)}\n\n"


USAGE_CHUNK = ('data: {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [], '
               '"usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}}\n\n')


def test_a_message_is_served_through_chat_and_answered_in_anthropic_shape(upstream, translated):
    message = translated.anthropic_client().messages.create(
        model="alpha", max_tokens=50, system=[{"type": "text", "text": "Be brief.", "cache_control": {
            "type": "ephemeral"}}], messages=[{"role": "user", "content": "hello there"}], stop_sequences=["END"],
        metadata={"user_id": "u-1"}, extra_body={"temperature": 0.2, "top_k": 5})  # sampling: older clients' fields
    assert message.type == "message" and message.role == "assistant" and message.model == "alpha"
    assert message.id.startswith("msg_") and message.stop_reason == "end_turn" and message.stop_sequence is None
    assert [block.type for block in message.content] == ["text"] and message.content[0].text == "alpha: hello there"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    sent = upstream.calls[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["messages"] == [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "hello there"}]
    assert (sent.body["max_tokens"], sent.body["temperature"], sent.body["top_k"], sent.body["stop"],
            sent.body["user"]) == (50, 0.2, 5, ["END"], "u-1")


def test_the_stream_is_anthropics_event_sequence(translated):
    client = translated.anthropic_client()
    events = list(client.messages.create(model="alpha", max_tokens=20, stream=True,
                                         messages=[{"role": "user", "content": "one two three"}]))
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds[1] == "content_block_start" and kinds[-3] == "content_block_stop"
    assert set(kinds[2:-3]) == {"content_block_delta"}
    text = "".join(event.delta.text for event in events if event.type == "content_block_delta")
    assert text.strip() == "alpha: one two three"
    assert events[-2].delta.stop_reason == "end_turn" and events[-2].usage.output_tokens > 0
    # the SDK's own accumulator agrees
    with client.messages.stream(model="alpha", max_tokens=20, messages=[{"role": "user", "content": "a b"}]) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed.strip() == "alpha: a b" and final.content[0].text == streamed
    assert final.usage.input_tokens > 0 and final.stop_reason == "end_turn"


def test_tool_use_and_tool_results_become_chat_history_and_back(upstream, translated):
    image = base64.b64encode(b"\x89PNG fake").decode()
    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": [
                   {"type": "thinking", "thinking": "I should call the tool.", "signature": "sig"},
                   {"type": "text", "text": "Let me check."},
                   {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
               {"role": "user", "content": [
                   {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]},
                   {"type": "text", "text": "And this picture?"},
                   {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": image}}]}]
    call = {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}
    upstream.responder = lambda body: Reply(extra={"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [call]}}]})
    message = translated.anthropic_client().messages.create(
        model="alpha", max_tokens=60, messages=history, tools=[WEATHER],
        tool_choice={"type": "any", "disable_parallel_tool_use": True})
    sent = upstream.calls[-1].body
    assert sent["messages"][1] == {"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}
    assert sent["messages"][3]["content"] == [{"type": "text", "text": "And this picture?"}, {
        "type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}]
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": WEATHER["input_schema"], "description": "The weather in a city"}}]
    assert sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is False
    assert message.stop_reason == "tool_use"
    (block,) = message.content
    assert (block.type, block.id, block.name, block.input) == ("tool_use", "call_9", "get_weather", {"city": "Rome"})


def test_a_streamed_tool_call_is_a_tool_use_block_with_json_deltas(upstream, translated):
    sse = (_chunk({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_7", "type": "function",
                                                        "function": {"name": "get_weather", "arguments": ""}}]})
           + _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]})
           + _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]})
           + _chunk({}, "tool_calls") + USAGE_CHUNK + "data: [DONE]\n\n")
    upstream.responder = lambda body: Reply(raw_sse=sse)
    with translated.anthropic_client().messages.stream(model="alpha", max_tokens=60, tools=[WEATHER], messages=[
            {"role": "user", "content": "Weather in Oslo?"}]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "content_block_start" in kinds and final.stop_reason == "tool_use"
    (block,) = final.content
    assert (block.type, block.id, block.input) == ("tool_use", "call_7", {"city": "Oslo"})
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 4)


def test_reasoning_is_a_thinking_block_and_a_matched_stop_string_a_stop_sequence(upstream, translated):
    sse = (_chunk({"role": "assistant", "reasoning": "Paris is "}) + _chunk({"reasoning": "the capital."})
           + _chunk({"content": "Paris"}) + _chunk({}, "stop", stop_reason="END") + USAGE_CHUNK + "data: [DONE]\n\n")
    upstream.responder = lambda body: Reply(raw_sse=sse) if body.get("stream") else Reply(extra={"choices": [{
        "index": 0, "finish_reason": "stop", "stop_reason": "END", "message": {
            "role": "assistant", "content": "Paris", "reasoning_content": "Paris is the capital."}}]})
    client = translated.anthropic_client()
    ask = {"model": "alpha", "max_tokens": 30, "stop_sequences": ["END"],
           "messages": [{"role": "user", "content": "Capital of France?"}]}
    message = client.messages.create(**ask)
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Paris is the capital." and message.content[1].text == "Paris"
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")
    with client.messages.stream(**ask) as stream:
        final = stream.get_final_message()
    assert [block.type for block in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Paris is the capital." and final.content[1].text == "Paris"
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "END")


@pytest.mark.parametrize("fields, param", [
    ({"mcp_servers": [{"type": "url", "url": "http://x", "name": "x"}]}, "mcp_servers"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
    ({"not_a_field": 1}, "not_a_field"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "messages.0.content.0.type"),
    ({"messages": [{"role": "system", "content": "hi"}]}, "messages.0.role"),
    ({"output_config": {"format": {"type": "xml"}}}, "output_config.format"),
])
def test_what_cannot_be_translated_is_a_400_in_anthropic_shape(translated, fields, param):
    body = {"model": "alpha", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], **fields}
    response = httpx.post(f"{translated.url}/v1/messages", json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"].startswith(f"{param}: "), error


def test_sdk_errors_carry_anthropics_types(upstream, make_gateway):
    gateway = make_gateway({"models": [{"name": "alpha", "backend": "openai", "base_url": upstream.base_url}],
                            "auth": {"api_keys": [{"key": KEY, "name": "team"}]}})
    ask = {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(anthropic.AuthenticationError) as refused:
        gateway.anthropic_client(api_key="wrong").messages.create(model="alpha", **ask)
    assert refused.value.body["error"]["type"] == "authentication_error"
    client = gateway.anthropic_client(api_key=KEY)  # sent as x-api-key
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="nope", **ask)
    assert missing.value.body["error"]["type"] == "not_found_error" and "alpha" in missing.value.message
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model="alpha", max_tokens=0, messages=[{"role": "user", "content": "hi"}])
    assert bad.value.body["error"]["type"] == "invalid_request_error" and "max_tokens" in bad.value.message
    upstream.responder = lambda body: Reply(status=500)
    with pytest.raises(anthropic.APIStatusError) as failed:
        client.messages.create(model="alpha", **ask)
    assert failed.value.status_code == 502 and failed.value.body["error"]["type"] == "api_error"
    upstream.responder = lambda body: Reply(text="fine now")
    assert client.messages.create(model="alpha", **ask).content[0].text == "fine now"
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'endpoint="messages"' in metrics


def test_native_upstreams_get_the_messages_body_as_sent(upstream, make_gateway):
    gateway = make_gateway({"models": [{"name": "alpha", "backend": "openai", "base_url": upstream.base_url,
                                        "upstream_model": "org/alpha-7b", "messages_api": "native"}]})
    client = gateway.anthropic_client()
    thinking = {"type": "enabled", "budget_tokens": 1024}  # not translated, so the upstream decides
    message = client.messages.create(model="alpha", max_tokens=9, thinking=thinking,
                                     messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text == "alpha native: hi" and message.model == "alpha"
    sent = upstream.calls[-1]
    assert sent.path == "/v1/messages"
    assert sent.body == {"model": "org/alpha-7b", "max_tokens": 9, "thinking": thinking,
                         "messages": [{"role": "user", "content": "hi"}]}
    with client.messages.stream(model="alpha", max_tokens=9, messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.strip() == "alpha native: hi" and final.model == "alpha" and final.usage.input_tokens == 7
