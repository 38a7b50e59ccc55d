"""Anthropic's Messages API (``POST /v1/messages``), stateless as it is, served through chat completions.

A Messages request is translated into a chat request (so routing, stages, limits and every backend work as for
chat), and the chat answer back into a Message or Anthropic's stream events (``message_start``, then per content
block ``content_block_start`` / ``_delta`` / ``_stop``, ``message_delta`` with the stop reason and the usage,
``message_stop``). Upstreams that serve ``/v1/messages`` themselves (vLLM does; ``messages_api: native``) get the
client's body as sent, model renamed.

Translated: ``system`` (a string or text blocks), ``messages`` with ``text``, ``image`` (base64 or URL),
``tool_use`` and ``tool_result`` blocks (``thinking`` blocks of earlier turns are left out of the prompt, as chat
templates leave out earlier reasoning), custom ``tools`` and ``tool_choice`` (``auto``, ``any``, ``tool``,
``none``; ``disable_parallel_tool_use``), ``max_tokens``, ``stop_sequences``, ``temperature``, ``top_p``, ``top_k``
(gone from Anthropic's current SDK, still sent by older clients and honoured),
``metadata.user_id``, ``output_config`` (``format``: JSON schema output; ``effort``: chat's ``reasoning_effort``,
``xhigh`` and ``max`` as ``high``) and ``cache_control`` (accepted: vLLM's prefix cache is automatic, nothing needs
marking). Everything else, server tools included, is a 400 in Anthropic's error
shape naming the field, never dropped in silence.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import orjson
from pydantic import Field, ValidationError

from gateway.core.errors import GatewayError, InvalidRequestError
from gateway.wire.openai import ChatCompletionRequest, PassThroughRequest, RoutingOptions, is_usage_chunk

# Top-level fields with the values that ask for nothing this translation cannot do.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "thinking": (None, {"type": "disabled"}), "service_tier": (None, "auto", "standard_only"),
    "speed": (None, "standard"), "container": (None,), "mcp_servers": (None, []), "context_management": (None,),
    "inference_geo": (None,), "diagnostics": (None,), "user_profile_id": (None,), "workspace_id": (None,),
}
_ACCEPTED = frozenset({"cache_control", "output_config"})
_BLOCK_PARAMS = {"text": ("text", "cache_control", "citations"),
                 "image": ("source", "cache_control"),
                 "tool_use": ("id", "name", "input", "cache_control", "caller"),
                 "tool_result": ("tool_use_id", "content", "is_error", "cache_control"),
                 "thinking": ("thinking", "signature"), "redacted_thinking": ("data",)}

# The status of a gateway error -> Anthropic's error type.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error"}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


class MessagesRequest(PassThroughRequest):
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int = Field(ge=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    metadata: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    routing: RoutingOptions | None = None

    @property
    def completion_token_limit(self) -> int | None:
        return self.max_tokens


def to_chat(request: MessagesRequest) -> ChatCompletionRequest:
    """The chat request that answers ``request``; a 400 naming the field for what cannot be translated."""
    extra = request.model_extra or {}
    for name, value in extra.items():
        if name in _NEUTRAL and value in _NEUTRAL[name] or name in _ACCEPTED:
            continue
        what = "is not supported by this gateway's translation to chat" if name in _NEUTRAL else "is not a field " \
            "of the Messages API"
        raise InvalidRequestError(f"'{name}' {what}", param=name, code="unsupported_parameter")
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": _system_text(request.system)})
    for position, message in enumerate(request.messages):
        _add_message(messages, message, f"messages.{position}")
    body: dict[str, Any] = {"model": request.model, "messages": messages, "stream": request.stream,
                            "max_tokens": request.max_tokens}
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    body.update({name: value for name, value in (("temperature", request.temperature), ("top_p", request.top_p),
                                                 ("top_k", request.top_k), ("stop", request.stop_sequences))
                 if value is not None})
    if request.metadata and request.metadata.get("user_id"):
        body["user"] = str(request.metadata["user_id"])
    if request.tools:
        body["tools"] = [_chat_tool(tool, f"tools.{position}") for position, tool in enumerate(request.tools)]
    if request.tool_choice is not None:
        _tool_choice(body, request.tool_choice)
    if (output_config := extra.get("output_config")) is not None:
        _output_config(body, output_config)
    if request.routing is not None:
        body["routing"] = request.routing.model_dump(exclude_unset=True)
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise InvalidRequestError(f"messages cannot be served: {first['msg']}", param="messages") from None


def admission_view(request: MessagesRequest) -> ChatCompletionRequest:
    """What admission and limits read of a request passed through untranslated (``messages_api: native``): its
    text and ``max_tokens`` as one chat request, whatever blocks and fields the upstream itself understands."""
    texts = [_system_text(request.system)] if isinstance(request.system, str) else []
    for message in request.messages:
        content = message.get("content")
        texts.extend([content] if isinstance(content, str) else
                     [str(block.get("text") or block.get("content") or "") for block in content or []
                      if isinstance(block, dict)])
    messages = [{"role": "assistant" if message.get("role") == "assistant" else "user", "content": ""}
                for message in request.messages[:-1]]
    messages.append({"role": "user", "content": "\n".join(texts)})
    return ChatCompletionRequest.model_validate({"model": request.model, "max_tokens": request.max_tokens,
                                                 "messages": messages})


def _system_text(system: str | list[dict[str, Any]]) -> str:
    if isinstance(system, str):
        return system
    texts = []
    for position, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise InvalidRequestError("system blocks must be text blocks", param=f"system.{position}")
        texts.append(block["text"])
    return "\n\n".join(texts)


def _blocks(content: Any, param: str) -> list[dict[str, Any]]:
    """A message's content as blocks, each checked for its type and fields."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise InvalidRequestError("content must be a string or a list of content blocks", param=param)
    for position, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in _BLOCK_PARAMS:
            raise InvalidRequestError(f"content blocks of type '{kind}' are not supported (text, image, tool_use, "
                                      "tool_result and thinking are)", param=f"{param}.{position}.type",
                                      code="unsupported_parameter")
        for name in block:
            if name != "type" and name not in _BLOCK_PARAMS[kind] and block[name] is not None:
                raise InvalidRequestError(f"'{name}' is not supported in a {kind} block",
                                          param=f"{param}.{position}.{name}", code="unsupported_parameter")
        if kind == "text" and not isinstance(block.get("text"), str):
            raise InvalidRequestError("a text block needs a string 'text'", param=f"{param}.{position}.text")
        if kind == "tool_use" and not (isinstance(block.get("id"), str) and isinstance(block.get("name"), str)):
            raise InvalidRequestError("a tool_use block needs a string 'id' and 'name'", param=f"{param}.{position}")
        if kind == "tool_result" and not isinstance(block.get("tool_use_id"), str):
            raise InvalidRequestError("a tool_result block needs a string 'tool_use_id'",
                                      param=f"{param}.{position}.tool_use_id")
    return content


