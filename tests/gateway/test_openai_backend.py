"""The `openai` backend against a real scripted HTTP upstream, through the real openai SDK."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.support.upstream import Reply


def _config(upstream, **model_fields):
    return {"models": [{"name": "pub", "backend": "openai", "base_url": upstream.base_url,
                        "upstream_model": "org/served-model", **model_fields}]}


def test_chat_passes_unknown_fields_and_renames_the_model(upstream, make_gateway):
    gateway = make_gateway(_config(upstream))
    response = gateway.client().chat.completions.create(
        model="pub", messages=[{"role": "user", "content": "hello", "x_custom": 1}], temperature=0.3, seed=7,
        extra_body={"top_k": 5, "guided_json": {"type": "object"}, "chat_template_kwargs": {"thinking": False}})
    assert response.choices[0].message.content == "alpha: hello"
    assert response.model == "pub"
    sent = upstream.calls[0].body
    assert sent["model"] == "org/served-model"
    assert sent["top_k"] == 5
    assert sent["guided_json"] == {"type": "object"}
    assert sent["chat_template_kwargs"] == {"thinking": False}
    assert sent["messages"][0]["x_custom"] == 1
    assert sent["temperature"] == 0.3 and sent["seed"] == 7
    assert "routing" not in sent and "stream_options" not in sent


def test_stream_relays_chunks_in_order_without_buffering(upstream, make_gateway):
    parts = [f"p{i} " for i in range(8)]
    upstream.responder = lambda body: Reply(chunks=parts, chunk_delay_s=0.25)
    gateway = make_gateway(_config(upstream))
    started = time.monotonic()
    arrivals, texts = [], []
    stream = gateway.client().chat.completions.create(model="pub", messages=[{"role": "user", "content": "x"}],
                                                      stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            texts.append(chunk.choices[0].delta.content)
            arrivals.append(time.monotonic() - started)
    assert texts == parts
    # The first chunk reached the client long before the upstream finished (8 x 0.25 s).
    assert arrivals[0] < 1.0 and arrivals[-1] > 1.5
    assert all(b >= a for a, b in zip(arrivals, arrivals[1:], strict=False))
    assert upstream.calls[0].body["stream_options"] == {"include_usage": True}


def test_stream_usage_chunk_only_when_asked(upstream, make_gateway):
    gateway = make_gateway(_config(upstream))
    client = gateway.client()
    with_usage = list(client.chat.completions.create(
        model="pub", messages=[{"role": "user", "content": "one two"}], stream=True,
        stream_options={"include_usage": True}))
    assert with_usage[-1].choices == [] and with_usage[-1].usage.completion_tokens >= 1
    without = list(client.chat.completions.create(model="pub", messages=[{"role": "user", "content": "one two"}],
                                                  stream=True))
    assert all(chunk.usage is None for chunk in without)
    assert all(chunk.choices for chunk in without)


def test_legacy_completions_pass_through(upstream, make_gateway):
    gateway = make_gateway(_config(upstream))
    result = gateway.client().completions.create(model="pub", prompt="The sky is", max_tokens=5,
                                                 extra_body={"min_tokens": 2})
    assert result.choices[0].text == "alpha: The sky is"
    assert upstream.calls[0].path == "/v1/completions"
    assert upstream.calls[0].body["min_tokens"] == 2 and upstream.calls[0].body["max_tokens"] == 5
    streamed = "".join(c.choices[0].text for c in gateway.client().completions.create(
        model="pub", prompt="a b c", stream=True) if c.choices)
    assert streamed.split() == ["alpha:", "a", "b", "c"]


def test_total_timeout_gives_504(upstream, make_gateway):
    upstream.responder = lambda body: Reply(hang=True)
    gateway = make_gateway(_config(upstream, timeout_s=1))
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        gateway.client().chat.completions.create(model="pub", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 504
    assert info.value.body["code"] == "upstream_timeout"
    assert "did not answer within 1 s" in info.value.body["message"]
    assert time.monotonic() - started < 3


def test_stream_that_exceeds_the_total_timeout_ends_with_an_error_event(upstream, make_gateway):
    upstream.responder = lambda body: Reply(endless=True, chunk_delay_s=0.1)
    gateway = make_gateway(_config(upstream, timeout_s=1))
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", timeout=10,
                      json={"model": "pub", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert r.status_code == 200
    assert '"upstream_timeout"' in lines[-2]
    assert lines[-1] == "data: [DONE]"


def test_unreachable_upstream_gives_503(make_gateway):
    from tests.support.servers import free_port

    gateway = make_gateway({"models": [{"name": "pub", "backend": "openai",
                                        "base_url": f"http://127.0.0.1:{free_port()}/v1"}]}, wait_ready=False)
    with pytest.raises(openai.APIStatusError) as info:
        gateway.client().chat.completions.create(model="pub", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 503
    assert info.value.body["code"] == "upstream_unavailable"
    assert "127.0.0.1" not in info.value.message and "pub" in info.value.message  # no upstream address
    ready = httpx.get(f"{gateway.url}/ready")
    assert ready.status_code == 503 and ready.json()["models"]["pub"]["ready"] is False


@pytest.mark.parametrize(("upstream_status", "gateway_status", "code"), [
    (500, 502, "upstream_error"), (502, 502, "upstream_error"), (503, 503, "upstream_unavailable"),
    (504, 504, "upstream_timeout"), (400, 400, "invalid_request"), (422, 422, "invalid_request"),
    (413, 413, "invalid_request"), (404, 502, "upstream_error"),
])
def test_upstream_errors_map_to_openai_errors(upstream, make_gateway, upstream_status, gateway_status, code):
    upstream.responder = lambda body: Reply(status=upstream_status, error_message="vLLM says no")
    gateway = make_gateway(_config(upstream))
    for stream in (False, True):
        response = httpx.post(f"{gateway.base_url}/chat/completions", timeout=10, json={
            "model": "pub", "stream": stream, "messages": [{"role": "user", "content": "x"}]})
        assert response.status_code == gateway_status
        error = response.json()["error"]
        assert error["code"] == code
        if upstream_status < 500 and upstream_status != 404:  # the client's own error, as the upstream put it
            assert error["message"] == "vLLM says no"
        else:
            assert "vLLM says no" in error["message"] and str(upstream_status) in error["message"]
        assert set(error) == {"message", "type", "param", "code"}


def test_upstream_dying_mid_stream_ends_with_error_event_not_silence(upstream, make_gateway):
    upstream.responder = lambda body: Reply(chunks=["a ", "b ", "c ", "d "], die_after_chunks=2)
    gateway = make_gateway(_config(upstream))
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", timeout=10,
                      json={"model": "pub", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert '"content":"a "' in lines[0] and '"content":"b "' in lines[1]
    assert '"error"' in lines[-2] and '"upstream_error"' in lines[-2]
    assert lines[-1] == "data: [DONE]"


def test_client_disconnect_mid_stream_closes_the_upstream_within_1s(upstream, make_gateway):
    upstream.responder = lambda body: Reply(endless=True, chunk_delay_s=0.05)
    gateway = make_gateway(_config(upstream))
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", timeout=10,
                      json={"model": "pub", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
        lines = r.iter_lines()
        next(lines)
        next(lines)
    closed_at = time.monotonic()
    deadline = closed_at + 3
    while upstream.calls[0].disconnected is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert upstream.calls[0].disconnected is not None
    assert upstream.calls[0].disconnected - closed_at < 1.0
    sent = upstream.calls[0].chunks_sent
    time.sleep(0.3)
    assert upstream.calls[0].chunks_sent == sent  # nothing more is produced for a gone client


def test_client_disconnect_while_waiting_closes_the_upstream_within_1s(upstream, make_gateway):
    upstream.responder = lambda body: Reply(hang=True)
    gateway = make_gateway(_config(upstream))
    for stream in (False, True):
        upstream.calls.clear()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{gateway.base_url}/chat/completions", timeout=httpx.Timeout(0.5, connect=2), json={
                "model": "pub", "stream": stream, "messages": [{"role": "user", "content": "x"}]})
        gave_up = time.monotonic()
        deadline = gave_up + 3
        while (not upstream.calls or upstream.calls[0].disconnected is None) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert upstream.calls[0].disconnected is not None, f"stream={stream}"
        assert upstream.calls[0].disconnected - gave_up < 1.0


def test_ready_reflects_upstream_health(upstream, make_gateway):
    gateway = make_gateway(_config(upstream))
    assert httpx.get(f"{gateway.url}/ready").status_code == 200
    upstream.healthy = False
    body = httpx.get(f"{gateway.url}/ready").json()
    assert body["status"] == "not_ready" and "503" in body["models"]["pub"]["detail"]


def test_upstream_api_key_is_sent(upstream, make_gateway, monkeypatch):
    monkeypatch.setenv("UPSTREAM_KEY", "sk-upstream")
    gateway = make_gateway(_config(upstream, api_key_env="UPSTREAM_KEY"))
    gateway.client().chat.completions.create(model="pub", messages=[{"role": "user", "content": "x"}])
    assert upstream.calls[-1].headers["authorization"] == "Bearer sk-upstream"


def test_unknown_response_fields_and_unicode_come_back_unchanged(upstream, make_gateway):
    """What vLLM adds to a response (``prompt_logprobs``, ``kv_transfer_params``, a choice's ``stop_reason``)
    reaches the client as the upstream wrote it, streamed or not; only ``model`` is renamed."""
    extra = {"prompt_logprobs": None, "kv_transfer_params": {"remote": "node-3", "blocks": [1, 2]},
             "system_fingerprint": "fp-ünï-😀"}
    upstream.responder = lambda body: Reply(text="héllo wörld 😀", extra=extra)
    gateway = make_gateway(_config(upstream))
    response = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=10,
                          json={"model": "pub", "messages": [{"role": "user", "content": "x"}]})
    body = response.json()
    assert body["model"] == "pub" and body["choices"][0]["message"]["content"] == "héllo wörld 😀"
    assert {key: body[key] for key in extra} == extra
    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "org/served-model",
             "vendor_field": [1, {"a": "ü"}],
             "choices": [{"index": 0, "delta": {"content": "😀 ok"}, "finish_reason": None, "stop_reason": 42}]}
    upstream.responder = lambda body: Reply(raw_sse=f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n")
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", timeout=10,
                      json={"model": "pub", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert events == [{**chunk, "model": "pub"}]
