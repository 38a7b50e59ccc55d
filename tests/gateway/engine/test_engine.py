"""The engine without sockets: routing's failover order, the deadline, circuit counting, ``n > 1`` through a stage,
and the accounting of a request (admission, exactly one finished record, usage counted once), against fake
backends. The live-server suites (``tests/gateway``, ``tests/vllm``) are the integration tier above this."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from gateway.backends import Backend, Request
from gateway.core.config import GatewayConfig, parse_config
from gateway.core.errors import (
    GatewayError,
    InvalidRequestError,
    RateLimitError,
    UpstreamError,
    UpstreamRejectedRequestError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.core.metrics import GatewayMetrics
from gateway.engine.accounting import Accounting, RequestContext, RequestRecord, accounted, accounted_stream
from gateway.engine.answers import Answer, StreamAnswer
from gateway.engine.auth import ApiKeyStore
from gateway.engine.chat import CompletionService
from gateway.engine.limits import InMemoryRateLimiter
from gateway.engine.pipeline import Pipeline, PoolCaller
from gateway.engine.pool import ModelPool
from gateway.engine.routing import ROUTED_MODEL_HEADER, RoutedModel
from gateway.wire.openai import ChatCompletionRequest, Endpoint
from gateway.wire.stages import CompleteNext, Stage, StageContext
from routers.base import LearnedRouter

MODELS = ("strong", "middle", "weak")  # the fixed router's order, best first
HANG = "hang"


class FixedRouter(LearnedRouter):
    """Scores every query the same: the candidates' order is ``MODELS``."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(names)
        self.encoder = SimpleNamespace(encode=lambda texts: np.zeros((len(texts), 1), dtype=np.float32),
                                       batches_help=False)

    def score_encoded(self, encoded: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
        return np.tile(np.linspace(1.0, 0.0, len(self.llm_names)), (len(encoded), 1))


class ScriptedBackend(Backend):
    """Answers or fails as scripted, one outcome per call (the last one repeats); records every call."""

    def __init__(self, config: Any, outcomes: list[Any], calls: list[str]) -> None:
        super().__init__(config)
        self.outcomes, self.calls = outcomes, calls

    async def _outcome(self) -> None:
        self.calls.append(self.name)
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if outcome == HANG:
            await asyncio.sleep(30)
        if isinstance(outcome, BaseException):
            raise outcome

    async def complete(self, endpoint: Endpoint, request: Request) -> dict[str, Any]:
        await self._outcome()
        return {"object": "chat.completion", "model": self.name,
                "choices": [{"index": i, "message": {"role": "assistant", "content": f"{self.name} answers"},
                             "finish_reason": "stop"} for i in range(getattr(request, "n", 1))],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}

    async def stream(self, endpoint: Endpoint, request: Request) -> AsyncIterator[dict[str, Any]]:
        await self._outcome()
        yield {"choices": [{"index": 0, "delta": {"content": "hi"}}]}
        yield {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}

    async def check_ready(self) -> tuple[bool, str]:
        return True, "scripted"


def _config(**router: Any) -> GatewayConfig:
    return parse_config({
        "models": [{"name": name, "backend": "openai", "base_url": "http://127.0.0.1:9/v1"} for name in MODELS],
        "router": {"checkpoint": "/nonexistent", **router}})


def _service(tmp_path: Path, outcomes: dict[str, list[Any]], calls: list[str], **router: Any
             ) -> CompletionService:
    config = _config(**router)
    metrics = GatewayMetrics()
    pool = ModelPool(config, tmp_path)
    pool.backends = {name: ScriptedBackend(config.model(name), outcomes.get(name, ["ok"]), calls) for name in MODELS}
    assert config.router is not None
    return CompletionService(pool, metrics, RoutedModel(config.router, config, FixedRouter(MODELS), metrics))


def _chat(model: str = "auto", **fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": model, "messages": [{"role": "user", "content": "hi"}],
                                                 **fields})