def _add_message(messages: list[dict[str, Any]], message: dict[str, Any], param: str) -> None:
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise InvalidRequestError("a message's role must be 'user' or 'assistant'", param=f"{param}.role")
    blocks = _blocks(message.get("content"), f"{param}.content")
    if role == "assistant":
        text = "".join(block["text"] for block in blocks if block["type"] == "text")
        calls: list[dict[str, Any]] = [{"id": block.get("id"), "type": "function",
                                        "function": {"name": block.get("name"),
                                                     "arguments": orjson.dumps(block.get("input", {})).decode()}}
                                       for block in blocks if block["type"] == "tool_use"]
        for call in calls:
            if not call["id"] or not call["function"]["name"]:
                raise InvalidRequestError("a tool_use block needs 'id' and 'name'", param=f"{param}.content")
        turn: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            turn["tool_calls"] = calls
        if text or calls:  # a turn of thinking blocks only leaves nothing for the prompt
            messages.append(turn)
        return
    parts: list[dict[str, Any]] = []
    for position, block in enumerate(blocks):
        where = f"{param}.content.{position}"
        if block["type"] == "tool_result":  # tool results answer the previous turn's calls: they come first
            if not block.get("tool_use_id"):
                raise InvalidRequestError("a tool_result block needs 'tool_use_id'", param=where)
            output = _tool_result_text(block.get("content"), where)
            messages.append({"role": "tool", "tool_call_id": block["tool_use_id"],
                             "content": f"Error: {output}" if block.get("is_error") else output})
        elif block["type"] == "text":
            parts.append({"type": "text", "text": block.get("text") or ""})
        elif block["type"] == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block.get("source"), where)}})
        elif block["type"] in ("tool_use", "thinking", "redacted_thinking"):
            raise InvalidRequestError(f"a user message cannot hold a {block['type']} block", param=f"{where}.type")
    if parts:
        only_text = all(part["type"] == "text" for part in parts)
        content: str | list[dict[str, Any]] = "\n\n".join(p["text"] for p in parts) if only_text else parts
        messages.append({"role": "user", "content": content})


def _tool_result_text(content: Any, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in content):
        return "\n\n".join(block.get("text") or "" for block in content)
    raise InvalidRequestError("a tool_result's content must be a string or text blocks", param=f"{param}.content",
                              code="unsupported_parameter")


