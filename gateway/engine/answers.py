"""What the engine returns: a whole ``Answer``, or a ``StreamAnswer`` whose first chunk has already arrived (a request
that fails before producing anything raises instead, so HTTP can still answer with a proper status and routing can
still fail over), plus the stream helpers behind that promise."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from gateway.backends import RelayedChunks


@dataclass
class Answer:
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


# What a stream's chunks are: chat completion chunks (``data:`` lines, ``[DONE]`` last), Responses API events or
# Anthropic Messages events (each sent under its ``event:`` name, no ``[DONE]``).
StreamDialect = Literal["chat", "responses", "messages"]


@dataclass
class StreamAnswer:
    """Chunks of a streamed answer; ``KEEPALIVE`` among them means "still working" (no data yet).
    ``RelayedChunks`` appear only when ``serve`` was asked to ``relay``."""

    chunks: AsyncIterator[dict[str, Any] | RelayedChunks]
    headers: dict[str, str] = field(default_factory=dict)
    dialect: StreamDialect = "chat"


# Yielded by a stream that is held (a stage checking the whole answer first) every KEEPALIVE_S without a chunk,
# so that proxies with idle timeouts do not cut it; the HTTP layer sends it as an SSE comment.
KEEPALIVE: dict[str, Any] = {}
KEEPALIVE_S = 5.0

Chunk = TypeVar("Chunk")


async def with_keepalive(chunks: AsyncIterator[dict[str, Any]], interval_s: float
                          ) -> AsyncIterator[dict[str, Any]]:
    """The chunks, with ``KEEPALIVE`` whenever ``interval_s`` passes without one; closes ``chunks`` at the end."""
    async with aclosing(chunks):  # type: ignore[type-var]
        pending: asyncio.Task[dict[str, Any]] | None = None
        try:
            while True:
                pending = pending or asyncio.ensure_future(anext(chunks))  # type: ignore[arg-type]
                done, _ = await asyncio.wait({pending}, timeout=interval_s)
                if not done:
                    yield KEEPALIVE
                    continue
                try:
                    chunk = pending.result()
                except StopAsyncIteration:
                    return
                finally:
                    pending = None
                yield chunk
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending


class PrimedStream(Generic[Chunk]):
    """A stream whose first chunk has arrived (``None``: the stream was empty), iterated as the whole stream.

    The outermost consumer, ``engine/accounting.py:accounted_stream``, reads ``first`` and then ``rest`` itself:
    one iterator layer less for every chunk of a relayed stream."""

    def __init__(self, first: Chunk | None, rest: AsyncIterator[Chunk]) -> None:
        self.first, self.rest = first, rest
        self._first_taken = first is None

    def __aiter__(self) -> PrimedStream[Chunk]:
        return self

    async def __anext__(self) -> Chunk:
        if not self._first_taken:
            self._first_taken = True
            return self.first  # type: ignore[return-value]
        if self.first is None:
            raise StopAsyncIteration
        return await anext(self.rest)

    async def aclose(self) -> None:
        await self.rest.aclose()  # type: ignore[attr-defined]


async def primed(chunks: AsyncIterator[Chunk]) -> PrimedStream[Chunk]:
    """Wait for the first chunk (so start-up failures raise here), then the whole stream."""
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await chunks.aclose()  # type: ignore[attr-defined]
        raise
    return PrimedStream(first, chunks)
