"""The usage store, dollar budgets and feedback, against a real SQLite file, a real PostgreSQL server and a real
Redis shared by two gateway processes."""

from __future__ import annotations

import concurrent.futures
import json
import re
import subprocess
import time

import httpx
import openai
import pytest
import redis

from gateway.engine.usage import UsageStore, store_url
from tests.support.postgres import PostgresServer
from tests.support.servers import VENV_BIN, GatewayProcess
from tests.support.upstream import Reply

KEY = "sk-team-a-usage-0001"
OTHER_KEY = "sk-team-b-usage-0002"
# USD per token: 0.001 per prompt token, 0.002 per completion token (prices are per million tokens).
PRICE = {"input_per_1m": 1000.0, "output_per_1m": 2000.0}
MESSAGES = [{"role": "user", "content": "hello"}]


def _config(upstream, store: str, **key_fields) -> dict:
    return {"models": [{"name": "pub", "backend": "openai", "base_url": upstream.base_url, "price": PRICE}],
            "auth": {"api_keys": [{"key": KEY, "name": "team-a", **key_fields},
                                  {"key": OTHER_KEY, "name": "team-b"}]},
            "usage_store": store}


def _cost(usage) -> float:
    return usage.prompt_tokens * 0.001 + usage.completion_tokens * 0.002


def _store(gateway) -> UsageStore:
    store = gateway.app.state.gateway.store
    assert store.flush(10)
    return store