def _image_url(source: Any, param: str) -> str:
    if isinstance(source, dict) and source.get("type") == "base64" and source.get("data") and source.get("media_type"):
        return f"data:{source['media_type']};base64,{source['data']}"
    if isinstance(source, dict) and source.get("type") == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise InvalidRequestError("an image block's source must be {\"type\": \"base64\", \"media_type\", \"data\"} or "
                              "{\"type\": \"url\", \"url\"}", param=f"{param}.source")


def _chat_tool(tool: dict[str, Any], param: str) -> dict[str, Any]:
    if tool.get("type") not in (None, "custom"):
        raise InvalidRequestError(f"server tools ('{tool.get('type')}') are not supported; custom tools (name, "
                                  "description, input_schema) are", param=f"{param}.type", code="unsupported_parameter")
    if not isinstance(tool.get("name"), str) or not isinstance(tool.get("input_schema"), dict):
        raise InvalidRequestError("a tool needs 'name' and 'input_schema'", param=param)
    if not isinstance(tool.get("description") or "", str):
        raise InvalidRequestError("a tool's description must be a string", param=f"{param}.description")
    function = {"name": tool["name"], "parameters": tool["input_schema"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(body: dict[str, Any], choice: dict[str, Any]) -> None:
    kind = choice.get("type")
    if kind == "auto":
        body["tool_choice"] = "auto"
    elif kind == "any":
        body["tool_choice"] = "required"
    elif kind == "none":
        body["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        body["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise InvalidRequestError("tool_choice must be {\"type\": \"auto\" | \"any\" | \"none\"} or {\"type\": "
                                  "\"tool\", \"name\": ...}", param="tool_choice")
    if choice.get("disable_parallel_tool_use"):
        body["parallel_tool_calls"] = False


# Anthropic's effort levels -> chat's reasoning_effort (which stops at high).
_EFFORT = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}


def _output_config(body: dict[str, Any], output_config: Any) -> None:
    """``format`` (a JSON schema) -> ``response_format``; ``effort`` -> ``reasoning_effort``."""
    if not isinstance(output_config, dict) or set(output_config) - {"format", "effort"}:
        raise InvalidRequestError("output_config takes 'format' and 'effort'", param="output_config",
                                  code="unsupported_parameter")
    spec = output_config.get("format")
    if spec is not None:
        if not isinstance(spec, dict) or spec.get("type") != "json_schema" or not isinstance(spec.get("schema"), dict):
            raise InvalidRequestError("output_config.format must be {\"type\": \"json_schema\", \"schema\": {...}}",
                                      param="output_config.format")
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": spec["schema"],
                                                                          "strict": True}}
    effort = output_config.get("effort")
    if effort is not None:
        if effort not in _EFFORT:
            raise InvalidRequestError(f"output_config.effort must be one of {', '.join(_EFFORT)}",
                                      param="output_config.effort")
        body["reasoning_effort"] = _EFFORT[effort]


# ---- chat answers as Messages ------------------------------------------------------------------------------

def new_message_id() -> str:
    return f"msg_{os.urandom(12).hex()}"


