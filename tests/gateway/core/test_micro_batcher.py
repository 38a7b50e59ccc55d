"""The router's micro-batcher (contextual encoders): batches, isolates a bad text, and never leaves a
request waiting when it closes."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from gateway.core.batching import MicroBatcher
from gateway.core.errors import UpstreamUnavailableError


def test_texts_arriving_together_are_encoded_together_and_a_bad_one_fails_alone():
    batches: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        batches.append(list(texts))
        if "bad" in texts:
            raise ValueError("cannot encode 'bad'")
        return np.array([[float(len(t))] for t in texts])

    async def run() -> list[object]:
        batcher = MicroBatcher(encode, window_s=0.05, max_batch=16)
        results = await asyncio.gather(*(batcher.encode(t) for t in ["a", "bb", "bad", "cccc"]),
                                       return_exceptions=True)
        batcher.close()
        return results

    results = asyncio.run(run())
    assert batches[0] == ["a", "bb", "bad", "cccc"]  # one batch first
    assert [float(r[0]) for r in results if not isinstance(r, Exception)] == [1.0, 2.0, 4.0]
    assert isinstance(results[2], ValueError) and "bad" in str(results[2])


def test_closing_fails_waiting_requests_instead_of_leaving_them_hanging():
    release = threading.Event()

    def slow(texts: list[str]) -> np.ndarray:
        release.wait(5)
        return np.zeros((len(texts), 1))

    async def run() -> None:
        batcher = MicroBatcher(slow, window_s=10, max_batch=64)  # the window never ends by itself
        waiting = asyncio.ensure_future(batcher.encode("q"))
        await asyncio.sleep(0.05)
        batcher.close()
        with pytest.raises(UpstreamUnavailableError, match="shutting down"):
            await asyncio.wait_for(waiting, 2)
        with pytest.raises(UpstreamUnavailableError):
            await batcher.encode("after close")

    asyncio.run(run())
    release.set()
