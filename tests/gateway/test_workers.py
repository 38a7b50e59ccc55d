"""``llm-gateway serve --workers N``: several processes on one port, metrics summed over them, limits only
when they are shared, and SIGTERM stops them all."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import httpx
import openai
import yaml

from tests.support.servers import VENV_BIN, GatewayProcess, free_port

MESSAGES = [{"role": "user", "content": "hello"}]


def _workers(pid: int) -> set[int]:
    """The supervisor's worker processes (spawned interpreters; not multiprocessing's resource tracker)."""
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children |= {int(child) for child in (task / "children").read_text().split()}
    return {child for child in children if _alive(child) and "resource_tracker" not in _cmdline(child)}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _requests_total(metrics: str) -> float:
    return sum(float(value) for value in re.findall(r'^gateway_requests_total\{[^}]*status="200"\} (\S+)$',
                                                     metrics, re.M))


def test_two_workers_serve_one_port_and_metrics_add_up(upstream):
    config = {"models": [{"name": "pub", "backend": "openai", "base_url": upstream.base_url}]}
    with GatewayProcess(config, extra_args=["--workers", "2"]) as gateway:
        assert gateway.process is not None
        deadline = time.monotonic() + 60
        while len(workers := _workers(gateway.process.pid)) < 2:  # the supervisor's spawned workers
            assert time.monotonic() < deadline
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="none", max_retries=0)
        for _ in range(40):
            answer = client.chat.completions.create(model="pub", messages=MESSAGES)
            assert answer.choices[0].message.content
        # Whichever worker answers /metrics, it reports the requests of both.
        totals = {_requests_total(httpx.get(f"{gateway.url}/metrics").text) for _ in range(6)}
        assert totals == {40.0}
        supervisor = gateway.process
        gateway.terminate()
        assert supervisor.wait(timeout=30) in (0, -15)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived its supervisor"
        time.sleep(0.1)


def test_workers_with_per_key_limits_need_redis(upstream, tmp_path):
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "pub", "backend": "openai", "base_url": upstream.base_url}],
                                    "auth": {"api_keys": [{"key": "sk-test-key-1", "name": "team-a",
                                                           "requests_per_minute": 10}]}}))
    refused = subprocess.run([str(VENV_BIN / "llm-gateway"), "serve", "--config", str(path), "--port",
                              str(free_port()), "--workers", "2"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "needs limits.redis_url" in refused.stderr and "team-a" in refused.stderr