def messages_usage(usage: dict[str, Any] | None) -> dict[str, int]:
    """A chat ``usage`` in Anthropic's terms: cached prompt tokens apart from the rest, as Anthropic counts them."""
    usage = usage or {}
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {"input_tokens": int(usage.get("prompt_tokens") or 0) - cached, "output_tokens":
            int(usage.get("completion_tokens") or 0), "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0}


def chat_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """An Anthropic ``usage`` in chat's terms (what the gateway's accounting reads): its cache reads are the
    prompt's cached tokens."""
    if not usage:
        return None
    prompt = sum(int(usage.get(name) or 0) for name in ("input_tokens", "cache_read_input_tokens",
                                                        "cache_creation_input_tokens"))
    chat: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": int(usage.get("output_tokens") or 0)}
    if usage.get("cache_read_input_tokens"):
        chat["prompt_tokens_details"] = {"cached_tokens": int(usage["cache_read_input_tokens"])}
    return chat


def _stop(request: MessagesRequest, choice: dict[str, Any]) -> tuple[str | None, str | None]:
    """(stop_reason, stop_sequence) of a chat choice; vLLM names the stop string that matched in ``stop_reason``."""
    finish_reason = choice.get("finish_reason")
    matched = choice.get("stop_reason")
    if finish_reason == "stop" and isinstance(matched, str) and matched in (request.stop_sequences or []):
        return "stop_sequence", matched
    return STOP_REASONS.get(finish_reason or "stop", "end_turn"), None


def _tool_use_block(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments") or "{}"
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        parsed = None
    # Anthropic's input is an object; arguments that are not one are kept whole rather than lost
    return {"type": "tool_use", "id": call.get("id") or f"toolu_{os.urandom(12).hex()}",
            "name": function.get("name", ""), "input": parsed if isinstance(parsed, dict) else {"arguments": arguments}}


def message_object(request: MessagesRequest, message_id: str, model: str, content: list[dict[str, Any]],
                   stop: tuple[str | None, str | None], usage: dict[str, int]) -> dict[str, Any]:
    return {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop[0], "stop_sequence": stop[1], "usage": usage}


def message_from_chat(request: MessagesRequest, chat: dict[str, Any]) -> dict[str, Any]:
    """The Message for a whole chat answer (its first choice): thinking, text, then tool_use blocks."""
    choice = chat["choices"][0] if chat.get("choices") else {}
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if reasoning := message.get("reasoning") or message.get("reasoning_content"):
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    content.extend(_tool_use_block(call) for call in message.get("tool_calls") or [])
    return message_object(request, new_message_id(), chat.get("model", request.model), content,
                          _stop(request, choice), messages_usage(chat.get("usage")))


async def message_events(request: MessagesRequest, chunks: AsyncIterator[dict[str, Any]],
                         keepalive: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Chat stream chunks (first choice) as Anthropic's stream events; ``keepalive`` chunks pass through."""
    message_id, model = new_message_id(), request.model
    started = False
    index = -1  # the open content block's index
    open_kind: str | None = None  # "thinking", "text", or "tool:<chat tool-call index>"
    stop: tuple[str | None, str | None] = ("end_turn", None)
    usage: dict[str, int] = messages_usage(None)

    def start(kind: str, block: dict[str, Any]) -> list[dict[str, Any]]:
        nonlocal index, open_kind
        events = close()
        index, open_kind = index + 1, kind
        return [*events, {"type": "content_block_start", "index": index, "content_block": block}]

    def close() -> list[dict[str, Any]]:
        nonlocal open_kind
        if open_kind is None:
            return []
        open_kind = None
        return [{"type": "content_block_stop", "index": index}]

    try:
        async for chunk in chunks:
            if chunk is keepalive:
                yield chunk
                continue
            model = chunk.get("model") or model
            if not started:
                started = True
                yield {"type": "message_start", "message": message_object(request, message_id, model, [],
                                                                           (None, None), messages_usage(None))}
            if is_usage_chunk(chunk):
                usage = messages_usage(chunk["usage"])
                continue
            for choice in chunk.get("choices") or []:
                if choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta") or {}
                if reasoning := delta.get("reasoning") or delta.get("reasoning_content"):
                    if open_kind != "thinking":
                        for event in start("thinking", {"type": "thinking", "thinking": "", "signature": ""}):
                            yield event
                    yield {"type": "content_block_delta", "index": index,
                           "delta": {"type": "thinking_delta", "thinking": reasoning}}
                if delta.get("content"):
                    if open_kind != "text":
                        for event in start("text", {"type": "text", "text": ""}):
                            yield event
                    yield {"type": "content_block_delta", "index": index,
                           "delta": {"type": "text_delta", "text": delta["content"]}}
                for call in delta.get("tool_calls") or []:
                    kind = f"tool:{call.get('index', 0)}"
                    function = call.get("function") or {}
                    if open_kind != kind:
                        block: dict[str, Any] = {"type": "tool_use", "name": function.get("name") or "",
                                                 "id": call.get("id") or f"toolu_{os.urandom(12).hex()}", "input": {}}
                        for event in start(kind, block):
                            yield event
                    if function.get("arguments"):
                        yield {"type": "content_block_delta", "index": index,
                               "delta": {"type": "input_json_delta", "partial_json": function["arguments"]}}
                if choice.get("finish_reason"):
                    stop = _stop(request, choice)
        if not started:
            yield {"type": "message_start", "message": message_object(request, message_id, model, [], (None, None),
                                                                       messages_usage(None))}
        for event in close():
            yield event
        yield {"type": "message_delta", "delta": {"stop_reason": stop[0], "stop_sequence": stop[1]}, "usage": usage}
        yield {"type": "message_stop"}
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


# ---- errors ------------------------------------------------------------------------------------------------

def error_body(exc: GatewayError) -> dict[str, Any]:
    """A gateway error in Anthropic's shape: its ``type`` from the status, the field it is about leading the
    message as Anthropic's own errors do (``messages.0.content.0.type: ...``)."""
    kind = ERROR_TYPES.get(exc.status_code, "api_error")
    message = f"{exc.param}: {exc.message}" if exc.param else exc.message
    return {"type": "error", "error": {"type": kind, "message": message}}
