"""OpenAI wire models: requests (pydantic, validated) and the response/chunk builders.

Every request model accepts unknown fields and keeps them, so backend-specific parameters (vLLM's
``top_k``, ``guided_json``, ``chat_template_kwargs``, ...) reach an OpenAI-compatible upstream unchanged.
Fields the gateway itself consumes (``routing``, ``aligncot``) are listed in ``GATEWAY_ONLY_FIELDS`` and
never sent upstream.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

GATEWAY_ONLY_FIELDS = frozenset({"routing", "aligncot"})


class OpenAIBaseModel(BaseModel):
    """Base of all wire models: unknown fields are accepted and passed on."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class PassThroughRequest(OpenAIBaseModel):
    """A request of another API (Responses, Anthropic Messages) that is served through chat, or passed as sent to
    an upstream that serves that API itself."""

    # What the request path reads of any request: these APIs have no stream_options.include_usage.
    @property
    def include_usage(self) -> bool:
        return False

    def upstream_body(self, upstream_model: str) -> dict[str, Any]:
        """The client's body for an upstream that serves this API itself, model renamed (``routing`` is ours)."""
        body = self.model_dump(exclude_unset=True, exclude={"routing"})
        body["model"] = upstream_model
        return body


class ImageURL(OpenAIBaseModel):
    url: str
    detail: str | None = None


