"""The conformance module's cases (``tests/conformance/test_openai_schemas.py``) against real vLLM: the same chat
and Responses cases, blocking and streamed, through the gateway in front of vLLM serving SmolLM2, every answer
validated against OpenAI's schemas with vLLM 0.32's own listed deviations undone (``test_conformance.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conformance.test_openai_schemas import CHAT_CASES, RESPONSES_CASES
from tests.conftest import LiveGateway
from tests.support.openapi import assert_conforms, assert_event_conforms, sse_events
from tests.support.vllm import VLLMServer
from tests.vllm.conftest import live_gateway, upstream_model
from tests.vllm.test_conformance import VLLM_CHAT_NULLS, VLLM_RESPONSES_NULLS, without_vllm_deviations

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def gateway(smollm2: VLLMServer) -> Iterator[LiveGateway]:
    with live_gateway({"models": [upstream_model("smollm2", smollm2),
                                  upstream_model("smollm2-native", smollm2, responses_api="native")]}) as live:
        yield live


def _post(gateway: LiveGateway, path: str, body: dict[str, Any], nulls: set[str]) -> Any:
    response = httpx.post(f"{gateway.base_url}/{path}", json=body, timeout=120)
    assert response.status_code == 200, response.text
    if body.get("stream"):
        return [without_vllm_deviations(event, nulls) for event in sse_events(response)]
    return without_vllm_deviations(response.json(), nulls)


@pytest.mark.parametrize("case", CHAT_CASES)
def test_chat_cases_conform_on_vllm(gateway: LiveGateway, case: str) -> None:
    body = {"model": "smollm2", "temperature": 0, **CHAT_CASES[case]}
    assert_conforms(_post(gateway, "chat/completions", body, VLLM_CHAT_NULLS), "CreateChatCompletionResponse")
    chunks = _post(gateway, "chat/completions", {**body, "stream": True, "stream_options": {"include_usage": True}},
                   VLLM_CHAT_NULLS)
    assert chunks and chunks[-1]["usage"]["completion_tokens"] > 0
    for chunk in chunks:
        assert_conforms(chunk, "CreateChatCompletionStreamResponse")


@pytest.mark.parametrize("model", ["smollm2", "smollm2-native"])
@pytest.mark.parametrize("case", RESPONSES_CASES)
def test_responses_cases_conform_on_vllm(gateway: LiveGateway, case: str, model: str) -> None:
    nulls = VLLM_RESPONSES_NULLS if model == "smollm2-native" else VLLM_CHAT_NULLS
    body = {"model": model, "temperature": 0, **RESPONSES_CASES[case]}
    assert_conforms(_post(gateway, "responses", body, nulls), "Response")
    events = _post(gateway, "responses", {**body, "stream": True}, nulls)
    for event in events:
        assert_event_conforms(event)
    assert events[-1]["type"] in ("response.completed", "response.incomplete")