def test_every_request_is_a_row_with_its_cost_and_spend_is_reported(upstream, make_gateway, tmp_path):
    upstream.responder = lambda body: Reply("one two three")
    url = f"sqlite:///{tmp_path / 'usage.db'}"
    gateway = make_gateway(_config(upstream, url))
    client = gateway.client(api_key=KEY)

    plain = client.chat.completions.with_raw_response.create(model="pub", messages=MESSAGES)
    stream = client.chat.completions.with_raw_response.create(model="pub", messages=MESSAGES, stream=True,
                                                               stream_options={"include_usage": True})
    streamed_usage = [chunk.usage for chunk in stream.parse() if chunk.usage][-1]
    responses = client.responses.with_raw_response.create(model="pub", input="hello")
    upstream.responder = lambda body: Reply(status=500)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="pub", messages=MESSAGES)

    rows = {row["request_id"]: row for row in _store(gateway).rows()}
    assert len(rows) == 4
    first = rows[plain.headers["x-request-id"]]
    usage = plain.parse().usage
    assert (first["key_name"], first["endpoint"], first["model_asked"], first["model"], first["status"]) == \
        ("team-a", "chat", "pub", "pub", 200)
    assert (first["prompt_tokens"], first["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert first["cost_usd"] == pytest.approx(_cost(usage))
    assert first["latency_ms"] > 0 and first["ttft_ms"] is None
    streamed = rows[stream.headers["x-request-id"]]
    assert streamed["ttft_ms"] is not None and streamed["cost_usd"] == pytest.approx(_cost(streamed_usage))
    answered = rows[responses.headers["x-request-id"]]
    assert answered["endpoint"] == "responses" and answered["cost_usd"] > 0
    failed = [row for row in rows.values() if row["status"] != 200]
    assert [(row["status"], row["error_code"]) for row in failed] == [(502, "upstream_error")]

    total = sum(row["cost_usd"] for row in rows.values())
    metrics = httpx.get(f"{gateway.url}/metrics").text
    spent = float(re.search(r'^gateway_spend_usd_total\{key="team-a",model="pub"\} (\S+)$', metrics, re.M)[1])
    assert spent == pytest.approx(total)

    printed = subprocess.run([str(VENV_BIN / "llm-gateway"), "usage", "--store", url], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    day_line = next(line for line in printed.splitlines() if "team-a" in line and "pub" in line)
    assert day_line.split()[3] == "4" and day_line.split()[-1] == f"{total:.2f}"
    assert printed.splitlines()[-1].split()[-1] == f"{total:.2f}"

    ui = httpx.get(f"{gateway.url}/ui/api/usage", headers={"authorization": f"Bearer {KEY}"}).json()
    assert ui["store"] == "sqlite" and sum(line["cost_usd"] for line in ui["lines"]) == pytest.approx(total)


def test_feedback_is_kept_with_the_request_of_the_same_key(upstream, make_gateway, tmp_path):
    gateway = make_gateway(_config(upstream, f"sqlite:///{tmp_path / 'usage.db'}"))
    answered = gateway.client(api_key=KEY).chat.completions.with_raw_response.create(model="pub", messages=MESSAGES)
    request_id = answered.headers["x-request-id"]

    def send(body, key=KEY):
        return httpx.post(f"{gateway.url}/v1/feedback", json=body, headers={"authorization": f"Bearer {key}"})

    given = send({"request_id": request_id, "score": 0.75, "comment": "good enough"})
    assert given.status_code == 200, given.text
    assert given.json()["object"] == "feedback" and given.json()["score"] == 0.75
    unknown = send({"request_id": "req-nothing-like-it", "score": 1})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "request_not_found"
    assert send({"request_id": request_id, "score": 1}, key=OTHER_KEY).status_code == 404  # not that key's
    out_of_range = send({"request_id": request_id, "score": 1.5})
    assert out_of_range.status_code == 400 and out_of_range.json()["error"]["param"] == "score"
    assert send({"request_id": request_id}).status_code == 400
    assert send({"request_id": request_id, "score": 1}, key="sk-wrong").status_code == 401

    store = _store(gateway)
    from sqlalchemy import select

    from gateway.engine.usage.schema import feedback
    with store.engine.connect() as connection:
        rows = connection.execute(select(feedback)).mappings().all()
    assert [(r["request_id"], r["key_name"], r["score"], r["comment"]) for r in rows] == \
        [(request_id, "team-a", 0.75, "good enough")]


def test_a_budget_refuses_with_its_reset_time_and_a_restart_keeps_the_spend(upstream, tmp_path):
    upstream.responder = lambda body: Reply("one two three")
    # Each request: worst case 2 prompt tokens (5 characters) + max_tokens 5 = 0.012 USD; real cost 0.010.
    config = _config(upstream, f"sqlite:///{tmp_path / 'usage.db'}", budget_usd=0.05, budget_period="day")

    def ask(gateway):
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=KEY, max_retries=0)
        return client.chat.completions.create(model="pub", messages=MESSAGES, max_tokens=5)

    with GatewayProcess(config) as first:
        costs = [_cost(ask(first).usage) for _ in range(3)]
    assert sum(costs) == pytest.approx(0.030)
    with GatewayProcess(config) as second:  # what the first process spent still counts
        costs.append(_cost(ask(second).usage))
        with pytest.raises(openai.RateLimitError) as refused:
            ask(second)
        # Another key has no budget: it is not refused.
        openai.OpenAI(base_url=f"{second.url}/v1", api_key=OTHER_KEY, max_retries=0).chat.completions.create(
            model="pub", messages=MESSAGES)
    error = refused.value.body
    assert error["code"] == "budget_exceeded" and error["type"] == "rate_limit_error"
    assert "0.04 of 0.05 USD spent this day" in error["message"] and "resets at" in error["message"]
    assert 0 < int(refused.value.response.headers["retry-after"]) <= 86_400


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of this test's own, to stop and start (the session's serves the other tests)."""
    server = PostgresServer().start()
    yield server
    server.stop()
    server.remove()


def test_postgres_store_down_mid_load_loses_no_request(upstream, make_gateway, own_postgres):
    postgres_server = own_postgres
    gateway = make_gateway(_config(upstream, postgres_server.create_database()))
    client = gateway.client(api_key=KEY)
    ids = [client.chat.completions.with_raw_response.create(model="pub", messages=MESSAGES).headers["x-request-id"]
           for _ in range(10)]
    store = _store(gateway)
    assert len(store.rows()) == 10
    postgres_server.stop()
    try:
        started = time.monotonic()
        for _ in range(20):  # every request is served while the store is down
            ids.append(client.chat.completions.with_raw_response.create(model="pub", messages=MESSAGES)
                       .headers["x-request-id"])
        assert time.monotonic() - started < 20
        deadline = time.monotonic() + 15
        while True:  # the writer tries, fails, and keeps the rows
            metrics = httpx.get(f"{gateway.url}/metrics").text
            if float(re.search(r"^gateway_usage_rows_buffered (\S+)$", metrics, re.M)[1]) == 20:
                break
            assert time.monotonic() < deadline, "the rows were not kept while the store was down"
            time.sleep(0.2)
        time.sleep(2.0)
        metrics = httpx.get(f"{gateway.url}/metrics").text
        # The writer backs off while the store is down (0.5 s, 1 s, 2 s, ...): a few tries, not one per request.
        assert 1 <= float(re.search(r"^gateway_usage_store_errors_total (\S+)$", metrics, re.M)[1]) <= 8
    finally:
        postgres_server.start()
    assert store.flush(30)
    assert sorted(row["request_id"] for row in store.rows()) == sorted(ids)
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert float(re.search(r"^gateway_usage_rows_written_total (\S+)$", metrics, re.M)[1]) == 30
    assert float(re.search(r"^gateway_usage_rows_dropped_total (\S+)$", metrics, re.M)[1]) == 0


def test_a_budget_holds_across_two_gateway_processes_sharing_redis(upstream, redis_url, postgres_url, tmp_path):
    upstream.responder = lambda body: Reply("one two three", delay_s=0.3)  # requests overlap
    worst_case, budget = 0.012, 0.12  # 50 requests' worst case is 5x the budget
    config = {**_config(upstream, postgres_url, budget_usd=budget, budget_period="month"),
              "limits": {"redis_url": redis_url}}
    with GatewayProcess(config) as one, GatewayProcess(config) as two:
        clients = [openai.OpenAI(base_url=f"{g.url}/v1", api_key=KEY, max_retries=0) for g in (one, two)]

        def ask(i: int):
            try:
                return clients[i % 2].chat.completions.create(model="pub", messages=MESSAGES, max_tokens=5)
            except openai.RateLimitError as exc:
                return exc

        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            outcomes = list(pool.map(ask, range(50)))
        admitted = [o for o in outcomes if not isinstance(o, Exception)]
        refused = [o for o in outcomes if isinstance(o, Exception)]
        assert refused and all(r.body["code"] == "budget_exceeded" for r in refused)
        # Settled requests free what they reserved beyond their cost, so a few late ones may still get in; what is
        # admitted never passes the budget (each real cost is within its reservation here).
        assert len(admitted) >= budget // worst_case
        time.sleep(0.5)  # settlements are sent after the response
        counter = redis.Redis.from_url(redis_url).get(
            next(k for k in redis.Redis.from_url(redis_url).keys("*budget*team-a*")))
    store = UsageStore(store_url(postgres_url, tmp_path))
    try:
        recorded = sum(row["cost_usd"] for row in store.rows() if row["key_name"] == "team-a")
    finally:
        store.close()
    paid = sum(_cost(a.usage) for a in admitted)
    assert round(recorded, 2) == round(paid, 2) and recorded == pytest.approx(paid)
    assert recorded <= budget + 1e-9
    assert int(counter) == round(paid * 1e9)
    print(json.dumps({"admitted": len(admitted), "refused": len(refused), "spent_usd": recorded}))


def test_budgets_need_a_store_and_an_unwritable_default_runs_without_one(upstream, tmp_path):
    from gateway.core.config import ConfigError, parse_config
    from gateway.engine.runtime import Gateway

    with pytest.raises(ConfigError, match=r"budget_usd \(team-a\) need a usage_store"):
        parse_config(_config(upstream, False, budget_usd=5))
    (tmp_path / "a-file").write_text("")
    read_only = tmp_path / "a-file" / "cache"  # cannot be created: the default SQLite file has nowhere to go
    assert Gateway(parse_config({"models": [{"name": "pub", "backend": "openai", "base_url": upstream.base_url}]}),
                   read_only).store is None
    with pytest.raises(ConfigError, match="is not writable; set usage_store"):
        Gateway(parse_config({**_config(upstream, "unused", budget_usd=5), "usage_store": None}), read_only)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_migrations_build_exactly_the_schema_the_code_uses(backend, tmp_path, request):
    """Alembic's head and ``schema.py`` agree (autogenerate finds nothing to change), on both databases."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from gateway.engine.usage.schema import metadata

    url = f"sqlite:///{tmp_path / 'usage.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    store = UsageStore(store_url(url, tmp_path))
    try:
        store.ensure_schema()
        with store.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), metadata) == []
    finally:
        store.close()


def test_a_row_the_database_refuses_is_dropped_and_counted_not_retried_forever(postgres_url, tmp_path):
    from gateway.core.metrics import GatewayMetrics
    from gateway.engine.usage.store import row_id, utc_now

    metrics = GatewayMetrics()
    store = UsageStore(store_url(postgres_url, tmp_path), metrics).start()
    try:
        def row(request_id: str, **fields) -> dict:
            return {"id": row_id(), "request_id": request_id, "created_at": utc_now(), "key_name": "k",
                    "endpoint": "chat", "model_asked": "m", "model": "m", "status": 200, "prompt_tokens": 1,
                    "completion_tokens": 1, "cost_usd": 0.0, "latency_ms": 1.0, **fields}

        store.record(row("good-1"))
        store.record(row("bad", status="not a number"))  # PostgreSQL refuses it: DataError
        store.record(row("good-2", stages={"ecso": "safe"}))
        assert store.flush(20)
        assert sorted(r["request_id"] for r in store.rows()) == ["good-1", "good-2"]
        assert metrics.usage_rows_dropped._value.get() == 1 and metrics.usage_rows_written._value.get() == 2
    finally:
        store.close()