class ContentPart(OpenAIBaseModel):
    """One part of a multi-part message; unknown part types pass through to upstreams untouched."""

    type: str
    text: str | None = None
    image_url: ImageURL | None = None

    @model_validator(mode="after")
    def _check_part(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("a content part of type 'text' needs a 'text' string")
        if self.type == "image_url" and self.image_url is None:
            raise ValueError("a content part of type 'image_url' needs an 'image_url' object with a 'url'")
        return self


class ChatMessage(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        """The message's text, the text parts joined by newlines (images and other parts left out)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text or "" for part in self.content if part.type == "text")

    @property
    def image_urls(self) -> list[str]:
        if not isinstance(self.content, list):
            return []
        return [part.image_url.url for part in self.content if part.type == "image_url" and part.image_url]


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False


class Preference(OpenAIBaseModel):
    """Where on the quality–cost front a routed request should land: two weights >= 0 that sum to 1."""

    quality: float = Field(ge=0, le=1)
    cost: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> Preference:
        if abs(self.quality + self.cost - 1) > 1e-6:
            raise ValueError(f"quality ({self.quality}) and cost ({self.cost}) must sum to 1")
        return self


class RoutingOptions(OpenAIBaseModel):
    """Gateway extension (``extra_body={"routing": {...}}``): how ``auto`` picks a model."""

    preference: Preference | None = Field(default=None, description="quality/cost weights (sum 1)")
    cost_weight: float | None = Field(default=None, ge=0, description="shorthand: preference {1/(1+w), w/(1+w)}")
    max_cost_usd: float | None = Field(default=None, gt=0, description="hard cap on the expected price")

    @model_validator(mode="after")
    def _one_trade_off(self) -> RoutingOptions:
        if self.preference is not None and self.cost_weight is not None:
            raise ValueError("give either 'preference' or its shorthand 'cost_weight', not both")
        return self


class AlignCotOptions(OpenAIBaseModel):
    """Gateway extension (``extra_body={"aligncot": {...}}``)."""

    return_chain: bool = Field(default=False, description="include the AlignCoT chain in the response")


class SamplingRequest(OpenAIBaseModel):
    """Fields shared by chat and legacy completions."""

    model: str = Field(min_length=1, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=16)
    routing: RoutingOptions | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 16:
            raise ValueError("at most 16 stop sequences are allowed")
        return value

    @property
    def stop_sequences(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def completion_token_limit(self) -> int | None:
        return self.max_tokens

    def upstream_body(self, upstream_model: str) -> dict[str, Any]:
        """The JSON to send an OpenAI-compatible upstream: everything the client sent, model renamed."""
        body = self.model_dump(exclude_unset=True, exclude=set(GATEWAY_ONLY_FIELDS))
        body["model"] = upstream_model
        return body


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    aligncot: AlignCotOptions | None = None

    @property
    def completion_token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def has_images(self) -> bool:
        return any(message.image_urls for message in self.messages)

    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.role == "user":
                return message.text
        return ""


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be an empty list")
        return value


class EmbeddingRequest(OpenAIBaseModel):
    """``POST /v1/embeddings``: one text, a list of texts, or token ids (one list, or a list of lists)."""

    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("input must not be an empty list")
            if len(value) > MAX_EMBEDDING_INPUTS:
                raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs in one request")
            if any(isinstance(item, list) and not item for item in value):
                raise ValueError("a token-id input must not be empty")
        return value

    # What the request path reads of any request (streams, usage, token reservations).
    stream: ClassVar[bool] = False
    include_usage: ClassVar[bool] = False
    completion_token_limit: ClassVar[int] = 0

    def texts_or_token_ids(self) -> list[str] | list[list[int]]:
        """The inputs as a list: texts, or token-id lists."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if value and isinstance(value[0], int):
            return [value]  # type: ignore[list-item]
        return value  # type: ignore[return-value]


MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit per request


def embedding_response(model: str, vectors: Any, encoding_format: str, prompt_tokens: int) -> dict[str, Any]:
    """The OpenAI embeddings list: float lists, or base64 of little-endian float32 (what the SDKs decode)."""
    data = []
    for index, vector in enumerate(vectors):
        array = np.asarray(vector, dtype="<f4")
        embedding: Any = (base64.b64encode(array.tobytes()).decode() if encoding_format == "base64"
                          else array.tolist())
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


# ---- responses -------------------------------------------------------------------------------------------

Endpoint = Literal["chat", "completions", "embeddings"]


def new_completion_id(endpoint: Endpoint) -> str:
    return f"{'chatcmpl' if endpoint == 'chat' else 'cmpl'}-{os.urandom(16).hex()}"


def usage_dict(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> dict[str, Any]:
    """OpenAI's usage object; ``cached_tokens``: how many prompt tokens came from a prefix cache (None: the server
    keeps none, and the details are left out)."""
    usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                             "total_tokens": prompt_tokens + completion_tokens}
    if cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return usage


def is_usage_chunk(chunk: dict[str, Any]) -> bool:
    """Whether a stream chunk is the final usage chunk (``usage`` and no ``choices``): with vLLM's
    ``continuous_usage_stats`` every chunk carries usage, so that is not enough to tell."""
    return bool(chunk.get("usage")) and not chunk.get("choices")


def response_dict(endpoint: Endpoint, completion_id: str, model: str, choices: list[dict[str, Any]],
                  usage: dict[str, int] | None) -> dict[str, Any]:
    return {"id": completion_id, "object": "chat.completion" if endpoint == "chat" else "text_completion",
            "created": int(time.time()), "model": model, "choices": choices, "usage": usage}


def response_choice(endpoint: Endpoint, index: int, text: str | None, finish_reason: str | None,
                    logprobs: dict[str, Any] | None = None,
                    tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    if endpoint == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}  # refusal: required
        if tool_calls:
            message["tool_calls"] = tool_calls
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def chunk_dict(endpoint: Endpoint, completion_id: str, model: str, *, index: int = 0, text: str | None = None,
               role: bool = False, finish_reason: str | None = None,
               usage: dict[str, int] | None = None, logprobs: dict[str, Any] | None = None,
               tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A streamed chunk; with ``usage`` and no text it is the final usage chunk (``choices: []``). A chat
    chunk's ``tool_calls`` are deltas (each with its ``index``)."""
    if usage is not None:
        choices: list[dict[str, Any]] = []
    elif endpoint == "chat":
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        if tool_calls:
            delta["tool_calls"] = tool_calls
        choices = [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]
    else:
        choices = [{"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish_reason}]
        # A completion chunk has the whole completion's shape, whose usage is an object when present
        return {"id": completion_id, "object": "text_completion", "created": int(time.time()), "model": model,
                "choices": choices, **({"usage": usage} if usage is not None else {})}
    return {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage}


TokenText = Callable[[int], bytes]  # a token id's bytes


def _token_entry(token: int, logprob: float, token_bytes: TokenText) -> dict[str, Any]:
    raw = token_bytes(token)
    return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}


def chat_logprobs(entries: Sequence[Any], token_bytes: TokenText) -> dict[str, Any]:
    """Chat's ``logprobs`` object from ``TokenLogprob``-like entries (``token``, ``logprob``, ``top``)."""
    return {"content": [{**_token_entry(e.token, e.logprob, token_bytes),
                         "top_logprobs": [_token_entry(t, lp, token_bytes) for t, lp in e.top]} for e in entries],
            "refusal": None}


def completion_logprobs(entries: Sequence[Any], token_bytes: TokenText, text_offset: int = 0) -> dict[str, Any]:
    """Legacy completions' ``logprobs`` object; an entry with a null logprob (an echoed prompt's first token,
    which nothing predicts) has null top logprobs too."""
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    for entry in entries:
        text = token_bytes(entry.token).decode("utf-8", errors="replace")
        tokens.append(text)
        token_logprobs.append(entry.logprob)
        top_logprobs.append(None if entry.logprob is None else {
            token_bytes(t).decode("utf-8", errors="replace"): lp for t, lp in entry.top})
        offsets.append(text_offset)
        text_offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": offsets}


def message_text_of(response: dict[str, Any], index: int = 0) -> str:
    """The text of choice ``index`` in a chat or completion response dict."""
    choice = response["choices"][index]
    if "message" in choice:
        return choice["message"].get("content") or ""
    return choice.get("text") or ""


def judged_text_of(response: dict[str, Any], index: int = 0) -> str:
    """What a safety check must read of an answer: its text and every tool call it makes (a tool call with
    ``content: null`` is an answer too, not an empty pass)."""
    choice = response["choices"][index]
    message = choice.get("message") or {}
    calls = [f"[tool call] {(call.get('function') or {}).get('name', '?')}"
             f"({(call.get('function') or {}).get('arguments', '')})" for call in message.get("tool_calls") or []]
    return "\n".join([message_text_of(response, index), *calls]).strip()


def response_to_chunks(response: dict[str, Any], piece_chars: int = 24) -> list[dict[str, Any]]:
    """A whole chat response replayed as stream chunks: content in small pieces, then the finish and usage
    chunks. Used when an answer had to be held back (e.g. until a safety check passed). Nothing of the answer
    is lost: a ``refusal``, ``tool_calls`` (as one tool-call delta each, with its index) and the choice's
    ``logprobs`` (all on the first content chunk) travel too, and ``system_fingerprint`` is on every chunk."""
    chunks: list[dict[str, Any]] = []
    completion_id, model = response.get("id") or new_completion_id("chat"), response.get("model", "")
    extra = {k: v for k, v in response.items() if k not in _RESPONSE_KEYS}
    if response.get("system_fingerprint") is not None:
        extra["system_fingerprint"] = response["system_fingerprint"]
    for choice in response["choices"]:
        index, message = choice.get("index", 0), choice.get("message") or {}
        text = message.get("content") or ""
        pieces = [text[i:i + piece_chars] for i in range(0, len(text), piece_chars)] or [""]
        for number, piece in enumerate(pieces):
            chunk = chunk_dict("chat", completion_id, model, index=index, text=piece, role=number == 0)
            if number == 0 and choice.get("logprobs") is not None:
                chunk["choices"][0]["logprobs"] = choice["logprobs"]
            chunks.append(chunk)
        if message.get("refusal") is not None:
            chunk = chunk_dict("chat", completion_id, model, index=index)
            chunk["choices"][0]["delta"] = {"refusal": message["refusal"]}
            chunks.append(chunk)
        for position, call in enumerate(message.get("tool_calls") or []):
            chunk = chunk_dict("chat", completion_id, model, index=index)
            chunk["choices"][0]["delta"] = {"tool_calls": [{"index": position, **call}]}
            chunks.append(chunk)
        chunks.append(chunk_dict("chat", completion_id, model, index=index, finish_reason=choice.get("finish_reason")))
    if response.get("usage"):
        chunks.append(chunk_dict("chat", completion_id, model, usage=response["usage"]))
    return [{**chunk, **extra} for chunk in chunks]


_RESPONSE_KEYS = frozenset({"id", "object", "created", "model", "choices", "usage", "system_fingerprint",
                            "service_tier", "prompt_logprobs", "kv_transfer_params"})
