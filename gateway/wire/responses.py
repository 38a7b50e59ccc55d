"""The Responses API (``POST /v1/responses``), stateless subset, served through chat completions.

A Responses request is translated into a chat request (so routing, stages, limits and every backend work as
for chat), and the chat answer back into a Response object or the Responses stream events. Upstreams that
speak the Responses API themselves (vLLM does; ``responses_api: native``) get the client's body as sent.

Not supported, each a 400 naming the field: stored responses (``store: true``), ``previous_response_id``,
``conversation``, ``background``, ``prompt`` templates, ``include``, and built-in tools (web/file search,
code interpreter, computer use, MCP, ...).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import Field, ValidationError

from gateway.core.errors import InvalidRequestError
from gateway.wire.openai import ChatCompletionRequest, PassThroughRequest, RoutingOptions, is_usage_chunk

# Fields of stateful or hosted features, with the values that ask for none of them.
_NOT_SUPPORTED: dict[str, tuple[Any, ...]] = {
    "previous_response_id": (None,), "store": (None, False), "conversation": (None,), "background": (None, False),
    "prompt": (None,), "include": (None, []),
}
_PASSED_TO_CHAT = ("parallel_tool_calls", "user", "metadata", "seed", "service_tier", "top_logprobs")


class ResponsesRequest(PassThroughRequest):
    model: str = Field(min_length=1, max_length=256)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stream: bool = False
    text: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    routing: RoutingOptions | None = None

    @property
    def completion_token_limit(self) -> int | None:
        return self.max_output_tokens


def to_chat(request: ResponsesRequest) -> ChatCompletionRequest:
    """The chat request that answers ``request``; a 400 naming the field for what the subset lacks."""
    extra = request.model_extra or {}
    for name, neutral in _NOT_SUPPORTED.items():
        if extra.get(name) not in neutral:
            raise InvalidRequestError(f"'{name}' is not supported: this gateway serves the stateless part of the "
                                      "Responses API (send the whole conversation as 'input')", param=name,
                                      code="unsupported_parameter")
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    if isinstance(request.input, str):
        messages.append({"role": "user", "content": request.input})
    else:
        for position, item in enumerate(request.input):
            _add_input_item(messages, item, f"input.{position}")
    if not messages:
        raise InvalidRequestError("input must not be empty", param="input")
    body: dict[str, Any] = {"model": request.model, "messages": messages, "stream": request.stream}
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    if request.max_output_tokens is not None:
        body["max_completion_tokens"] = request.max_output_tokens
    body.update({name: extra[name] for name in _PASSED_TO_CHAT if extra.get(name) is not None})
    body.update({name: value for name, value in (("temperature", request.temperature), ("top_p", request.top_p))
                 if value is not None})
    if extra.get("top_logprobs"):
        body["logprobs"] = True
    if (reasoning := extra.get("reasoning")) and isinstance(reasoning, dict) and reasoning.get("effort"):
        body["reasoning_effort"] = reasoning["effort"]
    if request.routing is not None:
        body["routing"] = request.routing.model_dump(exclude_unset=True)
    if request.text and (response_format := _response_format(request.text)) is not None:
        body["response_format"] = response_format
    if request.tools:
        body["tools"] = [_chat_tool(tool, f"tools.{position}") for position, tool in enumerate(request.tools)]
    if request.tool_choice is not None:
        body["tool_choice"] = _chat_tool_choice(request.tool_choice)
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise InvalidRequestError(f"input cannot be served: {first['msg']}", param="input") from None


def _add_input_item(messages: list[dict[str, Any]], item: dict[str, Any], param: str) -> None:
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise InvalidRequestError("a message item's role must be user, assistant, system or developer",
                                      param=f"{param}.role")
        messages.append({"role": role, "content": _chat_content(item.get("content"), f"{param}.content")})
    elif kind == "function_call":
        call: dict[str, Any] = {"id": item.get("call_id"), "type": "function",
                                "function": {"name": item.get("name"), "arguments": item.get("arguments", "")}}
        if not call["id"] or not call["function"]["name"]:
            raise InvalidRequestError("a function_call item needs 'call_id' and 'name'", param=param)
        if messages and messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls"):
            messages[-1]["tool_calls"].append(call)  # parallel calls: one assistant turn
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        if not item.get("call_id") or not isinstance(output, str):
            raise InvalidRequestError("a function_call_output item needs 'call_id' and a string 'output'",
                                      param=param)
        messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
    elif kind == "reasoning":
        pass  # an earlier turn's thinking, sent back by stateless agents: chat templates leave it out of the prompt
    else:
        raise InvalidRequestError(f"input items of type '{kind}' are not supported (message, function_call, "
                                  "function_call_output and reasoning are)", param=f"{param}.type",
                                  code="unsupported_parameter")


def _chat_content(content: Any, param: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequestError("content must be a string or a list of content parts", param=param)
    parts: list[dict[str, Any]] = []
    for position, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.get("text") or ""})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"],
                                                             **({"detail": part["detail"]} if part.get("detail")
                                                                else {})}})
        elif kind == "refusal":
            parts.append({"type": "text", "text": part.get("refusal") or ""})
        else:
            raise InvalidRequestError(f"content parts of type '{kind}' are not supported (input_text, output_text "
                                      "and input_image with an image_url are)", param=f"{param}.{position}",
                                      code="unsupported_parameter")
    return parts


def _response_format(text: dict[str, Any]) -> dict[str, Any] | None:
    spec = text.get("format")
    if spec is None or spec.get("type") == "text":
        return None
    if spec.get("type") == "json_object":
        return {"type": "json_object"}
    if spec.get("type") == "json_schema":
        schema = {key: spec[key] for key in ("name", "schema", "strict", "description") if key in spec}
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequestError("text.format.type must be text, json_object or json_schema", param="text.format")


def _chat_tool(tool: dict[str, Any], param: str) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise InvalidRequestError(f"built-in tools ('{tool.get('type')}') are not supported; function tools are",
                                  param=param, code="unsupported_parameter")
    function = {key: tool[key] for key in ("name", "description", "parameters", "strict") if key in tool}
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and choice.get("name"):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequestError("tool_choice must be 'auto', 'none', 'required' or {\"type\": \"function\", "
                              "\"name\": ...}", param="tool_choice", code="unsupported_parameter")


# ---- chat answers as Responses ---------------------------------------------------------------------------

def new_response_id() -> str:
    return f"resp_{os.urandom(16).hex()}"


def _item_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(16).hex()}"


def responses_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not usage:
        return None
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"input_tokens": usage.get("prompt_tokens", 0), "output_tokens": usage.get("completion_tokens", 0),
            "total_tokens": usage.get("total_tokens", 0),
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": reasoning}}


def chat_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """A Responses ``usage`` in chat's terms (what the gateway's accounting reads), cached and reasoning tokens
    included when reported."""
    if not usage:
        return None
    chat: dict[str, Any] = {"prompt_tokens": int(usage.get("input_tokens") or 0),
                            "completion_tokens": int(usage.get("output_tokens") or 0)}
    cached = (usage.get("input_tokens_details") or {}).get("cached_tokens")
    reasoning = (usage.get("output_tokens_details") or {}).get("reasoning_tokens")
    if cached:
        chat["prompt_tokens_details"] = {"cached_tokens": int(cached)}
    if reasoning:
        chat["completion_tokens_details"] = {"reasoning_tokens": int(reasoning)}
    return chat


def response_object(request: ResponsesRequest, response_id: str, model: str, output: list[dict[str, Any]],
                    status: str, finish_reason: str | None = None,
                    usage: dict[str, Any] | None = None) -> dict[str, Any]:
    incomplete = None
    if status == "incomplete":
        incomplete = {"reason": "content_filter" if finish_reason == "content_filter" else "max_output_tokens"}
    extra = request.model_extra or {}
    return {"id": response_id, "object": "response", "created_at": int(time.time()), "status": status,
            "error": None, "incomplete_details": incomplete, "instructions": request.instructions,
            "max_output_tokens": request.max_output_tokens, "model": model, "output": output,
            "parallel_tool_calls": extra.get("parallel_tool_calls", True), "previous_response_id": None,
            "temperature": request.temperature, "top_p": request.top_p, "store": False,
            "text": request.text or {"format": {"type": "text"}}, "tool_choice": request.tool_choice or "auto",
            "tools": [_echoed_tool(tool) for tool in request.tools or []], "metadata": extra.get("metadata") or {},
            **({"usage": responses_usage(usage)} if usage else {})}  # the schema's usage is an object when present


def _echoed_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A request's function tool as a Response repeats it: ``strict`` and ``parameters`` always there (null when
    the request left them out), as OpenAI's schema requires."""
    return {**tool, "strict": tool.get("strict"), "parameters": tool.get("parameters")}


