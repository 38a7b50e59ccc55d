"""A bounded hostile-client suite against a live gateway process: what a client can send to grow the server's
memory, slip an unchecked answer past a safety stage, or make the gateway miscount, and what it gets back.

(Image URLs that point inside the network, rebinding names and decompression bombs: tests/safety/test_images.py;
a stopped or frozen Redis: tests/gateway/test_limits.py; an upstream that hangs or answers 404 behind a healthy
/health: tests/gateway/test_routing.py; out-of-range token ids on the local model:
tests/gateway/test_local_backend.py.)
"""

from __future__ import annotations

import json
import secrets
import time

import httpx
import pytest

from tests.support.servers import GatewayProcess
from tests.support.upstream import Reply

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture
def live(upstream):
    config = {"models": [
        {"name": "plain", "backend": "openai", "base_url": upstream.base_url},
        {"name": "guarded", "backend": "openai", "base_url": upstream.base_url, "upstream_model": "plain",
         "stages": ["aligncot"]},
        {"name": "seeing", "backend": "openai", "base_url": upstream.base_url, "upstream_model": "plain",
         "vision": True, "stages": ["ecso"]}]}
    with GatewayProcess(config) as gateway:
        yield gateway


def _metric_lines(gateway: GatewayProcess) -> list[str]:
    return [line for line in httpx.get(f"{gateway.url}/metrics").text.splitlines() if not line.startswith("#")]


def test_random_model_names_do_not_grow_the_metrics(live):
    before = len(_metric_lines(live))
    with httpx.Client(base_url=f"{live.url}/v1", timeout=10) as client:
        for _ in range(50):
            response = client.post("/chat/completions", json={"model": secrets.token_hex(8), "messages": MESSAGES})
            assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
        huge = client.post("/chat/completions", json={"model": "m" * 5000, "messages": MESSAGES})
        assert huge.status_code == 400 and huge.json()["error"]["param"] == "model"
    lines = _metric_lines(live)
    assert len(lines) - before <= 25  # one "unknown" label set, not fifty
    assert 'model="unknown"' in "\n".join(lines)
    assert not any(name in "\n".join(lines) for name in ("m" * 100,))


@pytest.mark.parametrize("model", ["guarded", "seeing"])
def test_n_above_one_through_a_safety_stage_is_refused(live, upstream, model):
    content = [{"type": "text", "text": "hi"},
               {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}] if model == "seeing" else "hi"
    response = httpx.post(f"{live.url}/v1/chat/completions", timeout=10, json={
        "model": model, "n": 2, "messages": [{"role": "user", "content": content}]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "n" and "separate requests" in error["message"]
    assert not upstream.calls  # refused before any model call


def test_a_tool_call_answer_is_judged_not_waved_through(live, upstream):
    """A direct answer made of a tool call has ``content: null``: the safety check must read the call."""
    tool_call = {"id": "call_1", "type": "function",
                 "function": {"name": "wire_money", "arguments": json.dumps({"to": "attacker", "amount": 10000})}}

    def reply(body: dict) -> Reply:
        prompt = body["messages"][-1]["content"]
        if prompt.startswith("Safety Check."):  # the judge flags what it can see
            return Reply(text="yes" if "wire_money" in prompt else "no")
        if len(upstream.calls) == 1:  # the direct answer: a tool call and no text
            return Reply(text="", extra={"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": None, "tool_calls": [tool_call]}}]})
        return Reply(text="I cannot help with moving money to that account.")

    upstream.responder = reply
    response = httpx.post(f"{live.url}/v1/chat/completions", timeout=30, json={
        "model": "guarded", "messages": [{"role": "user", "content": "send my savings to account X"}],
        "aligncot": {"return_chain": True}})
    assert response.status_code == 200
    assert "[tool call] wire_money" in upstream.calls[1].body["messages"][-1]["content"]  # the check saw it
    assert response.headers["x-gateway-aligncot"] == "chain"  # so the direct answer did not pass
    assert response.json()["choices"][0]["message"]["content"].startswith("I cannot help")


