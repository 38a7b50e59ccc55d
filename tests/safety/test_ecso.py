"""ECSO through the gateway: a real HTTP upstream plays the MLLM and records every call."""

from __future__ import annotations

import json

import httpx
import pytest

from safety import prompts
from tests.support.upstream import Reply

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="}}
QUERY = "How do I make the thing in this picture?"
HARMFUL = "Step 1: mix the chemicals shown. " * 80  # longer than the 1927 characters the check sees
CAPTION = "A photo of a chemistry set on a table."
SAFE_ANSWER = "I can't help with making dangerous substances, but here is how to stay safe around chemistry sets."


def _mllm(verdict: str):
    """Scripted MLLM: harmful first answer; the check answers ``verdict``."""

    def respond(body):
        text = json.dumps(body["messages"])
        if "Is the RESPONSE harmful, unsafe and unethical?" in text:
            return Reply(text=verdict)
        if "Based on the REQUEST, describe the image." in text:
            return Reply(text=CAPTION)
        if "You are given some hints regarding a question on an image." in text:
            return Reply(text=SAFE_ANSWER)
        return Reply(text=HARMFUL)

    return respond


def _texts(call):
    return [p["text"] for m in call.body["messages"] if isinstance(m["content"], list)
            for p in m["content"] if p["type"] == "text"] + [m["content"] for m in call.body["messages"]
                                                             if isinstance(m["content"], str)]


@pytest.fixture
def ecso_gateway(upstream, make_gateway):
    return make_gateway({"models": [{"name": "llava", "backend": "openai", "base_url": upstream.base_url,
                                     "vision": True, "stages": ["ecso"]}]})


def _ask(gateway, stream=False, messages=None):
    messages = messages or [{"role": "user", "content": [{"type": "text", "text": QUERY}, IMAGE]}]
    payload = {"model": "llava", "messages": messages, "stream": stream, "max_tokens": 300}
    if not stream:
        response = httpx.post(f"{gateway.base_url}/chat/completions", json=payload, timeout=30)
        return response, response.json()["choices"][0]["message"]["content"], response.json()
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", json=payload, timeout=30) as response:
        chunks = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return response, text, chunks


@pytest.mark.parametrize("stream", [False, True])
def test_unsafe_answer_is_rewritten_in_four_calls(upstream, ecso_gateway, stream):
    upstream.responder = _mllm("Yes.")
    response, text, body = _ask(ecso_gateway, stream)
    assert response.status_code == 200
    assert text.strip() == SAFE_ANSWER
    # A stream starts before the verdict is known: the verdict travels in every chunk instead of a header.
    assert (body[0]["ecso"] if stream else response.headers["x-gateway-ecso"]) == "rewritten"
    assert response.headers["x-gateway-stages"] == "ecso"
    assert all(chunk["ecso"] == "rewritten" for chunk in body) if stream else body["ecso"] == "rewritten"
    calls = upstream.calls
    assert len(calls) == 4
    assert [c.has_image for c in calls] == [True, True, True, False]
    assert _texts(calls[0]) == [QUERY]
    assert _texts(calls[1]) == [prompts.ecso_harm_check(QUERY, HARMFUL)]
    assert len(HARMFUL) > 1927 and HARMFUL[:1927] in _texts(calls[1])[0] and HARMFUL not in _texts(calls[1])[0]
    assert _texts(calls[2]) == [prompts.ecso_caption(QUERY)]
    assert _texts(calls[3]) == [prompts.ecso_safe_answer(QUERY, CAPTION)]
    assert calls[1].body["temperature"] == 0 and not calls[1].body.get("stream")
    assert bool(calls[3].body.get("stream")) is stream
    if not stream:  # the client is charged for every model call
        assert body["usage"]["completion_tokens"] == sum(
            max(1, len(t.split())) for t in (HARMFUL, "Yes.", CAPTION, SAFE_ANSWER))


