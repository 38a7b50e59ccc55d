"""What a request cost, from its usage and the answering model's configured prices."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.config import ModelConfig


@dataclass
class UsageCounts:
    """A request's token usage as the upstream reported it (cached and reasoning tokens are parts of the prompt and
    completion tokens, as in OpenAI's usage, not added to them)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


def request_cost(model: ModelConfig | None, usage: UsageCounts) -> float | None:
    """US dollars: uncached prompt tokens at the prompt price, cached ones at ``price.cached_input_per_1m`` (the
    prompt price when unset), completion tokens (reasoning included, as upstreams bill them) at the completion
    price; None when the model has no price."""
    prices = model.token_prices if model is not None else None
    if model is None or prices is None:
        return None
    prompt_price, completion_price = prices
    cached = min(usage.cached_tokens or 0, usage.prompt_tokens)
    cached_price = model.cached_token_price
    return ((usage.prompt_tokens - cached) * prompt_price + cached * (cached_price if cached_price is not None
                                                                       else prompt_price)
            + usage.completion_tokens * completion_price)
