"""Replicas of one model (``endpoints:``): one backend over several vLLM servers serving the same model.

Each request asks the balancer (``backends/balancing.py``) for an order over the replicas and tries them in it:
a replica whose circuit is open is skipped (tried only when every circuit is open), and a failure before the first
byte reached the client (``FAILOVER_ERRORS``: refused connections, 5xx, a full queue, an upstream 429) moves the
request to the next replica. That is the failover *inside* a model; the router's failover to another model comes
after it, and the router's ``deadline_s`` bounds both, since the engine's deadline is around the whole call.

Circuits are per replica and count only faults (``is_backend_fault``): ``FAILURE_THRESHOLD`` consecutive faults
open one; its ``/health`` is probed every ``OPEN_SECONDS`` and the next request after a healthy probe decides.

Load: this process counts its outstanding requests per replica; with ``metrics_scrape_s`` a background task reads
each replica's vLLM ``/metrics`` at that interval (``num_requests_running`` + ``num_requests_waiting``,
``kv_cache_usage_perc``), each read given ``SCRAPE_TIMEOUT_S`` (the next waits for it: scrapes never pile up). A
scrape that fails makes the replica's load unknown until the next one succeeds. With ``serve --workers N`` each
worker keeps its own counts; the scraped figures are the replica's own and so cover every worker and gateway
replica, a few seconds late.

The replica that answered is reported through ``ANSWERED_BY_ENDPOINT`` (a context variable the engine reads for
the ``x-gateway-endpoint`` header and its metric).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from gateway.backends.balancing import EndpointLoad, build_balancer, prefix_key
from gateway.backends.base import ANSWERED_BY_ENDPOINT, Backend, RelayedChunks, Request
from gateway.backends.openai_http import OpenAIHTTPBackend
from gateway.core.circuit import FAILOVER_ERRORS, CircuitBreaker, is_backend_fault
from gateway.core.config import ModelConfig
from gateway.core.errors import GatewayError
from gateway.wire.anthropic import MessagesRequest
from gateway.wire.audio import SpeechRequest, TranscriptionRequest, UpstreamAudioReply
from gateway.wire.openai import EmbeddingRequest, Endpoint
from gateway.wire.rerank import RerankRequest
from gateway.wire.responses import ResponsesRequest

FAILURE_THRESHOLD = 3
OPEN_SECONDS = 10.0
SCRAPE_TIMEOUT_S = 2.0
# Series of vLLM's /metrics read for a replica's load (older vLLM: gpu_cache_usage_perc).
RUNNING, WAITING = "vllm:num_requests_running", "vllm:num_requests_waiting"
KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")

Result = TypeVar("Result")
logger = logging.getLogger(__name__)


class ReplicaSet(Backend):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        assert config.endpoints, "a replica set needs endpoints"
        self.endpoint_names = config.endpoint_names
        self.replicas = [OpenAIHTTPBackend(config.model_copy(update={"base_url": endpoint.base_url,
                                                                      "endpoints": None}))
                         for endpoint in config.endpoints]
        self.loads = [EndpointLoad() for _ in self.replicas]
        self.breakers = [CircuitBreaker(f"{config.name}@{name}", threshold=FAILURE_THRESHOLD,
                                        open_seconds=OPEN_SECONDS, probe=replica.check_ready)
                         for name, replica in zip(self.endpoint_names, self.replicas, strict=True)]
        self.balancer = build_balancer(config.balance, self.endpoint_names, [e.weight for e in config.endpoints],
                                       config.affinity_max_load)
        self._scraper: asyncio.Task[None] | None = None

    # ---- life cycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        for replica in self.replicas:
            await replica.start()
        if self.config.metrics_scrape_s is not None and self.config.balance != "round-robin":
            self._scraper = asyncio.get_running_loop().create_task(self._scrape_forever(self.config.metrics_scrape_s),
                                                                   name=f"scrape-{self.name}")

    async def aclose(self) -> None:
        if self._scraper is not None:
            self._scraper.cancel()
        for breaker in self.breakers:
            breaker.close()
        await asyncio.gather(*(replica.aclose() for replica in self.replicas), return_exceptions=True)

    async def abort(self) -> None:
        await asyncio.gather(*(replica.abort() for replica in self.replicas), return_exceptions=True)

    async def check_ready(self) -> tuple[bool, str]:
        """Ready while any replica is; the detail says which are."""
        checks = await asyncio.gather(*(replica.check_ready() for replica in self.replicas))
        ready = [name for name, (ok, _) in zip(self.endpoint_names, checks, strict=True) if ok]
        details = "; ".join(f"{name}: {detail}" for name, (_, detail) in zip(self.endpoint_names, checks, strict=True))
        return bool(ready), f"{len(ready)}/{len(self.replicas)} endpoints ready ({details})"

    # ---- load --------------------------------------------------------------------------------------------------

    async def _scrape_forever(self, interval_s: float) -> None:
        while True:
            await self.scrape()
            await asyncio.sleep(interval_s)

    async def scrape(self) -> None:
        """Read every replica's vLLM ``/metrics`` once; one that cannot be read becomes unknown."""
        await asyncio.gather(*(self._scrape_one(index) for index in range(len(self.replicas))))

    async def _scrape_one(self, index: int) -> None:
        text = await self.replicas[index].read_metrics(SCRAPE_TIMEOUT_S)  # a slow replica delays only itself
        self.loads[index].scraped, self.loads[index].kv_cache = _vllm_load(text) if text is not None else (None, None)

    # ---- requests ------------------------------------------------------------------------------------------

    def _order(self, request: Any) -> list[int]:
        order = self.balancer.order(prefix_key(request) if self.config.balance == "prefix-affinity" else None,
                                    self.loads)
        closed = [i for i in order if not self.breakers[i].is_open]
        return closed or order  # every circuit open: still try, a success closes one again

    async def _call(self, request: Any, call: Callable[[OpenAIHTTPBackend], Awaitable[Result]]) -> Result:
        order = self._order(request)
        for attempt, index in enumerate(order):
            self.loads[index].outstanding += 1
            try:
                result = await call(self.replicas[index])
            except FAILOVER_ERRORS as exc:
                self._failed(index, exc, streamed=False)
                if attempt + 1 == len(order):
                    raise
                continue
            finally:
                self.loads[index].outstanding -= 1
            self._answered(index)
            return result
        raise AssertionError("unreachable: a replica set has at least one replica")

    async def _stream(self, request: Any, open_stream: Callable[[OpenAIHTTPBackend], AsyncIterator[Result]]
                      ) -> AsyncIterator[Result]:
        """The stream of the first replica that produces a first chunk; the count is held until it ends."""
        order = self._order(request)
        for attempt, index in enumerate(order):
            self.loads[index].outstanding += 1
            stream = open_stream(self.replicas[index])
            try:
                try:
                    first = await anext(stream)
                except StopAsyncIteration:
                    self._answered(index)
                    return
                except FAILOVER_ERRORS as exc:
                    self._failed(index, exc, streamed=True)
                    if attempt + 1 == len(order):
                        raise
                    continue
                self._answered(index)
                yield first
                async for chunk in stream:
                    yield chunk
                return
            finally:
                self.loads[index].outstanding -= 1
                with contextlib.suppress(Exception):
                    await stream.aclose()  # type: ignore[attr-defined]
        raise AssertionError("unreachable: a replica set has at least one replica")

    def _failed(self, index: int, exc: GatewayError, streamed: bool) -> None:
        if is_backend_fault(exc, streamed):
            self.breakers[index].record_failure()
        logger.warning("replica failed", extra={"fields": {
            "model": self.name, "endpoint": self.endpoint_names[index], "code": exc.code}})

    def _answered(self, index: int) -> None:
        self.breakers[index].record_success()
        ANSWERED_BY_ENDPOINT.set(self.endpoint_names[index])

    async def complete(self, endpoint: Endpoint, request: Request) -> dict[str, Any]:
        return await self._call(request, lambda replica: replica.complete(endpoint, request))

    def stream(self, endpoint: Endpoint, request: Request) -> AsyncIterator[dict[str, Any]]:
        return self._stream(request, lambda replica: replica.stream(endpoint, request))

    def relay(self, endpoint: Endpoint, request: Request) -> AsyncIterator[RelayedChunks]:  # type: ignore[override]
        return self._stream(request, lambda replica: replica.relay(endpoint, request))

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        return await self._call(request, lambda replica: replica.embed(request))

    async def rerank(self, request: RerankRequest) -> dict[str, Any]:
        return await self._call(request, lambda replica: replica.rerank(request))

    async def transcribe(self, request: TranscriptionRequest, task: str) -> UpstreamAudioReply:
        return await self._call(request, lambda replica: replica.transcribe(request, task))

    async def speak(self, request: SpeechRequest) -> tuple[AsyncIterator[bytes], str]:
        return await self._call(request, lambda replica: replica.speak(request))

    async def respond(self, request: ResponsesRequest) -> dict[str, Any]:
        return await self._call(request, lambda replica: replica.respond(request))

    def stream_responses(self, request: ResponsesRequest) -> AsyncIterator[dict[str, Any]]:
        return self._stream(request, lambda replica: replica.stream_responses(request))

    async def messages(self, request: MessagesRequest) -> dict[str, Any]:
        return await self._call(request, lambda replica: replica.messages(request))

    def stream_messages(self, request: MessagesRequest) -> AsyncIterator[dict[str, Any]]:
        return self._stream(request, lambda replica: replica.stream_messages(request))


def _vllm_load(text: str) -> tuple[float | None, float | None]:
    """(running + waiting requests, KV-cache use) from vLLM's Prometheus text; (None, None) if it has neither."""
    totals: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in (RUNNING, WAITING, *KV_CACHE):
                    totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    except ValueError:  # not Prometheus text
        return None, None
    if RUNNING not in totals and WAITING not in totals:
        return None, None
    kv = next((totals[name] for name in KV_CACHE if name in totals), None)
    return totals.get(RUNNING, 0.0) + totals.get(WAITING, 0.0), kv
