"""Prometheus metrics of one gateway app (own registry, so several apps can live in one process).

With ``llm-gateway serve --workers N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers
start: each worker's values go to files there, and ``/metrics`` from any worker shows the sum over all of them
(gauges: in-flight requests summed over live workers, circuit state the highest).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when it is imported

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class GatewayMetrics:
    """Every metric the gateway exports; label ``model`` is the public name of the model that answered."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("gateway_requests", "Requests finished, by endpoint, model and HTTP status",
                                ["endpoint", "model", "status"], registry=r)
        self.errors = Counter("gateway_request_errors", "Requests that ended in an error, by error code",
                              ["endpoint", "model", "code"], registry=r)
        self.latency = Histogram("gateway_request_duration_seconds", "Whole-request latency (streams: until "
                                 "the last byte)", ["endpoint", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.time_to_first_chunk = Histogram("gateway_time_to_first_chunk_seconds", "Streams: latency until the "
                                             "first chunk", ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("gateway_requests_in_flight", "Requests being served", ["model"], registry=r,
                               multiprocess_mode="livesum")
        self.tokens = Counter("gateway_tokens", "Tokens processed, from real usage", ["model", "kind"], registry=r)
        self.routed = Counter("gateway_routed_requests", "Requests routed by the router, by chosen model",
                              ["router_model", "model"], registry=r)
        self.failovers = Counter("gateway_failovers", "Attempts abandoned for the next candidate",
                                 ["from_model", "reason"], registry=r)
        self.endpoint_requests = Counter("gateway_endpoint_requests", "Requests answered, by model and replica "
                                         "(endpoints:)", ["model", "endpoint"], registry=r)
        self.routing_seconds = Histogram("gateway_routing_decision_seconds", "Time to rank candidates",
                                         buckets=FAST_BUCKETS, registry=r)
        self.circuit_open = Gauge("gateway_circuit_open", "1 while a model's circuit breaker is open, 0.5 "
                                  "half-open (on trial)", ["model"], registry=r, multiprocess_mode="livemax")
        self.stage_runs = Counter("gateway_stage_runs", "Safety stage runs, by stage and outcome",
                                  ["stage", "outcome"], registry=r)
        self.rate_limited = Counter("gateway_rate_limited", "Requests refused by a per-key limit",
                                    ["key", "limit"], registry=r)
        self.key_requests = Counter("gateway_key_requests", "Requests finished, by API key name", ["key"],
                                    registry=r)
        self.key_tokens = Counter("gateway_key_tokens", "Tokens used, by API key name", ["key"], registry=r)
        self.limiter_errors = Counter("gateway_rate_limiter_errors", "Calls to the rate limiter's store (Redis) "
                                      "that failed or timed out", registry=r)
        # Labels are configured names only (API keys, models): bounded however much traffic comes.
        self.spend = Counter("gateway_spend_usd", "US dollars spent, from real usage and the configured prices, by "
                             "API key name ('-': none) and model", ["key", "model"], registry=r)
        self.usage_rows_written = Counter("gateway_usage_rows_written", "Request rows written to the usage store",
                                          registry=r)
        self.usage_store_errors = Counter("gateway_usage_store_errors", "Batches the usage store failed to take "
                                          "(the rows wait and are retried)", registry=r)
        self.usage_rows_dropped = Counter("gateway_usage_rows_dropped", "Request rows dropped because the usage "
                                          "store was down long enough to fill the buffer", registry=r)
        self.usage_backlog = Gauge("gateway_usage_rows_buffered", "Request rows waiting for the usage store",
                                   registry=r, multiprocess_mode="livesum")

    def render(self) -> bytes:
        return generate_latest(self._collected())

    def _collected(self) -> CollectorRegistry:
        """This process's registry, or with ``--workers N`` the sum over every worker's files."""
        if os.environ.get(MULTIPROCESS_ENV):
            combined = CollectorRegistry()
            multiprocess.MultiProcessCollector(combined)
            return combined
        return self.registry

    def snapshot(self) -> dict[str, Any]:
        """Every metric as compact JSON (the console's dashboard; counters are totals since start, and the
        latency percentiles are estimated from the histogram's buckets)."""
        out: dict[str, Any] = {"requests": {}, "errors": {}, "tokens": {}, "routed": {}, "failovers": {},
                               "in_flight": {}, "circuits": {}, "stages": {}, "rate_limited": {}, "keys": {}}
        latency_buckets: dict[float, float] = {}
        for family in self._collected().collect():
            for sample in family.samples:
                labels, value = sample.labels, sample.value
                name = sample.name
                if name == "gateway_requests_total":
                    entry = out["requests"].setdefault(labels["model"], {})
                    entry[labels["status"]] = entry.get(labels["status"], 0) + value
                elif name == "gateway_request_errors_total":
                    out["errors"][labels["code"]] = out["errors"].get(labels["code"], 0) + value
                elif name == "gateway_request_duration_seconds_bucket":
                    bound = float(labels["le"])
                    latency_buckets[bound] = latency_buckets.get(bound, 0) + value
                elif name == "gateway_tokens_total":
                    out["tokens"].setdefault(labels["model"], {})[labels["kind"]] = value
                elif name == "gateway_routed_requests_total":
                    out["routed"][labels["model"]] = value
                elif name == "gateway_failovers_total":
                    entry = out["failovers"].setdefault(labels["from_model"], {})
                    entry[labels["reason"]] = value
                elif name == "gateway_requests_in_flight":
                    out["in_flight"][labels["model"]] = value
                elif name == "gateway_circuit_open":
                    out["circuits"][labels["model"]] = {0: "closed", 0.5: "half_open"}.get(value, "open")
                elif name == "gateway_stage_runs_total":
                    out["stages"].setdefault(labels["stage"], {})[labels["outcome"]] = value
                elif name == "gateway_rate_limited_total":
                    out["rate_limited"][labels["key"]] = out["rate_limited"].get(labels["key"], 0) + value
                elif name in ("gateway_key_requests_total", "gateway_key_tokens_total"):
                    kind = "requests" if name == "gateway_key_requests_total" else "tokens"
                    out["keys"].setdefault(labels["key"], {})[kind] = value
        out["latency_ms"] = _percentiles(latency_buckets, (0.5, 0.9, 0.99))
        out["total_requests"] = sum(sum(by_status.values()) for by_status in out["requests"].values())
        return out

    def close(self) -> None:
        """This process stops serving: its live gauges leave the multi-process sums."""
        if os.environ.get(MULTIPROCESS_ENV):
            multiprocess.mark_process_dead(os.getpid())


def _percentiles(buckets: dict[float, float], quantiles: tuple[float, ...]) -> dict[str, float | None]:
    """Quantiles (ms) from cumulative histogram buckets, interpolated linearly within a bucket."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0
    result: dict[str, float | None] = {}
    for q in quantiles:
        name = f"p{round(q * 100):d}"
        if not total:
            result[name] = None
            continue
        target, previous_bound, previous_count = q * total, 0.0, 0.0
        for bound in bounds:
            if buckets[bound] >= target:
                if bound == float("inf"):
                    result[name] = round(previous_bound * 1000, 1)
                else:
                    share = (target - previous_count) / max(buckets[bound] - previous_count, 1e-9)
                    result[name] = round((previous_bound + share * (bound - previous_bound)) * 1000, 1)
                break
            previous_bound, previous_count = bound, buckets[bound]
    return result
