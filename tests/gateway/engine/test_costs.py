"""What a request costs: cached prompt tokens at their own price, reasoning tokens once (they are completion
tokens), usage details from chat, Responses and Messages alike."""

from __future__ import annotations

import pytest

from gateway.core.config import ModelConfig
from gateway.core.metrics import GatewayMetrics
from gateway.engine.accounting import RequestRecord
from gateway.engine.usage import UsageCounts, request_cost
from gateway.wire.anthropic import chat_usage as messages_usage
from gateway.wire.responses import chat_usage as responses_usage


def _model(**price) -> ModelConfig:
    return ModelConfig(name="m", backend="openai", base_url="http://x/v1", price=price or None)


def test_cached_prompt_tokens_are_charged_at_the_cached_price_and_reasoning_once():
    model = _model(input_per_1m=2.0, output_per_1m=8.0, cached_input_per_1m=0.5)
    usage = UsageCounts(prompt_tokens=1000, completion_tokens=500, cached_tokens=800, reasoning_tokens=300)
    # 200 uncached x 2 + 800 cached x 0.5 + 500 completion (300 of them reasoning) x 8, per million.
    assert request_cost(model, usage) == pytest.approx((200 * 2.0 + 800 * 0.5 + 500 * 8.0) / 1e6)
    without_cached_price = _model(input_per_1m=2.0, output_per_1m=8.0)
    assert request_cost(without_cached_price, usage) == pytest.approx((1000 * 2.0 + 500 * 8.0) / 1e6)
    assert request_cost(_model(), usage) is None  # no price: unknown, not free
    assert request_cost(None, usage) is None


def test_usage_details_reach_the_record_from_every_dialect():
    chat = {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2}}
    responses = responses_usage({"input_tokens": 10, "output_tokens": 5, "input_tokens_details": {"cached_tokens": 4},
                                 "output_tokens_details": {"reasoning_tokens": 2}})
    messages = messages_usage({"input_tokens": 6, "cache_read_input_tokens": 4, "output_tokens": 5})
    for usage, reasoning in ((chat, 2), (responses, 2), (messages, None)):
        record = RequestRecord(GatewayMetrics(), "chat", "m")
        record.add_usage(usage)
        assert (record.prompt_tokens, record.completion_tokens, record.cached_tokens, record.reasoning_tokens) == \
            (10, 5, 4, reasoning)
