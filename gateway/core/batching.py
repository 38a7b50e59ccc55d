"""Micro-batching: texts that arrive within a few milliseconds of each other are encoded in one call on a worker
thread (the router's contextual encoders and the local embedding models), so throughput holds under load."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gateway.core.errors import UpstreamUnavailableError


class MicroBatcher:
    """Collects texts for up to ``window_s`` (or ``max_batch`` of them) and encodes them in one call on a
    worker thread. A batch that fails is retried text by text, so one bad text fails only its own request;
    ``close`` fails whatever is still waiting instead of leaving it unresolved."""

    def __init__(self, encode: Callable[[list[str]], np.ndarray], window_s: float, max_batch: int) -> None:
        self._encode, self._window_s, self._max_batch = encode, window_s, max_batch
        self._pending: list[tuple[str, asyncio.Future[np.ndarray]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="router")
        self._closed = False

    async def encode(self, text: str) -> np.ndarray:
        if self._closed:
            raise UpstreamUnavailableError("the router is shutting down", code="shutting_down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.append((text, future))
        if len(self._pending) >= self._max_batch or self._window_s == 0:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._window_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            job = asyncio.get_running_loop().run_in_executor(self._executor, self._encode_each,
                                                             [text for text, _ in batch])
            job.add_done_callback(lambda done: self._deliver(batch, done))

    def _encode_each(self, texts: list[str]) -> list[np.ndarray | BaseException]:
        try:
            return list(self._encode(texts))
        except Exception:  # noqa: BLE001 - find the text at fault; the others still get their vectors
            results: list[np.ndarray | BaseException] = []
            for text in texts:
                try:
                    results.append(self._encode([text])[0])
                except Exception as exc:  # noqa: BLE001
                    results.append(exc)
            return results

    @staticmethod
    def _deliver(batch: list[tuple[str, asyncio.Future[np.ndarray]]], done: asyncio.Future[list]) -> None:  # type: ignore[type-arg]
        error = done.exception() if not done.cancelled() else asyncio.CancelledError()
        for row, (_, future) in enumerate(batch):
            if future.done():
                continue
            result = error if error is not None else done.result()[row]
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for _, future in self._pending:
            if not future.done():
                future.set_exception(UpstreamUnavailableError("the router is shutting down", code="shutting_down"))
        self._pending = []
        self._executor.shutdown(wait=False, cancel_futures=True)