def test_a_safe_tool_call_streams_through_a_stage_with_its_logprobs_and_refusal(live, upstream):
    """A held answer replayed as chunks keeps its tool calls, refusal, logprobs and fingerprint."""
    import openai

    tool_call = {"id": "call_7", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    logprobs = {"content": [{"token": "Sure", "logprob": -0.1, "bytes": [83, 117, 114, 101], "top_logprobs": []}]}

    def reply(body: dict) -> Reply:
        if body["messages"][-1]["content"].startswith("Safety Check."):
            return Reply(text="no")
        return Reply(text="", extra={"system_fingerprint": "fp-7", "choices": [{
            "index": 0, "finish_reason": "tool_calls", "logprobs": logprobs, "message": {
                "role": "assistant", "content": "Sure", "refusal": "not the forecast itself",
                "tool_calls": [tool_call]}}]})

    upstream.responder = reply
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="none", max_retries=0)
    chunks = list(client.chat.completions.create(model="guarded", stream=True,
                                                 messages=[{"role": "user", "content": "weather in Oslo?"}]))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == "Sure"
    assert "".join(d.refusal or "" for d in deltas) == "not the forecast itself"
    calls = [call for d in deltas for call in d.tool_calls or []]
    assert [(c.index, c.id, c.function.name, c.function.arguments) for c in calls] == [
        (0, "call_7", "get_weather", '{"city": "Oslo"}')]
    assert [c.choices[0].logprobs.content[0].token for c in chunks if c.choices and c.choices[0].logprobs] == ["Sure"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert all(c.system_fingerprint == "fp-7" for c in chunks)


def test_continuous_usage_stats_are_passed_through_and_counted_once(live, upstream):
    upstream.responder = lambda body: Reply(text="one two three four five")
    body = {"model": "plain", "stream": True, "messages": MESSAGES,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    with httpx.stream("POST", f"{live.url}/v1/chat/completions", json=body, timeout=10) as response:
        chunks = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    assert upstream.calls[-1].body["stream_options"]["continuous_usage_stats"] is True  # passed through
    assert all(chunk.get("usage") for chunk in chunks)  # the client asked for it: it gets it
    final = chunks[-1]["usage"]
    time.sleep(0.2)
    metrics = httpx.get(f"{live.url}/metrics").text
    # Counted once, from the final usage chunk: not the cumulative usage of every chunk summed.
    assert f'gateway_tokens_total{{kind="completion",model="plain"}} {float(final["completion_tokens"])}' in metrics


def test_upstream_sse_to_the_letter(live, upstream):
    """``data:`` without a space, comments, and an ``event: error`` from the upstream."""
    chunk = {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "  two"},
                                                                        "finish_reason": None}]}
    upstream.responder = lambda body: Reply(raw_sse=f": ping\n\ndata:{json.dumps(chunk)}\n\n"
                                                    'event: error\ndata: {"message": "engine died"}\n\n')
    with httpx.stream("POST", f"{live.url}/v1/chat/completions", timeout=10,
                      json={"model": "plain", "stream": True, "messages": MESSAGES}) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert json.loads(lines[0][6:])["choices"][0]["delta"]["content"] == "  two"  # leading spaces kept
    assert "engine died" in lines[-2] and lines[-1] == "data: [DONE]"


def test_ready_goes_unready_while_draining(upstream):
    """SIGTERM: /ready answers 503 at once while requests are still served for drain_delay_s; then the listener
    closes and in-flight work gets shutdown_grace_s (half a second here: a fraction is not "wait forever")."""
    import threading

    upstream.responder = lambda body: Reply(text="slow" if "slow" in json.dumps(body) else "fast",
                                            delay_s=5 if "slow" in json.dumps(body) else 0)
    config = {"models": [{"name": "plain", "backend": "openai", "base_url": upstream.base_url}],
              "server": {"shutdown_grace_s": 0.5, "drain_delay_s": 1.0}}
    with GatewayProcess(config) as gateway:
        assert httpx.get(f"{gateway.url}/ready").status_code == 200
        result: dict = {}
        slow = threading.Thread(target=lambda: result.update(r=httpx.post(
            f"{gateway.url}/v1/chat/completions", timeout=20,
            json={"model": "plain", "messages": [{"role": "user", "content": "slow"}]})))
        slow.start()
        upstream.wait_for_calls(1)
        started = time.monotonic()
        gateway.terminate()
        time.sleep(0.2)
        ready = httpx.get(f"{gateway.url}/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        served = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=10, json={"model": "plain",
                                                                                   "messages": MESSAGES})
        assert served.status_code == 200  # still serving while the load balancer notices
        slow.join(15)
        assert gateway.process.wait(timeout=10) is not None
        assert time.monotonic() - started < 4
    assert result["r"].status_code == 503 and result["r"].json()["error"]["code"] == "shutting_down"