def _record(service: CompletionService, endpoint: str = "chat") -> RequestRecord:
    return RequestRecord(service.metrics, endpoint, "auto")


def _metric(metrics: GatewayMetrics, name: str, labels: dict[str, str]) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def _serve(service: CompletionService, request: ChatCompletionRequest) -> Answer | StreamAnswer:
    try:
        return await service.serve("chat", request, _record(service))
    finally:
        service.close()


def test_failover_follows_the_ranking_and_says_where_it_went(tmp_path: Path) -> None:
    calls: list[str] = []
    service = _service(tmp_path, {"strong": [UpstreamError("boom")], "middle": [UpstreamUnavailableError("busy")]},
                       calls)
    answer = asyncio.run(_serve(service, _chat()))
    assert calls == ["strong", "middle", "weak"]
    assert isinstance(answer, Answer) and answer.headers[ROUTED_MODEL_HEADER] == "weak"
    failovers = {"from_model": "strong", "reason": "upstream_error"}
    assert _metric(service.metrics, "gateway_failovers_total", failovers) == 1


def test_failover_stops_at_max_attempts_and_names_every_failure(tmp_path: Path) -> None:
    calls: list[str] = []
    service = _service(tmp_path, {name: [UpstreamError(f"{name} down")] for name in MODELS}, calls, max_attempts=2)
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(_serve(service, _chat()))
    assert calls == ["strong", "middle"]
    assert "middle down" in raised.value.message and "after failing over from: strong" in raised.value.message


def test_a_request_the_upstream_rejects_is_not_failed_over(tmp_path: Path) -> None:
    calls: list[str] = []
    rejected = UpstreamRejectedRequestError("'messages' is too long", status_code=400, param="messages")
    service = _service(tmp_path, {"strong": [rejected]}, calls)
    with pytest.raises(UpstreamRejectedRequestError):
        asyncio.run(_serve(service, _chat()))
    assert calls == ["strong"]


def test_the_deadline_bounds_the_whole_failover(tmp_path: Path) -> None:
    calls: list[str] = []
    service = _service(tmp_path, {"strong": [HANG]}, calls, deadline_s=0.2)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeoutError) as raised:
        asyncio.run(_serve(service, _chat()))
    assert time.monotonic() - started < 2
    assert calls == ["strong"] and "router.deadline_s = 0.2 s" in raised.value.message
    assert raised.value.status_code == 504


def test_circuits_count_faults_not_load_and_routing_skips_an_open_one(tmp_path: Path) -> None:
    calls: list[str] = []
    busy = RateLimitError("slow down", retry_after_s=1)
    service = _service(tmp_path, {"strong": [busy, busy, busy, UpstreamError("a"), UpstreamError("b"), "ok"]}, calls,
                       failure_threshold=2, open_seconds=60)

    async def requests() -> list[str]:
        served = []
        try:
            for _ in range(6):
                answer = await service.serve("chat", _chat(), _record(service))
                served.append(answer.headers[ROUTED_MODEL_HEADER])
                if _ == 2:  # three upstream 429s: load, not a fault
                    assert not service.breakers["strong"].is_open
        finally:
            service.close()
        return served

    served = asyncio.run(requests())
    assert served == ["middle"] * 6
    # strong was tried by the first five requests; after its second fault its circuit opened, so the sixth went
    # straight to the next candidate
    assert calls.count("strong") == 5 and service.breakers["strong"].is_open


def test_n_above_one_through_a_stage_is_refused_and_served_without_one(tmp_path: Path) -> None:
    class Judge(Stage):
        name = "judge"

        async def complete(self, ctx: StageContext, request: ChatCompletionRequest,
                           call_next: CompleteNext) -> dict[str, Any]:
            return await call_next(request)

    calls: list[str] = []
    service = _service(tmp_path, {}, calls)
    strong = service.pool.backends["strong"]
    service.pipelines["strong"] = Pipeline(strong, [Judge()], PoolCaller(service.pool), service.metrics)
    with pytest.raises(InvalidRequestError) as raised:
        asyncio.run(_serve(service, _chat("strong", n=2)))
    assert raised.value.param == "n" and raised.value.status_code == 400 and calls == []
    answer = asyncio.run(_serve(service, _chat("middle", n=2)))
    assert isinstance(answer, Answer) and len(answer.body["choices"]) == 2