def _status_of(finish_reason: str | None) -> str:
    return "incomplete" if finish_reason in ("length", "content_filter") else "completed"


def _text_part(text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def _function_call_item(call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    function = call.get("function") or {}
    return {"type": "function_call", "id": _item_id("fc"), "call_id": call.get("id") or _item_id("call"),
            "name": function.get("name", ""), "arguments": function.get("arguments") or "", "status": status}


def reasoning_of(message_or_delta: dict[str, Any]) -> str | None:
    """The thinking a chat message (or a stream delta) carries: vLLM's ``reasoning`` (older releases, DeepSeek
    and most peers: ``reasoning_content``)."""
    return message_or_delta.get("reasoning") or message_or_delta.get("reasoning_content") or None


def _reasoning_item(text: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "reasoning", "id": _item_id("rs"), "summary": [], "status": status,
            "content": [{"type": "reasoning_text", "text": text}]}


def response_from_chat(request: ResponsesRequest, chat: dict[str, Any]) -> dict[str, Any]:
    """The Response object for a whole chat answer (its first choice): its reasoning item first, if any."""
    choice = chat["choices"][0] if chat.get("choices") else {}
    message = choice.get("message") or {}
    finish_reason = choice.get("finish_reason")
    output: list[dict[str, Any]] = []
    if reasoning := reasoning_of(message):
        output.append(_reasoning_item(reasoning))
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append(_text_part(message["content"], (choice.get("logprobs") or {}).get("content")))
    if message.get("refusal"):
        content.append({"type": "refusal", "refusal": message["refusal"]})
    if content:
        output.append({"type": "message", "id": _item_id("msg"), "status": _status_of(finish_reason),
                       "role": "assistant", "content": content})
    output.extend(_function_call_item(call) for call in message.get("tool_calls") or [])
    return response_object(request, new_response_id(), chat.get("model", request.model), output,
                           _status_of(finish_reason), finish_reason, chat.get("usage"))


class _EventWriter:
    """Numbers the events of one Responses stream."""

    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event


async def response_events(request: ResponsesRequest, chunks: AsyncIterator[dict[str, Any]],
                          keepalive: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Chat stream chunks (first choice) as the Responses stream: ``response.created``, the output items with
    their reasoning, text or argument deltas, and ``response.completed`` (or ``response.incomplete``) with usage
    last. ``keepalive`` chunks pass through unchanged."""
    event = _EventWriter()
    response_id, model = new_response_id(), request.model
    yield event("response.created", response=response_object(request, response_id, model, [], "in_progress"))
    yield event("response.in_progress", response=response_object(request, response_id, model, [], "in_progress"))
    output: list[dict[str, Any]] = []
    message: dict[str, Any] | None = None  # the message item being streamed
    text: list[str] = []
    logprobs: list[dict[str, Any]] = []
    calls: dict[int, dict[str, Any]] = {}  # tool-call index -> its function_call item
    call_positions: dict[int, int] = {}
    finish_reason, usage = None, None
    thinking: dict[str, Any] | None = None  # the reasoning item being streamed
    thought: list[str] = []

    def close_reasoning() -> list[dict[str, Any]]:
        nonlocal thinking
        if thinking is None:
            return []
        position = output.index(thinking)
        part = {"type": "reasoning_text", "text": "".join(thought)}
        thinking.update(status="completed", content=[part])
        done = [event("response.reasoning_text.done", item_id=thinking["id"], output_index=position,
                      content_index=0, text=part["text"]),
                event("response.content_part.done", item_id=thinking["id"], output_index=position,
                      content_index=0, part=part),
                event("response.output_item.done", output_index=position, item=thinking)]
        thinking = None
        return done

    def close_message() -> list[dict[str, Any]]:
        nonlocal message
        if message is None:
            return []
        position = output.index(message)
        part = _text_part("".join(text), logprobs)
        message.update(status="completed", content=[part])
        done = [event("response.output_text.done", item_id=message["id"], output_index=position, content_index=0,
                      text=part["text"], logprobs=logprobs),
                event("response.content_part.done", item_id=message["id"], output_index=position,
                      content_index=0, part=part),
                event("response.output_item.done", output_index=position, item=message)]
        message = None
        return done

    async for chunk in _closing(chunks):
        if chunk is keepalive:
            yield chunk
            continue
        model = chunk.get("model") or model
        if is_usage_chunk(chunk):
            usage = chunk["usage"]
            continue
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if (reasoning := reasoning_of(delta)) and message is None and not calls:
                if thinking is None:
                    thinking = _reasoning_item("", status="in_progress")
                    output.append(thinking)
                    yield event("response.output_item.added", output_index=len(output) - 1, item=dict(thinking))
                    yield event("response.content_part.added", item_id=thinking["id"], output_index=len(output) - 1,
                                content_index=0, part={"type": "reasoning_text", "text": ""})
                thought.append(reasoning)
                yield event("response.reasoning_text.delta", item_id=thinking["id"],
                            output_index=output.index(thinking), content_index=0, delta=reasoning)
            if delta.get("content"):
                for closing in close_reasoning():
                    yield closing
                if message is None:
                    message = {"type": "message", "id": _item_id("msg"), "status": "in_progress",
                               "role": "assistant", "content": []}
                    output.append(message)
                    yield event("response.output_item.added", output_index=len(output) - 1, item=dict(message))
                    yield event("response.content_part.added", item_id=message["id"], output_index=len(output) - 1,
                                content_index=0, part=_text_part(""))
                piece_logprobs = (choice.get("logprobs") or {}).get("content") or []
                logprobs.extend(piece_logprobs)
                text.append(delta["content"])
                yield event("response.output_text.delta", item_id=message["id"], output_index=output.index(message),
                            content_index=0, delta=delta["content"], logprobs=piece_logprobs)
            for call in delta.get("tool_calls") or []:
                index = call.get("index", 0)
                function = call.get("function") or {}
                if index not in calls:
                    for closing in [*close_reasoning(), *close_message()]:
                        yield closing
                    item = _function_call_item({"id": call.get("id"), "function": {"name": function.get("name")}},
                                               status="in_progress")
                    calls[index] = item
                    output.append(item)
                    call_positions[index] = len(output) - 1
                    yield event("response.output_item.added", output_index=call_positions[index], item=dict(item))
                if function.get("arguments"):
                    calls[index]["arguments"] += function["arguments"]
                    yield event("response.function_call_arguments.delta", item_id=calls[index]["id"],
                                output_index=call_positions[index], delta=function["arguments"])
            if choice.get("finish_reason"):
                finish_reason = choice["finish_reason"]
    for closing in [*close_reasoning(), *close_message()]:
        yield closing
    for index, item in calls.items():
        item["status"] = "completed"
        yield event("response.function_call_arguments.done", item_id=item["id"], output_index=call_positions[index],
                    name=item["name"], arguments=item["arguments"])
        yield event("response.output_item.done", output_index=call_positions[index], item=item)
    status = _status_of(finish_reason)
    final = response_object(request, response_id, model, output, status, finish_reason, usage)
    yield event("response.completed" if status == "completed" else "response.incomplete", response=final)


async def _closing(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """``chunks``, closed when this is (a client gone mid-stream stops the generation behind it)."""
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
