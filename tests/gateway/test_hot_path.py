"""The hot path's short cuts keep behaviour: a stream is relayed as the bursts the upstream sent (dumped once,
model renamed, usage counted once), and the OpenAI endpoints, reached past FastAPI's middleware, still answer
an unexpected failure with an OpenAI-shaped 500 carrying the request id."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.support.upstream import Reply

MESSAGES = [{"role": "user", "content": "x"}]
USAGE = {"prompt_tokens": 7, "completion_tokens": 60, "total_tokens": 67}


def _config(upstream):
    return {"models": [{"name": "pub", "backend": "openai", "base_url": upstream.base_url,
                        "upstream_model": "org/served-model"}]}


def _chunk(i: int) -> dict:
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "org/served-model",
            "vendor_field": {"i": i, "ü": [None, True]},
            "choices": [{"index": 0, "delta": {"content": f"wörd{i} 😀 "}, "finish_reason": None}]}


def _burst(chunks: list[dict], *tail: str) -> str:
    """All events in one body: the gateway reads many of them at once."""
    return "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "".join(tail)


def _events(gateway, **body) -> list[str]:
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", timeout=10,
                      json={"model": "pub", "stream": True, "messages": MESSAGES, **body}) as response:
        assert response.status_code == 200
        return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def _completion_tokens(gateway) -> float:
    for line in httpx.get(f"{gateway.url}/metrics").text.splitlines():
        if line.startswith('gateway_tokens_total{kind="completion",model="pub"}'):
            return float(line.split()[-1])
    return 0.0


def test_a_burst_of_events_is_relayed_whole_in_order_with_usage_counted_once(upstream, make_gateway):
    chunks = [_chunk(i) for i in range(60)]
    usage_chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "org/served-model", "choices": [],
                   "usage": USAGE}
    upstream.responder = lambda body: Reply(raw_sse=_burst(chunks, f"data: {json.dumps(usage_chunk)}\n\n",
                                                           "data: [DONE]\n\n"))
    gateway = make_gateway(_config(upstream))

    events = _events(gateway)  # the client did not ask for usage: the gateway asked for it, and keeps it
    assert [json.loads(event) for event in events[:-1]] == [{**chunk, "model": "pub"} for chunk in chunks]
    assert events[-1] == "[DONE]"
    assert upstream.calls[-1].body["stream_options"] == {"include_usage": True}
    time.sleep(0.2)
    assert _completion_tokens(gateway) == 60

    events = _events(gateway, stream_options={"include_usage": True})
    assert json.loads(events[-2]) == {**usage_chunk, "model": "pub"} and events[-1] == "[DONE]"
    assert len(events) == 62
    time.sleep(0.2)
    assert _completion_tokens(gateway) == 120  # once per request, never per chunk


def test_the_openai_sdk_reads_a_relayed_burst(upstream, make_gateway):
    chunks = [_chunk(i) for i in range(40)]
    upstream.responder = lambda body: Reply(raw_sse=_burst(chunks, "data: [DONE]\n\n"))
    gateway = make_gateway(_config(upstream))
    stream = gateway.client().chat.completions.create(model="pub", messages=MESSAGES, stream=True)
    received = list(stream)
    assert "".join(c.choices[0].delta.content for c in received) == "".join(f"wörd{i} 😀 " for i in range(40))
    assert {c.model for c in received} == {"pub"}
    assert received[7].model_extra["vendor_field"] == {"i": 7, "ü": [None, True]}


def test_an_error_inside_a_burst_ends_the_stream_after_the_chunks_before_it(upstream, make_gateway):
    before, after = [_chunk(i) for i in range(5)], [_chunk(i) for i in range(5, 9)]
    upstream.responder = lambda body: Reply(raw_sse=_burst(before, 'data: {"error": {"message": "engine died"}}\n\n',
                                                           _burst(after), "data: [DONE]\n\n"))
    gateway = make_gateway(_config(upstream))
    events = _events(gateway)
    assert [json.loads(event)["vendor_field"]["i"] for event in events[:5]] == [0, 1, 2, 3, 4]
    error = json.loads(events[5])["error"]
    assert "engine died" in error["message"] and error["type"]
    assert events[6:] == ["[DONE]"]  # nothing after the error is relayed


@pytest.mark.parametrize("stream", [False, True])
def test_an_unexpected_failure_is_an_openai_500_with_the_request_id(upstream, make_gateway, monkeypatch, stream):
    gateway = make_gateway(_config(upstream))

    async def broken(*args, **kwargs):
        raise RuntimeError("a bug with a secret in it")

    monkeypatch.setattr(gateway.app.state.gateway.service, "serve", broken)
    response = httpx.post(f"{gateway.url}/v1/chat/completions", headers={"x-request-id": "req-fast-path-1"},
                          json={"model": "pub", "stream": stream, "messages": MESSAGES}, timeout=10)
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "req-fast-path-1"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "x-request-id" in error["message"] and "secret" not in response.text and "Traceback" not in response.text
    # The gateway still serves the next request on the same endpoint.
    monkeypatch.undo()
    assert gateway.client().chat.completions.create(model="pub", messages=MESSAGES).model == "pub"


def test_the_short_way_keeps_the_gateway_middleware(upstream, make_gateway):
    """Request ids and the body limit apply on the OpenAI endpoints; other methods still get FastAPI's 405."""
    config = {**_config(upstream), "limits": {"max_body_bytes": 2048}}
    gateway = make_gateway(config)
    ok = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "pub", "messages": MESSAGES},
                    headers={"x-request-id": "req-mine"})
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "req-mine"
    big = httpx.post(f"{gateway.url}/v1/chat/completions",
                     json={"model": "pub", "messages": [{"role": "user", "content": "x" * 5000}]})
    assert big.status_code == 413 and big.headers["x-request-id"].startswith("req-")
    wrong = httpx.get(f"{gateway.url}/v1/chat/completions")
    assert wrong.status_code == 405 and set(wrong.json()["error"]) == {"message", "type", "param", "code"}
