"""Bounded queueing of the local backend: beyond max_concurrency + max_queue, requests get 503 at once."""

from __future__ import annotations

import asyncio

import openai
import pytest

pytestmark = pytest.mark.slow


def test_requests_beyond_the_queue_bound_get_503(make_gateway):
    gateway = make_gateway({"models": [{"name": "tiny", "backend": "local", "max_concurrency": 1,
                                        "max_queue": 1}]})

    async def scenario() -> list[object]:
        client = gateway.async_client()

        async def ask() -> object:
            try:
                return await client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "Say hello."}], max_tokens=15,
                    temperature=0)
            except openai.APIStatusError as exc:
                return exc

        return await asyncio.gather(*(ask() for _ in range(4)))

    outcomes = asyncio.run(scenario())
    refused = [o for o in outcomes if isinstance(o, openai.APIStatusError)]
    served = [o for o in outcomes if not isinstance(o, openai.APIStatusError)]
    assert len(served) == 2 and len(refused) == 2
    assert all(e.status_code == 503 and e.body["code"] == "overloaded" for e in refused)