# ---- accounting -------------------------------------------------------------------------------------------

def _requests_total(metrics: GatewayMetrics, status: str, model: str = "strong") -> float:
    return _metric(metrics, "gateway_requests_total", {"endpoint": "chat", "model": model, "status": status})


def test_a_record_finishes_once_with_the_status_the_client_saw() -> None:
    metrics = GatewayMetrics()

    async def fails(error: BaseException) -> None:
        raise error

    async def scenario() -> None:
        for error in (UpstreamTimeoutError("slow"), asyncio.CancelledError(), KeyError("bug")):
            record = RequestRecord(metrics, "chat", "strong")
            record.answered_by("strong")
            with pytest.raises(type(error)):
                await accounted(record, fails(error))
            record.finish(200)  # a second finish is ignored

    asyncio.run(scenario())
    assert [_requests_total(metrics, status) for status in ("504", "499", "500", "200")] == [1, 1, 1, 0]
    assert _metric(metrics, "gateway_requests_in_flight", {"model": "strong"}) == 0


def test_a_stream_counts_usage_once_and_finishes_when_it_breaks() -> None:
    metrics = GatewayMetrics()

    async def chunks(fail: bool) -> AsyncIterator[dict[str, Any]]:
        for total in (3, 6):  # continuous usage stats: cumulative usage on every chunk, then the final one
            yield {"choices": [{"index": 0, "delta": {"content": "x"}}], "usage": {"completion_tokens": total}}
        if fail:
            raise ConnectionResetError("upstream went away")
        yield {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 6}}

    async def consume(fail: bool) -> tuple[RequestRecord, list[Any]]:
        record = RequestRecord(metrics, "chat", "strong")
        seen: list[Any] = []
        try:
            async for chunk in accounted_stream(record, chunks(fail)):
                seen.append(chunk)
        except GatewayError as exc:
            seen.append(exc)
        return record, seen

    record, seen = asyncio.run(consume(fail=False))
    assert (record.prompt_tokens, record.completion_tokens) == (4, 6) and len(seen) == 3
    record, seen = asyncio.run(consume(fail=True))
    assert isinstance(seen[-1], UpstreamError) and seen[-1].status_code == 502
    assert _requests_total(metrics, "200") == 1 and _requests_total(metrics, "502") == 1


def test_admission_refuses_while_stopping_and_over_a_keys_rate() -> None:
    config = parse_config({"auth": {"api_keys": [{"name": "team", "key": "sk-team-0123456789abcdef",
                                                  "requests_per_minute": 1}]}})
    metrics = GatewayMetrics()
    key = ApiKeyStore(config.auth).authenticate("Bearer sk-team-0123456789abcdef")
    accounting = Accounting(config, metrics, InMemoryRateLimiter(), lambda model: model)

    async def scenario() -> None:
        ctx = RequestContext(key)
        record = await accounting.admit(ctx, "chat", "strong", _chat("strong"))
        assert record.key_name == "team"
        with pytest.raises(RateLimitError):
            await accounting.admit(ctx, "chat", "strong", _chat("strong"))
        accounting.stopping = True
        with pytest.raises(UpstreamUnavailableError) as raised:
            await accounting.admit(RequestContext(), "chat", "strong", _chat("strong"))
        assert raised.value.code == "shutting_down"
        await accounting.aclose()

    asyncio.run(scenario())
    assert _metric(metrics, "gateway_rate_limited_total", {"key": "team", "limit": "minute"}) == 1
