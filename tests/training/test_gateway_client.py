"""The in-process gateway the offline tools start: ready, or a clear error at once."""

from __future__ import annotations

import time

import pytest

from gateway.core.config import parse_config
from training.gateway_client import openai_client, running_gateway


def test_a_model_that_cannot_load_fails_fast_with_its_reason(tmp_path):
    config = parse_config({"models": [{"name": "broken", "backend": "local", "path": str(tmp_path / "missing")}]})
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="model 'broken' failed to load"), running_gateway(config):
        pass
    assert time.monotonic() - started < 60  # not the 600 s ready timeout


def test_a_ready_gateway_serves_the_openai_client(upstream):
    config = parse_config({"models": [{"name": "echo", "backend": "openai", "base_url": upstream.base_url}]})
    with running_gateway(config) as base_url:
        reply = openai_client(base_url).chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content
