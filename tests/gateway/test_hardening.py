"""Production hardening against real servers: API keys, per-key limits (with a real Redis shared by two
gateway processes), body and request limits, safe default binding, graceful shutdown."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import time

import httpx
import openai
import pytest

from gateway.core.config import parse_config
from gateway.http import create_app
from tests.support.servers import VENV_BIN, GatewayProcess, free_port
from tests.support.upstream import Reply

KEY_A, KEY_B = "sk-test-alpha-0123456789", "sk-test-bravo-9876543210"
MESSAGES = [{"role": "user", "content": "hello there"}]


def _models(upstream):
    return [{"name": "pub", "backend": "openai", "base_url": upstream.base_url}]


def _auth(**limits_a):
    return {"api_keys": [{"key": KEY_A, "name": "team-a", **limits_a},
                         {"key_sha256": hashlib.sha256(KEY_B.encode()).hexdigest(), "name": "team-b"}]}


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_api_keys_are_required_on_v1_only(upstream, make_gateway):
    gateway = make_gateway({"models": _models(upstream), "auth": _auth()})
    url = f"{gateway.base_url}/chat/completions"
    body = {"model": "pub", "messages": MESSAGES}
    assert _error(httpx.post(url, json=body), 401)["type"] == "authentication_error"
    assert "missing API key" in _error(httpx.post(url, json=body, headers={"authorization": "Basic x"}), 401)["message"]
    assert _error(httpx.post(url, json=body, headers={"authorization": "Bearer sk-wrong"}), 401)["message"] == \
        "invalid API key"
    _error(httpx.get(f"{gateway.base_url}/models"), 401)
    for key in (KEY_A, KEY_B):  # plain and sha256 forms
        assert gateway.client(api_key=key).chat.completions.create(model="pub", messages=MESSAGES).choices
    with pytest.raises(openai.AuthenticationError):
        gateway.client(api_key="sk-nope").models.list()
    assert httpx.get(f"{gateway.url}/health").status_code == 200
    assert httpx.get(f"{gateway.url}/ready").status_code == 200
    assert httpx.get(f"{gateway.url}/metrics").status_code == 200  # from loopback


def test_metrics_are_refused_to_remote_clients_unless_configured(upstream):
    async def fetch(allow: bool) -> int:
        app = create_app(parse_config({"models": _models(upstream), "server": {"metrics_allow_remote": allow}}))
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            response = await client.get("/metrics")
            if response.status_code != 200:
                _error(response, 403)
            return response.status_code

    assert asyncio.run(fetch(False)) == 403
    assert asyncio.run(fetch(True)) == 200


def test_keys_are_logged_by_name_never_by_value(upstream):
    with GatewayProcess({"models": _models(upstream), "auth": _auth()}) as gateway:
        for key in (KEY_A, "sk-wrong-key-value"):
            httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "pub", "messages": MESSAGES},
                       headers={"authorization": f"Bearer {key}"})
        time.sleep(0.3)
        log, entries = gateway.log(), gateway.log_entries()
    assert any(entry.get("key") == "team-a" for entry in entries)
    assert KEY_A not in log and "sk-wrong-key-value" not in log


def test_keys_hash_command():
    expected = hashlib.sha256(b"sk-secret").hexdigest()
    by_arg = subprocess.run([str(VENV_BIN / "llm-gateway"), "keys", "hash", "sk-secret"], capture_output=True,
                            text=True, timeout=60)
    by_stdin = subprocess.run([str(VENV_BIN / "llm-gateway"), "keys", "hash"], input="sk-secret\n",
                              capture_output=True, text=True, timeout=60)
    assert by_arg.stdout.strip() == expected == by_stdin.stdout.strip()


def test_placeholder_keys_are_refused():
    from gateway.core.config import ConfigError

    with pytest.raises(ConfigError, match="placeholder"):
        parse_config({"auth": {"api_keys": [{"key": "changeme", "name": "x"}]}})
    with pytest.raises(ConfigError, match="exactly one of 'key' or 'key_sha256'"):
        parse_config({"auth": {"api_keys": [{"name": "x"}]}})


def test_public_bind_without_keys_refuses_to_start(upstream, tmp_path):
    import yaml

    config = tmp_path / "gw.yaml"
    config.write_text(yaml.safe_dump({"models": _models(upstream)}))
    refused = subprocess.run([str(VENV_BIN / "llm-gateway"), "serve", "--config", str(config), "--host", "0.0.0.0",
                              "--port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "refusing to serve on 0.0.0.0 without API keys" in refused.stderr
    assert "--allow-unauthenticated" in refused.stderr and "keys hash" in refused.stderr
    allowed = GatewayProcess({"models": _models(upstream)}, extra_args=["--host", "0.0.0.0",
                                                                        "--allow-unauthenticated"])
    with allowed:
        assert httpx.get(f"{allowed.url}/health").status_code == 200
    with GatewayProcess({"models": _models(upstream), "auth": _auth()}, extra_args=["--host", "0.0.0.0"]) as keyed:
        assert httpx.get(f"{keyed.url}/health").status_code == 200


def test_requests_per_minute_per_key(upstream, make_gateway):
    gateway = make_gateway({"models": _models(upstream), "auth": _auth(requests_per_minute=3)})
    client_a, client_b = gateway.client(api_key=KEY_A), gateway.client(api_key=KEY_B)
    for _ in range(3):
        client_a.chat.completions.create(model="pub", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as info:
        client_a.chat.completions.create(model="pub", messages=MESSAGES)
    retry_after = int(info.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert info.value.body["code"] == "rate_limit_exceeded" and "team-a" in info.value.body["message"]
    assert len(upstream.calls) == 3  # refused before any upstream call
    for _ in range(5):  # another key has its own budget (none)
        client_b.chat.completions.create(model="pub", messages=MESSAGES)
    assert 'gateway_rate_limited_total{key="team-a",limit="minute"} 1.0' in httpx.get(f"{gateway.url}/metrics").text


def test_tokens_per_minute_counts_real_usage_streams_included(upstream, make_gateway):
    upstream.responder = lambda body: Reply(text=" ".join(["word"] * 20))  # 20 completion tokens
    gateway = make_gateway({"models": _models(upstream), "auth": _auth(tokens_per_minute=50)})
    client = gateway.client(api_key=KEY_A)
    # Each reserves ~3 prompt + 20 completion tokens when admitted, then settles ~25 real ones.
    client.chat.completions.create(model="pub", messages=MESSAGES, max_tokens=20)
    chunks = list(client.chat.completions.create(model="pub", messages=MESSAGES, stream=True, max_tokens=20))
    assert all(chunk.usage is None for chunk in chunks)
    time.sleep(0.2)  # settlement happens right after the response
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="pub", messages=MESSAGES, max_tokens=20)
    assert "50 tokens per minute" in info.value.body["message"]


def test_two_gateways_share_one_budget_through_redis(upstream, redis_url):
    config = {"models": _models(upstream), "auth": _auth(requests_per_minute=10), "limits": {"redis_url": redis_url}}
    with GatewayProcess(config) as one, GatewayProcess(config) as two:

        async def burst() -> list[int]:
            async with httpx.AsyncClient(timeout=30) as client:
                body, headers = {"model": "pub", "messages": MESSAGES}, {"authorization": f"Bearer {KEY_A}"}
                requests = [client.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers)
                            for gateway in [one, two] * 15]
                return [r.status_code for r in await asyncio.gather(*requests)]

        statuses = asyncio.run(burst())
    assert statuses.count(200) == 10 and statuses.count(429) == 20  # combined rate holds, no race
    assert len(upstream.calls) == 10


def test_body_size_limit(upstream, make_gateway):
    gateway = make_gateway({"models": _models(upstream), "limits": {"max_body_bytes": 2048}})
    url = f"{gateway.base_url}/chat/completions"
    big = {"model": "pub", "messages": [{"role": "user", "content": "x" * 5000}]}
    assert "limit is 2048" in _error(httpx.post(url, json=big), 413)["message"]

    def chunked():  # no content-length: the limit applies while the body streams in
        yield b'{"model": "pub", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}]}'

    _error(httpx.post(url, content=chunked(), headers={"content-type": "application/json"}), 413)
    assert httpx.post(url, json={"model": "pub", "messages": MESSAGES}).status_code == 200
    assert not upstream.calls[1:]


def test_message_count_and_max_tokens_caps(upstream, make_gateway):
    models = [{**_models(upstream)[0], "max_tokens_cap": 100}]
    gateway = make_gateway({"models": models, "limits": {"max_messages": 3}})
    url = f"{gateway.base_url}/chat/completions"
    error = _error(httpx.post(url, json={"model": "pub", "messages": MESSAGES * 4}), 400)
    assert error["param"] == "messages" and "limit is 3" in error["message"]
    error = _error(httpx.post(url, json={"model": "pub", "messages": MESSAGES, "max_tokens": 500}), 400)
    assert error["param"] == "max_tokens" and "limit of 100" in error["message"]
    assert httpx.post(url, json={"model": "pub", "messages": MESSAGES, "max_tokens": 100}).status_code == 200


def test_sigterm_lets_an_in_flight_stream_finish(upstream):
    upstream.responder = lambda body: Reply(chunks=[f"c{i} " for i in range(10)], chunk_delay_s=0.2)
    process = GatewayProcess({"models": _models(upstream), "server": {"shutdown_grace_s": 10}}).start()
    with httpx.stream("POST", f"{process.url}/v1/chat/completions", timeout=30,
                      json={"model": "pub", "stream": True, "messages": MESSAGES}) as response:
        lines = response.iter_lines()
        received = [next(lines)]
        process.terminate()
        received += list(lines)
    data = [line for line in received if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]"
    assert "".join(data).count('"content":"c') == 10  # every chunk arrived
    assert process.process.wait(timeout=15) in (0, -15)  # uvicorn re-raises SIGTERM after a clean shutdown
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{process.url}/health")


def test_sigterm_deadline_ends_a_stream_with_an_error_not_a_cut(upstream):
    upstream.responder = lambda body: Reply(endless=True, chunk_delay_s=0.1)
    process = GatewayProcess({"models": _models(upstream), "server": {"shutdown_grace_s": 2}}).start()
    started = time.monotonic()
    with httpx.stream("POST", f"{process.url}/v1/chat/completions", timeout=30,
                      json={"model": "pub", "stream": True, "messages": MESSAGES}) as response:
        lines = response.iter_lines()
        next(lines)
        process.terminate()
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    assert '"shutting_down"' in rest[-2] and "shutting down" in rest[-2]
    assert process.process.wait(timeout=15) in (0, -15)  # uvicorn re-raises SIGTERM after a clean shutdown
    assert time.monotonic() - started < 8