@pytest.mark.parametrize("stream", [False, True])
def test_safe_answer_is_returned_after_two_calls(upstream, ecso_gateway, stream):
    upstream.responder = _mllm("No")
    response, text, body = _ask(ecso_gateway, stream)
    assert text.strip() == HARMFUL.strip()
    assert (body[0]["ecso"] if stream else response.headers["x-gateway-ecso"]) == "safe"
    assert len(upstream.calls) == 2 and [c.has_image for c in upstream.calls] == [True, True]
    if stream:
        assert body[-1]["choices"] == [] or body[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(("reply", "unsafe"), [("yes", True), ("YES.", True), (" Yes \n", True),
                                               ("yes, it is harmful", False), ("no", False), ("", False)])
def test_only_a_plain_yes_counts_as_unsafe(upstream, ecso_gateway, reply, unsafe):
    upstream.responder = _mllm(reply)
    response, _, _ = _ask(ecso_gateway)
    assert response.headers["x-gateway-ecso"] == ("rewritten" if unsafe else "safe")
    assert len(upstream.calls) == (4 if unsafe else 2)


def test_multi_turn_keeps_earlier_turns_and_uses_the_last_user_text(upstream, ecso_gateway):
    upstream.responder = _mllm("yes")
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "What is this?"}, IMAGE]},
                {"role": "assistant", "content": "A chemistry set."},
                {"role": "user", "content": QUERY}]
    _ask(ecso_gateway, messages=messages)
    first, check, caption, final = upstream.calls
    assert len(first.body["messages"]) == 4
    assert _texts(check) == [prompts.ecso_harm_check(QUERY, HARMFUL)] and check.has_image
    assert _texts(caption) == [prompts.ecso_caption(QUERY)] and caption.has_image
    assert [m["role"] for m in final.body["messages"]] == ["system", "user", "assistant", "user"]
    assert final.body["messages"][1]["content"] == "What is this?"  # earlier turn kept, image removed
    assert final.body["messages"][3]["content"] == prompts.ecso_safe_answer(QUERY, CAPTION)


def test_requests_without_images_skip_ecso(upstream, ecso_gateway):
    upstream.responder = _mllm("yes")
    response = httpx.post(f"{ecso_gateway.base_url}/chat/completions", json={
        "model": "llava", "messages": [{"role": "user", "content": QUERY}]})
    assert response.json()["choices"][0]["message"]["content"] == HARMFUL
    assert "x-gateway-stages" not in response.headers and len(upstream.calls) == 1


def test_ecso_model_runs_the_steps_on_another_model(make_upstream, make_gateway):
    main, judge = make_upstream("main"), make_upstream("judge")
    main.responder = _mllm("irrelevant")
    judge.responder = _mllm("yes")
    gateway = make_gateway({"models": [
        {"name": "llava", "backend": "openai", "base_url": main.base_url, "vision": True, "stages": ["ecso"],
         "ecso_model": "judge-model"},
        {"name": "judge-model", "backend": "openai", "base_url": judge.base_url, "vision": True}]})
    response, text, _ = _ask(gateway)
    assert text == SAFE_ANSWER and len(main.calls) == 1 and len(judge.calls) == 3


def test_metrics_count_checks_and_rewrites(upstream, ecso_gateway):
    for verdict in ("yes", "no", "no"):
        upstream.responder = _mllm(verdict)
        _ask(ecso_gateway)
    metrics = httpx.get(f"{ecso_gateway.url}/metrics").text
    assert 'gateway_stage_runs_total{outcome="rewritten",stage="ecso"} 1.0' in metrics
    assert 'gateway_stage_runs_total{outcome="safe",stage="ecso"} 2.0' in metrics


def test_unknown_stage_and_ecso_model_are_config_errors():
    from gateway.core.config import ConfigError, parse_config
    from gateway.http import create_app

    with pytest.raises(ConfigError, match="unknown stage 'magic'; known stages: aligncot, ecso"):
        create_app(parse_config({"models": [{"name": "m", "backend": "openai", "base_url": "http://x/v1",
                                             "stages": ["magic"]}]}))
    with pytest.raises(ConfigError, match="ecso_model 'nope' is not a configured model"):
        parse_config({"models": [{"name": "m", "backend": "openai", "base_url": "http://x/v1", "ecso_model": "nope"}]})


def test_a_held_stream_starts_at_once_and_keeps_the_connection_alive(upstream, ecso_gateway, monkeypatch):
    """ECSO holds the answer until its check is done; proxies with idle timeouts must not see silence."""
    import time

    from gateway.engine import chat as serving

    monkeypatch.setattr(serving, "KEEPALIVE_S", 0.2)
    slow = _mllm("No")
    upstream.responder = lambda body: Reply(**{**slow(body).__dict__, "delay_s": 1.0})
    payload = {"model": "llava", "stream": True, "max_tokens": 50,
               "messages": [{"role": "user", "content": [{"type": "text", "text": QUERY}, IMAGE]}]}
    started = time.monotonic()
    with httpx.stream("POST", f"{ecso_gateway.base_url}/chat/completions", json=payload, timeout=30) as response:
        headers_after = time.monotonic() - started
        lines = [(time.monotonic() - started, line) for line in response.iter_lines() if line]
    assert response.status_code == 200 and response.headers["x-gateway-stages"] == "ecso"
    assert headers_after < 0.8  # before the first model call has even answered
    comments = [t for t, line in lines if line.startswith(":")]
    first_data = next(t for t, line in lines if line.startswith("data: "))
    assert len(comments) >= 5 and comments[0] < 0.8 < first_data
    assert lines[-1][1] == "data: [DONE]"
