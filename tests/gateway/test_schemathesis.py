"""Property-based fuzzing of the gateway's own OpenAPI schema with schemathesis (bounded): no server error,
and every error body in the OpenAI shape."""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from gateway.core.config import parse_config
from gateway.http import create_app
from tests.support.servers import ServerThread, wait_for
from tests.support.upstream import ScriptedUpstream


@pytest.fixture(scope="module")
def gateway_url():
    with ScriptedUpstream("fuzz") as upstream:
        app = create_app(parse_config({"models": [{"name": "pub", "backend": "openai", "base_url": upstream.base_url,
                                                   "timeout_s": 5}]}))
        with ServerThread(app) as server:
            wait_for(f"{server.url}/ready")
            yield server.url


@schemathesis.check
def openai_error_shape(ctx, response, case):  # type: ignore[no-untyped-def]
    """Every 4xx/5xx body is {"error": {"message", "type", "param", "code"}}; on /v1/messages, Anthropic's
    {"type": "error", "error": {"type", "message"}}."""
    if response.status_code < 400:
        return None
    body = json.loads(response.content)
    if case.path == "/v1/messages":
        assert body.get("type") == "error" and set(body["error"]) == {"type", "message"}, body
        assert isinstance(body["error"]["message"], str) and "Traceback" not in body["error"]["message"]
        return None
    assert set(body) == {"error"}, f"error body is not OpenAI-shaped: {body}"
    assert set(body["error"]) == {"message", "type", "param", "code"}, f"error fields: {body['error']}"
    assert isinstance(body["error"]["message"], str) and "Traceback" not in body["error"]["message"]
    return None


# Streams answer text/event-stream and the endpoints parse their own bodies: schemathesis' schema-conformance
# checks do not apply; the two checks that matter are "no server error" and the error shape.
EXCLUDED = ["response_schema_conformance", "content_type_conformance", "status_code_conformance",
            "positive_data_acceptance", "negative_data_rejection", "missing_required_header",
            "unsupported_method", "ignored_auth", "use_after_free", "ensure_resource_availability"]


def test_fuzzed_requests_never_cause_server_errors(gateway_url):
    schema = schemathesis.openapi.from_url(f"{gateway_url}/openapi.json")
    excluded = [schemathesis.checks.CHECKS.get_one(name) for name in EXCLUDED
                if name in schemathesis.checks.CHECKS.get_all_names()]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/rerank",
                                             "/v1/messages"}
    calls: dict[str, int] = {}
    # Negative cases (invalid on purpose) only where there is something to get wrong: a body.
    plans = [(op, schemathesis.GenerationMode.POSITIVE) for op in operations]
    plans += [(op, schemathesis.GenerationMode.NEGATIVE) for op in operations if op.method.upper() == "POST"]
    for operation, mode in plans:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case: schemathesis.Case) -> None:
            calls[case.path] = calls.get(case.path, 0) + 1
            response = case.call(timeout=30)
            assert response.status_code < 500 or response.status_code in (502, 503, 504), (
                f"{case.method} {case.path} -> {response.status_code}: {response.text[:500]}")
            case.validate_response(response, checks=[openai_error_shape], excluded_checks=excluded)

        fuzz()
    assert calls["/v1/chat/completions"] >= 100 and calls["/v1/completions"] >= 100, calls
    assert calls["/v1/messages"] >= 100, calls
    print(f"schemathesis cases per operation: {calls}")
