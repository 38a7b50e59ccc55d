"""Invalid requests get the right 4xx and an OpenAI error object, never a 500 or a stack trace."""

from __future__ import annotations

import httpx
import openai
import pytest


@pytest.fixture
def gateway(upstream, make_gateway):
    return make_gateway({"models": [{"name": "pub", "backend": "openai", "base_url": upstream.base_url}]})


def _assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text
    if param is not None:
        assert body["error"]["param"] == param
    return body["error"]


MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("payload", "param", "fragment"), [
    ({"model": "pub"}, "messages", "'messages' is a required property"),
    ({"messages": MESSAGES}, "model", "'model' is a required property"),
    ({"model": "pub", "messages": []}, "messages", "at least 1"),
    ({"model": "pub", "messages": "hi"}, "messages", "valid list"),
    ({"model": "pub", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role", "Input should be"),
    ({"model": "pub", "messages": [{"content": "x"}]}, "messages.0.role", "required"),
    ({"model": "pub", "messages": MESSAGES, "temperature": "hot"}, "temperature", "valid number"),
    ({"model": "pub", "messages": MESSAGES, "temperature": 3}, "temperature", "less than or equal to 2"),
    ({"model": "pub", "messages": MESSAGES, "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({"model": "pub", "messages": MESSAGES, "stream": "maybe"}, "stream", "valid boolean"),
    ({"model": "pub", "messages": MESSAGES, "n": 100}, "n", "less than or equal to 16"),
    ({"model": 5, "messages": MESSAGES}, "model", "valid string"),
    ({"model": "pub", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages.0.content",
     None),
])
def test_invalid_fields_are_400_naming_the_parameter(gateway, payload, param, fragment):
    error = _assert_error(httpx.post(f"{gateway.base_url}/chat/completions", json=payload), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"].startswith(param)
    if fragment:
        assert fragment in error["message"]


@pytest.mark.parametrize("raw", [b"{bad json", b"", b"[1, 2]", b"null", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000])
def test_malformed_bodies_are_400(gateway, raw):
    response = httpx.post(f"{gateway.base_url}/chat/completions", content=raw,
                          headers={"content-type": "application/json"})
    _assert_error(response, 400)


def test_unknown_model_is_404_through_the_sdk(gateway):
    with pytest.raises(openai.NotFoundError) as info:
        gateway.client().chat.completions.create(model="nope", messages=MESSAGES)
    assert info.value.body["code"] == "model_not_found" and "available models: pub" in info.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        gateway.client().models.retrieve("nope")
    assert gateway.client().models.retrieve("pub").id == "pub"


def test_unknown_route_and_method_are_openai_shaped(gateway):
    _assert_error(httpx.get(f"{gateway.base_url}/nothing-here"), 404)
    _assert_error(httpx.get(f"{gateway.base_url}/chat/completions"), 405)


def test_completions_validation(gateway):
    _assert_error(httpx.post(f"{gateway.base_url}/completions", json={"model": "pub"}), 400, "prompt")
    _assert_error(httpx.post(f"{gateway.base_url}/completions", json={"model": "pub", "prompt": []}), 400, "prompt")


def test_every_response_has_a_request_id(gateway):
    ok = httpx.post(f"{gateway.base_url}/chat/completions", json={"model": "pub", "messages": MESSAGES})
    bad = httpx.post(f"{gateway.base_url}/chat/completions", json={"model": "pub"})
    assert ok.headers["x-request-id"].startswith("req-") and bad.headers["x-request-id"].startswith("req-")
    assert ok.headers["x-request-id"] != bad.headers["x-request-id"]
    mine = httpx.get(f"{gateway.url}/health", headers={"x-request-id": "trace-42"})
    assert mine.headers["x-request-id"] == "trace-42"
